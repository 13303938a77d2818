//! Backfill: recompute the batch views of an interval's hours from the
//! master dataset as it is (after a change to a view's SQL, say) and swap
//! them in atomically — one manifest commit, like a run. The log is not
//! read; offsets, the id index and B stay as they are.
//!
//! A scheduled run that commits first makes the backfill's commit a
//! conflict (conditional put): nothing of the backfill becomes visible, and
//! running it again recomputes on top of that run.

use anyhow::Context;

use crate::lake::LakeWriter;
use crate::manifest::{self, Manifest};
use crate::master::HOUR_MS;
use crate::run::write_views;
use crate::views::ViewEngine;

/// What a backfill did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    /// The manifest version it committed.
    pub version: u64,
    /// Hour partitions (of every topic) whose views it recomputed.
    pub hours: u64,
}

/// Recomputes the views of every hour partition overlapping `[from_ms,
/// to_ms)` and commits them as a new manifest version. `progress` is told
/// `(done, total)` after each hour.
pub async fn backfill(
    lake: &LakeWriter,
    from_ms: i64,
    to_ms: i64,
    mut progress: impl FnMut(u64, u64),
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
    let mut engine = tokio::task::block_in_place(ViewEngine::new)?;
    let mut partitions = previous.partitions.clone();
    for (done, key) in keys.iter().enumerate() {
        let partition = partitions.get_mut(key).expect("listed above");
        write_views(lake, &mut engine, key, partition, version, false)
            .await
            .with_context(|| format!("backfill of {key}"))?;
        progress(done as u64 + 1, total);
    }
    let manifest = Manifest {
        version,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
        partitions,
        run: manifest::RunStats {
            hours_recomputed: total,
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
    tracing::info!(version, hours = total, from_ms, to_ms, "backfill committed");
    Ok(BackfillReport {
        version,
        hours: total,
    })
}
