//! The Spark Connect session (the `spark` feature).
//!
//! The client (`apache-spark-connect`) is synchronous and drives its own
//! tokio runtime: call it from a blocking thread (`spawn_blocking`), never
//! from an async task. Its calls retry an unreachable server for minutes:
//! [`SparkEngine::connect`] first opens a TCP connection with a short
//! timeout, and every call here runs under [`SparkConfig::timeout`].

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use anyhow::Context;
use arrow::compute::cast;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use lambda_events::floor_to;
use spark_connect::SparkSession;

use super::{SparkConfig, connect_address, redact};
use crate::dialect::{self, Dialect};
use crate::master::{self, HOUR_MS};
use crate::views::{VIEWS, ViewDef, ViewEngine, fold_sketches};

/// A Spark Connect session computing batch views.
#[derive(Clone)]
pub struct SparkEngine {
    session: Arc<SparkSession>,
    config: SparkConfig,
    /// Each view's columns as DuckDB gives them (by view name), which
    /// Spark's answers are cast to, so both engines write the same files.
    schemas: Arc<BTreeMap<String, SchemaRef>>,
}

impl std::fmt::Debug for SparkEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparkEngine")
            .field("url", &redact(&self.config.url))
            .finish()
    }
}

/// A TCP connection to the Connect server within 10 s, or an error naming
/// it: the client itself retries an unreachable server for minutes.
fn preflight(config: &SparkConfig) -> anyhow::Result<()> {
    let shown = redact(&config.url);
    let address = connect_address(&config.url)?;
    let preflight = config.timeout.min(Duration::from_secs(10));
    let mut last = String::from("no address");
    for addr in address
        .to_socket_addrs()
        .with_context(|| format!("Spark Connect at {shown}: resolving {address}"))?
    {
        match TcpStream::connect_timeout(&addr, preflight) {
            Ok(_) => return Ok(()),
            Err(error) => last = error.to_string(),
        }
    }
    anyhow::bail!(
        "Spark Connect at {shown} is unreachable (no TCP connection to {address}: {last})"
    )
}

/// A Spark call given up on after its timeout (its thread is left to end
/// when the client does).
#[derive(Debug, thiserror::Error)]
#[error("{what}: no answer from Spark within {timeout:?} (--spark-timeout)")]
struct TimedOut {
    what: String,
    timeout: Duration,
}

/// Whether `error` is a Spark call given up on after its timeout (the
/// cluster's failure: no job ran in time), whatever context it carries.
pub fn is_timeout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<TimedOut>())
}

/// Calls given up on (timed out) whose threads still wait for the client.
static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// Longest wait for the interrupt of a job given up on.
const INTERRUPT_WAIT: Duration = Duration::from_secs(10);

/// Calls given up on that may still be waiting at once; past it, no new
/// call starts (a server that takes connections and never answers would
/// otherwise cost a thread and a connection per run, for good).
const MAX_ABANDONED: usize = 4;

/// Runs `f` on its own thread and waits at most `timeout` for it: the
/// client's calls can retry for many minutes. A call given up on keeps
/// its thread until the client returns; while [`MAX_ABANDONED`] such
/// threads wait, a new call is refused at once.
fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let waiting = ABANDONED.load(Ordering::SeqCst);
    anyhow::ensure!(
        waiting < MAX_ABANDONED,
        "{what}: {waiting} earlier Spark calls given up on still wait for an answer; not starting another"
    );
    let (tx, rx) = mpsc::channel();
    let abandoned = Arc::new(AtomicBool::new(false));
    let mine = Arc::clone(&abandoned);
    std::thread::Builder::new()
        .name("spark-call".into())
        .spawn(move || {
            let result = f();
            if mine.load(Ordering::SeqCst) {
                ABANDONED.fetch_sub(1, Ordering::SeqCst);
            }
            let _ = tx.send(result);
        })
        .context("starting a thread for a Spark call")?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            ABANDONED.fetch_add(1, Ordering::SeqCst);
            abandoned.store(true, Ordering::SeqCst);
            Err(anyhow::Error::new(TimedOut {
                what: what.to_string(),
                timeout,
            }))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            anyhow::bail!("{what}: the Spark call panicked")
        }
    }
}

impl SparkEngine {
    /// Connects to the Spark Connect server at `config.url`: a TCP
    /// connection first (an unreachable server is an error within seconds,
    /// naming the URL), then a session, checked by asking Spark's version.
    /// Blocking.
    pub fn connect(config: &SparkConfig) -> anyhow::Result<SparkEngine> {
        preflight(config)?;
        let (url, shown) = (config.url.clone(), redact(&config.url));
        let what = format!("connecting to Spark Connect at {shown}");
        let session = within(config.timeout, &what, move || {
            let session = spark_connect::SparkSessionBuilder::new()
                .remote(&url)
                .get_or_create()
                .with_context(|| format!("Spark Connect at {shown}"))?;
            let version = session
                .version()
                .with_context(|| format!("Spark Connect at {shown}: asking its version"))?;
            tracing::info!(url = %shown, %version, "connected to Spark");
            Ok(session)
        })?;
        let duckdb = ViewEngine::new()?;
        let mut schemas = BTreeMap::new();
        for view in &VIEWS {
            schemas.insert(view.name.to_string(), duckdb.lists_schema(view)?);
        }
        Ok(SparkEngine {
            session: Arc::new(session),
            config: config.clone(),
            schemas: Arc::new(schemas),
        })
    }

    /// The process's session with the server at `config.url` for
    /// `purpose` (`"batch"`, `"compare"`: one session each, so that
    /// interrupting one's query never cancels the other's), made by
    /// [`SparkEngine::connect`] the first time and whenever the one kept no
    /// longer answers: each batch run reuses it rather than opening a
    /// session of its own. Blocking.
    pub fn shared(config: &SparkConfig, purpose: &'static str) -> anyhow::Result<SparkEngine> {
        static SESSIONS: OnceLock<Mutex<HashMap<(String, &'static str), SparkEngine>>> =
            OnceLock::new();
        let key = (config.url.clone(), purpose);
        let sessions = SESSIONS.get_or_init(Default::default);
        preflight(config)?;
        let kept = sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        if let Some(engine) = kept {
            let session = Arc::clone(&engine.session);
            let check = config.timeout.min(Duration::from_secs(30));
            match within(check, "checking the Spark session", move || {
                Ok(session.version()?)
            }) {
                // The session is shared; the timeout is the caller's.
                Ok(_) => {
                    return Ok(SparkEngine {
                        config: config.clone(),
                        ..engine
                    });
                }
                Err(error) => {
                    tracing::warn!(url = %redact(&config.url), error = %format!("{error:#}"), "the Spark session no longer answers; opening a new one")
                }
            }
        }
        let engine = SparkEngine::connect(config)?;
        sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, engine.clone());
        Ok(engine)
    }

    /// Whether the session still answers (within 30 s): after a failed
    /// query, tells the cluster's failure from the query's. Blocking.
    pub fn answers(&self) -> bool {
        let session = Arc::clone(&self.session);
        let check = self.config.timeout.min(Duration::from_secs(30));
        within(check, "checking the Spark session", move || {
            Ok(session.version()?)
        })
        .is_ok()
    }

    /// Spark's version, as the server reports it. Blocking.
    pub fn version(&self) -> anyhow::Result<String> {
        let session = Arc::clone(&self.session);
        within(self.config.timeout, "asking Spark's version", move || {
            Ok(session.version()?)
        })
    }

    /// Runs `view` over `files` (URIs Spark reads: see [`spark_uri`]) and
    /// returns its rows as DuckDB's engine returns them. Blocking.
    pub fn compute(
        &self,
        view: &ViewDef,
        files: &[String],
    ) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
        let (schema, batches) = self.query(view, files)?;
        fold_sketches(schema, batches)
    }

    /// The views of several hours of `view`'s topic in one Spark job: one
    /// query over every file of `hours` (key, file URIs), its rows split
    /// by the hour of their `bucket_start`. Each hour gets its rows as
    /// [`SparkEngine::compute`] over its files alone would give them (every
    /// view groups by minute buckets, which lie inside one hour), an hour
    /// without rows an empty answer. Blocking.
    pub fn compute_hours(
        &self,
        view: &ViewDef,
        hours: &[(String, Vec<String>)],
    ) -> anyhow::Result<BTreeMap<String, (SchemaRef, Vec<RecordBatch>)>> {
        let files: Vec<String> = hours.iter().flat_map(|(_, f)| f.iter().cloned()).collect();
        let (schema, batches) = self.query(view, &files)?;
        let (schema, batches) = fold_sketches(schema, batches)?;
        let mut out: BTreeMap<String, (SchemaRef, Vec<RecordBatch>)> = hours
            .iter()
            .map(|(key, _)| (key.clone(), (Arc::clone(&schema), Vec::new())))
            .collect();
        for batch in batches {
            for (hour, rows) in hour_runs(&batch)? {
                let key = master::partition_key(view.topic, hour);
                let (_, hour_batches) = out.get_mut(&key).with_context(|| {
                    format!(
                        "view {}: Spark answered rows of hour {key}, which was not asked for",
                        view.name
                    )
                })?;
                hour_batches.push(rows);
            }
        }
        Ok(out)
    }

    /// `view` over `files` on Spark, with DuckDB's column types (value
    /// lists not yet folded).
    fn query(
        &self,
        view: &ViewDef,
        files: &[String],
    ) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
        let sql = format!(
            "WITH events AS ({}) {}",
            Dialect::Spark.events_relation(view.topic, files)?,
            dialect::expand(view.sql, Dialect::Spark)?
        );
        let session = Arc::clone(&self.session);
        let name = view.name;
        let ipc = within(
            self.config.timeout,
            &format!("view {name} on Spark at {}", redact(&self.config.url)),
            move || {
                session
                    .sql(&sql)
                    .and_then(|df| df.to_arrow())
                    .with_context(|| format!("view {name} on Spark"))
            },
        )
        .inspect_err(|error| {
            // A query given up on must not keep the cluster busy. The session
            // is this engine's alone (see `shared`), and its calls one at a
            // time: the interrupt is waited for (a while), so that it cannot
            // cancel the session's next call instead.
            if error.is::<TimedOut>() {
                let session = Arc::clone(&self.session);
                let interrupted = within(INTERRUPT_WAIT, "interrupting a Spark job", move || {
                    session.interrupt_all()?;
                    Ok(())
                });
                if let Err(error) = interrupted {
                    tracing::warn!(error = %format!("{error:#}"), "interrupting a Spark job given up on");
                }
            }
        })?;
        let batches =
            read_ipc(&ipc).with_context(|| format!("view {name}: reading Spark's answer"))?;
        let target = self
            .schemas
            .get(&name.to_string())
            .with_context(|| format!("view {name}: no DuckDB schema"))?;
        let batches = cast_to(target, batches)
            .with_context(|| format!("view {name}: Spark's answer in DuckDB's column types"))?;
        Ok((Arc::clone(target), batches))
    }
}

/// `batch` as runs of consecutive rows of one hour (by `bucket_start`, the
/// first column of every view): `(hour start, rows)`.
fn hour_runs(batch: &RecordBatch) -> anyhow::Result<Vec<(i64, RecordBatch)>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let buckets = batch
        .column_by_name("bucket_start")
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .context("a view's answer without a BIGINT bucket_start")?;
    let mut runs: Vec<(i64, RecordBatch)> = Vec::new();
    let mut start = 0;
    while start < buckets.len() {
        anyhow::ensure!(!buckets.is_null(start), "a view row without bucket_start");
        let hour = floor_to(buckets.value(start), HOUR_MS);
        let mut end = start + 1;
        while end < buckets.len()
            && !buckets.is_null(end)
            && floor_to(buckets.value(end), HOUR_MS) == hour
        {
            end += 1;
        }
        runs.push((hour, batch.slice(start, end - start)));
        start = end;
    }
    Ok(runs)
}

/// The record batches of an Arrow IPC file (none for an empty answer,
/// which Spark sends without a schema).
fn read_ipc(bytes: &[u8]) -> anyhow::Result<Vec<RecordBatch>> {
    let reader = arrow_ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
        .context("not an Arrow IPC file")?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .context("a damaged Arrow IPC batch")?;
    Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// `batches` with `target`'s columns: the same names in the same order,
/// each cast to its type (Spark's strings, lists and nullability differ
/// from DuckDB's; the values do not).
fn cast_to(target: &SchemaRef, batches: Vec<RecordBatch>) -> anyhow::Result<Vec<RecordBatch>> {
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let expected: Vec<&str> = target.fields().iter().map(|f| f.name().as_str()).collect();
        anyhow::ensure!(
            names == expected,
            "columns {names:?}, where DuckDB gives {expected:?}"
        );
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(Arc::clone(column))
                } else {
                    cast(column, field.data_type())
                        .with_context(|| format!("column {}", field.name()))
                }
            })
            .collect::<anyhow::Result<Vec<ArrayRef>>>()?;
        out.push(RecordBatch::try_new(Arc::clone(target), columns)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_server_is_a_quick_error_naming_it() {
        // A port nothing listens on: bound, then let go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("sc://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let error = SparkEngine::connect(&SparkConfig::new(&url))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&url) && error.contains("unreachable"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn answers_split_into_runs_of_one_hour() {
        use arrow_array::{Int64Array, StringArray};
        use arrow_schema::{DataType, Field, Schema};
        let hour = 3_600_000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("bucket_start", DataType::Int64, true),
            Field::new("k", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![
                    0,
                    60_000,
                    hour,
                    hour + 60_000,
                    5 * hour,
                ])),
                Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"])),
            ],
        )
        .unwrap();
        let runs = hour_runs(&batch).unwrap();
        let shape: Vec<(i64, usize)> = runs.iter().map(|(h, b)| (*h, b.num_rows())).collect();
        assert_eq!(shape, vec![(0, 2), (hour, 2), (5 * hour, 1)]);
        let null = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![None::<i64>])),
                Arc::new(StringArray::from(vec!["x"])),
            ],
        )
        .unwrap();
        assert!(hour_runs(&null).is_err());
    }

    #[test]
    fn answers_take_duckdbs_column_types_or_are_refused() {
        use arrow_array::{Int32Array, LargeStringArray};
        use arrow_schema::{DataType, Field, Schema};
        let target: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let spark = |names: [&str; 2]| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new(names[0], DataType::Int32, false),
                    Field::new(names[1], DataType::LargeUtf8, false),
                ])),
                vec![
                    Arc::new(Int32Array::from(vec![7])),
                    Arc::new(LargeStringArray::from(vec!["x"])),
                ],
            )
            .unwrap()
        };
        let cast = cast_to(&target, vec![spark(["n", "s"])]).unwrap();
        assert_eq!(cast[0].schema(), target);
        let error = cast_to(&target, vec![spark(["n", "t"])])
            .unwrap_err()
            .to_string();
        assert!(error.contains("where DuckDB gives"), "{error}");
    }

    #[test]
    fn calls_given_up_on_are_bounded() {
        let (release, stuck) = mpsc::channel::<()>();
        let stuck = Arc::new(Mutex::new(stuck));
        for _ in 0..MAX_ABANDONED {
            let stuck = Arc::clone(&stuck);
            let error = within(Duration::from_millis(1), "a stuck call", move || {
                let _ = stuck.lock().unwrap().recv();
                Ok(())
            })
            .unwrap_err();
            assert!(error.is::<TimedOut>(), "{error:#}");
        }
        let refused = within(Duration::from_secs(60), "one more", || Ok(()))
            .unwrap_err()
            .to_string();
        assert!(refused.contains("still wait for an answer"), "{refused}");
        for _ in 0..MAX_ABANDONED {
            release.send(()).unwrap();
        }
        lambda_testkit::eventually_blocking(
            "the stuck calls' threads ended",
            Duration::from_secs(60),
            || match ABANDONED.load(Ordering::SeqCst) {
                0 => Ok(()),
                n => Err(format!("{n} still waiting")),
            },
        );
        assert_eq!(
            within(Duration::from_secs(60), "after", || Ok(7)).unwrap(),
            7
        );
    }
}
