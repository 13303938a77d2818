//! Which engine computes the batch views (DuckDB in this process, or a
//! Spark cluster through Spark Connect), and recomputing the views of a set
//! of hours with it: the one path a run and a backfill take.
//!
//! Either way the batch layer is the only writer of the lake: the engine
//! computes rows, this module writes them as view files, and the caller
//! commits the manifest that points at them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use bytes::Bytes;
use lambda_events::Topic;

use crate::lake::LakeWriter;
use crate::manifest::{HourPartition, ViewsEngine};
use crate::master;
use crate::run::local_paths;
use crate::spark::{SparkConfig, SparkEngine, spark_reads, spark_uri};
use crate::views::{ViewDef, ViewEngine, views_of};

/// The engine that computes batch views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BatchEngine {
    /// DuckDB, embedded in the batch process: one machine (the default).
    #[default]
    DuckDb,
    /// A Spark cluster behind a Spark Connect server; a run fails while it
    /// does not answer.
    Spark(SparkConfig),
    /// Spark when its Connect server answers as a run starts, DuckDB when
    /// it does not (its host does not resolve, refuses, or has no session
    /// within `--spark-timeout`): decided run by run, safe because both
    /// engines write the same view files byte for byte. What the compose
    /// stack uses, so that `--profile spark` alone moves the views to Spark.
    Auto(SparkConfig),
}

/// The engines' names, as `--batch-engine` and `GET /api/v1/compare?engine=`
/// take them.
pub const ENGINE_NAMES: [&str; 3] = ["duckdb", "spark", "auto"];

/// `duckdb, spark or auto`.
fn names_listed() -> String {
    let (last, rest) = ENGINE_NAMES.split_last().unwrap_or((&"", &[]));
    format!("{} or {last}", rest.join(", "))
}

impl BatchEngine {
    /// The engine a `--batch-engine` name and `--spark-url` choose: `duckdb`
    /// (a Spark URL is not used), or `spark` / `auto` (which need one). An
    /// empty URL is none (the compose file passes `LAMBDA_SPARK_URL`
    /// through).
    pub fn from_flags(name: &str, spark_url: Option<&str>) -> anyhow::Result<BatchEngine> {
        match (name, spark_url.filter(|u| !u.trim().is_empty())) {
            ("duckdb", _) => Ok(BatchEngine::DuckDb),
            (name @ ("spark" | "auto"), Some(url)) => {
                crate::spark::connect_address(url)?;
                let config = SparkConfig::new(url);
                Ok(match name {
                    "spark" => BatchEngine::Spark(config),
                    _ => BatchEngine::Auto(config),
                })
            }
            (name @ ("spark" | "auto"), None) => anyhow::bail!(
                "--batch-engine {name} needs --spark-url (LAMBDA_SPARK_URL), e.g. sc://127.0.0.1:15002"
            ),
            (other, _) => {
                anyhow::bail!("--batch-engine {other:?}: expected {}", names_listed())
            }
        }
    }

    /// The engine with Spark's calls (a connection, one job) given at most
    /// `timeout` each (DuckDB has none).
    pub fn with_spark_timeout(self, timeout: std::time::Duration) -> BatchEngine {
        match self {
            BatchEngine::Spark(config) => BatchEngine::Spark(SparkConfig { timeout, ..config }),
            BatchEngine::Auto(config) => BatchEngine::Auto(SparkConfig { timeout, ..config }),
            other => other,
        }
    }

    /// The engine `name` asks for on a process started with this one, as
    /// `GET /api/v1/compare?engine=` does: `duckdb` always; `spark` or
    /// `auto` only with this process's Spark URL (a request never brings
    /// a URL of its own), and `spark` only over a lake Spark can read.
    /// The error names what is wrong and how to mend it.
    pub fn choose(&self, name: &str, lake: &crate::Lake) -> Result<BatchEngine, String> {
        let config = match self {
            BatchEngine::DuckDb => None,
            BatchEngine::Spark(config) | BatchEngine::Auto(config) => Some(config),
        };
        BatchEngine::check_name(name)?;
        let chosen = match (name, config) {
            ("duckdb", _) => BatchEngine::DuckDb,
            (_, None) => {
                return Err(format!(
                    "{name}: this process has no Spark Connect server to use (start it with --batch-engine auto --spark-url sc://host:port)"
                ));
            }
            ("spark", Some(config)) => BatchEngine::Spark(config.clone()),
            // (`auto`, the one name left.)
            (_, Some(config)) => BatchEngine::Auto(config.clone()),
        };
        chosen.check_lake(lake).map_err(|e| format!("{e:#}"))?;
        Ok(chosen)
    }

    /// Whether `name` is an engine's name: `duckdb`, `spark` or `auto`
    /// (the error quotes at most 32 characters of it).
    pub fn check_name(name: &str) -> Result<(), String> {
        if ENGINE_NAMES.contains(&name) {
            return Ok(());
        }
        let shown: String = name.chars().take(32).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        Err(format!("{shown:?}{more}: expected {}", names_listed()))
    }

    /// `duckdb`, `spark` or `auto`.
    pub fn name(&self) -> &'static str {
        match self {
            BatchEngine::DuckDb => "duckdb",
            BatchEngine::Spark(_) => "spark",
            BatchEngine::Auto(_) => "auto",
        }
    }

    /// Whether this engine can compute `lake`'s views: Spark cannot read a
    /// `memory://` lake, or a `file://` lake whose path Spark would read
    /// as a glob (see [`spark_reads`]); `--batch-engine spark` refuses
    /// such a lake when the batch layer starts (`auto` leaves it to
    /// DuckDB).
    pub fn check_lake(&self, lake: &crate::Lake) -> anyhow::Result<()> {
        match self {
            BatchEngine::Spark(_) => spark_reads(lake).context("--batch-engine spark"),
            BatchEngine::DuckDb | BatchEngine::Auto(_) => Ok(()),
        }
    }

    /// The Spark session this engine computes `lake`'s views with, if any
    /// (one per process and `purpose`, see [`SparkEngine::shared`]): none
    /// for DuckDB; for Spark, an error naming the server if it does not
    /// answer (or the lake if Spark cannot read it); for auto, none in
    /// either case (logged when that changes). Blocking.
    pub(crate) fn spark_session(
        &self,
        purpose: &'static str,
        lake: &crate::Lake,
    ) -> anyhow::Result<Option<SparkEngine>> {
        match self {
            BatchEngine::DuckDb => Ok(None),
            BatchEngine::Spark(config) => {
                self.check_lake(lake)?;
                SparkEngine::shared(config, purpose).map(Some)
            }
            BatchEngine::Auto(config) => {
                let session = spark_reads(lake).and_then(|()| SparkEngine::shared(config, purpose));
                log_auto_choice(config, purpose, session.as_ref().err());
                Ok(session.ok())
            }
        }
    }
}

/// Logs `--batch-engine auto`'s choice: at info when it changes (and the
/// first time), at debug when it stays, so a stack without Spark does not
/// log a warning every run.
fn log_auto_choice(config: &SparkConfig, purpose: &str, unreachable: Option<&anyhow::Error>) {
    use std::sync::atomic::{AtomicU8, Ordering};
    /// Per purpose (batch, compare): 0: no choice yet; 1: DuckDB; 2: Spark.
    static LAST: [AtomicU8; 2] = [AtomicU8::new(0), AtomicU8::new(0)];
    let choice = if unreachable.is_some() { 1 } else { 2 };
    let last = &LAST[usize::from(purpose != "batch")];
    let changed = last.swap(choice, Ordering::SeqCst) != choice;
    let url = crate::spark::redact(&config.url);
    match (unreachable, changed) {
        (None, true) => {
            tracing::info!(%url, purpose, "batch engine auto: Spark answers; its views are computed on Spark")
        }
        (None, false) => tracing::debug!(%url, purpose, "batch engine auto: on Spark"),
        (Some(error), true) => {
            tracing::info!(%url, purpose, reason = %format!("{error:#}"), "batch engine auto: Spark is not used (it does not answer, or cannot read the lake); views are computed on DuckDB")
        }
        (Some(error), false) => {
            tracing::debug!(%url, purpose, reason = %format!("{error:#}"), "batch engine auto: on DuckDB")
        }
    }
}

/// The engines of one run or backfill: DuckDB always (the id index and
/// compaction are the batch process's own work), Spark when it computes the
/// views.
pub(crate) struct Engines {
    pub(crate) duckdb: ViewEngine,
    spark: Option<SparkEngine>,
    /// `--batch-engine auto`: a Spark cluster that stops answering hands
    /// the rest of the run to DuckDB instead of failing it.
    auto: bool,
    /// Hours whose views DuckDB computed although Spark was chosen (Spark
    /// could not compute them, or stopped answering under `auto`).
    on_duckdb: u64,
}

impl Engines {
    /// Opens DuckDB and, when `engine` computes on Spark, connects to it
    /// (see [`BatchEngine::spark_session`]). Blocking.
    pub(crate) fn open(engine: &BatchEngine, lake: &crate::Lake) -> anyhow::Result<Engines> {
        Ok(Engines {
            spark: engine.spark_session("batch", lake)?,
            duckdb: ViewEngine::new()?,
            auto: matches!(engine, BatchEngine::Auto(_)),
            on_duckdb: 0,
        })
    }

    /// The engine that computed the views: Spark if it computed every
    /// hour's, DuckDB if DuckDB computed any.
    pub(crate) fn views_engine(&self) -> ViewsEngine {
        match self.spark {
            Some(_) if self.on_duckdb == 0 => ViewsEngine::Spark,
            _ => ViewsEngine::Duckdb,
        }
    }
}

/// Runs blocking `f` on a thread of its own and awaits its result. Not
/// tokio's blocking pool: a runtime's shutdown waits for that pool, and a
/// Spark call can take up to its timeout, so a signal would wait as long.
pub(crate) async fn off_runtime<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("batch-engine".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .with_context(|| format!("starting a thread for {what}"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("{what}: its thread panicked"))?
}

/// Hours of one topic whose views one Spark job computes, at most (bounds
/// the query's size and the answer held in memory).
pub const SPARK_HOURS_PER_JOB: usize = 168;

/// Recomputes every view of the hour partitions `keys` from their data
/// files, writes them as version `version`'s view files (`tag` is added
/// to their names: see [`view_path`]) and points each partition at them.
/// `progress` is told how many hours are done after each step.
///
/// On DuckDB, hour by hour. On Spark, one job per view over many hours
/// (chunks of at most [`SPARK_HOURS_PER_JOB`] hours and
/// [`SPARK_FILES_PER_JOB`] files); if a job fails while the cluster runs
/// jobs, each of its hours is tried alone, and an hour Spark still fails
/// on is computed by DuckDB (the same bytes). Either way, an hour whose
/// views DuckDB cannot compute from its data (or `poisoned`, a
/// crash-injection hook) is quarantined — its views keep their last good
/// computation — and the rest goes on. A Spark cluster that no longer
/// answers, or runs no job within `--spark-timeout`, is an error (the
/// caller commits nothing, and the next run computes it all again) — or,
/// under `auto`, DuckDB computes the rest.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn recompute_views(
    lake: &LakeWriter,
    engines: &mut Engines,
    partitions: &mut BTreeMap<String, HourPartition>,
    keys: &[String],
    version: u64,
    tag: &str,
    poisoned: Option<i64>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> anyhow::Result<()> {
    let mut done = 0u64;
    // A poisoned hour is quarantined whatever the engine.
    let mut to_compute = Vec::with_capacity(keys.len());
    for key in keys {
        let partition = partitions
            .get_mut(key)
            .with_context(|| format!("no partition {key}"))?;
        if poisoned == Some(partition.hour_start_ms) {
            let reason = Err(format!("injected failure computing the views of {key}"));
            store_views(lake, key, partition, version, tag, reason).await?;
            done += 1;
            progress(done);
        } else {
            to_compute.push(key);
        }
    }
    // On Spark: one job per view over many hours. What Spark leaves
    // (hours it could not compute; all of them on DuckDB) DuckDB computes.
    let mut stored: BTreeSet<String> = BTreeSet::new();
    if let Some(spark) = engines.spark.clone() {
        let mut by_topic: BTreeMap<Topic, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for key in &to_compute {
            let partition = &partitions[*key];
            let files = partition
                .data_files
                .iter()
                .map(|f| spark_uri(lake, &object_store::path::Path::from(f.path.as_str())))
                .collect::<anyhow::Result<Vec<String>>>()?;
            by_topic
                .entry(partition_topic(key, partition)?)
                .or_default()
                .push(((*key).clone(), files));
        }
        'spark: for (topic, hours) in &by_topic {
            for chunk in spark_jobs(hours) {
                let mut by_hour = match spark_views(&spark, *topic, chunk).await {
                    Ok(by_hour) => by_hour,
                    Err(error) if engines.auto => {
                        tracing::warn!(error = %format!("{error:#}"), "batch engine auto: Spark stopped answering; DuckDB computes the rest of these views");
                        engines.spark = None;
                        break 'spark;
                    }
                    Err(error) => return Err(error),
                };
                for (key, _) in chunk {
                    match by_hour.remove(key).unwrap_or_else(|| Ok(Vec::new())) {
                        Ok(views) => {
                            let partition = partitions.get_mut(key).expect("asked for");
                            store_views(lake, key, partition, version, tag, Ok(views)).await?;
                            stored.insert(key.clone());
                            done += 1;
                        }
                        Err(reason) => {
                            tracing::warn!(partition = %key, %reason, "Spark could not compute this hour's views; DuckDB computes them")
                        }
                    }
                }
                progress(done);
            }
        }
    }
    for key in to_compute.into_iter().filter(|k| !stored.contains(*k)) {
        if engines.spark.is_some() || engines.auto {
            engines.on_duckdb += 1;
        }
        let partition = partitions.get_mut(key).expect("listed above");
        let computed = duckdb_views(lake, &mut engines.duckdb, key, partition).await?;
        store_views(lake, key, partition, version, tag, computed).await?;
        done += 1;
        progress(done);
    }
    Ok(())
}

/// An hour's computed views (the view files' bytes), or why its data
/// could not be computed.
type HourViews = Result<Vec<(&'static ViewDef, Bytes)>, String>;

/// Every view of `topic` for the hours of one chunk, one Spark job per
/// view. A job that fails is tried again hour by hour, and an hour that
/// still fails gets the reason (DuckDB then computes it) — but only while
/// the cluster runs jobs: a session that no longer answers, or a job given
/// up on after `--spark-timeout` (workers lost: Spark waits for executors
/// that never come), is the cluster's failure and an error.
async fn spark_views(
    spark: &SparkEngine,
    topic: Topic,
    chunk: &[(String, Vec<String>)],
) -> anyhow::Result<BTreeMap<String, HourViews>> {
    let mut out: BTreeMap<String, HourViews> = BTreeMap::new();
    for view in views_of(topic) {
        let asked: Vec<(String, Vec<String>)> = chunk
            .iter()
            .filter(|(key, _)| !matches!(out.get(key), Some(Err(_))))
            .cloned()
            .collect();
        if asked.is_empty() {
            break;
        }
        let files = match spark_job(spark, view, asked.clone()).await {
            Ok(files) => files,
            Err(error) => {
                cluster_failure(spark, error.context("a Spark job")).await?;
                let mut files = Vec::new();
                for hour in asked {
                    let key = hour.0.clone();
                    match spark_job(spark, view, vec![hour]).await {
                        Ok(one) => files.extend(one),
                        Err(error) => {
                            let reason = format!("view {} on Spark: {error:#}", view.name);
                            cluster_failure(spark, error).await?;
                            out.insert(key, Err(reason));
                        }
                    }
                }
                files
            }
        };
        for (key, bytes) in files {
            if let Ok(views) = out.entry(key).or_insert_with(|| Ok(Vec::new())) {
                views.push((view, bytes));
            }
        }
    }
    Ok(out)
}

/// `error` of a Spark job, as the run's error if it is the cluster's: the
/// job was given up on after `--spark-timeout`, or the session no longer
/// answers. Otherwise it is logged and the job's hours are tried again.
async fn cluster_failure(spark: &SparkEngine, error: anyhow::Error) -> anyhow::Result<()> {
    if crate::spark::is_timeout(&error) {
        return Err(error.context(
            "Spark ran no job within --spark-timeout (are its workers lost? a job waits for executors that never come)",
        ));
    }
    let alive = spark.clone();
    let answers = off_runtime("checking the Spark session", move || Ok(alive.answers()))
        .await
        .unwrap_or(false);
    anyhow::ensure!(answers, "Spark no longer answers: {error:#}");
    tracing::warn!(error = %format!("{error:#}"), "a Spark job failed; trying its hours one by one");
    Ok(())
}

/// Files one Spark job reads, at most (its query names each file).
pub const SPARK_FILES_PER_JOB: usize = 512;

/// `hours` in chunks of at most [`SPARK_HOURS_PER_JOB`] hours and
/// [`SPARK_FILES_PER_JOB`] files (an hour with more files is a chunk alone).
pub(crate) fn spark_jobs(hours: &[(String, Vec<String>)]) -> Vec<&[(String, Vec<String>)]> {
    let mut chunks = Vec::new();
    let (mut start, mut files) = (0, 0);
    for (i, (_, hour_files)) in hours.iter().enumerate() {
        let full =
            i - start == SPARK_HOURS_PER_JOB || files + hour_files.len() > SPARK_FILES_PER_JOB;
        if i > start && full {
            chunks.push(&hours[start..i]);
            (start, files) = (i, 0);
        }
        files += hour_files.len();
    }
    if start < hours.len() {
        chunks.push(&hours[start..]);
    }
    chunks
}

/// One Spark job: `view` over `hours`, each hour's answer as its view file.
pub(crate) async fn spark_job(
    spark: &SparkEngine,
    view: &'static ViewDef,
    hours: Vec<(String, Vec<String>)>,
) -> anyhow::Result<Vec<(String, Bytes)>> {
    let (job, count) = (spark.clone(), hours.len());
    off_runtime("a Spark job", move || {
        job.compute_hours(view, &hours)?
            .into_iter()
            .map(|(key, (schema, batches))| Ok((key, view_file(schema, &batches)?)))
            .collect::<anyhow::Result<Vec<(String, Bytes)>>>()
    })
    .await
    .with_context(|| format!("view {} of {count} hours on Spark", view.name))
}

/// A view's rows as its file: one batch, so that the file's pages do not
/// depend on how an engine happened to cut its answer into batches (both
/// engines write the same bytes).
pub(crate) fn view_file(
    schema: arrow_schema::SchemaRef,
    batches: &[arrow_array::RecordBatch],
) -> anyhow::Result<Bytes> {
    let one = arrow::compute::concat_batches(&schema, batches)?;
    master::to_parquet(schema, &[one])
}

fn partition_topic(key: &str, partition: &HourPartition) -> anyhow::Result<Topic> {
    Topic::from_name(&partition.topic)
        .with_context(|| format!("partition {key}: unknown topic {}", partition.topic))
}

/// Every view of `partition` computed by DuckDB over its data files: the
/// view files' bytes, or why the hour's data could not be computed (a
/// failure to read the lake is the run's error).
async fn duckdb_views(
    lake: &LakeWriter,
    engine: &mut ViewEngine,
    key: &str,
    partition: &HourPartition,
) -> anyhow::Result<HourViews> {
    let topic = partition_topic(key, partition)?;
    let paths = local_paths(lake, &partition.data_files).await?;
    let mut computed = Vec::new();
    for view in views_of(topic) {
        let result = tokio::task::block_in_place(|| {
            let (schema, batches) = engine.compute(view, &paths)?;
            view_file(schema, &batches)
        });
        match result {
            Ok(bytes) => computed.push((view, bytes)),
            Err(error) => return Ok(Err(format!("view {}: {error:#}", view.name))),
        }
    }
    Ok(Ok(computed))
}

/// Writes an hour's computed views as version `version`'s view files and
/// points `partition` at them (lifting a quarantine), or quarantines it
/// with the reason its views could not be computed (they keep their last
/// good computation). A failure to store is the lake's, and an error.
async fn store_views(
    lake: &LakeWriter,
    key: &str,
    partition: &mut HourPartition,
    version: u64,
    tag: &str,
    computed: HourViews,
) -> anyhow::Result<()> {
    let computed = match computed {
        Ok(computed) => computed,
        Err(reason) => {
            tracing::error!(partition = %key, %reason, "hour quarantined: its views keep their last good computation");
            partition.quarantined = Some(reason);
            return Ok(());
        }
    };
    for (view, bytes) in computed {
        let view_path = view_path(view, key, version, tag);
        lake.put(&object_store::path::Path::from(view_path.as_str()), bytes)
            .await?;
        partition.views.insert(view.name.to_string(), view_path);
    }
    if partition.quarantined.take().is_some() {
        tracing::info!(partition = %key, "quarantined hour recomputed");
    }
    Ok(())
}

/// Where version `version` writes `view` of the hour partition `key`:
/// `views/<view>/<date>/<hour>/v<version><tag>.parquet`. A backfill tags
/// its files (`-backfill`): it may race a scheduled run for the same
/// version, and the loser's files must not overwrite the winner's.
pub(crate) fn view_path(view: &ViewDef, key: &str, version: u64, tag: &str) -> String {
    format!(
        "views/{}/{}/v{version:010}{tag}.parquet",
        view.name,
        key.split_once('/').map_or("", |(_, rest)| rest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spark_jobs_hold_at_most_so_many_hours_and_files() {
        let hours = |files: &[usize]| -> Vec<(String, Vec<String>)> {
            files
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("h{i}"), vec![String::new(); *n]))
                .collect()
        };
        let shape = |hours: &[(String, Vec<String>)]| -> Vec<usize> {
            spark_jobs(hours).iter().map(|c| c.len()).collect()
        };
        assert_eq!(shape(&hours(&[])), Vec::<usize>::new());
        assert_eq!(shape(&hours(&[1; 168])), vec![168]);
        assert_eq!(shape(&hours(&[1; 169])), vec![168, 1]);
        assert_eq!(shape(&hours(&[256, 256, 1])), vec![2, 1]);
        assert_eq!(shape(&hours(&[1, 600, 1])), vec![1, 1, 1]);
        let all: usize = shape(&hours(&[3; 500])).iter().sum();
        assert_eq!(all, 500);
    }

    #[test]
    fn auto_computes_on_duckdb_while_spark_does_not_answer() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::Lake::open(
            &format!("file://{}", dir.path().display()),
            dir.path().join("c"),
        )
        .unwrap();
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        for url in [
            format!("sc://127.0.0.1:{refused}"),
            "sc://no-such-host.invalid:15002".to_string(),
        ] {
            let auto = BatchEngine::Auto(SparkConfig::new(&url));
            assert!(
                auto.spark_session("batch", &lake).unwrap().is_none(),
                "{url}"
            );
            let engines = Engines::open(&auto, &lake).unwrap();
            assert_eq!(engines.views_engine(), ViewsEngine::Duckdb);
            // Where Spark is required, the same server is an error naming it.
            let error = BatchEngine::Spark(SparkConfig::new(&url))
                .spark_session("batch", &lake)
                .unwrap_err();
            assert!(format!("{error:#}").contains(&url), "{error:#}");
        }
        assert_eq!(
            Engines::open(&BatchEngine::DuckDb, &lake)
                .unwrap()
                .views_engine(),
            ViewsEngine::Duckdb
        );
        // A lake Spark cannot read: Spark refuses it before connecting
        // (naming the lake), auto leaves it to DuckDB.
        let memory = crate::Lake::open("memory://", dir.path().join("c")).unwrap();
        let spark = BatchEngine::Spark(SparkConfig::new("sc://127.0.0.1:15002"));
        for error in [
            spark.check_lake(&memory).unwrap_err(),
            spark.spark_session("batch", &memory).unwrap_err(),
        ] {
            assert!(format!("{error:#}").contains("memory://"), "{error:#}");
        }
        let auto = BatchEngine::Auto(SparkConfig::new("sc://127.0.0.1:15002"));
        auto.check_lake(&memory).unwrap();
        assert!(auto.spark_session("batch", &memory).unwrap().is_none());
    }

    #[test]
    fn a_request_chooses_among_the_engines_its_process_can_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = crate::Lake::open(
            &format!("file://{}", dir.path().join("lake").display()),
            dir.path().join("c"),
        )
        .unwrap();
        let memory = crate::Lake::open("memory://", dir.path().join("m")).unwrap();
        let config = SparkConfig::new("sc://127.0.0.1:15002");
        let auto = BatchEngine::Auto(config.clone());
        assert_eq!(auto.choose("duckdb", &file).unwrap(), BatchEngine::DuckDb);
        assert_eq!(
            auto.choose("spark", &file).unwrap(),
            BatchEngine::Spark(config.clone())
        );
        assert_eq!(auto.choose("auto", &file).unwrap(), auto);
        let spark = BatchEngine::Spark(config.clone());
        assert_eq!(spark.choose("auto", &file).unwrap(), auto);
        // Without a Spark URL only DuckDB; a lake Spark cannot read only
        // on DuckDB or auto; an unknown name is named.
        let duckdb = BatchEngine::DuckDb;
        assert_eq!(duckdb.choose("duckdb", &memory).unwrap(), duckdb);
        assert!(
            duckdb
                .choose("spark", &file)
                .unwrap_err()
                .contains("--spark-url")
        );
        assert!(
            duckdb
                .choose("auto", &file)
                .unwrap_err()
                .contains("--spark-url")
        );
        assert!(
            auto.choose("spark", &memory)
                .unwrap_err()
                .contains("memory://")
        );
        assert_eq!(auto.choose("auto", &memory).unwrap(), auto);
        assert!(
            auto.choose("Spark", &file)
                .unwrap_err()
                .contains("expected duckdb, spark or auto")
        );
        // A long name is not echoed whole.
        let long = "x".repeat(10_000);
        let error = duckdb.choose(&long, &file).unwrap_err();
        assert!(
            error.len() < 100 && error.contains("expected duckdb"),
            "{error}"
        );
    }

    #[test]
    fn engine_flags() {
        assert_eq!(
            BatchEngine::from_flags("duckdb", None).unwrap(),
            BatchEngine::DuckDb
        );
        assert_eq!(
            BatchEngine::from_flags("spark", Some("sc://spark:15002")).unwrap(),
            BatchEngine::Spark(SparkConfig::new("sc://spark:15002"))
        );
        let error = |name: &str, url: Option<&str>| {
            format!("{:#}", BatchEngine::from_flags(name, url).unwrap_err())
        };
        assert!(error("spark", None).contains("needs --spark-url"));
        assert_eq!(
            BatchEngine::from_flags("duckdb", Some("sc://x")).unwrap(),
            BatchEngine::DuckDb
        );
        assert!(error("spark", Some("")).contains("needs --spark-url"));
        assert!(error("flink", None).contains("expected duckdb, spark or auto"));
        assert_eq!(
            BatchEngine::from_flags("auto", Some("sc://spark:15002")).unwrap(),
            BatchEngine::Auto(SparkConfig::new("sc://spark:15002"))
        );
        assert!(error("auto", None).contains("--batch-engine auto needs --spark-url"));
        assert!(error("auto", Some("spark:15002")).contains("sc://"));
        assert!(error("spark", Some("http://x:1")).contains("sc://"));
    }
}
