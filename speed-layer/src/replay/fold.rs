//! The fold of the records the merge took, in its order: each lane's
//! records decoded a run at a time, then folded one by one into the state,
//! partitions marked idle by the log's clock on the way.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::Duration;

use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Event, floor_to};
use lambda_log::{FetchPosition, Record};

use super::merge::Lane;
use crate::consumer::{Slot, Slots};
use crate::window::{Applied, ClockPlace, SpeedState};

/// Decoded records of one lane, waiting their turn in the merge's order.
/// Each lane's records are decoded a run at a time, in the lane's own
/// order: one partition's events one after another, where the merge's
/// order switches partition and topic almost every record (the decoder's
/// branches then mispredicted more, and each record was the first touch of
/// another stream of bytes). `lambda bench speed --only kappa`, three runs
/// each, fetching 4 096 at a time (eleventh session): decoding in the
/// merge's order 1.51–1.52 M events/s per core, in runs of 32 per lane
/// 1.56–1.61 M, beside the live loop's 1.73–1.76 M.
#[derive(Default)]
pub(super) struct Ring<'a> {
    /// The run decoded (used again in place, run after run).
    slots: Slots<'a>,
    /// Slots of the run decoded, and how many of them are folded.
    pub(super) len: usize,
    pub(super) folded: usize,
    /// The lane's next record to decode (an index into its buffer).
    pub(super) next: usize,
}

impl Ring<'_> {
    /// The same ring, empty, for records of another lifetime.
    fn recycle<'b>(self) -> Ring<'b> {
        Ring {
            slots: self.slots.recycle(),
            len: 0,
            folded: 0,
            next: 0,
        }
    }
}

/// Slots of decoded records the rings hold together at most, unless each
/// lane's [`MIN_RUN`] comes to more: a run of 32 per lane for eight lanes
/// (about 0.45 KB an event: 115 KB, well inside the L2 cache).
const RING_SLOTS: usize = 256;
/// The longest and shortest run a lane decodes at a time.
const MAX_RUN: usize = 32;
const MIN_RUN: usize = 4;

/// Records a live fold folds between two chances for readers waiting for
/// the state's lock (about 0.15 ms at 2 M events/s: a dashboard's query
/// waits at most that).
pub(super) const PIECE: usize = 256;

/// Where a fold's state is: a replay's own, or the live views, behind
/// their lock.
pub(crate) trait Holding {
    /// Whether others read the state while it is folded into.
    const SHARED: bool = false;
    /// The state.
    fn state(&mut self) -> &mut SpeedState;
    /// Lets those waiting for the state in (it is consistent: every
    /// lane's offset and last append told).
    fn let_in(&mut self) {}
}

impl Holding for SpeedState {
    fn state(&mut self) -> &mut SpeedState {
        self
    }
}

impl Holding for parking_lot::RwLockWriteGuard<'_, SpeedState> {
    const SHARED: bool = true;
    fn state(&mut self) -> &mut SpeedState {
        self
    }
    fn let_in(&mut self) {
        parking_lot::RwLockWriteGuard::bump(self);
    }
}

/// What a replay has folded so far, and what it keeps for the caller.
#[derive(Default)]
pub(super) struct Folded {
    /// Each lane's decoded run (the allocations kept from refill to refill).
    pub(super) rings: Vec<Ring<'static>>,
    /// Where each lane's partition clock is in the state (the replay owns
    /// the state throughout: a place found stays right).
    pub(super) clocks: Vec<ClockPlace>,
    pub(super) late: BTreeMap<i64, Vec<Event>>,
    pub(super) counted_in_keep: HashSet<String>,
    pub(super) records: u64,
    /// Dead-letter records of the invalid records folded since the last
    /// refill (`None`: they are only counted).
    pub(super) dead_letters: Option<Vec<Record>>,
    pub(super) idleness: Idleness,
    /// The log stamps records by its own clock and none ahead of it
    /// ([`EventLog::complete_before`]): a record's time is not bounded by
    /// the reader's wall clock ([`SpeedState::log_time_of`]), which after
    /// a step back is behind the log's — the live loop and a replay long
    /// after would otherwise read it differently.
    pub(super) log_stamped: bool,
}

/// Partitions going idle as the live loop marks them — no record for the
/// idle timeout of the log's clock, then left out of the watermark until
/// they send again ([`SpeedState::mark_idle`]) — on the same append
/// timestamps (the collector stamps each record with the time it took it).
/// The state holds each partition's last append and the log's clock, and a
/// checkpoint keeps them, so a replay from a checkpoint goes on counting
/// where the live loop was. (Without this, a partition the live loop had
/// marked idle held the watermark back again after a restart, and an event
/// it had dropped as late was counted.)
#[derive(Debug, Default)]
pub(super) struct Idleness {
    pub(super) timeout_ms: i64,
    /// Each lane's newest append timestamp (`i64::MIN`: none yet), told
    /// to the state when partitions are marked and at the end.
    pub(super) last: Vec<i64>,
    /// The newest append timestamp met (the state's log clock at the start).
    pub(super) now: i64,
    /// No partition can go idle before this time.
    next_check: i64,
    /// The wall clock when this refill's records were folded (ms): an
    /// append timestamp ahead of it counts as this
    /// ([`SpeedState::log_time_of`]).
    pub(super) wall: i64,
}

impl Idleness {
    pub(super) fn new(timeout: Duration, lanes: usize, state: &SpeedState) -> Idleness {
        Idleness {
            timeout_ms: SpeedState::timeout_ms(timeout),
            last: vec![i64::MIN; lanes],
            now: state.log_time().unwrap_or(i64::MIN),
            next_check: i64::MIN,
            wall: i64::MAX,
        }
    }

    /// Lane `lane` delivers a record appended at `ts` (as
    /// [`SpeedState::log_time_of`] reads it): whether partitions may have
    /// sent nothing for longer than the timeout by then, to be marked idle
    /// ([`Idleness::mark`]) before the record is folded, as the live loop
    /// marks them at a fetch. A dozen instructions a record; the marking
    /// runs about once per timeout of the log's time.
    #[inline]
    fn delivered(&mut self, lane: usize, ts: i64) -> bool {
        // (A record stamped before the lane's newest moves nothing: the
        // collector stamps records with its clock as it takes them.)
        let ts = SpeedState::log_time_of(ts, self.now, self.wall);
        if let Some(last) = self.last.get_mut(lane) {
            *last = (*last).max(ts);
        }
        self.now = self.now.max(ts);
        self.now >= self.next_check
    }

    /// Marks idle the partitions that have sent nothing for longer than
    /// the timeout, lane `lane` delivering a record now; `next_of` tells
    /// when each lane's next record to fold was appended. Lanes whose next
    /// record was appended by now send now too: the records of one request
    /// share a millisecond, and the live loop meets them in one fetch and
    /// marks none of their partitions idle (a partition folded after
    /// another in the same millisecond was marked idle by it, and its
    /// record counted late after a restart).
    #[cold]
    #[inline(never)]
    pub(super) fn mark(
        &mut self,
        state: &mut SpeedState,
        lanes: &[Lane],
        lane: usize,
        next_of: impl Fn(usize) -> Option<i64>,
    ) {
        let (now, wall) = (self.now, self.wall);
        let sending: Vec<bool> = (0..lanes.len())
            .map(|i| {
                i == lane
                    || next_of(i).is_some_and(|ts| SpeedState::log_time_of(ts, now, wall) <= now)
            })
            .collect();
        let newcomer = lanes.iter().zip(&sending).any(|(l, sends)| {
            *sends && !state.has_clock(&l.span.position.topic, l.span.position.partition)
        });
        self.tell(state, lanes);
        let spared = |c: &crate::window::PartitionClock| {
            lanes.iter().zip(&sending).any(|(l, sends)| {
                *sends
                    && l.span.position.partition == c.partition
                    && l.span.position.topic == c.topic
            })
        };
        self.next_check = state.mark_idle(self.timeout_ms, spared, newcomer);
    }

    /// Tells the state each lane's newest append timestamp.
    pub(super) fn tell(&self, state: &mut SpeedState, lanes: &[Lane]) {
        for (lane, last) in lanes.iter().zip(&self.last) {
            if *last != i64::MIN {
                let position = &lane.span.position;
                state.appended(&position.topic, position.partition, *last);
            }
        }
    }
}

impl Folded {
    /// Folds the records the merge took, the lane of each in `order`, into
    /// `state` in that order, keeping late and counted ids whose minute is
    /// in `keep`. Each lane's records are decoded a run at a time (see
    /// [`Ring`]) before they are folded, as the live loop decodes a chunk
    /// and then folds it. Behind the live views' lock ([`Holding`]),
    /// readers waiting are let in every [`PIECE`] records, each lane's
    /// offset and last append told to the state first.
    pub(super) fn fold<H: Holding>(
        &mut self,
        holding: &mut H,
        lanes: &[Lane],
        order: &[u32],
        keep: &Range<i64>,
    ) {
        self.idleness.wall = match self.log_stamped {
            true => i64::MAX,
            false => chrono::Utc::now().timestamp_millis(),
        };
        let run = (RING_SLOTS / lanes.len().max(1)).clamp(MIN_RUN, MAX_RUN);
        let mut rings: Vec<Ring<'_>> = std::mem::take(&mut self.rings)
            .into_iter()
            .map(Ring::recycle)
            .collect();
        rings.resize_with(lanes.len(), Ring::default);
        // Each lane's round starts where its last one ended.
        for (ring, lane) in rings.iter_mut().zip(lanes) {
            ring.next = lane.start;
        }
        if self.clocks.len() < lanes.len() {
            self.clocks.resize(lanes.len(), ClockPlace::default());
        }
        for (i, &lane) in order.iter().enumerate() {
            if H::SHARED && i > 0 && i % PIECE == 0 {
                let next = |l: usize| {
                    let ring: &Ring<'_> = &rings[l];
                    ring.next - (ring.len - ring.folded)
                };
                self.tell(holding.state(), lanes, next);
                holding.let_in();
            }
            let state = holding.state();
            let lane = lane as usize;
            let (ring, buffered) = (&mut rings[lane], &lanes[lane]);
            if ring.folded == ring.len {
                // The lane's next run, up to what the merge took of it.
                let records =
                    &buffered.span.records[ring.next..(ring.next + run).min(buffered.taken)];
                let topic: &str = &buffered.span.position.topic;
                let decoded = ring.slots.decode(
                    records
                        .iter()
                        .map(|r| (&r.value[..], topic, r.timestamp_ms)),
                );
                crate::consumer::touch_ids(state, decoded);
                (ring.len, ring.folded) = (records.len(), 0);
                ring.next += records.len();
            }
            // By reference: an event is ~0.5 KB, and only a kept one is copied.
            let at = ring.folded;
            ring.folded += 1;
            let ring = &rings[lane];
            let slot = ring.slots.slot(at);
            if self.idleness.delivered(lane, slot.appended) {
                // Each lane's next record to fold, decoded or not.
                let next_of = |l: usize| {
                    let ring: &Ring<'_> = &rings[l];
                    let next = ring.next - (ring.len - ring.folded);
                    lanes[l].span.records.get(next).map(|r| r.timestamp_ms)
                };
                self.idleness.mark(state, lanes, lane, next_of);
            }
            if let Err(error) = &slot.outcome {
                state.counters.invalid += 1;
                if let Some(dead_letters) = self.dead_letters.as_mut() {
                    let record = &buffered.span.records[ring.next - ring.len + at];
                    let position = &buffered.span.position;
                    dead_letters.push(crate::consumer::invalid_record(
                        &position.topic,
                        position.partition,
                        record,
                        error,
                        chrono::Utc::now().timestamp_millis(),
                    ));
                }
                continue;
            }
            self.fold_one(state, lane, &buffered.span.position, slot, keep);
        }
        self.records += order.len() as u64;
        self.rings = rings.into_iter().map(Ring::recycle).collect();
    }

    /// Tells `state` each lane's offset — of its first record not folded,
    /// at index `next(lane)` of its records — and newest append, for
    /// whoever reads the state next (a checkpoint's snapshot holds both:
    /// a restart goes on from them as this fold would).
    pub(super) fn tell(
        &self,
        state: &mut SpeedState,
        lanes: &[Lane],
        next: impl Fn(usize) -> usize,
    ) {
        for (i, lane) in lanes.iter().enumerate() {
            let position = &lane.span.position;
            state.set_offset(&position.topic, position.partition, lane.offset_at(next(i)));
        }
        self.idleness.tell(state, lanes);
    }

    /// Folds one valid event, read from lane `lane`.
    fn fold_one(
        &mut self,
        state: &mut SpeedState,
        lane: usize,
        position: &FetchPosition,
        slot: &Slot<'_>,
        keep: &Range<i64>,
    ) {
        let event = &slot.event;
        let applied = state.apply_in_run(
            &mut self.clocks[lane],
            &position.topic,
            position.partition,
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
