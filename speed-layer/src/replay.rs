//! A replay: the log read again, from each partition's earliest retained
//! offset up to given end offsets, through the same fold the speed layer
//! runs ([`SpeedState::apply_from`]) — kappa's way of recomputing a view.
//! `lambda compare` uses it to set the kappa views beside the batch views of
//! the same log prefix, and keeps what it needs to explain a difference: the
//! events the fold dropped as late.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Event, Topic, floor_to};
use lambda_log::{EventLog, FetchPosition, LogError, StoredRecord};

use crate::consumer::{FOLD_CHUNK, Slot, Slots};
use crate::window::{Applied, SpeedState};

/// Records asked for per fetch: four times the live loop's. The replay
/// fetches a lane whenever it runs low, so in the benchmark's log (twelve
/// partitions of uneven rates) it made about twice the live loop's fetches,
/// each a round trip to a blocking thread and a file opened per partition.
/// `lambda bench speed --only kappa`, five rounds each (after the changes
/// of the eighth session): 4 096 → 1.25–1.51 M events/s per core, 8 192 →
/// 1.46–1.56 M, 16 384 → 1.55–1.62 M, beside the live loop's 1.55–1.69 M.
/// At most ~4 MB of records are buffered.
const FETCH_MAX_RECORDS: usize = 16384;
/// How long one fetch may wait.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(200);
/// Fetches in a row that may come back empty while records are still due.
const EMPTY_FETCHES_ALLOWED: u32 = 50;

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

/// Where a record comes in append order: record timestamp, partition, offset.
type AppendKey = (i64, u32, u64);

fn append_key(record: &StoredRecord) -> AppendKey {
    (record.record.timestamp_ms, record.partition, record.offset)
}

/// One partition being read: where the next fetch starts, and records
/// fetched: `buffer[taken..]` not taken by the merge yet (those before are
/// being folded, read where they are, and let go at the next refill).
struct Lane {
    position: FetchPosition,
    end: u64,
    buffer: VecDeque<StoredRecord>,
    taken: usize,
}

impl Lane {
    /// Records fetched and not taken yet.
    fn pending(&self) -> usize {
        self.buffer.len() - self.taken
    }

    /// The next record not taken.
    fn front(&self) -> Option<&StoredRecord> {
        self.buffer.get(self.taken)
    }

    /// Records still due and none fetched: the merge waits for this lane.
    fn dry(&self) -> bool {
        self.pending() == 0 && self.position.offset < self.end
    }
}

/// Replays `spans` into `state` (a fresh one: `SpeedState::new`) and leaves
/// its offsets at the spans' ends. Records are folded in the order they were
/// appended across partitions (by record timestamp, then partition and
/// offset), as the live speed layer met them, so a replay drops as late what
/// the live fold dropped — not whatever one fetch of one partition happened
/// to bring first. Late events whose minute is in `keep` are kept for the
/// caller. `progress` is told the records folded so far.
pub async fn replay(
    log: &dyn EventLog,
    spans: &[ReplaySpan],
    mut state: SpeedState,
    keep: Range<i64>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let mut lanes = Lanes::new(spans);
    for lane in &lanes.lanes {
        state.expect_partition(&lane.position.topic, lane.position.partition);
    }
    let mut folded = Folded::default();
    // (lane, index in its buffer) of the records folded next.
    let mut picks = Vec::with_capacity(FOLD_CHUNK);
    while !lanes.finished() {
        lanes.refill(log).await?;
        let before = folded.records;
        loop {
            picks.clear();
            while picks.len() < FOLD_CHUNK && lanes.take_in_append_order(&mut picks, FOLD_CHUNK) {}
            if picks.is_empty() {
                break;
            }
            let records = picks.iter().map(|&(lane, i)| &lanes.lanes[lane].buffer[i]);
            folded.fold(&mut state, records, &keep);
        }
        if folded.records > before {
            state.evict();
            progress(folded.records);
        }
    }
    // A live loop taking over the state carries on from the ends.
    for span in spans {
        let key = (span.topic.clone(), span.partition);
        state.offsets.insert(key, span.end);
    }
    let Folded {
        mut late,
        counted_in_keep,
        records,
        bytes,
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

/// The partitions being replayed, merged in append order.
struct Lanes {
    lanes: Vec<Lane>,
    /// The first buffered record of each lane that has one, by
    /// [`AppendKey`], with the lane's index: the next record in append
    /// order is at the top (a k-way merge, a few comparisons per record
    /// where a scan of every lane took a dozen).
    heads: BinaryHeap<Reverse<(AppendKey, usize)>>,
    /// Lanes with records due and none fetched: while there is one, the
    /// next record in append order is not known.
    dry: usize,
    /// Fetches in a row that brought nothing of use.
    empty_in_a_row: u32,
}

impl Lanes {
    fn new(spans: &[ReplaySpan]) -> Lanes {
        let lanes: Vec<Lane> = spans
            .iter()
            .filter(|s| s.start < s.end)
            .map(|s| Lane {
                position: FetchPosition {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    offset: s.start,
                },
                end: s.end,
                buffer: VecDeque::new(),
                taken: 0,
            })
            .collect();
        Lanes {
            dry: lanes.len(),
            heads: BinaryHeap::with_capacity(lanes.len()),
            lanes,
            empty_in_a_row: 0,
        }
    }

    /// Whether every lane is read to its end and folded.
    fn finished(&self) -> bool {
        self.heads.is_empty() && self.dry == 0
    }

    /// Fetches for the lanes that ran dry, and those running low beside
    /// them: each lane a share of [`FETCH_MAX_RECORDS`], as the live loop
    /// fetches every partition at once. (A lane that ran dry alone used to
    /// get all of them: 12 lanes then held 50 000 records, out of cache by
    /// the time they were folded, and the replay ran at 0.85× the live
    /// fold.) Retention moving on while we read skips what is gone; a
    /// transient error waits a little; a log that keeps answering nothing
    /// below the end offsets is an error.
    async fn refill(&mut self, log: &dyn EventLog) -> anyhow::Result<()> {
        // What was taken has been folded.
        for lane in &mut self.lanes {
            lane.buffer.drain(..lane.taken);
            lane.taken = 0;
        }
        let reading = self
            .lanes
            .iter()
            .filter(|l| l.position.offset < l.end)
            .count();
        let share = (FETCH_MAX_RECORDS / reading.max(1)).max(1);
        let asked: Vec<FetchPosition> = self
            .lanes
            .iter()
            .filter(|l| l.position.offset < l.end && l.pending() <= share / 2)
            .map(|l| l.position.clone())
            .collect();
        if asked.is_empty() {
            return Ok(());
        }
        let max_records = share.saturating_mul(asked.len());
        let fetched = match log.fetch(&asked, max_records, FETCH_MAX_WAIT).await {
            Ok(fetched) => fetched,
            Err(LogError::OffsetOutOfRange {
                topic,
                partition,
                start,
                ..
            }) => {
                // Retention moved on while we read: what is gone is gone.
                for lane in self
                    .lanes
                    .iter_mut()
                    .filter(|l| l.position.topic == topic && l.position.partition == partition)
                {
                    lane.position.offset = lane.position.offset.max(start).min(lane.end);
                }
                self.dry = self.lanes.iter().filter(|l| l.dry()).count();
                return Ok(());
            }
            Err(error) if error.is_transient() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            Err(error) => return Err(error).context("replay fetch"),
        };
        let mut useful = 0;
        // A fetch brings each partition's records in one run: its lane is
        // looked up once per run.
        let mut at = 0;
        for stored in fetched {
            let is = |l: &Lane| {
                l.position.partition == stored.partition && *l.position.topic == *stored.topic
            };
            if !crate::consumer::find_from(&self.lanes, &mut at, is) {
                continue;
            }
            let lane = &mut self.lanes[at];
            if stored.offset < lane.position.offset || stored.offset >= lane.end {
                continue;
            }
            lane.position.offset = stored.offset + 1;
            if lane.pending() == 0 {
                self.heads.push(Reverse((append_key(&stored), at)));
            }
            lane.buffer.push_back(stored);
            useful += 1;
        }
        self.dry = self.lanes.iter().filter(|l| l.dry()).count();
        if useful > 0 {
            self.empty_in_a_row = 0;
            return Ok(());
        }
        self.empty_in_a_row += 1;
        if self.empty_in_a_row > EMPTY_FETCHES_ALLOWED {
            let missing: Vec<String> = self
                .lanes
                .iter()
                .filter(|l| l.pending() == 0)
                .map(|l| {
                    let p = &l.position;
                    format!("{}/{} at {} of {}", p.topic, p.partition, p.offset, l.end)
                })
                .collect();
            anyhow::bail!(
                "replay: the log stopped delivering before the end offsets: {}",
                missing.join(", ")
            );
        }
        Ok(())
    }

    /// Takes the next records in append order (record timestamp, then
    /// partition and offset; then lane index, as keys do not name the
    /// topic) into `out` as (lane, index in its buffer), up to `limit` in
    /// all, while every unfinished lane has a record to compare. `false`
    /// when nothing could be taken. The head lane's next record replaces
    /// it at the top of the heap, which sifts it down once — a run of one
    /// lane costs a comparison or two per record (one sift where a pop and
    /// a push took two; in the benchmark's log the lanes alternate at
    /// every record, and the merge was ~5 % of the replay).
    fn take_in_append_order(&mut self, out: &mut Vec<(usize, usize)>, limit: usize) -> bool {
        if self.dry > 0 || out.len() >= limit {
            return false;
        }
        let Some(mut top) = self.heads.peek_mut() else {
            return false;
        };
        let Reverse((_, i)) = *top;
        let lane = &mut self.lanes[i];
        out.push((i, lane.taken));
        lane.taken += 1;
        match lane.front() {
            Some(next) => *top = Reverse((append_key(next), i)),
            None => {
                PeekMut::pop(top);
                if lane.dry() {
                    self.dry += 1;
                }
            }
        }
        true
    }
}

/// What a replay has folded so far, and what it keeps for the caller.
#[derive(Default)]
struct Folded {
    /// The decoding buffer, kept from chunk to chunk.
    slots: Slots<'static>,
    late: BTreeMap<i64, Vec<Event>>,
    counted_in_keep: HashSet<String>,
    records: u64,
    bytes: u64,
}

impl Folded {
    /// Folds records into `state` in order, keeping late and counted ids
    /// whose minute is in `keep`. Decoded first, then folded, as the live
    /// loop does (the decoder's work and the fold's each stay in cache).
    fn fold<'a>(
        &mut self,
        state: &mut SpeedState,
        chunk: impl Iterator<Item = &'a StoredRecord> + Clone,
        keep: &Range<i64>,
    ) {
        let mut slots = std::mem::take(&mut self.slots).recycle();
        let decoded = slots.decode(chunk.clone());
        crate::consumer::touch_ids(state, decoded);
        // By reference: an event is ~0.5 KB, and only a kept one is copied.
        for (stored, slot) in chunk.zip(decoded) {
            self.fold_one(state, stored, slot, keep);
        }
        self.slots = slots.recycle();
    }

    fn fold_one(
        &mut self,
        state: &mut SpeedState,
        stored: &StoredRecord,
        slot: &Slot<'_>,
        keep: &Range<i64>,
    ) {
        self.records += 1;
        self.bytes +=
            (stored.record.value.len() + stored.record.key.as_ref().map_or(0, |k| k.len())) as u64;
        if slot.outcome.is_err() {
            state.counters.invalid += 1;
            return;
        }
        let event = &slot.event;
        let applied = state.apply_hashed(
            &stored.topic,
            stored.partition,
            event,
            slot.clock,
            slot.hash,
        );
        // (A replay that keeps nothing — `lambda kappa replay` — works out
        // no minute.)
        if keep.is_empty() {
            return;
        }
        let minute = floor_to(event.ts, MINUTE_MS);
        match applied {
            Applied::Counted if keep.contains(&minute) => {
                self.counted_in_keep.insert(event.event_id.to_string());
            }
            Applied::Late if keep.contains(&minute) => {
                self.late
                    .entry(minute)
                    .or_default()
                    .push(event.clone().into_owned());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lanes_of(partitions: &[Vec<i64>]) -> Lanes {
        let topic: std::sync::Arc<str> = "funnel-events".into();
        let lanes = partitions
            .iter()
            .enumerate()
            .map(|(p, stamps)| Lane {
                position: FetchPosition {
                    topic: topic.to_string(),
                    partition: p as u32,
                    offset: stamps.len() as u64,
                },
                end: stamps.len() as u64,
                buffer: stamps
                    .iter()
                    .enumerate()
                    .map(|(offset, &ts)| StoredRecord {
                        topic: topic.clone(),
                        partition: p as u32,
                        offset: offset as u64,
                        record: lambda_log::Record {
                            key: None,
                            value: Default::default(),
                            timestamp_ms: ts,
                            headers: Vec::new(),
                        },
                    })
                    .collect(),
                taken: 0,
            })
            .collect::<Vec<_>>();
        let mut heads = BinaryHeap::new();
        for (i, lane) in lanes.iter().enumerate() {
            if let Some(front) = lane.buffer.front() {
                heads.push(Reverse((append_key(front), i)));
            }
        }
        Lanes {
            lanes,
            heads,
            dry: 0,
            empty_in_a_row: 0,
        }
    }

    proptest! {
        /// Taking runs gives what a merge taking one record at a time does:
        /// the least (key, lane) head each time, whatever order the
        /// timestamps within a partition come in.
        #[test]
        fn runs_are_taken_in_the_one_at_a_time_order(
            partitions in proptest::collection::vec(proptest::collection::vec(0i64..20, 0..40), 1..6),
            limit in 1usize..20,
        ) {
            let mut reference = Vec::new();
            let mut fronts: Vec<usize> = vec![0; partitions.len()];
            loop {
                let next = (0..partitions.len())
                    .filter(|&p| fronts[p] < partitions[p].len())
                    .min_by_key(|&p| ((partitions[p][fronts[p]], p as u32, fronts[p] as u64), p));
                let Some(p) = next else { break };
                reference.push((p as u32, fronts[p] as u64));
                fronts[p] += 1;
            }
            let mut lanes = lanes_of(&partitions);
            let mut taken = Vec::new();
            let mut out = Vec::new();
            loop {
                out.clear();
                while out.len() < limit && lanes.take_in_append_order(&mut out, limit) {}
                prop_assert!(out.len() <= limit);
                if out.is_empty() {
                    break;
                }
                let records = out.iter().map(|&(lane, i)| &lanes.lanes[lane].buffer[i]);
                taken.extend(records.map(|r| (r.partition, r.offset)));
            }
            prop_assert_eq!(taken, reference);
            prop_assert!(lanes.finished());
        }
    }
}
