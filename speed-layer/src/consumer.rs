//! The speed layer's main loop: restore the checkpoint, fetch from the log at
//! the checkpointed offsets, fold, evict, and checkpoint on an interval and
//! at shutdown; offsets are committed to the log only after the checkpoint
//! holding them is durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::limits::DEAD_LETTER_EXCERPT_BYTES;
use lambda_events::{EventError, EventRef, Topic};
use lambda_log::{EventLog, FetchPosition, LogError, Record, ValueRecord};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{self, CheckpointError, Checkpointer, Durable};
use crate::replay::Live;
use crate::seen::IdHash;
use crate::window::ClockPlace;
use crate::{SpeedConfig, SpeedViews};

/// Records asked for per fetch, shared among the partitions asked.
pub const FETCH_MAX_RECORDS: usize = 4096;
/// How long a fetch waits for new records before the loop looks around again.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(500);

/// Loads the checkpoint, if there is one, into `views`. Call it before
/// [`run`] and before serving reads `views`, so no answer is given from an
/// empty state that is about to be replaced.
pub async fn restore(
    config: &SpeedConfig,
    views: &SpeedViews,
) -> Result<(), checkpoint::CheckpointError> {
    let path = config.checkpoint_path.clone();
    let (lateness, horizon) = (config.allowed_lateness_ms, config.horizon_ms);
    let loading = path.clone();
    let restored =
        tokio::task::spawn_blocking(move || checkpoint::load(&loading, lateness, horizon))
            .await
            .unwrap_or_else(|join| {
                Err(checkpoint::CheckpointError::Io {
                    action: "loading",
                    path,
                    source: std::io::Error::other(join),
                })
            })?;
    if let Some(state) = restored {
        tracing::info!(
            windows = state.windows.len(),
            watermark = state.watermark(),
            "restored speed layer checkpoint"
        );
        replace_state(views, state);
    }
    Ok(())
}

/// Puts `state` in `views` in place of what they hold, keeping what is told
/// from outside the fold: B (serving may have told it already) and the
/// alert rules.
fn replace_state(views: &SpeedViews, state: crate::SpeedState) {
    let mut current = views.write();
    let batch_boundary = current.batch_boundary;
    let rules = current.alerts.rules().clone();
    *current = state;
    current.batch_boundary = batch_boundary;
    current.alerts.set_rules(rules);
}

/// Runs the speed layer until `shutdown` fires, from the state in `views`
/// (see [`restore`]) and the offsets it holds. Its partitions are read
/// merged in append order ([`Live`]): a restart from any checkpoint folds
/// what the process before it had not checkpointed as that process did.
#[tracing::instrument(name = "speed", skip_all)]
pub async fn run(
    config: SpeedConfig,
    log: Arc<dyn EventLog>,
    views: SpeedViews,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (positions, ends) = initial_positions(&config, log.as_ref(), &views).await?;
    tracing::info!(
        partitions = positions.len(),
        instance = config.instance.0,
        instances = config.instance.1,
        "speed layer consuming"
    );
    let mut live = Live::new(
        &positions,
        &ends,
        &views.read(),
        config.idle_timeout,
        config.dead_letter_invalid,
        FETCH_MAX_RECORDS,
    );
    let mut checkpoints = CheckpointRetry::new(config.checkpoint_interval);
    let mut checkpointer = Checkpointer::new(&config.checkpoint_path, &mut views.write());
    // The checkpoint being written: folding goes on meanwhile (the snapshot
    // was taken under the lock; its offsets are committed once it is durable).
    let mut writing: Option<Writing> = None;
    let mut committing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            done = async { writing.as_mut().expect("guarded by the branch's condition").await }, if writing.is_some() => {
                writing = None;
                let result = finish_checkpoint(done, &mut checkpointer, &views);
                // Committed on a task of its own: the fold does not wait for
                // the log's fsync. One at a time; a commit skipped while the
                // last is still running is made by the next checkpoint's.
                if let Ok(offsets) = &result
                    && committing.as_ref().is_none_or(|c| c.is_finished())
                {
                    let (log, group, offsets) = (Arc::clone(&log), config.group.clone(), offsets.clone());
                    committing = Some(tokio::spawn(async move { commit_offsets(log.as_ref(), &group, &offsets).await }));
                }
                checkpoints.after(result.map(drop), &views);
            }
            _ = tokio::time::sleep_until(checkpoints.next_at), if writing.is_none() => {
                writing = Some(start_checkpoint(&checkpointer, &views));
            }
            fetched = live.fetch(log.as_ref(), FETCH_MAX_WAIT) => {
                match fetched {
                    Ok(_) => {
                        // The fold is CPU work of milliseconds per fetch: done
                        // as blocking work, so the runtime's other tasks go on
                        // answering queries and taking events meanwhile — on the
                        // embedded log, on the thread that read the records
                        // (still in its cache; Kafka's client reads on its own).
                        let folding = Arc::clone(&views);
                        let (folded, invalid) = lambda_log::on_this_thread(move || {
                            let invalid = live.fold(&folding);
                            (live, invalid)
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("the fold task: {e}"))?;
                        live = folded;
                        if !invalid.is_empty() {
                            dead_letter(log.as_ref(), invalid, &shutdown).await?;
                        }
                    }
                    Err(LogError::OffsetOutOfRange { topic, partition, offset, end, .. }) if offset > end => {
                        // Not retention: the log holds less than this layer already
                        // consumed (records lost, or the log restored from an older
                        // copy). Skipping would hide it; rewinding would count again.
                        anyhow::bail!(
                            "{topic} partition {partition}: the checkpoint's offset {offset} is past the partition's end {end} (the log lost records, or was restored from an older copy); refusing to guess where to resume"
                        );
                    }
                    Err(LogError::OffsetOutOfRange { topic, partition, start, offset, .. }) => {
                        tracing::warn!(%topic, partition, offset, start, "offset fell out of retention; skipping ahead");
                        live.skip_to(&topic, partition, start);
                    }
                    Err(error) if error.is_transient() => {
                        tracing::warn!(%error, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => return Err(error).context("speed layer fetch"),
                }
            }
        }
    }
    if let Some(pending) = writing.take() {
        let done = pending.await;
        // A failure here is retried just below, with everything folded since.
        let _ = finish_checkpoint(done, &mut checkpointer, &views);
    }
    if let Some(commit) = committing.take() {
        let _ = commit.await;
    }
    let done = start_checkpoint(&checkpointer, &views).await;
    let result = finish_checkpoint(done, &mut checkpointer, &views);
    if let Ok(offsets) = &result {
        commit_offsets(log.as_ref(), &config.group, offsets).await;
    }
    if let Err(error) = result {
        // Not a crash: the previous checkpoint and the log still hold
        // everything, and the next start resumes from them.
        tracing::error!(
            error = format!("{error:#}"),
            "final speed layer checkpoint failed; the next start resumes from the previous one"
        );
    }
    tracing::info!("speed layer stopped");
    Ok(())
}

/// Longest wait between checkpoint attempts while they fail.
const CHECKPOINT_MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When to checkpoint next: every interval while writes succeed; after a
/// failure (a full disk, a read-only mount) again after a doubling backoff,
/// the error kept in the state for `/healthz` and the status until a write
/// succeeds. Folding goes on meanwhile: the checkpoint on disk and the log
/// still hold everything, and memory is bounded by the window horizon.
#[derive(Debug)]
struct CheckpointRetry {
    interval: Duration,
    backoff: Duration,
    next_at: tokio::time::Instant,
}

impl CheckpointRetry {
    fn new(interval: Duration) -> CheckpointRetry {
        CheckpointRetry {
            interval,
            backoff: interval,
            next_at: tokio::time::Instant::now() + interval,
        }
    }

    fn after(&mut self, result: anyhow::Result<()>, views: &SpeedViews) {
        match result {
            Ok(()) => {
                if views.write().checkpoint_error.take().is_some() {
                    tracing::info!("speed layer checkpoint written again");
                }
                self.backoff = self.interval;
                self.next_at = tokio::time::Instant::now() + self.interval;
            }
            Err(error) => {
                let message = format!("{error:#}");
                tracing::warn!(error = %message, retry_in_ms = self.backoff.as_millis() as u64, "speed layer checkpoint failed; retrying");
                let mut state = views.write();
                state.checkpoint_failures += 1;
                state.checkpoint_error = Some(message);
                self.next_at = tokio::time::Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(CHECKPOINT_MAX_BACKOFF.max(self.interval));
            }
        }
    }
}

/// The `dead-letter` record of an invalid record read from the log: its
/// value cut to [`DEAD_LETTER_EXCERPT_BYTES`] (with an `original_bytes`
/// header when cut), so that it always fits the log's record limit — an
/// outside producer's record near the broker's size limit must not make the
/// dead-letter write fail, and retry, forever.
pub fn dead_letter_record(value: &[u8], reason: &str, source: &str, now_ms: i64) -> Record {
    let excerpt = &value[..value.len().min(DEAD_LETTER_EXCERPT_BYTES)];
    Record::dead_letter(excerpt.to_vec(), reason, source, now_ms).noting_original_len(value.len())
}

/// The dead-letter record of `record`, read from `topic`/`partition`, which
/// is not a valid event for `error` (its source `topic/partition/offset`).
pub(crate) fn invalid_record(
    topic: &str,
    partition: u32,
    record: &ValueRecord,
    error: &EventError,
    now_ms: i64,
) -> Record {
    let source = format!("{topic}/{partition}/{}", record.offset);
    dead_letter_record(&record.value, &error.to_string(), &source, now_ms)
}

/// Writes invalid records to `dead-letter`, retrying while the log is
/// unavailable: the consumed offsets (checkpointed later by this same loop)
/// move past them only once they are there. A crash in between writes them
/// again after the restart (at least once).
pub(crate) async fn dead_letter(
    log: &dyn EventLog,
    records: Vec<Record>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let n = records.len();
    loop {
        match log.append(Topic::DEAD_LETTER, records.clone()).await {
            Ok(_) => {
                tracing::debug!(records = n, "dead-lettered invalid records");
                return Ok(());
            }
            Err(error) if error.is_transient() && !shutdown.is_cancelled() => {
                tracing::warn!(%error, "dead-lettering failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("writing to dead-letter"),
        }
    }
}

/// Where the loop starts in each partition it owns (the checkpoint's
/// offsets, or the log's start), and each one's end as the log reports it
/// now.
async fn initial_positions(
    config: &SpeedConfig,
    log: &dyn EventLog,
    views: &SpeedViews,
) -> anyhow::Result<(Vec<FetchPosition>, Vec<u64>)> {
    let (mut positions, mut ends) = (Vec::new(), Vec::new());
    for topic in Topic::ALL {
        let ranges = log
            .ranges(topic.name())
            .await
            .with_context(|| format!("ranges of {topic}"))?;
        let state = views.read();
        for (partition, range) in ranges.iter().enumerate() {
            let partition = partition as u32;
            if !config.owns(partition) {
                continue;
            }
            let checkpointed = state
                .offsets
                .get(&(topic.name().to_string(), partition))
                .copied();
            // Not lowered to the end the log reports: that end can lag
            // (tansu's is its last batch's base when a probe of the batch
            // times out), and a checkpoint's offset above it read again
            // what the state had folded. A checkpoint truly past the end
            // (the log lost records) is refused by the first fetch.
            let offset = checkpointed.unwrap_or(range.start).max(range.start);
            positions.push(FetchPosition {
                topic: topic.name().to_string(),
                partition,
                offset,
            });
            ends.push(range.end);
        }
    }
    Ok((positions, ends))
}

/// Records decoded, then folded in one hold of the state's write lock: a
/// fetch brings up to [`FETCH_MAX_RECORDS`], and queries get the lock
/// between chunks instead of waiting for the whole batch. 16 decoded events
/// (about 0.45 KB each) stay in the L1 cache until the fold reads them and
/// drops them; 256 did not (`callgrind --cache-sim=yes` on the fold
/// harness: 49 → 26 L1 data misses per record, the same instructions).
pub(crate) const FOLD_CHUNK: usize = 16;

/// What decoding a record reads of it: its value, its topic, its timestamp.
pub(crate) type Parts<'a, 't> = (&'a [u8], &'t str, i64);

/// A stored record's [`Parts`].
#[cfg(test)]
pub(crate) fn parts(stored: &lambda_log::StoredRecord) -> Parts<'_, '_> {
    (
        &stored.record.value,
        &stored.topic,
        stored.record.timestamp_ms,
    )
}

/// A chunk's records decoded in place: each event written into a slot of
/// one buffer the fold keeps from chunk to chunk (an event is ~0.45 KB;
/// moving each from the decoder through `Result`s into a buffer was ~6 %
/// of `lambda bench speed`'s time), with its clock and its id's hash
/// worked out outside the state's lock.
#[derive(Default)]
pub(crate) struct Slots<'a> {
    slots: Vec<Slot<'a>>,
}

/// One decoded record (see [`Slots`]).
pub(crate) struct Slot<'a> {
    /// The event (worth reading only if `outcome` is `Ok`).
    pub(crate) event: EventRef<'a>,
    /// Its partition clock's time ([`lambda_events::event::clock_ts`]).
    pub(crate) clock: i64,
    /// The record's timestamp (when it was appended).
    pub(crate) appended: i64,
    /// The hash of its id.
    pub(crate) hash: IdHash,
    /// Whether the record holds a valid event, and why not.
    pub(crate) outcome: Result<(), EventError>,
}

impl<'a> Slots<'a> {
    /// Decodes `chunk` into the slots, which it returns (the chunk's
    /// records, in order).
    pub(crate) fn decode<'t>(
        &mut self,
        chunk: impl IntoIterator<Item = Parts<'a, 't>>,
    ) -> &[Slot<'a>] {
        let mut used = 0;
        for (value, topic, timestamp_ms) in chunk {
            // Each event is decoded where its slot lies, the slots of the
            // last chunk used again (decoding into a local and pushing it
            // moved each event once more: ~2.5 % of the live loop's
            // samples); `read_log_record` starts each from a bare event.
            if used == self.slots.len() {
                self.slots.push(Slot {
                    event: EventRef::slot(),
                    clock: 0,
                    appended: 0,
                    hash: IdHash::default(),
                    outcome: Ok(()),
                });
            }
            let slot = &mut self.slots[used];
            used += 1;
            slot.appended = timestamp_ms;
            slot.outcome = EventRef::read_log_record(value, topic, timestamp_ms, &mut slot.event);
            if slot.outcome.is_ok() {
                slot.clock = lambda_events::event::clock_ts(slot.event.ts, timestamp_ms);
                slot.hash = IdHash::of(&slot.event.event_id);
            }
        }
        &self.slots[..used]
    }

    /// Slot `i` of the last chunk decoded.
    pub(crate) fn slot(&self, i: usize) -> &Slot<'a> {
        &self.slots[i]
    }

    /// The same buffer, empty, for records of another lifetime (the kappa
    /// replay's runs borrow their lanes until the next refill): the
    /// allocation is kept (collecting an emptied `Vec` into one of a type
    /// of the same size and alignment reuses it).
    pub(crate) fn recycle<'b>(mut self) -> Slots<'b> {
        self.slots.clear();
        Slots {
            slots: self.slots.into_iter().filter_map(|_| None).collect(),
        }
    }
}

/// Reads the id index where `decoded`'s valid events' ids would be, before
/// they are folded (see [`SpeedState::touch_ids`]).
pub(crate) fn touch_ids(state: &crate::SpeedState, decoded: &[Slot<'_>]) {
    state.touch_ids(decoded.iter().filter(|s| s.outcome.is_ok()).map(|s| s.hash));
}

/// Folds records in, in the order given, advances `positions` past them,
/// and returns dead-letter records for the invalid ones: for records
/// fetched whole (the Kafka group member's fetch, tests, examples and
/// `lambda bench memory`). Each run of records of one partition is folded
/// a chunk per hold of the state's lock.
pub fn apply(
    views: &SpeedViews,
    positions: &mut [FetchPosition],
    records: Vec<lambda_log::StoredRecord>,
) -> Vec<Record> {
    if records.is_empty() {
        return Vec::new();
    }
    // Runs of one partition, in the order the records came.
    let mut runs: Vec<(Arc<str>, u32, Vec<ValueRecord>)> = Vec::new();
    for stored in records {
        let same = runs.last().is_some_and(|(topic, partition, _)| {
            *partition == stored.partition
                && (Arc::ptr_eq(topic, &stored.topic) || **topic == *stored.topic)
        });
        if !same {
            runs.push((Arc::clone(&stored.topic), stored.partition, Vec::new()));
        }
        if let Some((_, _, run)) = runs.last_mut() {
            run.push(ValueRecord {
                value: stored.record.value,
                timestamp_ms: stored.record.timestamp_ms,
                offset: stored.offset,
            });
        }
    }
    let invalid = fold_runs(
        views,
        runs.iter()
            .map(|(topic, partition, records)| (&**topic, *partition, &records[..])),
    );
    for (topic, partition, records) in &runs {
        let position = positions
            .iter_mut()
            .find(|p| p.partition == *partition && *p.topic == **topic);
        if let (Some(position), Some(last)) = (position, records.last()) {
            position.offset = last.offset + 1;
        }
    }
    settle(views, positions.iter());
    invalid
}

/// After a fetch is folded: every partition's offset in the state set to
/// its position (those that delivered nothing too: retention skips,
/// partitions not checkpointed yet), and what fell out of the horizon
/// evicted.
fn settle<'p>(views: &SpeedViews, positions: impl Iterator<Item = &'p FetchPosition>) {
    let mut state = views.write();
    for position in positions {
        state.set_offset(&position.topic, position.partition, position.offset);
    }
    state.evict();
}

/// Folds runs of records, each `(topic, partition, its records in offset
/// order)`, in the order given; returns dead-letter records for the
/// invalid ones. Records are decoded before the state's lock is taken,
/// and folded a chunk per hold of it; a chunk's offset is written in the
/// same hold.
fn fold_runs<'r>(
    views: &SpeedViews,
    runs: impl IntoIterator<Item = (&'r str, u32, &'r [ValueRecord])>,
) -> Vec<Record> {
    let mut invalid = Vec::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Decoded a chunk at a time, outside the lock, into slots that stay in
    // cache (a whole fetch's events, ~0.5 KB each, would not, and would
    // take fresh pages from the allocator each time).
    let mut slots = Slots::default();
    for (topic, partition, records) in runs {
        for chunk in records.chunks(FOLD_CHUNK) {
            let decoded = slots.decode(
                chunk
                    .iter()
                    .map(|record| (&record.value[..], topic, record.timestamp_ms)),
            );
            for (record, slot) in chunk.iter().zip(decoded.iter()) {
                if let Err(error) = &slot.outcome {
                    tracing::debug!(topic, partition, offset = record.offset, %error, "invalid record");
                    invalid.push(invalid_record(topic, partition, record, error, now_ms));
                }
            }
            let mut state = views.write();
            touch_ids(&state, decoded);
            // The partition's clock is looked up once per hold.
            let mut place = ClockPlace::default();
            for slot in decoded {
                match slot.outcome {
                    Ok(()) => {
                        state.apply_in_run(
                            &mut place,
                            topic,
                            partition,
                            &slot.event,
                            slot.clock,
                            slot.hash,
                        );
                    }
                    Err(_) => state.counters.invalid += 1,
                }
            }
            // With the events, in the same hold: whoever reads the state
            // between two chunks (a partition's snapshot served to `lambda
            // serve`'s mirror, the status) sees the offsets its events
            // were read to.
            if let Some(last) = chunk.last() {
                state.set_offset(topic, partition, last.offset + 1);
            }
        }
    }
    invalid
}

/// A checkpoint being written on a blocking thread.
type Writing = tokio::task::JoinHandle<Result<Durable, CheckpointError>>;

/// Takes a snapshot of what changed since the last checkpoint (under the
/// read lock: a copy of the changed views, not their encoding; the new ids
/// are copied later, a piece per hold of the lock, beside the fold) and
/// writes it on a blocking thread. The fetch loop waits for the snapshot
/// alone.
fn start_checkpoint(checkpointer: &Checkpointer, views: &SpeedViews) -> Writing {
    let started = Instant::now();
    let snapshot = checkpointer.snapshot_lazily(&views.read());
    let held_us = started.elapsed().as_micros() as u64;
    let live = Arc::clone(views);
    tokio::task::spawn_blocking(move || {
        let writing = Instant::now();
        let durable = snapshot.write_from(Some(&live));
        // `RUST_LOG=lambda_speed=debug`: what a checkpoint cost the fold
        // (the snapshot, under the lock) and the disk (the write, beside it).
        tracing::debug!(
            held_us,
            write_us = writing.elapsed().as_micros() as u64,
            bytes = durable.as_ref().map_or(0, |d| d.bytes),
            files = durable.as_ref().map_or(0, |d| d.files),
            "speed layer checkpoint written"
        );
        durable
    })
}

/// Once a checkpoint is durable: remembers its files and notes its time.
/// Returns the offsets it holds, now safe to commit to the log.
fn finish_checkpoint(
    done: Result<Result<Durable, CheckpointError>, tokio::task::JoinError>,
    checkpointer: &mut Checkpointer,
    views: &SpeedViews,
) -> anyhow::Result<BTreeMap<(String, u32), u64>> {
    let durable = match done.context("checkpoint task").and_then(|r| Ok(r?)) {
        Ok(durable) => durable,
        Err(error) => {
            checkpointer.failed();
            return Err(error);
        }
    };
    checkpointer.written(&durable);
    views.write().last_checkpoint_ms = Some(chrono::Utc::now().timestamp_millis());
    Ok(durable.offsets)
}

/// Commits the offsets of a durable checkpoint to the log's group (for lag
/// reporting: the checkpoint is the source of truth, so a failure is logged).
async fn commit_offsets(log: &dyn EventLog, group: &str, offsets: &BTreeMap<(String, u32), u64>) {
    for topic in Topic::ALL {
        let topic_offsets: Vec<(u32, u64)> = offsets
            .iter()
            .filter(|((t, _), _)| t == topic.name())
            .map(|((_, p), o)| (*p, *o))
            .collect();
        if !topic_offsets.is_empty()
            && let Err(error) = log.commit(group, topic.name(), &topic_offsets).await
        {
            tracing::warn!(%error, %topic, "committing speed layer offsets failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use lambda_events::EventType;

    use super::*;

    /// `apply` folds records in the order given, not partition by
    /// partition: a reading that came before the funnel's next ten minutes
    /// is on time, as it was when it came (grouped by partition, the funnel
    /// partition's clock ran ten minutes ahead with the IoT one not known
    /// yet, and the reading was late).
    #[test]
    fn apply_folds_records_in_the_order_given() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let views = crate::new_views(&crate::SpeedConfig::with_data_dir(dir.path()));
        let t0 = 1_767_225_600_000i64;
        let click = |id: &str, ts: i64| {
            format!(r#"{{"event_id":"{id}","event_type":"click","ts":{ts},"user_id":"u"}}"#)
        };
        let reading = |id: &str, ts: i64| {
            format!(
                r#"{{"event_id":"{id}","event_type":"sensor_reading","ts":{ts},"device_id":"d","sensor":"t","value":1}}"#
            )
        };
        let stored = |topic: &str, offset: u64, value: String, ts: i64| lambda_log::StoredRecord {
            topic: topic.into(),
            partition: 0,
            offset,
            record: Record::keyed("k", value.into_bytes(), ts),
        };
        let (funnel, iot) = (Topic::FUNNEL, Topic::IOT);
        let records = vec![
            stored(funnel, 0, click("f0", t0), t0),
            stored(iot, 0, reading("i0", t0), t0),
            stored(funnel, 1, click("f1", t0 + 600_000), t0 + 600_000),
            stored(iot, 1, reading("i1", t0 + 599_000), t0 + 599_000),
        ];
        let mut positions: Vec<FetchPosition> = [funnel, iot]
            .iter()
            .map(|topic| FetchPosition {
                topic: (*topic).into(),
                partition: 0,
                offset: 0,
            })
            .collect();
        let invalid = apply(&views, &mut positions, records);
        assert!(invalid.is_empty());
        let state = views.read();
        assert_eq!(state.counters().counted, 4);
        assert_eq!(state.counters().late, 0);
        assert_eq!(
            positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [2, 2]
        );
    }

    /// A fetch for an instance that owns no partition waits as a fetch may
    /// (still waiting after a tenth of its ten seconds), so the loop does
    /// not spin.
    #[tokio::test]
    async fn a_fetch_of_no_partition_waits_instead_of_returning_at_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = lambda_log::EmbeddedLog::open(dir.path().join("log"), Default::default())
            .await
            .expect("an embedded log");
        let state = crate::SpeedState::new(60_000, 3_600_000);
        let mut live = Live::new(&[], &[], &state, Duration::from_secs(30), true, 4096);
        let fetch = live.fetch(&log, Duration::from_secs(10));
        let returned = tokio::time::timeout(Duration::from_secs(1), fetch).await;
        assert!(returned.is_err(), "returned at once: {returned:?}");
    }

    /// Slots decode each record as `read_log_record` does, in order, and
    /// keep their allocation when recycled for records of another borrow.
    #[test]
    fn slots_decode_in_order_and_keep_their_buffer_when_recycled() {
        let stored = |offset: u64, value: &str| lambda_log::StoredRecord {
            topic: "funnel-events".into(),
            partition: 0,
            offset,
            record: Record::keyed("u", value.as_bytes().to_vec(), 0),
        };
        let records = vec![
            stored(
                0,
                r#"{"event_id":"a","event_type":"click","ts":60000,"user_id":"u"}"#,
            ),
            stored(1, "not json"),
            stored(
                2,
                r#"{"event_id":"b","event_type":"sensor_reading","ts":1,"device_id":"d","sensor":"t","value":1}"#,
            ),
            stored(
                3,
                r#"{"event_id":"c\u0041","event_type":"page_view","ts":120000,"user_id":"u","page":"/"}"#,
            ),
        ];
        let mut slots = Slots::default();
        let decoded = slots.decode(records.iter().map(parts));
        assert_eq!(decoded.len(), 4);
        assert_eq!(&*decoded[0].event.event_id, "a");
        assert_eq!(decoded[0].clock, 60_000);
        assert_eq!(decoded[0].hash, IdHash::of("a"));
        assert!(decoded[1].outcome.is_err());
        // A sensor reading is not a funnel-events record.
        assert!(
            decoded[2]
                .outcome
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("belong on topic")
        );
        assert_eq!(&*decoded[3].event.event_id, "cA");
        let capacity = slots.slots.capacity();
        let recycled: Slots<'static> = slots.recycle();
        assert!(recycled.slots.is_empty());
        assert_eq!(recycled.slots.capacity(), capacity);
    }

    /// Records of the same partition number under two topics, in one
    /// chunk: each topic's partition keeps its own clock (a run, and the
    /// clock place found for it, ends where the topic changes).
    #[test]
    fn runs_of_one_partition_number_under_two_topics_keep_two_clocks() {
        let t0 = 1_767_225_600_000;
        let views = fresh_views();
        let stored = |topic: &str, offset: u64, ts: i64| {
            let mut event =
                lambda_events::Event::bare(&format!("{topic}{offset}"), EventType::Click, ts);
            event.user_id = Some("u".into());
            if topic == "iot-events" {
                event = lambda_events::Event::bare(
                    &format!("{topic}{offset}"),
                    EventType::SensorReading,
                    ts,
                );
                event.device_id = Some("d".into());
                event.sensor = Some("temperature".into());
                event.value = Some(20.0);
            }
            lambda_log::StoredRecord {
                topic: Arc::from(topic),
                partition: 0,
                offset,
                record: Record::keyed("k", event.to_json(), ts),
            }
        };
        let records = vec![
            stored("funnel-events", 0, t0),
            stored("funnel-events", 1, t0 + 1_000),
            stored("iot-events", 0, t0 + 300_000),
            stored("iot-events", 1, t0 + 301_000),
            stored("funnel-events", 2, t0 + 2_000),
        ];
        let mut positions: Vec<FetchPosition> = ["funnel-events", "iot-events"]
            .into_iter()
            .map(|topic| FetchPosition {
                topic: topic.into(),
                partition: 0,
                offset: 0,
            })
            .collect();
        let invalid = apply(&views, &mut positions, records);
        assert!(invalid.is_empty(), "{invalid:?}");
        let state = views.read();
        let clocks: Vec<(&str, u32, i64)> = state
            .clocks()
            .iter()
            .map(|c| (c.topic.as_str(), c.partition, c.max_ts))
            .collect();
        assert_eq!(
            clocks,
            [
                ("funnel-events", 0, t0 + 2_000),
                ("iot-events", 0, t0 + 301_000)
            ]
        );
        assert_eq!(state.counters.counted, 5);
        let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [3, 2]);
    }

    /// A checkpoint whose offset is past the partition's end (the log lost
    /// records, or was restored from an older copy) is refused with an
    /// error naming the partition and both offsets — not lowered to the end
    /// the log reports, from where the fold would go on as if nothing were
    /// missing (and, where a reported end lags, read again what it had
    /// folded). One at the end resumes there.
    #[tokio::test]
    async fn a_checkpoint_past_the_log_s_end_is_refused_not_lowered_to_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = event_log(dir.path(), 1).await;
        let records = vec![Record::keyed("u", b"{}".to_vec(), 0); 3];
        log.append("funnel-events", records)
            .await
            .expect("appended");
        let run_from = |offset: u64| {
            let config = SpeedConfig::with_data_dir(&dir.path().join(format!("speed-{offset}")));
            let views = crate::new_views(&config);
            views.write().set_offset("funnel-events", 0, offset);
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            let log = Arc::clone(&log);
            async move {
                let running = tokio::spawn(run(config, log, views.clone(), shutdown));
                // Past the end it stops by itself; at the end it goes on
                // until told to stop.
                if offset <= 3 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    stop.cancel();
                }
                let outcome = tokio::time::timeout(Duration::from_secs(30), running)
                    .await
                    .expect("the speed layer stops")
                    .expect("the task");
                let offset = views
                    .read()
                    .offsets
                    .get(&("funnel-events".to_string(), 0))
                    .copied();
                (outcome, offset)
            }
        };
        let (outcome, _) = run_from(7).await;
        let error = format!(
            "{:#}",
            outcome.expect_err("a checkpoint past the end is refused")
        );
        assert!(
            error.contains("funnel-events partition 0")
                && error.contains("offset 7 is past the partition's end 3"),
            "{error}"
        );
        let (outcome, offset) = run_from(3).await;
        outcome.expect("at the end, it resumes");
        assert_eq!(offset, Some(3));
    }

    /// A restart folds the backlog its checkpoint does not cover as the
    /// live loop met it: in append order, a partition joining the watermark
    /// at its first record. An event the live loop dropped as late (five
    /// minutes behind one read first from another partition) is late after
    /// the restart too, and the watermark is where it was; the backlog read
    /// a partition at a time counted it and set the watermark five minutes
    /// lower. An invalid record in the backlog is dead-lettered again (the
    /// checkpoint's offsets are before it: at least once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_folds_its_backlog_as_the_live_loop_met_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = event_log(dir.path(), 2).await;
        log.create_topic(Topic::DEAD_LETTER, 1)
            .await
            .expect("the dead-letter topic");
        // A user on each partition; the partition after the one of the
        // first user goes first in the order partitions are read.
        let user_on = |partition: u32| crate::key_on(partition, 2);
        let t = 1_767_225_600_000_i64;
        // Appended (record timestamps) a second after e1 happened.
        let click = |id: &str, ts: i64, user: &str, appended: i64| {
            let line = format!(
                r#"{{"event_id":"{id}","ts":{ts},"event_type":"click","user_id":"{user}","campaign_id":"c1"}}"#
            );
            Record::keyed(user, line.into_bytes(), appended)
        };
        let feed = [
            click("e1", t + 300_000, &user_on(1), t + 301_000),
            click("e2", t, &user_on(0), t + 301_200),
            Record::keyed(user_on(0), b"not an event".to_vec(), t + 301_500),
        ];
        let dead_letters = |log: Arc<dyn EventLog>| async move {
            let at = FetchPosition {
                topic: Topic::DEAD_LETTER.to_string(),
                partition: 0,
                offset: 0,
            };
            log.fetch(&[at], 100, Duration::from_millis(10))
                .await
                .expect("fetched")
                .len()
        };

        // Live: each record folded before the next is appended.
        let config = SpeedConfig::with_data_dir(&dir.path().join("live"));
        let live = crate::new_views(&config);
        let stop = CancellationToken::new();
        let running = tokio::spawn(run(config, Arc::clone(&log), live.clone(), stop.clone()));
        for (n, record) in feed.iter().enumerate() {
            log.append("funnel-events", vec![record.clone()])
                .await
                .expect("appended");
            folded_to(&live, n as u64 + 1, 4).await;
        }
        stop.cancel();
        running.await.expect("the task").expect("the live loop");
        let live = live.read().clone();
        assert_eq!(
            (
                live.counters.counted,
                live.counters.late,
                live.counters.invalid
            ),
            (1, 1, 1),
            "live: e2 arrived late"
        );
        assert_eq!(live.watermark(), Some(t + 300_000 - 60_000));
        assert_eq!(dead_letters(Arc::clone(&log)).await, 1);

        // A restart with no checkpoint (a kill before the first one): the
        // three records are its backlog.
        let config = SpeedConfig::with_data_dir(&dir.path().join("restarted"));
        let restarted = crate::new_views(&config);
        let stop = CancellationToken::new();
        let running = tokio::spawn(run(
            config,
            Arc::clone(&log),
            restarted.clone(),
            stop.clone(),
        ));
        folded_to(&restarted, 3, 4).await;
        stop.cancel();
        running
            .await
            .expect("the task")
            .expect("the restarted loop");
        let restarted = restarted.read().clone();
        assert_eq!(restarted.counters, live.counters);
        assert_eq!(restarted.watermark(), live.watermark());
        assert_eq!(restarted.offsets, live.offsets);
        let views = |state: &crate::SpeedState| -> Vec<(i64, lambda_events::kpi::BucketViews)> {
            state
                .windows()
                .iter()
                .map(|(start, window)| (*start, window.views.clone()))
                .collect()
        };
        assert!(views(&restarted) == views(&live), "the same windows");
        assert_eq!(dead_letters(Arc::clone(&log)).await, 2);
    }

    /// Partitions go idle by the log's clock, so wherever a process is
    /// stopped or killed (`kill -9`: nothing written at the end), however
    /// often in a row and with however many records appended while none
    /// runs, the process that takes over answers as one live loop does: a
    /// partition whose last record a checkpoint covers goes idle at the
    /// same record, and one coming back after it went idle is late at the
    /// same record. (By the loop's own clock, a restart could not tell
    /// which partitions it had marked, nor when: each of these differed.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wherever_it_is_killed_a_restart_marks_idleness_as_the_live_loop_did() {
        use Segment::{Down, Run};
        let (t, a) = (1_767_225_600_000_i64, 1_767_229_200_000_i64);
        let click = |id: &str, ts: i64, partition: u32, appended: i64| {
            let user = crate::key_on(partition, 2);
            let line = format!(
                r#"{{"event_id":"{id}","ts":{ts},"event_type":"click","user_id":"{user}","campaign_id":"c1"}}"#
            );
            Record::keyed(user, line.into_bytes(), appended)
        };
        let feed = [
            click("b1", t, 1, a),
            // Partition 1 holds the watermark at t - 1 min.
            click("a1", t + 600_000, 0, a + 100),
            // Partition 1 quiet for 2.5 s of the log's time: idle, the
            // watermark at t + 9 min, and a2 late.
            click("a2", t + 120_000, 0, a + 2_600),
            // Partition 1 back, with an event of a closed window: late.
            click("b2", t + 30_000, 1, a + 2_700),
            click("a3", t + 660_000, 0, a + 2_800),
            // Partition 0 quiet for 2.2 s: idle; partition 1 alone moves
            // the watermark to t + 10 min 40 s.
            click("b3", t + 700_000, 1, a + 5_000),
        ];
        let live = run_segments(&feed, &[Run(6, End::Stop)]).await;
        assert_eq!(
            (live.counters.counted, live.counters.late),
            (4, 2),
            "live: a2 and b2 late"
        );
        assert_eq!(live.watermark(), Some(t + 640_000));
        let idle: Vec<(u32, bool)> = live
            .clocks()
            .iter()
            .map(|c| (c.partition, c.idle))
            .collect();
        assert_eq!(idle, [(1, false), (0, true)]);

        let windows = |state: &crate::SpeedState| -> Vec<(i64, lambda_events::kpi::BucketViews)> {
            state
                .windows()
                .iter()
                .map(|(start, window)| (*start, window.views.clone()))
                .collect()
        };
        let chains: [&[Segment]; 5] = [
            // A checkpoint covering partition 1's only record, then killed
            // after it went idle.
            &[Run(2, End::Stop), Run(4, End::Kill), Run(0, End::Stop)],
            // Killed twice in a row, records appended while it was down.
            &[
                Run(1, End::Stop),
                Down(1),
                Run(1, End::Kill),
                Run(1, End::Kill),
                Down(2),
                Run(0, End::Stop),
            ],
            // Killed right after a partition went idle.
            &[Run(2, End::Stop), Run(1, End::Kill), Run(3, End::Stop)],
            // Killed after a partition came back.
            &[Run(3, End::Stop), Run(1, End::Kill), Run(2, End::Stop)],
            // The whole log a backlog.
            &[Down(6), Run(0, End::Stop)],
        ];
        for chain in chains {
            let restarted = run_segments(&feed, chain).await;
            let what = format!("{chain:?}");
            assert_eq!(restarted.counters, live.counters, "{what}");
            assert_eq!(restarted.watermark(), live.watermark(), "{what}");
            assert_eq!(restarted.clocks(), live.clocks(), "{what}");
            assert_eq!(restarted.log_time(), live.log_time(), "{what}");
            assert!(
                windows(&restarted) == windows(&live),
                "{what}: the same windows"
            );
        }
    }

    /// A stretch of [`run_segments`]: a process running while so many
    /// records are appended, each folded before the next, and how it ends;
    /// or so many records appended while none runs.
    #[derive(Debug, Clone, Copy)]
    enum Segment {
        Run(usize, End),
        Down(usize),
    }

    #[derive(Debug, Clone, Copy)]
    enum End {
        /// SIGTERM: the final checkpoint written.
        Stop,
        /// `kill -9`: nothing written (checkpoints only at a stop here).
        Kill,
    }

    /// `feed` appended to a fresh log's `funnel-events` (two partitions)
    /// stretch by stretch, speed layers with a 2 s idle timeout coming and
    /// going on one data directory; the state of the last one at its end.
    async fn run_segments(feed: &[Record], segments: &[Segment]) -> crate::SpeedState {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = event_log(dir.path(), 2).await;
        let mut config = SpeedConfig::with_data_dir(&dir.path().join("speed"));
        config.idle_timeout = Duration::from_secs(2);
        config.checkpoint_interval = Duration::from_secs(3_600);
        let mut records = feed.iter();
        let (mut appended, mut last) = (0, None);
        for segment in segments {
            let (count, end) = match *segment {
                Segment::Run(count, end) => (count, Some(end)),
                Segment::Down(count) => (count, None),
            };
            let mut running = None;
            if end.is_some() {
                let views = crate::new_views(&config);
                restore(&config, &views)
                    .await
                    .expect("the checkpoint restored");
                let stop = CancellationToken::new();
                let task = tokio::spawn(run(
                    config.clone(),
                    Arc::clone(&log),
                    views.clone(),
                    stop.clone(),
                ));
                running = Some((views, stop, task));
            }
            if let Some((views, ..)) = &running {
                folded_to(views, appended as u64, 4).await;
            }
            for record in records.by_ref().take(count) {
                log.append("funnel-events", vec![record.clone()])
                    .await
                    .expect("appended");
                appended += 1;
                if let Some((views, ..)) = &running {
                    folded_to(views, appended as u64, 4).await;
                }
            }
            if let (Some((views, stop, task)), Some(end)) = (running, end) {
                match end {
                    End::Stop => {
                        stop.cancel();
                        task.await.expect("the task").expect("the speed layer");
                    }
                    End::Kill => {
                        task.abort();
                        assert!(task.await.is_err_and(|e| e.is_cancelled()));
                    }
                }
                last = Some(views.read().clone());
            }
        }
        last.expect("the segments end with a speed layer run")
    }

    /// Waits (30 s at most) until `views` has folded up to `records` and
    /// written the position of `partitions` partitions (after a fetch of
    /// the loop's own; a loop that has read nothing has written none).
    async fn folded_to(views: &SpeedViews, records: u64, partitions: usize) {
        let done = || {
            let state = views.read();
            records == 0
                || state.offsets.values().sum::<u64>() >= records
                    && state.offsets.len() >= partitions
        };
        let waiting = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the speed layer folds the records");
    }

    /// Reads fail as unavailable (a broker down) for the first `failures`
    /// of them; the log promises nothing, has no clock of its own and reads
    /// values through `fetch`, as Kafka's; everything else is the embedded
    /// log's.
    #[derive(Debug)]
    struct DownAtFirst {
        failures: std::sync::atomic::AtomicU32,
    }

    impl lambda_log::intercept::Interceptor for DownAtFirst {
        fn before_read(&self) -> Result<(), LogError> {
            use std::sync::atomic::Ordering;
            let down = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if down {
                return Err(LogError::Unavailable("the broker is down".into()));
            }
            Ok(())
        }

        fn complete_before(&self, _: &dyn EventLog) -> Option<i64> {
            None
        }

        fn clock_ms(&self, _: Option<i64>) -> Option<i64> {
            None
        }

        fn forward_fetch_values(&self) -> bool {
            false
        }
    }

    /// A log unavailable at start does not stop the speed layer: the loop
    /// reads the backlog once the log answers, and folds all of it. (The
    /// log promises nothing here, as Kafka: [`EventLog::complete_before`].)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_down_at_start_delays_the_backlog_but_does_not_stop_the_loop() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let embedded = lambda_log::EmbeddedLog::open(dir.path().join("log"), Default::default())
            .await
            .expect("the log");
        let log: Arc<dyn EventLog> = Arc::new(lambda_log::intercept::Intercepted::new(
            Arc::new(embedded),
            DownAtFirst {
                failures: std::sync::atomic::AtomicU32::new(4),
            },
        ));
        for topic in Topic::ALL {
            log.create_topic(topic.name(), 2).await.expect("a topic");
        }
        let t = 1_767_225_600_000_i64;
        let records: Vec<Record> = (0..20)
            .map(|i| {
                let user = format!("user{i}");
                let line = format!(
                    r#"{{"event_id":"e{i}","ts":{},"event_type":"click","user_id":"{user}","campaign_id":"c"}}"#,
                    t + i * 1_000
                );
                Record::keyed(user, line.into_bytes(), t + i * 1_000)
            })
            .collect();
        log.append("funnel-events", records)
            .await
            .expect("appended");
        let config = SpeedConfig::with_data_dir(&dir.path().join("speed"));
        let views = crate::new_views(&config);
        let stop = CancellationToken::new();
        let running = tokio::spawn(run(config, Arc::clone(&log), views.clone(), stop.clone()));
        let folded = async {
            while views.read().counters.counted < 20 {
                assert!(!running.is_finished(), "the speed layer stopped");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), folded)
            .await
            .expect("the backlog is folded once the log answers");
        stop.cancel();
        running.await.expect("the task").expect("the loop");
    }

    /// An embedded log in `dir` with `partitions` partitions to each event topic.
    async fn event_log(dir: &std::path::Path, partitions: u32) -> Arc<dyn EventLog> {
        let log = lambda_log::EmbeddedLog::open(dir.join("log"), Default::default())
            .await
            .expect("the log");
        for topic in Topic::ALL {
            log.create_topic(topic.name(), partitions)
                .await
                .expect("a topic");
        }
        Arc::new(log)
    }

    /// Views of a fresh state: a minute's allowed lateness, an hour's horizon.
    fn fresh_views() -> SpeedViews {
        Arc::new(parking_lot::RwLock::new(crate::SpeedState::new(
            60_000, 3_600_000,
        )))
    }

    /// Whenever the state is read while fetches are folded (a partition's
    /// snapshot served over HTTP, from another thread), its offsets are
    /// where its events were read to: every record below folded once, none
    /// above. (The offsets were written once a whole fetch was folded, a
    /// chunk per hold of the lock: a reader between two chunks saw a state
    /// ahead of its offsets.)
    #[test]
    fn a_snapshot_taken_while_fetches_are_folded_holds_its_events_offsets() {
        let t0 = 1_767_225_600_000;
        let topic = "funnel-events";
        let views = fresh_views();
        let records: Vec<lambda_log::StoredRecord> = (0..4 * FETCH_MAX_RECORDS as u64)
            .map(|offset| {
                let ts = t0 + offset as i64 * 10;
                // Every tenth a resend of the one before: duplicates too.
                let id = format!("e{}", offset - u64::from(offset % 10 == 9));
                let mut click = lambda_events::Event::bare(&id, EventType::Click, ts);
                click.user_id = Some("u".into());
                lambda_log::StoredRecord {
                    topic: Arc::from(topic),
                    partition: 0,
                    offset,
                    record: Record::keyed("u", click.to_json(), ts),
                }
            })
            .collect();
        let total = records.len() as u64;
        let folding = Arc::clone(&views);
        let fold = std::thread::spawn(move || {
            let mut positions = [FetchPosition {
                topic: topic.into(),
                partition: 0,
                offset: 0,
            }];
            for fetch in records.chunks(FETCH_MAX_RECORDS) {
                apply(&folding, &mut positions, fetch.to_vec());
            }
        });
        let folded_and_offset = || {
            let state = views.read();
            let c = &state.counters;
            let folded = c.counted + c.duplicates + c.late + c.invalid;
            let offset = state.offsets.get(&(topic.to_string(), 0)).copied();
            (folded, offset.unwrap_or(0))
        };
        while !fold.is_finished() {
            let (folded, offset) = folded_and_offset();
            assert_eq!(folded, offset, "records folded beside the offset read to");
        }
        fold.join().expect("the fold thread");
        assert_eq!(folded_and_offset(), (total, total));
        assert!(views.read().counters.duplicates > 0);
    }

    #[test]
    fn dead_letter_records_fit_the_log_whatever_was_read() {
        let small = dead_letter_record(b"nope", "invalid json", "funnel-events/0/7", 1);
        assert_eq!(small.value, &b"nope"[..]);
        assert!(small.header("original_bytes").is_none());
        let big = vec![b'x'; lambda_log::MAX_RECORD_BYTES];
        let cut = dead_letter_record(&big, "invalid json", "funnel-events/0/8", 1);
        assert_eq!(cut.value.len(), DEAD_LETTER_EXCERPT_BYTES);
        assert_eq!(cut.header("original_bytes"), Some(b"1048576".as_slice()));
        assert_eq!(cut.header("source"), Some(b"funnel-events/0/8".as_slice()));
    }
}
