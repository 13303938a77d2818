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
use bytes::Bytes;
use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Event, Topic, floor_to};
use lambda_log::{EventLog, FetchPosition};
use object_store::path::Path;

use crate::engine::{BatchEngine, Engines, recompute_views};
use crate::index;
use crate::lake::{Lake, LakeWriter};
use crate::manifest::{self, DataFile, HourPartition, Manifest, RunStats};
use crate::master::{self, HOUR_MS, LoggedEvent};

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
    pub lake: LakeWriter,
    /// Allowed lateness used for the boundary B.
    pub allowed_lateness_ms: i64,
    /// The engine that computes the views.
    pub engine: BatchEngine,
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
    /// Computing the views of the hour starting at this time (ms) fails, as
    /// a stored event DuckDB cannot fold would make it: the hour is
    /// quarantined and the rest of the run commits.
    PoisonHour(i64),
}

pub use lambda_lake::control::RunReport;

/// Runs one batch run.
pub async fn run_once(ctx: &RunContext) -> anyhow::Result<RunReport> {
    run_with_fail_point(ctx, None).await
}

/// [`run_once`], failing on purpose at `fail_point`. The steps: read what
/// is new ([`read_new`]), drop what the dataset already holds
/// ([`Writing::drop_known`]), write it per hour with its views
/// ([`Writing::write_hours`]), retry quarantined hours, add the ids to the
/// index, compact complete hours, commit, then clean up.
pub async fn run_with_fail_point(
    ctx: &RunContext,
    fail_point: Option<FailPoint>,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let previous = manifest::latest(&ctx.lake).await?.unwrap_or_default();
    let mut stats = RunStats::default();

    // 1. Snapshot end offsets and read up to them.
    let NewEvents {
        offsets,
        mut by_hour,
        max_event_ts,
    } = read_new(ctx, &previous, &mut stats).await?;
    let quarantined_before = previous
        .partitions
        .values()
        .any(|p| p.quarantined.is_some());
    if offsets == previous.offsets && previous.version > 0 && !quarantined_before {
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

    let mut run = Writing {
        ctx,
        fail_point,
        version: previous.version + 1,
        engines: {
            let (engine, lake) = (ctx.engine.clone(), ctx.lake.clone());
            crate::engine::off_runtime("opening the batch engines", move || {
                Engines::open(&engine, &lake)
            })
            .await?
        },
        stats,
        written: Vec::new(),
        partitions: previous.partitions.clone(),
        id_index: previous.id_index.clone(),
    };
    // 2. Drop what the dataset already holds, under any hour (the id index).
    run.drop_known(&previous, &mut by_hour).await?;
    // 3. Write the new events per hour, recompute that hour's views, retry
    //    quarantined hours, and add the new ids to the index.
    let (written_by_topic, recomputed) = run.write_hours(by_hour).await?;
    run.retry_quarantined(&recomputed).await?;
    run.stats.views_engine = run.engines.views_engine();
    run.stats.hours_quarantined = run
        .partitions
        .values()
        .filter(|p| p.quarantined.is_some())
        .count() as u64;
    run.add_to_index(&written_by_topic).await?;
    let boundary_ms = max_event_ts.map(|ts| floor_to(ts - ctx.allowed_lateness_ms, MINUTE_MS));
    // 4. Housekeeping: complete hours holding several files get one.
    run.compact_complete_hours(boundary_ms.unwrap_or(i64::MIN))
        .await?;
    let version = run.version;
    if fail_point == Some(FailPoint::BeforeManifest) {
        anyhow::bail!("injected failure before the manifest of version {version}");
    }

    // 5. Commit.
    let Writing {
        mut stats,
        written,
        partitions,
        id_index,
        ..
    } = run;
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let manifest = Manifest {
        version,
        created_at_ms: chrono::Utc::now().timestamp_millis(),
        boundary_ms,
        max_event_ts,
        offsets,
        partitions,
        id_index,
        run: stats,
    };
    manifest::commit(&ctx.lake, &manifest).await?;
    if fail_point == Some(FailPoint::AfterManifest) {
        anyhow::bail!("injected failure after the manifest of version {version}");
    }
    commit_group_offsets(ctx, &manifest.offsets).await;
    // 6. Clean up: files this run replaced itself, and (vacuum) files no
    //    manifest among the newest needs.
    stats.files_deleted = delete_replaced(ctx, &manifest, &written).await;
    match manifest::vacuum(&ctx.lake, &manifest, KEEP_MANIFESTS).await {
        Ok(n) => stats.files_deleted += n,
        Err(error) => {
            tracing::warn!(%error, version, "deleting files no manifest needs failed; the next run tries again")
        }
    }
    tracing::info!(
        version,
        records_read = stats.records_read,
        events_written = stats.events_written,
        duplicates = stats.duplicates,
        hours = stats.hours_recomputed,
        hours_compacted = stats.hours_compacted,
        files_deleted = stats.files_deleted,
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

/// What a run read past the last manifest.
struct NewEvents {
    /// The next offset to read, by topic and partition, after this run.
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Valid events, each id once, by topic and hour.
    by_hour: BTreeMap<(Topic, i64), Vec<LoggedEvent>>,
    /// The greatest clock time (see `clock_ts`) in the dataset after this run.
    max_event_ts: Option<i64>,
}

/// Snapshots every partition's end offset and reads from the last
/// manifest's offsets up to it (from the start, for a partition whose
/// records retention dropped before the lake had them: that loss is logged).
async fn read_new(
    ctx: &RunContext,
    previous: &Manifest,
    stats: &mut RunStats,
) -> anyhow::Result<NewEvents> {
    let mut new = NewEvents {
        offsets: previous.offsets.clone(),
        by_hour: BTreeMap::new(),
        max_event_ts: previous.max_event_ts,
    };
    for topic in Topic::ALL {
        let ranges = ctx
            .log
            .ranges(topic.name())
            .await
            .with_context(|| format!("ranges of {topic}"))?;
        let mut seen_in_run: HashSet<String> = HashSet::new();
        for (partition, range) in ranges.iter().enumerate() {
            let partition = partition as u32;
            let topic_offsets = new.offsets.entry(topic.name().to_string()).or_default();
            let mut offset = topic_offsets
                .get(&partition)
                .copied()
                .unwrap_or(range.start);
            if offset < range.start {
                tracing::warn!(%topic, partition, offset, start = range.start, lost = range.start - offset, "log retention dropped records the lake never saw");
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
                    let record_ts = stored.record.timestamp_ms;
                    match Event::from_log_record(&stored.record.value, topic.name(), record_ts) {
                        Ok(event) if seen_in_run.insert(event.event_id.clone()) => {
                            // B follows the same clock as the speed layer's watermark.
                            let clock = lambda_events::event::clock_ts(event.ts, record_ts);
                            new.max_event_ts =
                                Some(new.max_event_ts.map_or(clock, |m| m.max(clock)));
                            let hour = floor_to(event.ts, HOUR_MS);
                            new.by_hour
                                .entry((topic, hour))
                                .or_default()
                                .push(LoggedEvent {
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
            new.offsets
                .entry(topic.name().to_string())
                .or_default()
                .insert(partition, offset);
        }
    }
    Ok(new)
}

/// A run between reading and committing: what it has written and the
/// manifest it is building.
struct Writing<'a> {
    ctx: &'a RunContext,
    fail_point: Option<FailPoint>,
    /// The version this run commits.
    version: u64,
    engines: Engines,
    stats: RunStats,
    /// Every file this run writes (a file it replaced itself is deleted after the commit).
    written: Vec<String>,
    partitions: BTreeMap<String, HourPartition>,
    id_index: BTreeMap<String, Vec<DataFile>>,
}

impl Writing<'_> {
    /// Writes `bytes` at `path` and describes the file.
    async fn put(&mut self, path: String, bytes: Bytes, rows: u64) -> anyhow::Result<DataFile> {
        put_file(&self.ctx.lake, &mut self.written, path, bytes, rows).await
    }

    /// Drops from `by_hour` the events whose ids the dataset holds already,
    /// under any hour (building the id index from the data files once, for
    /// a lake from before it).
    async fn drop_known(
        &mut self,
        previous: &Manifest,
        by_hour: &mut BTreeMap<(Topic, i64), Vec<LoggedEvent>>,
    ) -> anyhow::Result<()> {
        for topic in Topic::ALL {
            let sources = index_sources(previous, topic);
            if !previous.id_index.contains_key(topic.name()) && !sources.is_empty() {
                let local = local_paths(&self.ctx.lake, &sources).await?;
                let bytes =
                    tokio::task::block_in_place(|| self.engines.duckdb.merge_index(&local))?;
                let rows = sources.iter().map(|f| f.rows).sum();
                let merged = self
                    .put(index::path(topic, self.version, true), bytes, rows)
                    .await?;
                self.id_index.insert(topic.name().to_string(), vec![merged]);
            }
            let in_topic = || by_hour.iter().filter(move |((t, _), _)| *t == topic);
            if in_topic().next().is_none() {
                continue;
            }
            let local = local_paths(&self.ctx.lake, &sources).await?;
            let candidates =
                in_topic().flat_map(|(_, events)| events.iter().map(|e| e.event.event_id.as_str()));
            let known =
                tokio::task::block_in_place(|| self.engines.duckdb.known_ids(&local, candidates))?;
            if known.is_empty() {
                continue;
            }
            for ((t, _), events) in by_hour.iter_mut() {
                if *t == topic {
                    let before = events.len();
                    events.retain(|e| !known.contains(&e.event.event_id));
                    self.stats.duplicates += (before - events.len()) as u64;
                }
            }
        }
        Ok(())
    }

    /// Writes each hour's new events as one data file and recomputes that
    /// hour's views; returns the events written by topic (for the index)
    /// and the hours recomputed.
    async fn write_hours(
        &mut self,
        by_hour: BTreeMap<(Topic, i64), Vec<LoggedEvent>>,
    ) -> anyhow::Result<(BTreeMap<Topic, Vec<LoggedEvent>>, HashSet<String>)> {
        let version = self.version;
        let mut written_any = false;
        let mut written_by_topic: BTreeMap<Topic, Vec<LoggedEvent>> = BTreeMap::new();
        let mut recomputed: HashSet<String> = HashSet::new();
        for ((topic, hour_start), mut events) in by_hour {
            if events.is_empty() {
                continue;
            }
            let key = master::partition_key(topic, hour_start);
            let mut partition = self.partitions.get(&key).cloned().unwrap_or(HourPartition {
                topic: topic.name().into(),
                hour_start_ms: hour_start,
                ..Default::default()
            });
            events.sort_by(|a, b| {
                (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id))
            });
            let data_path = format!("master/{key}/part-{version:010}.parquet");
            let bytes = tokio::task::block_in_place(|| master::encode(topic, &events))?;
            let file = self.put(data_path, bytes, events.len() as u64).await?;
            partition.data_files.push(file);
            self.stats.events_written += events.len() as u64;
            if self.fail_point == Some(FailPoint::AfterFirstDataFile) && !written_any {
                anyhow::bail!("injected failure after the first data file of version {version}");
            }
            written_any = true;
            written_by_topic.entry(topic).or_default().extend(events);
            recomputed.insert(key.clone());
            self.partitions.insert(key, partition);
        }
        // Then every changed hour's views, with the run's engine.
        let mut keys: Vec<String> = recomputed.iter().cloned().collect();
        keys.sort();
        self.recompute(&keys).await?;
        Ok((written_by_topic, recomputed))
    }

    /// Recomputes the views of hours an earlier run quarantined (and this
    /// one has not recomputed already).
    async fn retry_quarantined(&mut self, recomputed: &HashSet<String>) -> anyhow::Result<()> {
        let retry: Vec<String> = self
            .partitions
            .iter()
            .filter(|(key, p)| p.quarantined.is_some() && !recomputed.contains(*key))
            .map(|(key, _)| key.clone())
            .collect();
        self.recompute(&retry).await
    }

    /// Recomputes the views of the hours `keys` as this run's version.
    async fn recompute(&mut self, keys: &[String]) -> anyhow::Result<()> {
        let poisoned = match self.fail_point {
            Some(FailPoint::PoisonHour(hour)) => Some(hour),
            _ => None,
        };
        recompute_views(
            &self.ctx.lake,
            &mut self.engines,
            &mut self.partitions,
            keys,
            self.version,
            "",
            poisoned,
            &mut |_| {},
        )
        .await?;
        self.stats.hours_recomputed += keys.len() as u64;
        Ok(())
    }

    /// Adds one index file per topic for the events written, merging a
    /// topic's files into one past [`index::COMPACT_AT`].
    async fn add_to_index(
        &mut self,
        written_by_topic: &BTreeMap<Topic, Vec<LoggedEvent>>,
    ) -> anyhow::Result<()> {
        for (topic, events) in written_by_topic {
            let bytes = tokio::task::block_in_place(|| index::encode(events))?;
            let path = index::path(*topic, self.version, false);
            let file = self.put(path, bytes, events.len() as u64).await?;
            let files = self.id_index.entry(topic.name().to_string()).or_default();
            files.push(file);
            if files.len() > index::COMPACT_AT {
                let files = files.clone();
                let local = local_paths(&self.ctx.lake, &files).await?;
                let bytes =
                    tokio::task::block_in_place(|| self.engines.duckdb.merge_index(&local))?;
                let rows = files.iter().map(|f| f.rows).sum();
                let merged = self
                    .put(index::path(*topic, self.version, true), bytes, rows)
                    .await?;
                self.id_index.insert(topic.name().to_string(), vec![merged]);
            }
        }
        Ok(())
    }

    /// Hours that are complete (they end before `complete_before`, the
    /// boundary B) and hold several data files get one file instead, at
    /// most [`COMPACT_HOURS_PER_RUN`] per run; their views do not change.
    async fn compact_complete_hours(&mut self, complete_before: i64) -> anyhow::Result<()> {
        let to_compact: Vec<String> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.data_files.len() > 1 && p.hour_start_ms + HOUR_MS <= complete_before)
            .map(|(key, _)| key.clone())
            .take(COMPACT_HOURS_PER_RUN)
            .collect();
        for key in to_compact {
            let partition = &self.partitions[&key];
            let topic = Topic::from_name(&partition.topic)
                .with_context(|| format!("partition {key}: unknown topic"))?;
            let files = partition.data_files.clone();
            let local = local_paths(&self.ctx.lake, &files).await?;
            let rows: u64 = files.iter().map(|f| f.rows).sum();
            let bytes = tokio::task::block_in_place(|| master::compact(topic, &local))?;
            let path = format!("master/{key}/part-{:010}-compacted.parquet", self.version);
            let file = self.put(path, bytes, rows).await?;
            self.partitions
                .get_mut(&key)
                .expect("listed above")
                .data_files = vec![file];
            self.stats.hours_compacted += 1;
        }
        Ok(())
    }
}

/// Deletes the files this run wrote and replaced itself (none of them is in
/// `manifest`); returns how many. A failure is logged: such a file is only
/// space, and no manifest names it.
async fn delete_replaced(ctx: &RunContext, manifest: &Manifest, written: &[String]) -> u64 {
    let referenced: HashSet<&str> = manifest.files().collect();
    let mut deleted = 0;
    for path in written.iter().filter(|p| !referenced.contains(p.as_str())) {
        match ctx.lake.delete(&Path::from(path.as_str())).await {
            Ok(()) => deleted += 1,
            Err(error) => {
                tracing::warn!(%error, %path, "deleting a file the run replaced itself failed")
            }
        }
    }
    deleted
}

/// Hours whose files one run merges, at most (bounds a run's extra work).
pub const COMPACT_HOURS_PER_RUN: usize = 24;
/// Committed manifests whose files are kept: a reader that loaded one of
/// them a moment ago still finds its view files.
pub const KEEP_MANIFESTS: u64 = 3;

/// The files that hold `topic`'s ids: its index files, or in a lake from
/// before the index, its data files.
fn index_sources(manifest: &Manifest, topic: Topic) -> Vec<DataFile> {
    match manifest.id_index.get(topic.name()) {
        Some(files) => files.clone(),
        None => manifest
            .partitions
            .values()
            .filter(|p| p.topic == topic.name())
            .flat_map(|p| p.data_files.iter().cloned())
            .collect(),
    }
}

/// Writes `bytes` at `path`, notes it in `written`, and describes the file.
async fn put_file(
    lake: &LakeWriter,
    written: &mut Vec<String>,
    path: String,
    bytes: Bytes,
    rows: u64,
) -> anyhow::Result<DataFile> {
    let size = bytes.len() as u64;
    lake.put(&Path::from(path.as_str()), bytes).await?;
    written.push(path.clone());
    Ok(DataFile {
        path,
        rows,
        bytes: size,
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

pub(crate) async fn local_paths(
    lake: &Lake,
    files: &[DataFile],
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        out.push(lake.local_path(&Path::from(file.path.as_str())).await?);
    }
    Ok(out)
}
