//! Views recomputed from the master dataset for an interval, with the
//! chosen [`BatchEngine`], without committing anything — the batch layer's side of `lambda compare`, with
//! what it cost (files and bytes read, rows, wall time). Also counts the
//! rows a replay of the log can no longer see: those below a partition's
//! earliest retained offset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::{BucketViews, Topic};

use crate::engine::{BatchEngine, spark_job, spark_jobs};
use crate::lake::Lake;
use crate::manifest::{Manifest, ViewsEngine};
use crate::master::{self, HOUR_MS};
use crate::run::local_paths;
use crate::spark::spark_uri;
use crate::views::{ViewEngine, apply_view_file, parquet_list, views_of};

/// The batch views of an interval and their cost.
#[derive(Debug, Default)]
pub struct Recomputed {
    /// Views by bucket start, for buckets in the interval.
    pub buckets: BTreeMap<i64, BucketViews>,
    /// Hour partitions (of every topic) read.
    pub hours: u64,
    /// Parquet files read.
    pub files: u64,
    /// Their size in bytes.
    pub bytes: u64,
    /// Rows in them.
    pub rows: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The engine that computed the views.
    pub views_engine: ViewsEngine,
    /// Rows below the given earliest retained offsets: `(event_id, event
    /// type)` by bucket start (see [`recompute`]).
    pub before_retention: BTreeMap<i64, Vec<(String, String)>>,
}

/// Runs every view's SQL (with `engine`) over the data files of each hour
/// partition of `manifest` overlapping `[from_ms, to_ms)`, keeping the
/// buckets inside it. `retained_from` gives each `(topic, partition)`'s
/// earliest offset the log still holds; rows below it are counted in
/// `before_retention` (by DuckDB in this process, whatever the engine).
pub async fn recompute(
    lake: &Lake,
    manifest: &Manifest,
    from_ms: i64,
    to_ms: i64,
    retained_from: &BTreeMap<(String, u32), u64>,
    engine: &BatchEngine,
) -> anyhow::Result<Recomputed> {
    let started = Instant::now();
    let spark = {
        let (engine, lake) = (engine.clone(), lake.clone());
        crate::engine::off_runtime("connecting to Spark", move || {
            engine.spark_session("compare", &lake)
        })
        .await?
    };
    let duckdb = tokio::task::block_in_place(ViewEngine::new)?;
    let mut out = Recomputed {
        views_engine: match spark {
            Some(_) => ViewsEngine::Spark,
            None => ViewsEngine::Duckdb,
        },
        ..Recomputed::default()
    };
    let mut by_topic: BTreeMap<Topic, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for (key, partition) in &manifest.partitions {
        if partition.hour_start_ms >= to_ms || partition.hour_start_ms + HOUR_MS <= from_ms {
            continue;
        }
        let topic = Topic::from_name(&partition.topic)
            .with_context(|| format!("partition {key}: unknown topic {}", partition.topic))?;
        out.hours += 1;
        out.files += partition.data_files.len() as u64;
        out.bytes += partition.data_files.iter().map(|f| f.bytes).sum::<u64>();
        out.rows += partition.data_files.iter().map(|f| f.rows).sum::<u64>();
        let label = format!("{key} (recomputed)");
        match &spark {
            None => {
                let paths = local_paths(lake, &partition.data_files).await?;
                for view in views_of(topic) {
                    let bytes = tokio::task::block_in_place(|| {
                        let (schema, batches) = duckdb.compute(view, &paths)?;
                        master::to_parquet(schema, &batches)
                    })
                    .with_context(|| format!("view {} of {key}", view.name))?;
                    apply_view_file(&label, view.name, bytes, &mut out.buckets)?;
                }
            }
            Some(_) => {
                let uris = partition
                    .data_files
                    .iter()
                    .map(|f| spark_uri(lake, &object_store::path::Path::from(f.path.as_str())))
                    .collect::<anyhow::Result<Vec<String>>>()?;
                by_topic.entry(topic).or_default().push((key.clone(), uris));
            }
        }
        let starts: Vec<(u32, u64)> = retained_from
            .iter()
            .filter(|((t, _), start)| t == topic.name() && **start > 0)
            .map(|((_, p), start)| (*p, *start))
            .collect();
        if !starts.is_empty() {
            let paths = local_paths(lake, &partition.data_files).await?;
            let rows = tokio::task::block_in_place(|| rows_below(&duckdb, &paths, &starts))?;
            for (bucket, id, event_type) in rows {
                out.before_retention
                    .entry(bucket)
                    .or_default()
                    .push((id, event_type));
            }
        }
    }
    if let Some(spark) = spark {
        for (topic, hours) in by_topic {
            for chunk in spark_jobs(&hours) {
                for view in views_of(topic) {
                    let files = spark_job(&spark, view, chunk.to_vec()).await?;
                    for (key, bytes) in files {
                        let label = format!("{key} (recomputed on Spark)");
                        apply_view_file(&label, view.name, bytes, &mut out.buckets)?;
                    }
                }
            }
        }
    }
    out.buckets
        .retain(|start, b| (from_ms..to_ms).contains(start) && !b.is_empty());
    out.before_retention
        .retain(|start, _| (from_ms..to_ms).contains(start));
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Rows of `files` whose `(log_partition, log_offset)` lies below the given
/// start of its partition: `(bucket start, event_id, event type)`.
fn rows_below(
    engine: &ViewEngine,
    files: &[PathBuf],
    starts: &[(u32, u64)],
) -> anyhow::Result<Vec<(i64, String, String)>> {
    let values = starts
        .iter()
        .map(|(p, s)| format!("({p}, {s})"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT (epoch_ms(e.ts) // 60000) * 60000 AS bucket, e.event_id, e.event_type \
         FROM read_parquet([{}]) e \
         JOIN (VALUES {values}) AS s(p, start) ON e.log_partition = s.p AND e.log_offset < s.start",
        parquet_list(files)
    );
    let conn = engine.connection();
    let mut stmt = conn
        .prepare(&sql)
        .context("preparing the retention count")?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .context("counting rows below retention")?;
    rows.collect::<Result<Vec<_>, _>>()
        .context("reading the retention count")
}
