//! `lambda bench backfill`: recomputing every view of a large master
//! dataset on Spark (a standalone cluster of two workers) beside DuckDB in
//! the batch process, on the same lake in the same run; and the scheduled
//! path's per-run latency on each engine.
//!
//! Without `--spark-url` it starts a local cluster (a master, two one-core
//! workers, a Spark Connect server) from the `pyspark` distribution in the
//! tests' virtualenv, as the tests do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_batch::manifest::{self, DataFile, HourPartition, Manifest};
use lambda_batch::master::{self, HOUR_MS, LoggedEvent};
use lambda_batch::run::RunContext;
use lambda_batch::spark::SparkConfig;
use lambda_batch::{BatchEngine, LakeWriter};
use lambda_events::{Event, Topic, floor_to};
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog, Record};
use object_store::path::Path;

use crate::measure::spinner;
use crate::report::{Aim, Figure};

/// Settings of the backfill benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct BackfillBench {
    /// Events in the master dataset, e.g. 10000000.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: usize,
    /// Hours they span.
    #[arg(long, default_value_t = 48)]
    pub hours: u32,
    /// A Spark Connect server to use (default: start a local cluster of two workers).
    #[arg(long, env = "LAMBDA_SPARK_URL")]
    pub spark_url: Option<String>,
    /// Events each scheduled run brings, for the per-run latency.
    #[arg(long, default_value_t = 20_000)]
    pub run_events: usize,
    /// Scheduled runs timed on each engine.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

impl Default for BackfillBench {
    /// The flags' defaults.
    fn default() -> BackfillBench {
        <BackfillBench as clap::Parser>::parse_from(["backfill"])
    }
}

const START_MS: i64 = 1_767_225_600_000;

/// Generated events spread evenly over `hours`, each a valid event.
fn generate(events: usize, hours: u32, seed: u64) -> anyhow::Result<Vec<Event>> {
    let rate = events as f64 / (f64::from(hours.max(1)) * 3600.0);
    let mut generator = Generator::new(GeneratorConfig {
        seed,
        start_ms: START_MS,
        rate,
        late_fraction: 0.0,
        duplicate_fraction: 0.0,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    (0..events)
        .map(|_| {
            Event::from_json(&generator.next_line().bytes)
                .context("the generator made an invalid line")
        })
        .collect()
}

/// A lake holding `events` as its master dataset (one data file per hour
/// and topic, committed as version 1, views not yet computed).
async fn master_dataset(lake: &LakeWriter, events: Vec<Event>) -> anyhow::Result<(i64, i64)> {
    let mut by_hour: BTreeMap<(Topic, i64), Vec<LoggedEvent>> = BTreeMap::new();
    for (offset, event) in events.into_iter().enumerate() {
        let hour = floor_to(event.ts, HOUR_MS);
        by_hour
            .entry((event.topic(), hour))
            .or_default()
            .push(LoggedEvent {
                event,
                partition: 0,
                offset: offset as u64,
            });
    }
    let (mut from, mut to) = (i64::MAX, i64::MIN);
    let mut partitions = BTreeMap::new();
    for ((topic, hour), mut events) in by_hour {
        events
            .sort_by(|a, b| (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id)));
        let key = master::partition_key(topic, hour);
        let path = format!("master/{key}/part-0000000001.parquet");
        let bytes = master::encode(topic, &events)?;
        let size = bytes.len() as u64;
        lake.put(&Path::from(path.as_str()), bytes).await?;
        partitions.insert(
            key,
            HourPartition {
                topic: topic.name().to_string(),
                hour_start_ms: hour,
                data_files: vec![DataFile {
                    path,
                    rows: events.len() as u64,
                    bytes: size,
                }],
                views: BTreeMap::new(),
                quarantined: None,
            },
        );
        from = from.min(hour);
        to = to.max(hour + HOUR_MS);
    }
    manifest::commit(
        lake,
        &Manifest {
            version: 1,
            partitions,
            ..Manifest::default()
        },
    )
    .await?;
    Ok((from, to))
}

/// The view files' bytes of `version`, by partition and view.
async fn view_bytes(
    lake: &LakeWriter,
    version: u64,
) -> anyhow::Result<BTreeMap<(String, String), bytes::Bytes>> {
    let manifest = manifest::read(lake, version)
        .await?
        .with_context(|| format!("no manifest {version}"))?;
    let mut out = BTreeMap::new();
    for (key, partition) in &manifest.partitions {
        for (view, path) in &partition.views {
            let bytes = lake.get(&Path::from(path.as_str())).await?;
            out.insert((key.clone(), view.clone()), bytes);
        }
    }
    Ok(out)
}

/// `lambda bench backfill`.
pub async fn run(bench: BackfillBench) -> anyhow::Result<Vec<Figure>> {
    let cluster;
    let url = match &bench.spark_url {
        Some(url) => url.clone(),
        None => {
            let bar =
                spinner("starting a local Spark cluster (a master, two workers, Spark Connect)");
            cluster = tokio::task::spawn_blocking(lambda_testkit::Spark::try_start)
                .await?
                .map_err(|failure| {
                    anyhow::anyhow!(
                        "starting a local Spark cluster: {failure} (or pass --spark-url sc://HOST:PORT)"
                    )
                })?;
            bar.finish_and_clear();
            cluster.connect_url.clone()
        }
    };
    let spark = BatchEngine::Spark(SparkConfig::new(&url));
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    // Spark's workers read the lake's files by path: a file:// lake.
    let lake = LakeWriter::open(
        &format!("file://{}", dir.path().join("lake").display()),
        dir.path().join("cache"),
    )?;

    let bar = spinner(&format!(
        "writing a master dataset of {} events over {} hours",
        bench.events, bench.hours
    ));
    let events = generate(bench.events, bench.hours, 1)?;
    let (from, to) = master_dataset(&lake, events).await?;
    bar.finish_and_clear();

    let mut walls = BTreeMap::new();
    for (engine, name) in [(BatchEngine::DuckDb, "duckdb"), (spark.clone(), "spark")] {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "backfill on {name} {{pos}}/{{len}} hours {{bar:30}} {{elapsed}}"
            ))
            .expect("a template"),
        );
        let started = Instant::now();
        let report = lambda_batch::backfill(&lake, &engine, from, to, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await
        .with_context(|| format!("backfill on {name}"))?;
        bar.finish_and_clear();
        walls.insert(name, (started.elapsed(), report));
    }
    let (duck_wall, duck) = &walls["duckdb"];
    let (spark_wall, spark_report) = &walls["spark"];
    let same =
        view_bytes(&lake, duck.version).await? == view_bytes(&lake, spark_report.version).await?;
    anyhow::ensure!(
        same,
        "the view files Spark computed differ from DuckDB's: the engines disagree"
    );

    // The scheduled path: runs of `run_events` new events each (the newest
    // hour and the one before), the same events into two lakes, one per engine.
    let log_dir = dir.path().join("log");
    let log: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(log_dir, EmbeddedConfig::default()).await?);
    lambda_ingest::ensure_topics(&log, 2).await?;
    let mut contexts = Vec::new();
    for (engine, name) in [(BatchEngine::DuckDb, "duckdb"), (spark, "spark")] {
        let lake = LakeWriter::open(
            &format!(
                "file://{}",
                dir.path().join(format!("runs-{name}")).display()
            ),
            dir.path().join(format!("runs-cache-{name}")),
        )?;
        contexts.push((
            name,
            RunContext {
                log: Arc::clone(&log),
                lake,
                allowed_lateness_ms: 60_000,
                engine,
            },
            Vec::new(),
        ));
    }
    let all = generate(bench.run_events * (bench.runs + 1), 2, 2)?;
    let bar = spinner("timing scheduled runs on each engine");
    for (round, chunk) in all.chunks(bench.run_events.max(1)).enumerate() {
        for topic in Topic::ALL {
            let records: Vec<Record> = chunk
                .iter()
                .filter(|e| e.topic() == topic)
                .map(|e| Record::keyed(e.key().as_bytes(), e.to_json(), 0))
                .collect();
            log.append(topic.name(), records).await?;
        }
        for (name, ctx, times) in &mut contexts {
            let started = Instant::now();
            let report = lambda_batch::run_once(ctx)
                .await
                .with_context(|| format!("a scheduled run on {name}"))?;
            anyhow::ensure!(report.committed, "a run on {name} committed nothing");
            // The first run opens the dataset: not a steady-state run.
            if round > 0 {
                times.push(started.elapsed());
            }
        }
    }
    bar.finish_and_clear();
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times.get(times.len() / 2).copied().unwrap_or_default()
    };
    let duck_run = median(&mut contexts[0].2);
    let spark_run = median(&mut contexts[1].2);

    let rate = |wall: &Duration| bench.events as f64 / wall.as_secs_f64().max(1e-9);
    println!(
        "lambda bench backfill: {} events over {} hours ({} hour partitions), Spark at {url}",
        bench.events, bench.hours, duck.hours
    );
    println!(
        "  duckdb (baseline, in this process)  {:>10.0} rows/s  wall {:>7.2} s",
        rate(duck_wall),
        duck_wall.as_secs_f64()
    );
    println!(
        "  spark (two workers)                 {:>10.0} rows/s  wall {:>7.2} s  ({:.2}x duckdb's rate)",
        rate(spark_wall),
        spark_wall.as_secs_f64(),
        rate(spark_wall) / rate(duck_wall)
    );
    println!("  the view files of both are byte for byte the same");
    println!(
        "  scheduled run of {} events (median of {}): duckdb {:.0} ms, spark {:.0} ms",
        bench.run_events,
        bench.runs,
        duck_run.as_secs_f64() * 1e3,
        spark_run.as_secs_f64() * 1e3
    );
    Ok(vec![
        Figure::new(
            "backfill",
            format!("backfill of {} events on Spark (2 workers)", bench.events),
            "rows/s",
            rate(spark_wall),
            "duckdb in the batch process",
            rate(duck_wall),
            Aim::None,
        ),
        Figure::new(
            "backfill",
            format!("scheduled run of {} events on Spark", bench.run_events),
            "ms",
            spark_run.as_secs_f64() * 1e3,
            "duckdb in the batch process",
            duck_run.as_secs_f64() * 1e3,
            Aim::None,
        ),
    ])
}
