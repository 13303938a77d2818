//! One batch run: snapshot the log's end offsets, read everything from the
//! last manifest's offsets up to them, append the new events (deduplicated by
//! `event_id`) to the master dataset, recompute the views of every hour that
//! changed, and commit it all with one manifest write.
//!
//! A run that fails or is killed before the manifest leaves only unreferenced
//! files behind: readers never see them, and the next run (same version
//! number, same file names) overwrites them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Event, Topic, floor_to};
use lambda_log::{EventLog, FetchPosition};
use object_store::path::Path;

use crate::lake::Lake;
use crate::manifest::{self, DataFile, HourPartition, Manifest, RunStats};
use crate::master::{self, HOUR_MS, LoggedEvent};
use crate::views::{ViewEngine, views_of};

/// Consumer group the batch layer commits its covered offsets under (for lag reporting).
pub const CONSUMER_GROUP: &str = "batch-layer";
const READ_CHUNK: usize = 8192;
/// How long one read waits for records known to exist (a remote broker answers asynchronously).
const READ_WAIT: Duration = Duration::from_secs(5);

/// What a run needs.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The log to read.
    pub log: Arc<dyn EventLog>,
    /// The lake to write.
    pub lake: Lake,
    /// Allowed lateness used for the boundary B.
    pub allowed_lateness_ms: i64,
}

/// Where a run may be made to fail, for crash-injection tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// After the first data file is written.
    AfterFirstDataFile,
    /// After all data and view files, before the manifest.
    BeforeManifest,
    /// After the manifest is committed, before the covered offsets are
    /// committed to the log's consumer group.
    AfterManifest,
}

/// What a committed run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The manifest version committed (the previous one if there was nothing new).
    pub version: u64,
    /// Whether a new manifest was written.
    pub committed: bool,
    /// Figures of the run.
    pub stats: RunStats,
    /// The boundary B after the run.
    pub boundary_ms: Option<i64>,
}

/// Runs one batch run.
pub async fn run_once(ctx: &RunContext) -> anyhow::Result<RunReport> {
    run_with_fail_point(ctx, None).await
}

/// [`run_once`], failing on purpose at `fail_point`.
pub async fn run_with_fail_point(
    ctx: &RunContext,
    fail_point: Option<FailPoint>,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let previous = manifest::latest(&ctx.lake).await?.unwrap_or_default();
    let version = previous.version + 1;
    let mut stats = RunStats::default();

    // 1. Snapshot end offsets and read up to them.
    let mut offsets = previous.offsets.clone();
    let mut by_hour: BTreeMap<(Topic, i64), Vec<LoggedEvent>> = BTreeMap::new();
    let mut max_event_ts = previous.max_event_ts;
    for topic in Topic::ALL {
        let ranges = ctx
            .log
            .ranges(topic.name())
            .await
            .with_context(|| format!("ranges of {topic}"))?;
        let mut seen_in_run: HashSet<String> = HashSet::new();
        let topic_offsets = offsets.entry(topic.name().to_string()).or_default();
        for (partition, range) in ranges.iter().enumerate() {
            let partition = partition as u32;
            let mut offset = topic_offsets
                .get(&partition)
                .copied()
                .unwrap_or(range.start);
            if offset < range.start {
                tracing::warn!(%topic, partition, offset, start = range.start, "log retention dropped records the lake never saw");
                offset = range.start;
            }
            while offset < range.end {
                let position = FetchPosition {
                    topic: topic.name().into(),
                    partition,
                    offset,
                };
                let records = ctx.log.fetch(&[position], READ_CHUNK, READ_WAIT).await?;
                anyhow::ensure!(
                    !records.is_empty(),
                    "{topic}/{partition}: no records at {offset} below end {}",
                    range.end
                );
                for stored in records.into_iter().take_while(|s| s.offset < range.end) {
                    offset = stored.offset + 1;
                    stats.records_read += 1;
                    match Event::from_record(&stored.record.value, topic.name()) {
                        Ok(event) if seen_in_run.insert(event.event_id.clone()) => {
                            max_event_ts = Some(max_event_ts.map_or(event.ts, |m| m.max(event.ts)));
                            let hour = floor_to(event.ts, HOUR_MS);
                            by_hour.entry((topic, hour)).or_default().push(LoggedEvent {
                                event,
                                partition,
                                offset: stored.offset,
                            });
                        }
                        Ok(_) => stats.duplicates += 1,
                        Err(_) => stats.invalid += 1,
                    }
                }
            }
            topic_offsets.insert(partition, offset);
        }
    }
    if offsets == previous.offsets && previous.version > 0 {
        // Nothing new; the group offsets may still lag the manifest (a run
        // that failed after its commit).
        commit_group_offsets(ctx, &previous.offsets).await;
        stats.duration_ms = started.elapsed().as_millis() as u64;
        return Ok(RunReport {
            version: previous.version,
            committed: false,
            stats,
            boundary_ms: previous.boundary_ms,
        });
    }

    // 2. Write new events per hour and recompute that hour's views.
    let engine = tokio::task::block_in_place(ViewEngine::new)?;
    let mut partitions = previous.partitions.clone();
    let mut written_any = false;
    for ((topic, hour_start), mut events) in by_hour {
        let key = master::partition_key(topic, hour_start);
        let mut partition = partitions.get(&key).cloned().unwrap_or(HourPartition {
            topic: topic.name().into(),
            hour_start_ms: hour_start,
            ..Default::default()
        });
        let existing_paths = local_paths(&ctx.lake, &partition.data_files).await?;
        let existing_ids = tokio::task::block_in_place(|| engine.event_ids(&existing_paths))?;
        let before = events.len();
        events.retain(|e| !existing_ids.contains(&e.event.event_id));
        stats.duplicates += (before - events.len()) as u64;
        if events.is_empty() {
            continue;
        }
        events
            .sort_by(|a, b| (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id)));
        let data_path = format!("master/{key}/part-{version:010}.parquet");
        let bytes = tokio::task::block_in_place(|| master::encode(topic, &events))?;
        let size = bytes.len() as u64;
        ctx.lake.put(&Path::from(data_path.as_str()), bytes).await?;
        partition.data_files.push(DataFile {
            path: data_path,
            rows: events.len() as u64,
            bytes: size,
        });
        stats.events_written += events.len() as u64;
        if fail_point == Some(FailPoint::AfterFirstDataFile) && !written_any {
            anyhow::bail!("injected failure after the first data file of version {version}");
        }
        written_any = true;

        let all_paths = local_paths(&ctx.lake, &partition.data_files).await?;
        for view in views_of(topic) {
            let (schema, batches) =
                tokio::task::block_in_place(|| engine.compute(view, &all_paths))?;
            let bytes = tokio::task::block_in_place(|| master::to_parquet(schema, &batches))?;
            let view_path = format!(
                "views/{}/{}/v{version:010}.parquet",
                view.name,
                key.split_once('/').map_or("", |(_, rest)| rest)
            );
            ctx.lake.put(&Path::from(view_path.as_str()), bytes).await?;
            partition.views.insert(view.name.to_string(), view_path);
        }
        stats.hours_recomputed += 1;
        partitions.insert(key, partition);
    }
    if fail_point == Some(FailPoint::BeforeManifest) {
        anyhow::bail!("injected failure before the manifest of version {version}");
    }

    // 3. Commit.
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let boundary_ms = max_event_ts.map(|ts| floor_to(ts - ctx.allowed_lateness_ms, MINUTE_MS));
    let manifest = Manifest {
        version,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
        boundary_ms,
        max_event_ts,
        offsets,
        partitions,
        run: stats,
    };
    manifest::commit(&ctx.lake, &manifest).await?;
    if fail_point == Some(FailPoint::AfterManifest) {
        anyhow::bail!("injected failure after the manifest of version {version}");
    }
    commit_group_offsets(ctx, &manifest.offsets).await;
    tracing::info!(
        version,
        records_read = stats.records_read,
        events_written = stats.events_written,
        duplicates = stats.duplicates,
        hours = stats.hours_recomputed,
        boundary = boundary_ms,
        duration_ms = stats.duration_ms,
        "batch run committed"
    );
    Ok(RunReport {
        version,
        committed: true,
        stats,
        boundary_ms,
    })
}

/// Commits the offsets the lake covers to the log's [`CONSUMER_GROUP`], for
/// lag reporting and retention. The manifest is the source of truth: a
/// failure here is logged, and the next run commits again.
async fn commit_group_offsets(ctx: &RunContext, offsets: &BTreeMap<String, BTreeMap<u32, u64>>) {
    for (topic, topic_offsets) in offsets {
        let list: Vec<(u32, u64)> = topic_offsets.iter().map(|(p, o)| (*p, *o)).collect();
        if let Err(error) = ctx.log.commit(CONSUMER_GROUP, topic, &list).await {
            tracing::warn!(%error, %topic, "committing batch offsets to the log failed; the manifest is the source of truth");
        }
    }
}

async fn local_paths(lake: &Lake, files: &[DataFile]) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        out.push(lake.local_path(&Path::from(file.path.as_str())).await?);
    }
    Ok(out)
}
