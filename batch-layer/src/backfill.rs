//! Backfill: recompute the batch views of an interval's hours from the
//! master dataset as it is (after a change to a view's SQL, say) and swap
//! them in atomically — one manifest commit, like a run. The log is not
//! read; offsets, the id index and B stay as they are.
//!
//! On Spark, each view of a topic is one job over all the interval's hours
//! (up to [`crate::engine::SPARK_HOURS_PER_JOB`]), spread over the
//! executors; on DuckDB, hour by hour.
//!
//! A scheduled run that commits first makes the backfill's commit a
//! conflict (conditional put): nothing of the backfill becomes visible, and
//! running it again recomputes on top of that run.

use anyhow::Context;

use crate::engine::{BatchEngine, Engines, recompute_views};
use crate::lake::LakeWriter;
use crate::manifest::{self, Manifest, ViewsEngine};
use crate::master::HOUR_MS;

/// What a backfill did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    /// The manifest version it committed.
    pub version: u64,
    /// Hour partitions (of every topic) whose views it recomputed.
    pub hours: u64,
    /// Those whose views could not be computed from their data: they are
    /// quarantined (their views keep their last good computation; every
    /// later run tries them again).
    pub quarantined: Vec<String>,
    /// The engine that computed the views.
    pub views_engine: ViewsEngine,
}

/// Recomputes the views of every hour partition overlapping `[from_ms,
/// to_ms)` with `engine` and commits them as a new manifest version.
/// `progress` is told `(done, total)` hours as they are done. An hour whose
/// views cannot be computed from its data is quarantined, as in a run, and
/// named in the report; a Spark cluster that stops answering fails the
/// backfill, and nothing is committed.
pub async fn backfill(
    lake: &LakeWriter,
    engine: &BatchEngine,
    from_ms: i64,
    to_ms: i64,
    mut progress: impl FnMut(u64, u64) + Send,
) -> anyhow::Result<BackfillReport> {
    anyhow::ensure!(
        from_ms < to_ms,
        "backfill: --from ({from_ms}) must be before --to ({to_ms})"
    );
    let previous = manifest::latest(lake)
        .await?
        .context("backfill: the lake has no committed batch run to recompute")?;
    let version = previous.version + 1;
    let keys: Vec<String> = previous
        .partitions
        .iter()
        .filter(|(_, p)| p.hour_start_ms < to_ms && p.hour_start_ms + HOUR_MS > from_ms)
        .map(|(key, _)| key.clone())
        .collect();
    let total = keys.len() as u64;
    let engine = engine.clone();
    let mut engines = crate::engine::off_runtime("opening the batch engines", {
        let lake = lake.clone();
        move || Engines::open(&engine, &lake)
    })
    .await?;
    let mut partitions = previous.partitions.clone();
    recompute_views(
        lake,
        &mut engines,
        &mut partitions,
        &keys,
        version,
        "-backfill",
        None,
        &mut |done| progress(done, total),
    )
    .await
    .context("backfill")?;
    let quarantined: Vec<String> = keys
        .iter()
        .filter(|k| partitions[*k].quarantined.is_some())
        .cloned()
        .collect();
    let manifest = Manifest {
        version,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
        partitions,
        run: manifest::RunStats {
            hours_recomputed: total,
            views_engine: engines.views_engine(),
            ..Default::default()
        },
        ..previous
    };
    manifest::commit(lake, &manifest)
        .await
        .map_err(|e| anyhow::anyhow!("backfill of version {version} not committed: {e}"))?;
    if let Err(error) = manifest::vacuum(lake, &manifest, crate::run::KEEP_MANIFESTS).await {
        tracing::warn!(%error, version, "deleting files no manifest needs failed");
    }
    tracing::info!(
        version,
        hours = total,
        quarantined = quarantined.len(),
        from_ms,
        to_ms,
        "backfill committed"
    );
    Ok(BackfillReport {
        version,
        hours: total,
        quarantined,
        views_engine: engines.views_engine(),
    })
}
