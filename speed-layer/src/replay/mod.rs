//! A replay: the log read again, from each partition's earliest retained
//! offset up to given end offsets, through the same fold the speed layer
//! runs ([`SpeedState::apply_from`]) — kappa's way of recomputing a view.
//! `lambda compare` uses it to set the kappa views beside the batch views of
//! the same log prefix, and keeps what it needs to explain a difference: the
//! events the fold dropped as late.
//!
//! The live speed layer reads the log through the same merge and fold
//! ([`Live`]), only as far as the log promises it is complete: so the live
//! loop, a restart from any of its checkpoints and a replay long after fold
//! the same records in the same order.

mod fold;
mod live;
mod merge;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::{Event, Topic};
use lambda_log::EventLog;

use crate::window::SpeedState;

use fold::{Folded, Idleness};
use merge::Lanes;

pub use live::Live;

/// Records asked for per fetch: four times the live loop's. The replay
/// fetches a lane whenever it runs low, so in the benchmark's log (twelve
/// partitions of uneven rates) it made about twice the live loop's fetches,
/// each a turn of the runtime and a file opened per partition.
/// `lambda bench speed --only kappa`, five rounds each (after the changes
/// of the eighth session): 4 096 → 1.25–1.51 M events/s per core, 8 192 →
/// 1.46–1.56 M, 16 384 → 1.55–1.62 M, beside the live loop's 1.55–1.69 M;
/// again with the read on the replay's own thread (tenth session, two runs
/// each): 4 096 → 1.71–1.87 M, 8 192 → 1.50–1.86 M, 16 384 → 1.79–1.92 M;
/// with the merge first and runs decoded per lane (eleventh session), four
/// pairs against 4 096: 16 384 ahead in three. Kept: ~1.2 MB of lane
/// entries (a share and a half a lane) and the chunks the entries share.
const FETCH_MAX_RECORDS: usize = 16384;

/// One partition to replay: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySpan {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset read (the earliest the log still holds).
    pub start: u64,
    /// First offset not read.
    pub end: u64,
}

/// What a replay produced and what it cost.
#[derive(Debug)]
pub struct Replayed {
    /// The state after the last record: windows, ledger, counters.
    pub state: SpeedState,
    /// Events dropped as late whose minute lies in the kept range, by minute,
    /// one per `event_id`, leaving out ids the fold counted anyway.
    pub late: BTreeMap<i64, Vec<Event>>,
    /// `event_id`s the fold counted whose minute lies in the kept range.
    pub counted: HashSet<String>,
    /// Records read.
    pub records: u64,
    /// Bytes of the records read (keys and values).
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The spans from each partition's earliest retained offset to the end
/// `end_of(topic, partition, log end)` gives (`None`: the partition is left
/// out); a partition whose records below its end are all gone has an empty span.
pub async fn spans_to(
    log: &dyn EventLog,
    end_of: impl Fn(&str, u32, u64) -> Option<u64>,
) -> anyhow::Result<Vec<ReplaySpan>> {
    let mut spans = Vec::new();
    for topic in Topic::ALL {
        let ranges = log
            .ranges(topic.name())
            .await
            .with_context(|| format!("ranges of {topic}"))?;
        for (partition, range) in ranges.iter().enumerate() {
            let partition = partition as u32;
            let Some(end) = end_of(topic.name(), partition, range.end) else {
                continue;
            };
            spans.push(ReplaySpan {
                topic: topic.name().to_string(),
                partition,
                start: range.start.min(end),
                end,
            });
        }
    }
    Ok(spans)
}

/// Replays `spans` into `state` (a fresh one: `SpeedState::new`) and leaves
/// its offsets at the spans' ends. Records are folded in the order they were
/// appended across partitions (by record timestamp, then partition and
/// offset), as the live speed layer met them, so a replay drops as late what
/// the live fold dropped — not whatever one fetch of one partition happened
/// to bring first. A partition joins the watermark at its first record, as
/// it did live (one the state has no clock for does not hold the watermark
/// back before it), and one that sends nothing for `idle_timeout` stops
/// holding it back, as the live loop marks it idle — told by the records'
/// append timestamps, the log's clock. Late events whose
/// minute is in `keep` are kept for the caller. `progress` is told the
/// records folded so far. Records that are not valid events are counted
/// (`counters.invalid`): the live loop dead-lettered them when it read them.
pub async fn replay(
    log: &dyn EventLog,
    spans: &[ReplaySpan],
    state: SpeedState,
    keep: Range<i64>,
    idle_timeout: Duration,
    progress: impl FnMut(u64),
) -> anyhow::Result<Replayed> {
    let fold = Fold {
        keep,
        idle_timeout,
        before: None,
    };
    replay_fetching(log, spans, state, fold, progress, FETCH_MAX_RECORDS).await
}

/// [`replay`] of only the records stamped before `before` (every record
/// when `None`), leaving each partition's offset at its first record not
/// folded, for a live loop ([`Live`]) to carry on from: `before` is what
/// the log promised complete ([`EventLog::complete_before`]) when it was
/// read, before the spans' ends were, so the replay and the live loop
/// after it fold what one live loop from the start folds, and what a
/// replay of the log long after folds. (A kappa version replayed up to the
/// ends while events came, then followed live, could differ from a replay
/// of the same log afterwards: a record written just after the ends were
/// read could be stamped before records the replay had folded — a hostile
/// run, 3 in 90 trials.)
pub async fn replay_before(
    log: &dyn EventLog,
    spans: &[ReplaySpan],
    state: SpeedState,
    before: Option<i64>,
    idle_timeout: Duration,
    progress: impl FnMut(u64),
) -> anyhow::Result<Replayed> {
    let fold = Fold {
        keep: 0..0,
        idle_timeout,
        before,
    };
    replay_fetching(log, spans, state, fold, progress, FETCH_MAX_RECORDS).await
}

/// How a replay folds: the minutes whose late and counted events it keeps,
/// the live loop's idle timeout, and the stamp it folds records before.
struct Fold {
    keep: Range<i64>,
    idle_timeout: Duration,
    before: Option<i64>,
}

/// [`replay`], fetching at most `fetch_max` records at a time.
async fn replay_fetching(
    log: &dyn EventLog,
    spans: &[ReplaySpan],
    mut state: SpeedState,
    fold: Fold,
    mut progress: impl FnMut(u64),
    fetch_max: usize,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let Fold {
        keep,
        idle_timeout,
        before,
    } = fold;
    let mut lanes = Lanes::new(spans);
    lanes.bound = lanes.bound_of(before);
    let mut folded = Folded {
        idleness: Idleness::new(idle_timeout, lanes.lanes.len(), &state),
        // (Asked without reading the promise: reading it moves it.)
        log_stamped: log.clock_ms().is_some(),
        ..Folded::default()
    };
    // The lane of each record, in append order, as far as a refill lets
    // it be known (kept from refill to refill).
    let mut order = Vec::new();
    while !lanes.finished() {
        lanes.refill(log, fetch_max).await?;
        let before = folded.records;
        // The whole merge first, then the fold: merging a chunk, folding
        // it, and merging the next found each lane's next record out of
        // cache again, the fold having been through it since (the load of
        // its timestamp was ~70 % of the merge's samples in `perf`).
        order.clear();
        lanes.merge(&mut order);
        folded.fold(&mut state, &lanes.lanes, &order, &keep);
        if folded.records > before {
            state.evict();
            progress(folded.records);
        }
    }
    // A live loop taking over the state carries on from where the fold
    // stopped, and counts idleness from the partitions' last appends.
    folded.idleness.tell(&mut state, &lanes.lanes);
    for span in spans {
        let key = (span.topic.clone(), span.partition);
        state.offsets.insert(key, span.end);
    }
    if before.is_some() {
        // Stopped at the promise: each partition's first record not folded.
        for lane in &lanes.lanes {
            let position = &lane.span.position;
            let key = (position.topic.clone(), position.partition);
            state.offsets.insert(key, lane.offset_at(lane.taken));
        }
    }
    let bytes = lanes.bytes;
    let Folded {
        mut late,
        counted_in_keep,
        records,
        ..
    } = folded;
    // One late event per id, and none the fold counted after all (a resend
    // whose first copy was on time).
    for events in late.values_mut() {
        let mut ids = HashSet::new();
        events.retain(|e| !counted_in_keep.contains(&e.event_id) && ids.insert(e.event_id.clone()));
    }
    late.retain(|_, events| !events.is_empty());
    Ok(Replayed {
        state,
        late,
        counted: counted_in_keep,
        records,
        bytes,
        elapsed: started.elapsed(),
    })
}
