//! Tumbling 1-minute event-time windows, the watermark, deduplication by
//! `event_id` across the windows still open, and the late ledger.
//!
//! The watermark is `max event time seen - allowed lateness`. A window closes
//! once its end is at or before the watermark; an event for a closed window is
//! late: it is counted in the ledger (per topic and window) and left for the
//! batch layer, which will heal that bucket.

use std::collections::BTreeMap;

use lambda_events::bucket::MINUTE_MS;
use lambda_events::limits::MAX_LATE_LEDGER_ENTRIES;
use lambda_events::{BucketViews, Event, EventRef, Topic, floor_to};

use crate::alerts::{AlertEngine, AlertRules};
use crate::seen::{IdHash, SeenIds};

/// One window: its views. (The ids counted in it are kept beside all the
/// open windows' others, in [`SpeedState`]'s one [`SeenIds`].)
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The aggregates.
    pub views: BucketViews,
    /// The state's [`SpeedState::seq`] when this window last changed
    /// (readers in other processes ask for what changed since a seq).
    pub version: u64,
}

/// Event time up to which windows are closed (minus nothing: the allowed
/// lateness is already taken off). It never goes back: the one way to move
/// it is [`Watermark::advance`], which refuses a lower time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark(Option<i64>);

impl Watermark {
    /// A watermark restored from a checkpoint or combined from instances.
    pub(crate) fn restored(at: Option<i64>) -> Watermark {
        Watermark(at)
    }

    /// Where it is (`None` before any event).
    pub fn get(self) -> Option<i64> {
        self.0
    }

    /// Moves it to `to` if that is ahead; returns whether it moved.
    pub fn advance(&mut self, to: i64) -> bool {
        if self.0.is_none_or(|w| to > w) {
            self.0 = Some(to);
            true
        } else {
            false
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Folded into its window.
    Counted,
    /// Its id was already in the window.
    Duplicate,
    /// Its window had closed: counted in the late ledger.
    Late,
}

/// How far below the batch boundary B windows are still kept, so that a
/// reader holding a slightly older manifest still finds the speed side.
pub const BOUNDARY_MARGIN_MS: i64 = 5 * MINUTE_MS;

/// Counters of the speed layer's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeedCounters {
    /// Events folded into a window.
    pub counted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Late events sent to the ledger.
    pub late: u64,
    /// Records that were not valid events.
    pub invalid: u64,
}

/// A number unlikely to repeat across states and processes (clock nanos mixed with a counter).
pub(crate) fn new_epoch() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (nanos ^ (std::process::id() as u64).rotate_left(40))
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl SpeedCounters {
    /// `(counted, duplicates, late, invalid)`.
    pub fn as_tuple(&self) -> (u64, u64, u64, u64) {
        (self.counted, self.duplicates, self.late, self.invalid)
    }
}

/// The whole state: windows, watermark, ledger, consumed offsets. Only this
/// crate changes it (the fold, the checkpoint, B); others read it through
/// the accessors, or replace it whole (a kappa switch, serving's mirror).
#[derive(Debug, Clone)]
pub struct SpeedState {
    /// Allowed lateness in ms.
    pub(crate) allowed_lateness_ms: i64,
    /// Eviction horizon behind the newest partition clock's watermark, in ms.
    pub(crate) horizon_ms: i64,
    /// Windows by start time.
    pub(crate) windows: BTreeMap<i64, Window>,
    /// Greatest event time seen.
    pub(crate) max_event_ts: Option<i64>,
    /// Late events by (topic, window start).
    pub(crate) late_ledger: BTreeMap<(Topic, i64), u64>,
    /// Next offset to consume, by (topic, partition).
    pub(crate) offsets: BTreeMap<(String, u32), u64>,
    /// What has been done.
    pub(crate) counters: SpeedCounters,
    /// Wall time of the last checkpoint written (ms).
    pub(crate) last_checkpoint_ms: Option<i64>,
    /// Why the last checkpoint attempt failed, while it keeps failing (a
    /// full disk): the layer goes on folding and retries with backoff, and
    /// `/healthz` and `/api/v1/status` say so.
    pub(crate) checkpoint_error: Option<String>,
    /// Checkpoint attempts that failed since the process started.
    pub(crate) checkpoint_failures: u64,
    /// The batch layer's boundary B, when known: windows well before it are
    /// answered by the batch views and need not be kept
    /// ([`SpeedState::set_batch_boundary`]).
    pub(crate) batch_boundary: Option<i64>,
    /// Windows starting before this have been evicted; events for them are late.
    pub(crate) evicted_before: i64,
    /// Bumped by every change to a window.
    pub(crate) seq: u64,
    /// Identifies this state's lineage: a restored or replaced state gets a
    /// new one, so a reader holding windows by seq knows to start over.
    pub(crate) epoch: u64,
    /// Event-time progress per partition.
    pub(crate) clocks: Vec<PartitionClock>,
    /// The current watermark (see [`SpeedState::watermark`]).
    pub(crate) watermark: Watermark,
    /// Alert rules and their state.
    pub(crate) alerts: AlertEngine,
    /// The `event_id`s counted in the open windows (a resend of one is a
    /// duplicate). Windows before its [`SeenIds::dropped_before`] have
    /// dropped their ids: they are closed, and an event for them is late
    /// before its id is looked at.
    pub(crate) seen: SeenIds,
    /// The slowest active clock when the watermark was last worked out
    /// (`None`: not since this state was made or restored): only that
    /// clock moving on, or a change in which clocks are active, can move
    /// the watermark.
    pub(crate) slowest: Option<i64>,
    /// The newest partition clock (`i64::MIN` before any): the horizon is
    /// kept from it ([`SpeedState::evict`]).
    pub(crate) newest: i64,
    /// The log's clock: the newest append timestamp read from any partition
    /// (`i64::MIN` before any). Partitions go idle by it
    /// ([`SpeedState::mark_idle`]), so idleness is a matter of what the log
    /// holds, and a restart or a replay marks them as the live loop did.
    pub(crate) log_now: i64,
    /// The window files this state was restored from, until a
    /// [`crate::checkpoint::Checkpointer`] takes them over (empty unless
    /// [`crate::checkpoint::load`] made the state).
    pub(crate) restored_files: BTreeMap<i64, crate::checkpoint::Written>,
}

/// See [`SpeedState::views_stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ViewsStamp {
    epoch: u64,
    seq: u64,
    evicted_before: i64,
    watermark: Option<i64>,
}

/// See [`SpeedState::windows_stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WindowsStamp {
    epoch: u64,
    count: usize,
    newest: u64,
}

/// The clock of an expected partition that has not delivered yet.
const NOT_YET: i64 = i64::MIN;

/// Adds `n` late events at `entry` of the late ledger, which keeps at most
/// [`MAX_LATE_LEDGER_ENTRIES`] entries: a new one past the bound takes the
/// place of the oldest minute's, or is not kept if it is older still (its
/// events count in `late` all the same). One rule for the live loop, a
/// replay, a restored checkpoint and the states combined from several
/// instances' (`export::combine`), so they keep the same entries.
pub(crate) fn ledger_late(ledger: &mut BTreeMap<(Topic, i64), u64>, entry: (Topic, i64), n: u64) {
    if let Some(count) = ledger.get_mut(&entry) {
        *count = count.saturating_add(n);
        return;
    }
    if ledger.len() >= MAX_LATE_LEDGER_ENTRIES {
        // Each topic's first entry is its oldest minute: two lookups, not
        // a walk over the ledger.
        let oldest = Topic::ALL
            .iter()
            .filter_map(|&topic| {
                let first = ledger.range((topic, i64::MIN)..=(topic, i64::MAX)).next();
                first.map(|(entry, _)| *entry)
            })
            .min_by_key(|(_, start)| *start);
        match oldest {
            Some(oldest) if oldest.1 < entry.1 => {
                ledger.remove(&oldest);
            }
            _ => return,
        }
    }
    ledger.insert(entry, n);
}

/// Where one partition's clock is in a state's clocks, found at the first
/// of a run of its records and kept for the rest of the run
/// ([`SpeedState::apply_in_run`]): the topic's name is compared once per
/// run, not once per event (that compare was 3 % of `lambda bench
/// speed`'s live loop). A state only ever adds clocks, so a place stays
/// right while the state lives; a caller keeps one no longer than one
/// hold of the state's lock, and only for records of one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClockPlace(Option<usize>);

/// How far one partition's events have got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionClock {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Greatest event time read from it.
    pub max_ts: i64,
    /// No record for the idle timeout: left out of the watermark until it sends again.
    pub idle: bool,
    /// The newest append timestamp read from it (`i64::MIN`: not known
    /// yet): when it last sent, by the log's clock.
    pub appended: i64,
}

impl SpeedState {
    /// Allowed lateness in ms.
    pub fn allowed_lateness_ms(&self) -> i64 {
        self.allowed_lateness_ms
    }

    /// Eviction horizon behind the watermark, in ms.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// Windows by start time.
    pub fn windows(&self) -> &BTreeMap<i64, Window> {
        &self.windows
    }

    /// Greatest event time seen.
    pub fn max_event_ts(&self) -> Option<i64> {
        self.max_event_ts
    }

    /// Next offset to consume, by (topic, partition).
    pub fn offsets(&self) -> &BTreeMap<(String, u32), u64> {
        &self.offsets
    }

    /// What has been done.
    pub fn counters(&self) -> &SpeedCounters {
        &self.counters
    }

    /// Wall time of the last checkpoint written (ms).
    pub fn last_checkpoint_ms(&self) -> Option<i64> {
        self.last_checkpoint_ms
    }

    /// Why the last checkpoint attempt failed, while it keeps failing.
    pub fn checkpoint_error(&self) -> Option<&str> {
        self.checkpoint_error.as_deref()
    }

    /// Checkpoint attempts that failed since the process started.
    pub fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures
    }

    /// This state's lineage (see the field).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// What a query's answer depends on in this state: two states with
    /// the same stamp answer every query alike, so serving may keep an
    /// encoded answer under it. A window changes only with `seq` (the fold
    /// bumps it), windows leave only by eviction (which raises
    /// `evicted_before`), and a restored, replaced or combined state has a
    /// new `epoch`; the watermark is in every answer.
    pub fn views_stamp(&self) -> ViewsStamp {
        ViewsStamp {
            epoch: self.epoch,
            seq: self.seq,
            evicted_before: self.evicted_before,
            watermark: self.watermark(),
        }
    }

    /// What the windows starting in `starts` hold, as far as a reader needs
    /// to tell: two equal stamps of this state (or of any state of its
    /// epoch) mean the same windows with the same views, so serving may keep
    /// a bucket rendered from them under it. Within an epoch every change to
    /// a window gives it a version above every version a window holds (the
    /// fold numbers changes from 1; restored and combined windows are at 0),
    /// so a change raises the newest version, a window evicted lowers the
    /// count, and a window added does both.
    pub fn windows_stamp(&self, starts: std::ops::Range<i64>) -> WindowsStamp {
        let (mut count, mut newest) = (0, 0);
        if starts.start < starts.end {
            for window in self.windows.range(starts).map(|(_, w)| w) {
                count += 1;
                newest = newest.max(window.version);
            }
        }
        WindowsStamp {
            epoch: self.epoch,
            count,
            newest,
        }
    }

    /// Event-time progress per partition.
    pub fn clocks(&self) -> &[PartitionClock] {
        &self.clocks
    }

    /// Alert rules and their state.
    pub fn alerts(&self) -> &AlertEngine {
        &self.alerts
    }
    /// An empty state.
    pub fn new(allowed_lateness_ms: i64, horizon_ms: i64) -> SpeedState {
        SpeedState {
            allowed_lateness_ms,
            horizon_ms,
            windows: BTreeMap::new(),
            max_event_ts: None,
            late_ledger: BTreeMap::new(),
            offsets: BTreeMap::new(),
            counters: SpeedCounters::default(),
            last_checkpoint_ms: None,
            checkpoint_error: None,
            checkpoint_failures: 0,
            batch_boundary: None,
            evicted_before: i64::MIN,
            seq: 0,
            epoch: new_epoch(),
            clocks: Vec::new(),
            watermark: Watermark::default(),
            alerts: AlertEngine::new(AlertRules::default()),
            seen: SeenIds::default(),
            slowest: None,
            newest: NOT_YET,
            log_now: NOT_YET,
            restored_files: BTreeMap::new(),
        }
    }

    /// The watermark: the lowest event time reached by any active partition,
    /// minus the allowed lateness (a partition that sent nothing for the idle
    /// timeout does not hold it back; when every partition is idle, the highest
    /// counts). It never goes back.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark.get()
    }

    /// The batch layer's boundary B, as last told.
    pub fn batch_boundary(&self) -> Option<i64> {
        self.batch_boundary
    }

    /// Tells the state the batch layer's boundary B (`None`: not known; the
    /// last one told stays). B may move back — a batch restarted with a
    /// larger lateness, or on a fresh lake — and the state follows: windows
    /// are never brought back by it (eviction is one-way, `evicted_before`).
    pub fn set_batch_boundary(&mut self, boundary: Option<i64>) {
        if boundary.is_some() {
            self.batch_boundary = boundary;
        }
    }

    /// Registers a partition that has records to deliver before its first
    /// one arrives: until it delivers (or goes idle) it holds the watermark
    /// back, so records read from the other partitions first — on a restart
    /// or a replay, one fetch can bring minutes of one partition — do not
    /// make its events late.
    pub fn expect_partition(&mut self, topic: &str, partition: u32) {
        if !self.has_clock(topic, partition) {
            self.clocks.push(PartitionClock {
                topic: topic.to_string(),
                partition,
                max_ts: NOT_YET,
                idle: false,
                appended: NOT_YET,
            });
            self.slowest = None;
        }
    }

    fn recompute_watermark(&mut self) {
        let active = self
            .clocks
            .iter()
            .filter(|c| !c.idle)
            .map(|c| c.max_ts)
            .min();
        self.slowest = active;
        if active == Some(NOT_YET) {
            return;
        }
        let reached = active.or_else(|| self.clocks.iter().map(|c| c.max_ts).max());
        if let Some(reached) = reached.filter(|r| *r != NOT_YET) {
            let candidate = reached - self.allowed_lateness_ms;
            if self.watermark.advance(candidate) {
                // A window the watermark closes forgets its ids at once, at
                // this event, not at the end of the fetch: whether a later
                // event with one of them counts must not depend on where
                // fetches (or a restart) cut the log.
                self.seen.drop_before(floor_to(candidate, MINUTE_MS));
                let from = self.alerts.judged_before();
                let windows = self.windows.range(from..).map(|(s, w)| (*s, &w.views));
                self.alerts.on_watermark(candidate, windows);
            }
        }
    }

    /// Sets the next offset to read of `topic`/`partition` (a partition's
    /// entry found by a walk of a few: no key built for a lookup).
    pub(crate) fn set_offset(&mut self, topic: &str, partition: u32, offset: u64) {
        let found = self
            .offsets
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic);
        match found {
            Some((_, next)) => *next = offset,
            None => {
                self.offsets.insert((topic.to_string(), partition), offset);
            }
        }
    }

    /// Marks a partition idle (no record for the idle timeout) or active again.
    pub fn set_idle(&mut self, topic: &str, partition: u32, idle: bool) {
        if let Some(clock) = self.clock_mut(topic, partition)
            && clock.idle != idle
        {
            clock.idle = idle;
            self.recompute_watermark();
        }
    }

    /// The log's clock: the newest append timestamp read (`None` before any).
    pub fn log_time(&self) -> Option<i64> {
        (self.log_now != NOT_YET).then_some(self.log_now)
    }

    /// `topic`/`partition` delivered records appended up to `ts` (their
    /// record timestamps: the collector stamps each with the time it took
    /// it): the log's clock moves on to it, and so does the partition's
    /// own once it has a clock.
    pub fn appended(&mut self, topic: &str, partition: u32, ts: i64) {
        self.log_now = self.log_now.max(ts);
        if let Some(clock) = self.clock_mut(topic, partition) {
            clock.appended = clock.appended.max(ts);
        }
    }

    /// What a record appended at `appended` tells the log's clock, which
    /// stands at `now`, read at wall-clock time `wall` (all ms): its own
    /// time; the wall clock's if it is ahead of it (one record stamped a
    /// year ahead — a producer's clock, on Kafka — would otherwise mark
    /// every other partition idle at once, and a checkpoint would keep
    /// the clock there); `now` if it has no timestamp (0 or less, as the
    /// Kafka reader gives one without: it sends now, and moves nothing).
    /// The live loop and a replay read the log's time through this.
    pub(crate) fn log_time_of(appended: i64, now: i64, wall: i64) -> i64 {
        if appended <= 0 {
            now
        } else {
            appended.min(wall)
        }
    }

    /// An idle timeout in ms (a longer one than `i64` holds: `i64::MAX`).
    pub(crate) fn timeout_ms(timeout: std::time::Duration) -> i64 {
        i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether `topic`/`partition` has a clock.
    pub(crate) fn has_clock(&self, topic: &str, partition: u32) -> bool {
        self.clocks
            .iter()
            .any(|c| c.partition == partition && c.topic == topic)
    }

    /// `topic`/`partition`'s clock, if it has one.
    fn clock_mut(&mut self, topic: &str, partition: u32) -> Option<&mut PartitionClock> {
        self.clocks
            .iter_mut()
            .find(|c| c.partition == partition && c.topic == topic)
    }

    /// Marks idle every active partition that has sent nothing for longer
    /// than `timeout_ms` by the log's clock ([`SpeedState::log_time`]),
    /// but those `spared` names. One whose last append is not known (a
    /// partition expected, or restored from a checkpoint older than the
    /// field) counts from now. Returns the log time before which no
    /// partition can go idle (`i64::MIN`: the log's clock has not started).
    ///
    /// The live loop and a replay (kappa) both mark partitions idle through
    /// this, on the same append timestamps: where the live loop used its
    /// own clock, a restart could not tell which partitions it had marked,
    /// nor when.
    ///
    /// `newcomer`: a partition without a clock sends at this time. The
    /// watermark is then worked out again when the next clock moves — its
    /// first event's, which makes its clock — as if the clock had been
    /// there (an expected partition holds the watermark until its first
    /// record): worked out now, with every known partition idle the highest
    /// clock would count, and the newcomer's first events, behind it,
    /// would be late. (One whose records are all invalid makes no clock:
    /// the watermark then waits for another clock to move.)
    pub(crate) fn mark_idle(
        &mut self,
        timeout_ms: i64,
        spared: impl Fn(&PartitionClock) -> bool,
        newcomer: bool,
    ) -> i64 {
        let now = self.log_now;
        if now == NOT_YET {
            return NOT_YET;
        }
        let deadline = |last: i64| last.saturating_add(timeout_ms).saturating_add(1);
        // With no partition active, the next to send cannot go idle before
        // the timeout after now.
        let mut next = deadline(now);
        let mut went_idle = false;
        for clock in self.clocks.iter_mut().filter(|c| !c.idle) {
            if clock.appended == NOT_YET {
                clock.appended = now;
            }
            if spared(clock) {
                continue;
            }
            if now.saturating_sub(clock.appended) > timeout_ms {
                clock.idle = true;
                went_idle = true;
            } else {
                next = next.min(deadline(clock.appended));
            }
        }
        if went_idle {
            match newcomer {
                // The next clock to move works it out.
                true => self.slowest = None,
                false => self.recompute_watermark(),
            }
        }
        next
    }

    /// Folds one event in from a partition-less source (tests, replays):
    /// one clock for all of it.
    pub fn apply(&mut self, event: &Event) -> Applied {
        self.apply_from("", 0, event)
    }

    /// Folds one event read from `topic`/`partition` in, unless it is late
    /// or a duplicate; the partition's clock moves either way.
    pub fn apply_from(&mut self, topic: &str, partition: u32, event: &Event) -> Applied {
        self.apply_at(topic, partition, &event.to_ref(), event.ts)
    }

    /// Folds one event read from the log in, moving its partition's clock to
    /// `clock_ts` (see [`lambda_events::event::clock_ts`]): an event stamped
    /// ahead of the time it was written counts in its own window but does not
    /// drag the watermark past the log's clock.
    pub fn apply_at(
        &mut self,
        topic: &str,
        partition: u32,
        event: &EventRef<'_>,
        clock_ts: i64,
    ) -> Applied {
        let hash = IdHash::of(&event.event_id);
        self.apply_hashed(topic, partition, event, clock_ts, hash)
    }

    /// Reads the id index where these ids' hashes would be, before a chunk
    /// of events is folded with [`SpeedState::apply_hashed`] (see
    /// [`SeenIds::touch`]).
    pub fn touch_ids(&self, hashes: impl IntoIterator<Item = IdHash>) {
        let read: usize = hashes.into_iter().map(|h| self.seen.touch(h)).sum();
        std::hint::black_box(read);
    }

    /// [`SpeedState::apply_at`] with the hash of the event's id worked out
    /// already (`IdHash::of(&event.event_id)`; outside the state's lock).
    pub fn apply_hashed(
        &mut self,
        topic: &str,
        partition: u32,
        event: &EventRef<'_>,
        clock_ts: i64,
        id_hash: IdHash,
    ) -> Applied {
        let mut place = ClockPlace::default();
        self.apply_in_run(&mut place, topic, partition, event, clock_ts, id_hash)
    }

    /// [`SpeedState::apply_hashed`] for one of a run of records of one
    /// partition: `place` is where its clock is, found at the run's first
    /// record (start each run with `ClockPlace::default()`; see
    /// [`ClockPlace`]).
    pub(crate) fn apply_in_run(
        &mut self,
        place: &mut ClockPlace,
        topic: &str,
        partition: u32,
        event: &EventRef<'_>,
        clock_ts: i64,
        id_hash: IdHash,
    ) -> Applied {
        let applied = self.fold(event, id_hash);
        let found = match place.0 {
            // The partition is checked (an integer), not the topic's name.
            Some(at)
                if self
                    .clocks
                    .get(at)
                    .is_some_and(|c| c.partition == partition) =>
            {
                Some(at)
            }
            _ => self
                .clocks
                .iter()
                .position(|c| c.partition == partition && c.topic == topic),
        };
        debug_assert!(found.is_none_or(|at| self.clocks[at].topic == topic));
        match found.and_then(|at| self.clocks.get_mut(at).map(|clock| (at, clock))) {
            Some((at, clock)) => {
                place.0 = Some(at);
                let was = clock.max_ts;
                let moved = clock_ts > was || clock.idle;
                // The slowest active clock decides the watermark: a clock
                // ahead of it moving on changes nothing, so the clocks are
                // not walked again for it.
                let may_decide = clock.idle || self.slowest.is_none_or(|slowest| was <= slowest);
                clock.max_ts = was.max(clock_ts);
                clock.idle = false;
                if moved && may_decide {
                    self.recompute_watermark();
                }
            }
            None => {
                place.0 = Some(self.clocks.len());
                self.clocks.push(PartitionClock {
                    topic: topic.to_string(),
                    partition,
                    max_ts: clock_ts,
                    idle: false,
                    appended: NOT_YET,
                });
                self.recompute_watermark();
            }
        }
        if clock_ts > self.newest {
            self.newest = clock_ts;
            self.keep_horizon();
        }
        applied
    }

    /// Where the horizon starts: a window more than the horizon before the
    /// watermark the newest partition clock would give is out of the state.
    fn horizon_start(&self) -> Option<i64> {
        (self.newest != NOT_YET).then(|| {
            let newest = self.newest.saturating_sub(self.allowed_lateness_ms);
            floor_to(newest.saturating_sub(self.horizon_ms), MINUTE_MS)
        })
    }

    /// Moves the horizon on at this event, as the watermark closes windows
    /// at the event that moves it: what falls behind is late from here on
    /// and forgets its ids now (its views go at the next [`SpeedState::evict`]),
    /// so where fetches end changes nothing.
    fn keep_horizon(&mut self) {
        if let Some(start) = self.horizon_start()
            && start > self.evicted_before
        {
            self.evicted_before = start;
            self.seen.drop_before(start);
        }
    }

    fn fold(&mut self, event: &EventRef<'_>, id_hash: IdHash) -> Applied {
        let start = floor_to(event.ts, MINUTE_MS);
        if start < self.evicted_before || self.watermark().is_some_and(|w| start + MINUTE_MS <= w) {
            ledger_late(&mut self.late_ledger, (event.topic(), start), 1);
            self.counters.late += 1;
            return Applied::Late;
        }
        // One id is one event (DESIGN §3), whatever its `ts`: a resend
        // stamped into another open window is a duplicate too. (A window
        // drops its ids as the watermark closes it; see
        // `recompute_watermark`.)
        if !self.seen.insert(start, &event.event_id, id_hash) {
            self.counters.duplicates += 1;
            return Applied::Duplicate;
        }
        // Most events are of the newest window: its entry is at the end.
        let window = match self.windows.last_entry() {
            Some(newest) if *newest.key() == start => newest.into_mut(),
            _ => self.windows.entry(start).or_default(),
        };
        window.views.add(event);
        self.alerts.on_event(event);
        self.seq += 1;
        window.version = self.seq;
        self.counters.counted += 1;
        self.max_event_ts = Some(self.max_event_ts.map_or(event.ts, |m| m.max(event.ts)));
        Applied::Counted
    }

    /// Drops windows (and ledger entries) that start more than the horizon
    /// before the watermark the newest partition clock would give, or more
    /// than [`BOUNDARY_MARGIN_MS`] before the batch boundary B (those buckets
    /// are the batch layer's). The horizon is measured from the newest clock,
    /// not from the watermark (the slowest active clock): one partition stuck
    /// in the past holds the watermark, and with it every window, but not
    /// memory — the state stays within the horizon of the newest event time.
    /// Windows the watermark has closed but that are kept have dropped their
    /// id sets: an event for a closed window is late before its id is looked
    /// at.
    pub fn evict(&mut self) -> usize {
        let Some(watermark) = self.watermark() else {
            return 0;
        };
        let closed_before = floor_to(watermark, MINUTE_MS);
        let by_watermark = floor_to(watermark.saturating_sub(self.horizon_ms), MINUTE_MS);
        let by_horizon = self
            .horizon_start()
            .map_or(by_watermark, |start| start.max(by_watermark));
        let by_boundary = self
            .batch_boundary
            .map_or(i64::MIN, |b| b - BOUNDARY_MARGIN_MS);
        let keep_from = by_horizon.max(by_boundary);
        self.evicted_before = self.evicted_before.max(keep_from);
        self.seen.drop_before(closed_before.max(keep_from));
        self.seen.tidy();
        let kept = self.windows.split_off(&keep_from);
        let evicted = std::mem::replace(&mut self.windows, kept).len();
        self.late_ledger.retain(|(_, start), _| *start >= keep_from);
        evicted
    }

    /// `(topic, partition, next offset)`, sorted.
    pub fn offsets_list(&self) -> Vec<(String, u32, u64)> {
        self.offsets
            .iter()
            .map(|((t, p), o)| (t.clone(), *p, *o))
            .collect()
    }

    /// Puts `(topic, window start, late events)` entries in the late
    /// ledger (a checkpoint's), within its bound.
    pub(crate) fn set_ledger(&mut self, entries: impl IntoIterator<Item = (Topic, i64, u64)>) {
        self.late_ledger.clear();
        for (topic, start, n) in entries {
            ledger_late(&mut self.late_ledger, (topic, start), n);
        }
    }

    /// `(topic, window start, late events)`, sorted.
    pub fn ledger_list(&self) -> Vec<(Topic, i64, u64)> {
        self.late_ledger
            .iter()
            .map(|((t, s), n)| (*t, *s, *n))
            .collect()
    }

    /// Late events per topic in the ledger (within the horizon, and the
    /// ledger's bound: [`MAX_LATE_LEDGER_ENTRIES`]).
    pub fn late_by_topic(&self) -> BTreeMap<Topic, u64> {
        let mut out = BTreeMap::new();
        for ((topic, _), n) in &self.late_ledger {
            let sum: &mut u64 = out.entry(*topic).or_default();
            *sum = sum.saturating_add(*n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_events::EventType;

    fn click(id: &str, ts: i64) -> Event {
        let mut e = Event::bare(id, EventType::Click, ts);
        e.user_id = Some("u".into());
        e
    }

    fn len_bound() -> i64 {
        MAX_LATE_LEDGER_ENTRIES as i64
    }

    /// The late ledger keeps [`MAX_LATE_LEDGER_ENTRIES`] entries and not
    /// one more, with no horizon to trim it (kappa's): a late event of a
    /// new minute past the bound takes the oldest minute's place, an older
    /// one is counted late and not itemised; a checkpoint holds the same
    /// entries, and restoring keeps the bound.
    #[test]
    fn the_late_ledger_keeps_its_bound_without_a_horizon() {
        let mut state = SpeedState::new(0, i64::MAX / 4);
        let now = 1_700_000_040_000;
        assert_eq!(state.apply(&click("now", now)), Applied::Counted);
        // One late event in each of as many minutes as the bound, every
        // other minute from the oldest on.
        let oldest = floor_to(now, MINUTE_MS) - 2 * (len_bound() + 10) * MINUTE_MS;
        for i in 0..len_bound() {
            let late = click(&format!("l{i}"), oldest + i * MINUTE_MS * 2);
            assert_eq!(state.apply(&late), Applied::Late, "{i}");
        }
        let len = MAX_LATE_LEDGER_ENTRIES;
        assert_eq!(state.late_ledger.len(), len, "at the bound: all kept");
        // Into a minute the ledger holds: counted there, nothing goes.
        assert_eq!(state.apply(&click("again", oldest)), Applied::Late);
        assert_eq!(state.late_ledger.get(&(Topic::Funnel, oldest)), Some(&2));
        // One more minute, newer than the oldest: the oldest goes.
        let newer = oldest + MINUTE_MS;
        assert_eq!(state.apply(&click("newer", newer)), Applied::Late);
        assert_eq!(state.late_ledger.len(), len);
        assert_eq!(state.late_ledger.get(&(Topic::Funnel, oldest)), None);
        assert_eq!(state.late_ledger.get(&(Topic::Funnel, newer)), Some(&1));
        // Older than every minute held: counted late, not itemised.
        let older = oldest - MINUTE_MS;
        assert_eq!(state.apply(&click("older", older)), Applied::Late);
        assert_eq!(state.late_ledger.get(&(Topic::Funnel, older)), None);
        assert_eq!(state.late_ledger.len(), len);
        assert_eq!(state.counters.late, len as u64 + 3);
        // A checkpoint holds what the state holds; one over the bound (an
        // older release's) is restored within it, the oldest minute gone.
        let bytes = crate::checkpoint::encode(&state);
        let restored = crate::checkpoint::decode(&bytes, 0, i64::MAX / 4).expect("restored");
        assert_eq!(restored.ledger_list(), state.ledger_list());
        let mut over = state.ledger_list();
        over.push((Topic::Iot, now - MINUTE_MS, 1));
        let mut trimmed = SpeedState::new(0, i64::MAX / 4);
        trimmed.set_ledger(over.iter().copied());
        assert_eq!(trimmed.late_ledger.len(), len);
        assert_eq!(trimmed.late_ledger.get(&(Topic::Funnel, newer)), None);
        assert_eq!(
            trimmed.late_ledger.get(&(Topic::Iot, now - MINUTE_MS)),
            Some(&1)
        );
    }

    #[test]
    fn late_events_go_to_the_ledger_and_duplicates_are_dropped() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let t0 = 1_700_000_040_000; // 40 s into a minute
        assert_eq!(state.apply(&click("a", t0)), Applied::Counted);
        assert_eq!(state.apply(&click("a", t0)), Applied::Duplicate);
        // Advance event time by 3 minutes: the watermark is 2 minutes past t0.
        assert_eq!(state.apply(&click("b", t0 + 180_000)), Applied::Counted);
        // t0's window ended at t0 + 20 s, before the watermark: late.
        assert_eq!(state.apply(&click("c", t0 + 1_000)), Applied::Late);
        // An event within the allowed lateness of the newest is still counted.
        assert_eq!(state.apply(&click("d", t0 + 130_000)), Applied::Counted);
        let start = floor_to(t0, MINUTE_MS);
        assert_eq!(state.late_ledger.get(&(Topic::Funnel, start)), Some(&1));
        assert_eq!(state.windows[&start].views.funnel[""].clicks, 1);
        assert_eq!(
            state.counters,
            SpeedCounters {
                counted: 3,
                duplicates: 1,
                late: 1,
                invalid: 0
            }
        );
    }

    /// A windows stamp moves with every change to a window in its range and
    /// with nothing else; a state of another epoch stamps apart.
    #[test]
    fn a_windows_stamp_moves_with_the_windows_in_its_range_only() {
        let m = MINUTE_MS;
        let t0 = 1_699_999_980_000; // on a minute boundary
        let mut state = SpeedState::new(10 * m, 3_600_000);
        let hour = t0..t0 + 60 * m;
        let first = t0..t0 + m;
        let empty = state.windows_stamp(hour.clone());
        state.apply(&click("a", t0));
        state.apply(&click("b", t0 + m));
        let both = state.windows_stamp(hour.clone());
        assert_ne!(both, empty, "windows added");
        let before = state.windows_stamp(first.clone());
        // A change to minute 1: the hour moves, minute 0 does not.
        state.apply(&click("c", t0 + m + 1));
        assert_ne!(state.windows_stamp(hour.clone()), both);
        assert_eq!(state.windows_stamp(first.clone()), before);
        // A change to minute 0, the older window (its version was the lower).
        let hour_then = state.windows_stamp(hour.clone());
        state.apply(&click("d", t0 + 2));
        assert_ne!(state.windows_stamp(first.clone()), before);
        assert_ne!(state.windows_stamp(hour.clone()), hour_then);
        // Nothing changed, nothing moves; a late event or a duplicate is no change.
        let now = state.windows_stamp(hour.clone());
        state.apply(&click("d", t0 + 3));
        assert_eq!(state.windows_stamp(hour.clone()), now);
        // A window evicted: the count falls.
        let kept = state.windows.split_off(&(t0 + m));
        state.windows = kept;
        assert_ne!(state.windows_stamp(hour.clone()), now);
        // An empty range, and a range the wrong way round, hold nothing.
        assert_eq!(state.windows_stamp(t0..t0), state.windows_stamp(t0 + m..t0));
        // A state of another epoch with the same windows stamps apart.
        let mut other = state.clone();
        other.epoch = new_epoch();
        assert_ne!(other.windows_stamp(hour.clone()), state.windows_stamp(hour));
    }

    /// One id is one event whatever its `ts`: a resend stamped into another
    /// open window is a duplicate (the batch layer keeps the first too).
    #[test]
    fn a_resend_stamped_into_another_open_window_is_a_duplicate() {
        let mut state = SpeedState::new(10 * MINUTE_MS, 3_600_000);
        let t0 = 1_699_999_980_000; // on a minute boundary
        assert_eq!(state.apply(&click("a", t0)), Applied::Counted);
        assert_eq!(
            state.apply(&click("a", t0 + 2 * MINUTE_MS)),
            Applied::Duplicate
        );
        assert_eq!(state.apply(&click("a", t0 - MINUTE_MS)), Applied::Duplicate);
        assert_eq!(
            state.apply(&click("b", t0 + 2 * MINUTE_MS)),
            Applied::Counted
        );
        let clicks: u64 = state
            .windows
            .values()
            .map(|w| w.views.funnel.get("").map_or(0, |f| f.clicks))
            .sum();
        assert_eq!(clicks, 2);
        assert_eq!(state.counters.duplicates, 2);
        // The duplicate stamped a minute before opened no window there.
        assert!(!state.windows.contains_key(&(t0 - MINUTE_MS)));
    }

    /// A clock place found for one partition's run is not taken for
    /// another partition's record: that record gets its own clock.
    #[test]
    fn a_clock_place_serves_only_its_own_partition() {
        let t0 = 1_699_999_980_000;
        let mut state = SpeedState::new(60_000, 3_600_000);
        let mut place = ClockPlace::default();
        let hash = |e: &Event| IdHash::of(&e.event_id);
        let (a, b) = (click("a", t0), click("b", t0 + 5 * MINUTE_MS));
        state.apply_in_run(&mut place, "t", 0, &a.to_ref(), a.ts, hash(&a));
        assert_eq!(place, ClockPlace(Some(0)));
        state.apply_in_run(&mut place, "t", 1, &b.to_ref(), b.ts, hash(&b));
        assert_eq!(place, ClockPlace(Some(1)));
        let clocks: Vec<(u32, i64)> = state
            .clocks
            .iter()
            .map(|c| (c.partition, c.max_ts))
            .collect();
        assert_eq!(clocks, [(0, t0), (1, t0 + 5 * MINUTE_MS)]);
        // The watermark is the slowest clock's, as `apply_from` gives.
        let mut from = SpeedState::new(60_000, 3_600_000);
        from.apply_from("t", 0, &a);
        from.apply_from("t", 1, &b);
        assert_eq!(state.watermark(), from.watermark());
        assert_eq!(state.watermark(), Some(t0 - 60_000));
    }

    /// A window's ids go when the watermark closes it, at that event: an id
    /// met again after that counts (in an open window) whether or not a
    /// fetch — where `evict` runs — ended in between, so a restart, which
    /// re-reads the log in other fetches, gives the same views.
    #[test]
    fn whether_an_id_counts_again_does_not_depend_on_where_fetches_end() {
        let t0 = 1_699_999_980_000; // on a minute boundary
        let events = [
            click("a", t0 + 10_000),
            // The watermark moves to t0 + 2 min: the windows at t0 and
            // t0 + 1 min close.
            click("b", t0 + 3 * MINUTE_MS),
            click("a", t0 + 150_000),
        ];
        let mut outcomes = Vec::new();
        for evict_after_each in [false, true] {
            let mut state = SpeedState::new(MINUTE_MS, 3_600_000);
            let mut applied = Vec::new();
            for event in &events {
                applied.push(state.apply(event));
                if evict_after_each {
                    state.evict();
                }
            }
            state.evict();
            let clicks: u64 = state
                .windows
                .values()
                .map(|w| w.views.funnel.get("").map_or(0, |f| f.clicks))
                .sum();
            outcomes.push((applied, clicks));
        }
        assert_eq!(outcomes[0], outcomes[1]);
        assert_eq!(
            outcomes[0],
            (vec![Applied::Counted; 3], 3),
            "its first window had closed: the id is not known any more"
        );
    }

    /// The watermark only moves forward, whatever it is told; B follows
    /// the batch layer (it may go back), and `None` keeps the last one.
    #[test]
    fn the_watermark_never_goes_back() {
        let mut w = Watermark::default();
        assert_eq!(w.get(), None);
        assert!(w.advance(10));
        assert!(!w.advance(5), "lower: refused");
        assert!(!w.advance(10), "equal: no move");
        assert!(w.advance(11));
        assert_eq!(w.get(), Some(11));
        let mut state = SpeedState::new(60_000, 3_600_000);
        state.set_batch_boundary(Some(1_000));
        state.set_batch_boundary(None);
        assert_eq!(state.batch_boundary(), Some(1_000));
        state.set_batch_boundary(Some(500));
        assert_eq!(state.batch_boundary(), Some(500));
    }

    #[test]
    fn the_window_holding_the_watermark_stays_open() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let t0 = 1_699_999_980_000; // on a minute boundary
        state.apply(&click("a", t0 + 90_000)); // watermark t0 + 30 s
        // The window [t0, t0+60 s) contains the watermark: not closed, so not late.
        assert_eq!(state.apply(&click("b", t0 + 5_000)), Applied::Counted);
        assert_eq!(state.apply(&click("c", t0 - 1)), Applied::Late);
    }

    #[test]
    fn eviction_keeps_the_horizon() {
        let mut state = SpeedState::new(0, 10 * MINUTE_MS);
        let t0 = 1_699_999_980_000; // on a minute boundary
        for i in 0..30 {
            state.apply(&click(&format!("e{i}"), t0 + i * MINUTE_MS));
        }
        let evicted = state.evict();
        assert_eq!(evicted, 19);
        assert_eq!(state.windows.len(), 11);
        assert_eq!(*state.windows.keys().next().unwrap(), t0 + 19 * MINUTE_MS);
        // Events for evicted windows are late, even if the watermark alone would allow them.
        assert_eq!(
            state.apply(&click("old", t0 + 18 * MINUTE_MS)),
            Applied::Late
        );
    }

    /// A partition that keeps sending old events holds the watermark (and
    /// the windows open), but the state still keeps only the horizon of the
    /// newest partition's time: memory does not grow with history.
    #[test]
    fn a_partition_stuck_in_the_past_does_not_hold_memory() {
        let mut state = SpeedState::new(0, 10 * MINUTE_MS);
        let t0 = 1_699_999_980_000; // on a minute boundary
        for i in 0..60 {
            state.apply_from("clicks", 0, &click(&format!("e{i}"), t0 + i * MINUTE_MS));
            state.apply_from("clicks", 1, &click(&format!("stuck{i}"), t0));
            state.evict();
        }
        assert_eq!(state.watermark(), Some(t0), "the stuck partition holds it");
        assert_eq!(state.windows.len(), 11, "the horizon of the newest clock");
        assert_eq!(*state.windows.keys().next().unwrap(), t0 + 49 * MINUTE_MS);
        assert!(state.seen.len() <= 11, "ids of the kept windows only");
        // What the horizon dropped is late, as it is for a moving watermark.
        assert_eq!(
            state.apply_from("clicks", 1, &click("x", t0)),
            Applied::Late
        );
    }

    /// The horizon moves at the event that moves the newest clock, as the
    /// watermark closes windows: with a partition stuck in the past, whether
    /// an id met again still counts as a duplicate does not depend on where
    /// fetches (where `evict` runs) ended.
    #[test]
    fn what_the_horizon_drops_does_not_depend_on_where_fetches_end() {
        let t0 = 1_699_999_980_000; // on a minute boundary
        let mut outcomes = Vec::new();
        for evict_after_each in [false, true] {
            let mut state = SpeedState::new(0, 2 * 60 * MINUTE_MS);
            let mut applied = Vec::new();
            for (partition, id, ts) in [
                (1, "stuck", t0),
                (0, "x", t0 + 10 * MINUTE_MS),
                // The newest clock moves to t0 + 3 h: the horizon starts at
                // t0 + 1 h, and x's first window is out of it.
                (0, "y", t0 + 180 * MINUTE_MS),
                (0, "x", t0 + 90 * MINUTE_MS),
                (1, "stuck-again", t0),
            ] {
                applied.push(state.apply_from("clicks", partition, &click(id, ts)));
                if evict_after_each {
                    state.evict();
                }
            }
            state.evict();
            outcomes.push((applied, state.windows.keys().copied().collect::<Vec<_>>()));
        }
        assert_eq!(outcomes[0], outcomes[1]);
        assert_eq!(
            outcomes[0].0,
            [
                Applied::Counted,
                Applied::Counted,
                Applied::Counted,
                Applied::Counted,
                Applied::Late
            ]
        );
    }

    /// 128 events stamped four minutes ahead of the log's clock (within the
    /// ahead bound) count in their windows, but the watermark follows the
    /// log's clock: on-time events that come next are not late.
    #[test]
    fn events_stamped_ahead_of_the_log_do_not_drag_the_watermark() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let now = 1_700_000_000_000;
        state.apply_at("t", 0, &click("first", now).to_ref(), now);
        for i in 0..128 {
            let ahead = click(&format!("ahead-{i}"), now + 4 * MINUTE_MS);
            let clock = lambda_events::event::clock_ts(ahead.ts, now + i);
            assert_eq!(
                state.apply_at("t", 0, &ahead.to_ref(), clock),
                Applied::Counted
            );
        }
        assert_eq!(state.watermark(), Some(now + 127 - 60_000));
        let on_time = click("on-time", now + 1_000);
        assert_eq!(
            state.apply_at("t", 0, &on_time.to_ref(), now + 2_000),
            Applied::Counted,
            "an on-time event after the ones stamped ahead is not late"
        );
        // Without the clamp (the clock at the events' own time) it would have been.
        let mut unclamped = SpeedState::new(60_000, 3_600_000);
        unclamped.apply_from("t", 0, &click("ahead", now + 4 * MINUTE_MS));
        assert_eq!(unclamped.apply_from("t", 0, &on_time), Applied::Late);
    }

    #[test]
    fn the_watermark_equals_the_slowest_active_clock_worked_out_from_scratch() {
        // The fold skips clocks ahead of the slowest one: check it against
        // the definition after every step of a long shuffled sequence.
        let lateness = 60_000;
        let mut state = SpeedState::new(lateness, i64::MAX / 4);
        let t0 = 1_699_999_980_000;
        let mut max_ts = [None::<i64>; 4];
        let mut idle = [false; 4];
        let mut expected: Option<i64> = None;
        let mut x: u64 = 7;
        for i in 0..20_000u32 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let partition = ((x >> 33) % 4) as usize;
            if (x >> 20) % 50 == 0 {
                let now_idle = !idle[partition];
                idle[partition] = now_idle;
                state.set_idle("t", partition as u32, now_idle);
            } else {
                let ts = t0 + (i64::from(i) * 1_000) + ((x >> 40) % 300_000) as i64 - 150_000;
                state.apply_from("t", partition as u32, &click(&format!("e{i}"), ts));
                max_ts[partition] = Some(max_ts[partition].map_or(ts, |m| m.max(ts)));
                idle[partition] = false;
            }
            let seen: Vec<usize> = (0..4).filter(|p| max_ts[*p].is_some()).collect();
            let active = seen
                .iter()
                .filter(|p| !idle[**p])
                .map(|p| max_ts[*p].unwrap())
                .min();
            let reached = active.or_else(|| seen.iter().map(|p| max_ts[*p].unwrap()).max());
            if let Some(reached) = reached {
                expected = Some(expected.map_or(reached - lateness, |e| e.max(reached - lateness)));
            }
            assert_eq!(state.watermark(), expected, "step {i}");
        }
    }

    #[test]
    fn the_watermark_is_the_slowest_active_partition_and_never_goes_back() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let t0 = 1_699_999_980_000;
        state.apply_from("t", 0, &click("a", t0 + 10 * MINUTE_MS));
        assert_eq!(state.watermark(), Some(t0 + 9 * MINUTE_MS));
        state.apply_from("t", 1, &click("b", t0 + 2 * MINUTE_MS));
        // Partition 1 is behind: it holds the watermark (which does not go back).
        assert_eq!(state.watermark(), Some(t0 + 9 * MINUTE_MS));
        state.apply_from("t", 0, &click("c", t0 + 20 * MINUTE_MS));
        assert_eq!(
            state.watermark(),
            Some(t0 + 9 * MINUTE_MS),
            "held by partition 1"
        );
        // An event for minute 5 is not late: partition 1 has not got that far.
        assert_eq!(
            state.apply_from("t", 0, &click("d", t0 + 11 * MINUTE_MS)),
            Applied::Counted
        );
        // Partition 1 goes idle: it no longer holds the watermark back.
        state.set_idle("t", 1, true);
        assert_eq!(state.watermark(), Some(t0 + 19 * MINUTE_MS));
        assert_eq!(
            state.apply_from("t", 0, &click("e", t0 + 11 * MINUTE_MS)),
            Applied::Late
        );
        // It sends again, behind: active again, but the watermark does not go back.
        state.apply_from("t", 1, &click("f", t0 + 3 * MINUTE_MS));
        assert!(!state.clocks[1].idle);
        assert_eq!(state.watermark(), Some(t0 + 19 * MINUTE_MS));
        // ... and holds further progress until it catches up.
        state.apply_from("t", 0, &click("g", t0 + 30 * MINUTE_MS));
        assert_eq!(state.watermark(), Some(t0 + 19 * MINUTE_MS));
        state.apply_from("t", 1, &click("h", t0 + 25 * MINUTE_MS));
        assert_eq!(state.watermark(), Some(t0 + 24 * MINUTE_MS));
        // Every partition idle: the furthest counts.
        state.set_idle("t", 0, true);
        state.set_idle("t", 1, true);
        assert_eq!(state.watermark(), Some(t0 + 29 * MINUTE_MS));
    }

    #[test]
    fn windows_well_before_the_batch_boundary_are_evicted() {
        let mut state = SpeedState::new(60_000, 24 * 60 * MINUTE_MS);
        let t0 = 1_699_999_980_000;
        for i in 0..30 {
            state.apply(&click(&format!("e{i}"), t0 + i * MINUTE_MS));
        }
        assert_eq!(state.evict(), 0, "the horizon alone keeps everything");
        state.batch_boundary = Some(t0 + 20 * MINUTE_MS);
        assert_eq!(state.evict(), 15);
        assert_eq!(*state.windows.keys().next().unwrap(), t0 + 15 * MINUTE_MS);
    }

    #[test]
    fn an_expected_partition_holds_the_watermark_until_it_delivers() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let t0 = 1_699_999_980_000;
        state.expect_partition("t", 1);
        // Minutes of partition 0 first, as one fetch on a restart may bring them.
        state.apply_from("t", 0, &click("a", t0 + 10 * MINUTE_MS));
        assert_eq!(state.watermark(), None, "partition 1 has not delivered");
        assert_eq!(state.apply_from("t", 1, &click("b", t0)), Applied::Counted);
        assert_eq!(state.watermark(), Some(t0 - MINUTE_MS));
        // Idle, it stops holding it back like any other partition.
        state.expect_partition("t", 2);
        assert_eq!(
            state.apply_from("t", 1, &click("c", t0 + 5 * MINUTE_MS)),
            Applied::Counted
        );
        assert_eq!(state.watermark(), Some(t0 - MINUTE_MS));
        state.set_idle("t", 2, true);
        assert_eq!(state.watermark(), Some(t0 + 4 * MINUTE_MS));
    }

    #[test]
    fn closed_windows_drop_their_ids_and_still_answer() {
        let mut state = SpeedState::new(60_000, i64::MAX / 4);
        let t0 = 1_699_999_980_000; // on a minute boundary
        for i in 0..10 {
            state.apply(&click(&format!("e{i}"), t0 + i * MINUTE_MS));
        }
        assert_eq!(state.evict(), 0);
        // The watermark is t0 + 8 min: windows up to t0 + 7 min are closed.
        let with_ids: Vec<i64> = state
            .seen
            .windows()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(s, _)| (s - t0) / MINUTE_MS)
            .collect();
        assert_eq!(with_ids, vec![8, 9]);
        assert_eq!(state.windows.len(), 10, "closed windows are kept");
        assert_eq!(state.windows[&t0].views.funnel[""].clicks, 1);
        // A resend for a closed window is late, as before.
        assert_eq!(state.apply(&click("e0", t0)), Applied::Late);
        assert_eq!(
            state.apply(&click("e9", t0 + 9 * MINUTE_MS)),
            Applied::Duplicate
        );
    }
}
