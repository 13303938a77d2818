//! Which engine computes the batch views (DuckDB in this process, or a
//! Spark cluster through Spark Connect), and recomputing the views of a set
//! of hours with it: the one path a run and a backfill take.
//!
//! Either way the batch layer is the only writer of the lake: the engine
//! computes rows, this module writes them as view files, and the caller
//! commits the manifest that points at them.

use std::collections::BTreeMap;

use anyhow::Context;
use bytes::Bytes;
use lambda_events::Topic;

use crate::lake::LakeWriter;
use crate::manifest::HourPartition;
use crate::master;
use crate::run::local_paths;
use crate::spark::{SparkConfig, SparkEngine, spark_uri};
use crate::views::{ViewDef, ViewEngine, views_of};

/// The engine that computes batch views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BatchEngine {
    /// DuckDB, embedded in the batch process: one machine (the default).
    #[default]
    DuckDb,
    /// A Spark cluster behind a Spark Connect server.
    Spark(SparkConfig),
}

impl BatchEngine {
    /// The engine a `--batch-engine` name and `--spark-url` choose: `duckdb`
    /// (a Spark URL is not used), or `spark` (which needs one). An empty URL
    /// is none (the compose file passes `LAMBDA_SPARK_URL` through).
    pub fn from_flags(name: &str, spark_url: Option<&str>) -> anyhow::Result<BatchEngine> {
        match (name, spark_url.filter(|u| !u.trim().is_empty())) {
            ("duckdb", _) => Ok(BatchEngine::DuckDb),
            ("spark", Some(url)) => {
                crate::spark::connect_address(url)?;
                Ok(BatchEngine::Spark(SparkConfig::new(url)))
            }
            ("spark", None) => anyhow::bail!(
                "--batch-engine spark needs --spark-url (LAMBDA_SPARK_URL), e.g. sc://127.0.0.1:15002"
            ),
            (other, _) => {
                anyhow::bail!("--batch-engine {other:?}: expected duckdb or spark")
            }
        }
    }

    /// `duckdb` or `spark`.
    pub fn name(&self) -> &'static str {
        match self {
            BatchEngine::DuckDb => "duckdb",
            BatchEngine::Spark(_) => "spark",
        }
    }
}

/// The engines of one run or backfill: DuckDB always (the id index and
/// compaction are the batch process's own work), Spark when it computes the
/// views.
pub(crate) struct Engines {
    pub(crate) duckdb: ViewEngine,
    spark: Option<SparkEngine>,
}

impl Engines {
    /// Opens DuckDB and, for [`BatchEngine::Spark`], connects to Spark (an
    /// unreachable server is an error naming its URL). Blocking.
    pub(crate) fn open(engine: &BatchEngine) -> anyhow::Result<Engines> {
        let spark = match engine {
            BatchEngine::DuckDb => None,
            BatchEngine::Spark(config) => Some(SparkEngine::shared(config)?),
        };
        Ok(Engines {
            duckdb: ViewEngine::new()?,
            spark,
        })
    }
}

/// Hours of one topic whose views one Spark job computes, at most (bounds
/// the query's size and the answer held in memory).
pub const SPARK_HOURS_PER_JOB: usize = 168;

/// Recomputes every view of the hour partitions `keys` from their data
/// files, writes them as version `version`'s view files and points each
/// partition at them. `progress` is told how many hours are done after each
/// step.
///
/// On DuckDB, hour by hour: an hour whose views fail to compute (its data,
/// or `poisoned`, a crash-injection hook) is quarantined — its views keep
/// their last good computation — and the rest goes on. On Spark, one job
/// per view over many hours; a failed job is an error (the cluster's, as
/// often as the data's), and the caller commits nothing: the next run
/// computes it all again.
pub(crate) async fn recompute_views(
    lake: &LakeWriter,
    engines: &mut Engines,
    partitions: &mut BTreeMap<String, HourPartition>,
    keys: &[String],
    version: u64,
    poisoned: Option<i64>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> anyhow::Result<()> {
    let is_poisoned = |p: &HourPartition| poisoned == Some(p.hour_start_ms);
    let mut done = 0u64;
    match engines.spark.clone() {
        None => {
            for key in keys {
                let partition = partitions
                    .get_mut(key)
                    .with_context(|| format!("no partition {key}"))?;
                let computed = if is_poisoned(partition) {
                    Err(format!("injected failure computing the views of {key}"))
                } else {
                    duckdb_views(lake, &mut engines.duckdb, key, partition).await?
                };
                store_views(lake, key, partition, version, computed).await?;
                done += 1;
                progress(done);
            }
        }
        Some(spark) => {
            let mut by_topic: BTreeMap<Topic, Vec<String>> = BTreeMap::new();
            for key in keys {
                let partition = partitions
                    .get_mut(key)
                    .with_context(|| format!("no partition {key}"))?;
                if is_poisoned(partition) {
                    let reason = Err(format!("injected failure computing the views of {key}"));
                    store_views(lake, key, partition, version, reason).await?;
                    done += 1;
                    continue;
                }
                let topic = partition_topic(key, partition)?;
                by_topic.entry(topic).or_default().push(key.clone());
            }
            for (topic, keys) in by_topic {
                for chunk in keys.chunks(SPARK_HOURS_PER_JOB) {
                    let mut hours = Vec::with_capacity(chunk.len());
                    for key in chunk {
                        let files = partitions[key]
                            .data_files
                            .iter()
                            .map(|f| {
                                spark_uri(lake, &object_store::path::Path::from(f.path.as_str()))
                            })
                            .collect::<anyhow::Result<Vec<String>>>()?;
                        hours.push((key.clone(), files));
                    }
                    let mut computed: BTreeMap<String, Vec<(&'static ViewDef, Bytes)>> =
                        BTreeMap::new();
                    for view in views_of(topic) {
                        let job = spark.clone();
                        let hours = hours.clone();
                        let by_hour = tokio::task::spawn_blocking(move || {
                            let by_hour = job.compute_hours(view, &hours)?;
                            by_hour
                                .into_iter()
                                .map(|(key, (schema, batches))| {
                                    Ok((key, master::to_parquet(schema, &batches)?))
                                })
                                .collect::<anyhow::Result<Vec<(String, Bytes)>>>()
                        })
                        .await
                        .context("a Spark job's thread panicked")?
                        .with_context(|| {
                            format!(
                                "view {} of {} hours of {topic} on Spark",
                                view.name,
                                chunk.len()
                            )
                        })?;
                        for (key, bytes) in by_hour {
                            computed.entry(key).or_default().push((view, bytes));
                        }
                    }
                    for (key, views) in computed {
                        let partition = partitions.get_mut(&key).expect("asked for");
                        store_views(lake, &key, partition, version, Ok(views)).await?;
                    }
                    done += chunk.len() as u64;
                    progress(done);
                }
            }
        }
    }
    Ok(())
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
) -> anyhow::Result<Result<Vec<(&'static ViewDef, Bytes)>, String>> {
    let topic = partition_topic(key, partition)?;
    let paths = local_paths(lake, &partition.data_files).await?;
    let mut computed = Vec::new();
    for view in views_of(topic) {
        let result = tokio::task::block_in_place(|| {
            let (schema, batches) = engine.compute(view, &paths)?;
            master::to_parquet(schema, &batches)
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
    computed: Result<Vec<(&'static ViewDef, Bytes)>, String>,
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
        let view_path = format!(
            "views/{}/{}/v{version:010}.parquet",
            view.name,
            key.split_once('/').map_or("", |(_, rest)| rest)
        );
        lake.put(&object_store::path::Path::from(view_path.as_str()), bytes)
            .await?;
        partition.views.insert(view.name.to_string(), view_path);
    }
    if partition.quarantined.take().is_some() {
        tracing::info!(partition = %key, "quarantined hour recomputed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(error("flink", None).contains("expected duckdb or spark"));
        assert!(error("spark", Some("http://x:1")).contains("sc://"));
    }
}
