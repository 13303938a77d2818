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

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Event, Topic, floor_to};
use lambda_log::{EventLog, FetchPosition, LogError, Record, ValueRecord, ValueSpan};

use crate::SpeedViews;
use crate::consumer::{Slot, Slots};
use crate::window::{Applied, ClockPlace, SpeedState};

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

/// Where a record comes in append order: its record timestamp (when it was
/// appended: the collector stamps each record with the time it took it).
/// Records of one timestamp in different partitions go in the order of
/// their lanes (the spans' order; callers give them by topic, then
/// partition — the order the live loop folds a fetch's partitions in).
type AppendKey = i64;

/// One partition being read: a span of the log (where the next fetch
/// starts, the end, and records fetched — 48 bytes each, what the fold
/// reads of a record: its topic and partition are the lane's), of which
/// `span.records[taken..]` are not taken by the merge yet (those from
/// `start` to `taken` are being folded, read where they are; those before
/// `start` are folded, and let go when the lane is next fetched into).
/// The log appends each fetched record to its lane's span
/// ([`EventLog::fetch_values`]): the refill moved each record a fetch
/// brought (128 bytes, its topic's name and key shared by counted
/// references) into its lane, ~3 % of the replay's samples in `perf`.
struct Lane {
    span: ValueSpan,
    taken: usize,
    start: usize,
    /// Live: the last fetch read the partition to its end, after the
    /// log's promise ([`EventLog::complete_before`]) was read. Every
    /// record stamped before it is then fetched, and the lane holds back
    /// nothing of the merge when it has no record left.
    caught_up: bool,
    /// Live, on a log that promises nothing (Kafka): the partition's end
    /// when the loop started. Until the lane reads that far it has not
    /// caught up, so the backlog a restart finds is merged in append order
    /// as a whole, not a fetch at a time.
    until: u64,
}

impl Lane {
    /// Records fetched and not taken yet.
    fn pending(&self) -> usize {
        self.span.records.len() - self.taken
    }

    /// The next record not taken.
    fn front(&self) -> Option<&ValueRecord> {
        self.span.records.get(self.taken)
    }

    /// Records still due and none fetched: the merge waits for this lane.
    fn dry(&self) -> bool {
        self.pending() == 0 && self.span.position.offset < self.span.end && !self.caught_up
    }

    /// The offset of the lane's first record not folded, `next` being its
    /// index in the lane's records.
    fn offset_at(&self, next: usize) -> u64 {
        self.span
            .records
            .get(next)
            .map_or(self.span.position.offset, |r| r.offset)
    }
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
    let fold = Fold { keep, idle_timeout };
    replay_fetching(log, spans, state, fold, progress, FETCH_MAX_RECORDS).await
}

/// How a replay folds: the minutes whose late and counted events it keeps,
/// the live loop's idle timeout.
struct Fold {
    keep: Range<i64>,
    idle_timeout: Duration,
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
    let Fold { keep, idle_timeout } = fold;
    let mut lanes = Lanes::new(spans);
    let mut folded = Folded {
        idleness: Idleness::new(idle_timeout, lanes.lanes.len(), &state),
        log_stamped: log.complete_before().is_some(),
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
    // A live loop taking over the state carries on from the ends, and
    // counts idleness from the partitions' last appends.
    folded.idleness.tell(&mut state, &lanes.lanes);
    for span in spans {
        let key = (span.topic.clone(), span.partition);
        state.offsets.insert(key, span.end);
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

/// How long a live fetch waits while the merge holds records back for the
/// log's promise to pass them ([`Live::fetch`]): the promise moves with
/// the log's clock, a millisecond at a time — or when the group being
/// written is readable, so the wait doubles, up to [`HOLD_WAIT_MAX`],
/// while nothing comes of it (a write stuck on a slow disk: one fetch a
/// millisecond was a fifth of a core).
const HOLD_WAIT: Duration = Duration::from_millis(1);
const HOLD_WAIT_MAX: Duration = Duration::from_millis(64);

/// The live speed layer's reading of the log: its partitions merged in
/// append order, as a replay merges them, through the same fold. A record
/// is folded once the merge knows it comes next: every partition either
/// holds a later record or was read to its end after the log promised
/// that nothing stamped before the record is still to come
/// ([`EventLog::complete_before`]); the newest millisecond waits for the
/// next fetch. So the live loop, a restart from any of its checkpoints and
/// a replay of the log long after fold the same records in the same
/// order, wherever fetches cut the log, and drop, count and mark idle
/// alike. (The loop used to fold each fetch a partition at a time: two
/// requests that a fetch met one after the other were folded in another
/// order after a restart.) On a log that promises nothing (Kafka), each
/// fetch's records are folded in append order.
pub struct Live {
    lanes: Lanes,
    folded: Folded,
    /// The lane of each record the merge takes (kept from fetch to fetch).
    order: Vec<u32>,
    fetch_max: usize,
    /// Offsets moved without a fold (a retention skip, the start): the
    /// state is told at the next fold.
    moved: bool,
    /// How long the next fetch waits while records are held back.
    hold_wait: Duration,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let positions: Vec<&FetchPosition> =
            self.lanes.lanes.iter().map(|l| &l.span.position).collect();
        f.debug_struct("Live")
            .field("positions", &positions)
            .field("records", &self.folded.records)
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Reads from `positions` (the state's offsets, or the log's start)
    /// into `state`, whose idleness goes on from its last appends and log
    /// clock; `fetch_max` records at most per fetch. `ends`: each
    /// position's partition end when the loop starts (or none), the
    /// backlog merged as a whole on a log that promises nothing. Invalid
    /// records are turned into dead-letter records ([`Live::fold`]) if
    /// `dead_letter`, else counted.
    pub fn new(
        positions: &[FetchPosition],
        ends: &[u64],
        state: &SpeedState,
        idle_timeout: Duration,
        dead_letter: bool,
        fetch_max: usize,
    ) -> Live {
        let spans: Vec<ReplaySpan> = positions
            .iter()
            .map(|p| ReplaySpan {
                topic: p.topic.clone(),
                partition: p.partition,
                start: p.offset,
                end: u64::MAX,
            })
            .collect();
        let mut lanes = Lanes::new(&spans);
        for (lane, end) in lanes.lanes.iter_mut().zip(ends) {
            lane.until = *end;
        }
        let folded = Folded {
            dead_letters: dead_letter.then(Vec::new),
            idleness: Idleness::new(idle_timeout, lanes.lanes.len(), state),
            ..Folded::default()
        };
        Live {
            lanes,
            folded,
            order: Vec::new(),
            fetch_max,
            moved: true,
            hold_wait: HOLD_WAIT,
        }
    }

    /// Fetches what the partitions hold past what was fetched, waiting up
    /// to `max_wait` for a record (a millisecond while the merge holds
    /// records back). On an error nothing was fetched.
    pub async fn fetch(
        &mut self,
        log: &dyn EventLog,
        max_wait: Duration,
    ) -> Result<lambda_log::ValuesRead, LogError> {
        let wait = match self.holding() {
            true => max_wait.min(self.hold_wait),
            false => max_wait,
        };
        let read = self.lanes.fetch(log, self.fetch_max, wait, true).await?;
        Ok(read.unwrap_or_default())
    }

    /// Folds into the state behind `views` every record the merge can take
    /// (letting readers in every [`PIECE`] records), sets each partition's
    /// offset in it to its first record not folded, and evicts. Returns
    /// the dead-letter records of the invalid records folded.
    pub fn fold(&mut self, views: &SpeedViews) -> Vec<Record> {
        self.order.clear();
        self.lanes.merge(&mut self.order);
        self.hold_wait = match self.order.is_empty() && self.holding() {
            true => (self.hold_wait * 2).min(HOLD_WAIT_MAX),
            false => HOLD_WAIT,
        };
        if self.order.is_empty() && !self.moved {
            return Vec::new();
        }
        self.folded.log_stamped = self.lanes.promised;
        let mut state = views.write();
        if !self.order.is_empty() {
            self.folded
                .fold(&mut state, &self.lanes.lanes, &self.order, &(0..0));
        }
        let lanes = &self.lanes.lanes;
        self.folded.tell(&mut state, lanes, |l| lanes[l].taken);
        state.evict();
        self.moved = false;
        self.folded
            .dead_letters
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Whether records fetched wait to be folded.
    fn holding(&self) -> bool {
        self.lanes.lanes.iter().any(|l| l.pending() > 0)
    }

    /// Records folded so far.
    pub fn records(&self) -> u64 {
        self.folded.records
    }

    /// Moves the next fetch of `topic`/`partition` on to `offset`
    /// (retention dropped what was before it); never back (a Kafka error
    /// may name another partition than the one out of range), and the
    /// records already fetched are still folded.
    pub fn skip_to(&mut self, topic: &str, partition: u32, offset: u64) {
        for lane in
            self.lanes.lanes.iter_mut().filter(|l| {
                l.span.position.partition == partition && l.span.position.topic == topic
            })
        {
            let position = &mut lane.span.position;
            position.offset = position.offset.max(offset);
            lane.caught_up = false;
        }
        self.lanes.reheads();
        self.moved = true;
    }
}

/// The partitions being replayed, merged in append order.
struct Lanes {
    lanes: Vec<Lane>,
    /// The lanes' first buffered records, merged: the next record in
    /// append order is the winner's.
    heads: Tournament,
    /// Lanes with records due and none fetched: while there is one, the
    /// next record in append order is not known.
    dry: usize,
    /// Fetches in a row that brought nothing of use.
    empty_in_a_row: u32,
    /// Bytes of the records fetched into the lanes (keys and values).
    bytes: u64,
    /// Live: the merge takes only records whose key is below this (those
    /// stamped before the log's promise); `u64::MAX` otherwise.
    bound: HeadKey,
    /// Live: whether the log made a promise at the last fetch.
    promised: bool,
}

impl Lanes {
    fn new(spans: &[ReplaySpan]) -> Lanes {
        let lanes: Vec<Lane> = spans
            .iter()
            .filter(|s| s.start < s.end)
            .map(|s| Lane {
                span: ValueSpan {
                    position: FetchPosition {
                        topic: s.topic.clone(),
                        partition: s.partition,
                        offset: s.start,
                    },
                    end: s.end,
                    records: Vec::new(),
                },
                taken: 0,
                start: 0,
                caught_up: false,
                until: 0,
            })
            .collect();
        Lanes {
            dry: lanes.len(),
            heads: Tournament::new(lanes.len()),
            lanes,
            empty_in_a_row: 0,
            bytes: 0,
            bound: HeadKey::MAX,
            promised: false,
        }
    }

    /// Appends to `order` the lane of each record taken next in append
    /// order (record timestamp, then lane), until a lane with records
    /// due has none fetched (the next record is not known then) or every
    /// lane is read to its end.
    fn merge(&mut self, order: &mut Vec<u32>) {
        while self.dry == 0 {
            let first = self.heads.first();
            if first >= self.bound {
                return;
            }
            let Some(i) = self.heads.winner() else {
                return;
            };
            order.push(i as u32);
            let lane = &mut self.lanes[i];
            lane.taken += 1;
            let next = lane.front().map(|r| self.heads.key(r.timestamp_ms, i));
            if next.is_none() && lane.dry() {
                self.dry += 1;
            }
            self.heads.replace_winner(next);
        }
    }

    /// Whether every lane is read to its end and folded.
    fn finished(&self) -> bool {
        self.heads.winner().is_none() && self.dry == 0
    }

    /// A replay's fetch ([`Lanes::fetch`]): retention moving on while we
    /// read skips what is gone; a transient error waits a little; a log
    /// that keeps answering nothing below the end offsets is an error.
    async fn refill(&mut self, log: &dyn EventLog, fetch_max: usize) -> anyhow::Result<()> {
        let read = match self.fetch(log, fetch_max, FETCH_MAX_WAIT, false).await {
            Ok(Some(read)) => read,
            Ok(None) => return Ok(()),
            Err(LogError::OffsetOutOfRange {
                topic,
                partition,
                start,
                ..
            }) => {
                // Retention moved on while we read: what is gone is gone.
                let mut moved = false;
                for lane in self.lanes.iter_mut().filter(|l| {
                    l.span.position.topic == topic && l.span.position.partition == partition
                }) {
                    let span = &mut lane.span;
                    let offset = span.position.offset.max(start).min(span.end);
                    moved |= offset != span.position.offset;
                    span.position.offset = offset;
                }
                self.dry = self.lanes.iter().filter(|l| l.dry()).count();
                // (Asked past the partition's end, nothing moves: counted
                // as a fetch that brought nothing, or it was asked forever.)
                return if moved {
                    self.empty_in_a_row = 0;
                    Ok(())
                } else {
                    self.nothing_of_use("offsets out of range")
                };
            }
            Err(error) if error.is_transient() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return self.nothing_of_use(&error.to_string());
            }
            Err(error) => return Err(error).context("replay fetch"),
        };
        if read.records > 0 {
            self.empty_in_a_row = 0;
            return Ok(());
        }
        self.nothing_of_use("nothing")
    }

    /// Fetches for the lanes that ran dry, and those running low beside
    /// them: each lane a share of `fetch_max`, as the live loop
    /// fetches every partition at once. (A lane that ran dry alone used to
    /// get all of them: 12 lanes then held 50 000 records, out of cache by
    /// the time they were folded, and the replay ran at 0.85× the live
    /// fold.) `None`: no lane was asked. On an error the lanes are as they
    /// were ([`EventLog::fetch_values`]).
    ///
    /// `live`: the lanes have no end, and the merge takes only what the
    /// log promises is complete: records stamped before its
    /// [`EventLog::complete_before`], read before the fetch, once every
    /// lane either holds a record or read its partition to the end (a
    /// lane that filled its share may hold more in the log). On a log that
    /// promises nothing (Kafka), whatever a fetch brought.
    async fn fetch(
        &mut self,
        log: &dyn EventLog,
        fetch_max: usize,
        max_wait: Duration,
        live: bool,
    ) -> Result<Option<lambda_log::ValuesRead>, LogError> {
        let due = |l: &Lane| l.span.position.offset < l.span.end;
        let reading = self.lanes.iter().filter(|l| due(l)).count();
        let share = (fetch_max / reading.max(1)).max(1);
        // What was taken has been folded. A lane holding at most half a
        // share lets it go now (its untaken records move to the front: at
        // most half a share); one holding more (it is not fetched into
        // this time) keeps it until then, its next round starting after
        // it. Moving every lane's untaken records at every refill was
        // 0.9 % of the replay's instructions (callgrind).
        let mut asked_lanes = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if lane.pending() <= share / 2 {
                lane.span.records.drain(..lane.taken);
                lane.taken = 0;
            }
            lane.start = lane.taken;
            if due(lane) && lane.pending() <= share / 2 {
                asked_lanes.push((i, lane.span.records.len()));
            }
        }
        if asked_lanes.is_empty() {
            if live {
                // Every lane holds records (or there is none): only the
                // promise moves, and a lane may not hold all those stamped
                // before it. (No lane: the wait a fetch would have been,
                // not a loop that spins.)
                tokio::time::sleep(max_wait).await;
                for lane in &mut self.lanes {
                    lane.caught_up = false;
                }
                self.bound = self.bound_of(log.complete_before());
                self.dry = self.lanes.iter().filter(|l| l.dry()).count();
            }
            return Ok(None);
        }
        // Read before the fetch: what is stamped before it is in the log
        // by then.
        let promise = if live { log.complete_before() } else { None };
        let mut asking = vec![false; self.lanes.len()];
        for (i, _) in &asked_lanes {
            asking[*i] = true;
        }
        let mut asked: Vec<&mut ValueSpan> = Vec::new();
        for (lane, ask) in self.lanes.iter_mut().zip(asking) {
            if !ask {
                continue;
            }
            // Room for its share up front: a lane's buffer grown a
            // record at a time was copied as it doubled (~2 % of the
            // benchmark's replay, which starts with empty lanes). Room
            // for a share and a half from the first: a lane is asked
            // again holding up to half a share, and a buffer of one
            // share then moved to grow.
            let pending = lane.pending();
            lane.span
                .records
                .reserve((share + share / 2).saturating_sub(pending));
            asked.push(&mut lane.span);
        }
        let max_records = share.saturating_mul(asked.len());
        let read = log.fetch_values(&mut asked, max_records, max_wait).await?;
        self.bytes += read.bytes;
        if live {
            // A lane not asked holds records, but may not hold all those
            // stamped before the new promise: the merge waits for it once
            // it runs out.
            for lane in &mut self.lanes {
                lane.caught_up = false;
            }
            self.empty_in_a_row = match read.records {
                0 => self.empty_in_a_row.saturating_add(1),
                _ => 0,
            };
            if promise.is_none() && self.empty_in_a_row > EMPTY_FETCHES_ALLOWED {
                // The ends reported at start are not reached (a log whose
                // end counts offsets it delivers no record for): the
                // backlog is over.
                for lane in self.lanes.iter_mut().filter(|l| l.until > 0) {
                    tracing::warn!(
                        topic = %lane.span.position.topic,
                        partition = lane.span.position.partition,
                        offset = lane.span.position.offset,
                        end = lane.until,
                        "the log delivers nothing up to the end it reported at start; folding on"
                    );
                    lane.until = 0;
                }
            }
            for (i, before) in asked_lanes {
                let lane = &mut self.lanes[i];
                lane.caught_up = match promise {
                    // Read to the partition's end.
                    Some(_) => lane.span.records.len() - before < share,
                    // Past the backlog the loop started with.
                    None => lane.span.position.offset >= lane.until,
                };
            }
            self.bound = self.bound_of(promise);
            self.promised = promise.is_some();
        }
        self.reheads();
        Ok(Some(read))
    }

    /// Every lane's head set to its first record not taken, and the lanes
    /// running dry counted again.
    fn reheads(&mut self) {
        for (i, lane) in self.lanes.iter().enumerate() {
            self.heads
                .set(i, lane.front().map(|r| self.heads.key(r.timestamp_ms, i)));
        }
        // New heads: every match played again (a few per lane).
        self.heads.play_all();
        self.dry = self.lanes.iter().filter(|l| l.dry()).count();
    }

    /// The merge's bound for the log's promise `promise` (none: no bound).
    fn bound_of(&self, promise: Option<i64>) -> HeadKey {
        promise.map_or(HeadKey::MAX, |before| self.heads.key(before, 0))
    }

    /// A fetch brought nothing of use (`what`: nothing, or the error it
    /// ended in): past [`EMPTY_FETCHES_ALLOWED`] in a row, the replay fails
    /// naming the partitions it waits for.
    fn nothing_of_use(&mut self, what: &str) -> anyhow::Result<()> {
        self.empty_in_a_row += 1;
        if self.empty_in_a_row <= EMPTY_FETCHES_ALLOWED {
            return Ok(());
        }
        let missing: Vec<String> = self
            .lanes
            .iter()
            .filter(|l| l.pending() == 0 && l.span.position.offset < l.span.end)
            .map(|l| {
                let p = &l.span.position;
                format!(
                    "{}/{} at {} of {}",
                    p.topic, p.partition, p.offset, l.span.end
                )
            })
            .collect();
        anyhow::bail!(
            "replay: the log stopped delivering before the end offsets ({} fetches in a row, the last: {what}): {}",
            self.empty_in_a_row,
            missing.join(", ")
        )
    }
}

/// A tournament of losers over the lanes' heads (their first records not
/// taken, by [`AppendKey`] then lane): the winner is the least, and when
/// it is replaced only the matches on its way up are played again — one
/// comparison per level, three for eight lanes. (A binary heap sifted
/// twice as many, each a branch the lanes' alternating records made
/// unpredictable: the merge was ~9 % of `lambda bench speed`'s replay.)
/// Each node holds its loser's key itself, the lane inside it: a match
/// reads one node, at an address known before the match below it is
/// decided. (Nodes that held a lane, whose key was then looked up, made
/// each level two loads, the second waiting on the first and on the match
/// below: the merge's time in `perf` was mostly those waits.)
#[derive(Debug)]
struct Tournament {
    /// Each lane's head ([`Tournament::key`]; a lane without a head, and
    /// the leaves past the last lane, [`Tournament::no_head`]).
    heads: Vec<HeadKey>,
    /// `nodes[0]`: the winner's key; `nodes[n]` for `n` in `1..width`: the
    /// loser's key of the match at node `n` (children `2n` and `2n + 1`;
    /// lane `i`'s leaf is `width + i`).
    nodes: Vec<HeadKey>,
    /// Leaves: the lanes, to a power of two.
    width: usize,
    /// The low bits of a key that hold its lane (enough for `width`, and
    /// at least one).
    lane_bits: u32,
    /// A timestamp's place in the high bits: its value with the sign bit
    /// flipped (so that it compares as an unsigned integer), less this,
    /// and at most `last_time`; `last_time + 1` marks a lane without a head.
    time_offset: u64,
    last_time: u64,
}

/// A head's key: see [`Tournament::key`].
type HeadKey = u64;

impl Tournament {
    fn new(lanes: usize) -> Tournament {
        let width = lanes.next_power_of_two();
        let lane_bits = width.trailing_zeros().max(1);
        let time_bits = 64 - lane_bits;
        let mut tournament = Tournament {
            heads: Vec::new(),
            nodes: Vec::new(),
            width,
            lane_bits,
            // The timestamps from -2^(time_bits - 1) to 2^(time_bits - 1) - 2
            // ms keep their place: ±2^58 ms around 1970 for 24 lanes, ±278
            // years for a million.
            time_offset: (1 << 63) - (1 << (time_bits - 1)),
            last_time: (1 << time_bits) - 2,
        };
        tournament.heads = (0..width).map(|lane| tournament.no_head(lane)).collect();
        tournament.nodes = vec![tournament.no_head(0); width];
        tournament.play_all();
        tournament
    }

    /// A record's [`AppendKey`] and its lane as one integer that compares
    /// as `(AppendKey, lane)` does: the timestamp in the high bits (one
    /// further from 1970 than the bits hold goes in at the bound, then
    /// ties with the others there), the lane in the low ones. (One
    /// comparison a level: a key of two 64-bit halves took 24 instructions
    /// a level of the tournament, and 192 bits had taken 28.)
    fn key(&self, timestamp: AppendKey, lane: usize) -> HeadKey {
        let time = ((timestamp as u64) ^ (1 << 63))
            .saturating_sub(self.time_offset)
            .min(self.last_time);
        (time << self.lane_bits) | lane as u64
    }

    /// The key of lane `lane` without a head: after every record's, and
    /// still naming its lane.
    fn no_head(&self, lane: usize) -> HeadKey {
        ((self.last_time + 1) << self.lane_bits) | lane as u64
    }

    /// Whether `key` is a lane's without a head.
    fn is_no_head(&self, key: HeadKey) -> bool {
        key >> self.lane_bits > self.last_time
    }

    /// The lane a key names.
    fn lane_of(&self, key: HeadKey) -> usize {
        (key & ((1 << self.lane_bits) - 1)) as usize
    }

    /// Sets lane `lane`'s head (its key); [`Tournament::play_all`] must follow.
    fn set(&mut self, lane: usize, head: Option<HeadKey>) {
        self.heads[lane] = head.unwrap_or_else(|| self.no_head(lane));
    }

    /// Plays every match from the leaves up.
    fn play_all(&mut self) {
        let width = self.width;
        // The winner of each node's subtree; a leaf's is its lane's head.
        let mut winners: Vec<HeadKey> = vec![0; 2 * width];
        winners[width..].copy_from_slice(&self.heads);
        for node in (1..width).rev() {
            let (left, right) = (winners[2 * node], winners[2 * node + 1]);
            winners[node] = left.min(right);
            self.nodes[node] = left.max(right);
        }
        self.nodes[0] = winners[1];
    }

    /// The first head's key.
    fn first(&self) -> HeadKey {
        self.nodes[0]
    }

    /// The lane with the first head (`None`: no lane has one).
    fn winner(&self) -> Option<usize> {
        let top = self.nodes[0];
        (!self.is_no_head(top)).then(|| self.lane_of(top))
    }

    /// The winner's head is now `head`: the matches on its way up are
    /// played again. Without a branch: which lane wins is a coin toss
    /// when the lanes' records alternate, and a mispredicted branch per
    /// level cost more than the comparison.
    fn replace_winner(&mut self, head: Option<HeadKey>) {
        let lane = self.lane_of(self.nodes[0]);
        let mut key = head.unwrap_or_else(|| self.no_head(lane));
        self.heads[lane] = key;
        let mut node = (self.width + lane) / 2;
        while node >= 1 {
            let held = self.nodes[node];
            let (won, lost) = std::hint::select_unpredictable(held < key, (held, key), (key, held));
            self.nodes[node] = lost;
            key = won;
            node /= 2;
        }
        self.nodes[0] = key;
    }
}

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
struct Ring<'a> {
    /// The run decoded (used again in place, run after run).
    slots: Slots<'a>,
    /// Slots of the run decoded, and how many of them are folded.
    len: usize,
    folded: usize,
    /// The lane's next record to decode (an index into its buffer).
    next: usize,
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
const PIECE: usize = 256;

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
struct Folded {
    /// Each lane's decoded run (the allocations kept from refill to refill).
    rings: Vec<Ring<'static>>,
    /// Where each lane's partition clock is in the state (the replay owns
    /// the state throughout: a place found stays right).
    clocks: Vec<ClockPlace>,
    late: BTreeMap<i64, Vec<Event>>,
    counted_in_keep: HashSet<String>,
    records: u64,
    /// Dead-letter records of the invalid records folded since the last
    /// refill (`None`: they are only counted).
    dead_letters: Option<Vec<Record>>,
    idleness: Idleness,
    /// The log stamps records by its own clock and none ahead of it
    /// ([`EventLog::complete_before`]): a record's time is not bounded by
    /// the reader's wall clock ([`SpeedState::log_time_of`]), which after
    /// a step back is behind the log's — the live loop and a replay long
    /// after would otherwise read it differently.
    log_stamped: bool,
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
struct Idleness {
    timeout_ms: i64,
    /// Each lane's newest append timestamp (`i64::MIN`: none yet), told
    /// to the state when partitions are marked and at the end.
    last: Vec<i64>,
    /// The newest append timestamp met (the state's log clock at the start).
    now: i64,
    /// No partition can go idle before this time.
    next_check: i64,
    /// The wall clock when this refill's records were folded (ms): an
    /// append timestamp ahead of it counts as this
    /// ([`SpeedState::log_time_of`]).
    wall: i64,
}

impl Idleness {
    fn new(timeout: Duration, lanes: usize, state: &SpeedState) -> Idleness {
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
    fn mark(
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
    fn tell(&self, state: &mut SpeedState, lanes: &[Lane]) {
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
    fn fold<H: Holding>(
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
    fn tell(&self, state: &mut SpeedState, lanes: &[Lane], next: impl Fn(usize) -> usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_log::StoredRecord;

    fn append_key(record: &StoredRecord) -> AppendKey {
        record.record.timestamp_ms
    }
    use proptest::prelude::*;

    /// An empty record of `topic`/`partition` at `offset`, stamped `ts`.
    fn stamped(topic: &std::sync::Arc<str>, partition: u32, offset: u64, ts: i64) -> StoredRecord {
        StoredRecord {
            topic: topic.clone(),
            partition,
            offset,
            record: lambda_log::Record {
                key: None,
                value: Default::default(),
                timestamp_ms: ts,
                headers: Vec::new(),
            },
        }
    }

    /// A fold keeping `keep`, whose partitions never go idle.
    fn never_idle(keep: Range<i64>) -> Fold {
        Fold {
            keep,
            idle_timeout: Duration::from_secs(u64::MAX / 2_000),
        }
    }

    /// A partition that sends nothing for longer than the idle timeout —
    /// by the records' append timestamps — stops holding the watermark
    /// back, as the live loop marks it idle: an event 8 minutes behind
    /// the other partition's, appended 2.7 s after the quiet partition's
    /// last record, is late with a 2 s timeout and counted with a 3 s one
    /// (the partition still holds the watermark 60 s behind its own
    /// event). Partitions the state knows from before the replay that
    /// send nothing in it count from its first record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_quiet_for_the_idle_timeout_stops_holding_the_watermark() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = three_funnel_partitions(dir.path()).await;
        let (t, appended) = (1_767_225_600_000_i64, 1_767_229_200_000_i64);
        for record in [
            click("b1", t, 1, appended),
            click("a1", t + 600_000, 0, appended + 100),
            click("a2", t + 120_000, 0, appended + 2_700),
        ] {
            log.append("funnel-events", vec![record])
                .await
                .expect("appended");
        }
        let spans = spans_to(&log, |_, _, end| Some(end)).await.expect("spans");
        let config = crate::SpeedConfig::with_data_dir(dir.path());
        for (timeout_ms, late) in [(2_000, 1), (2_699, 1), (2_700, 0), (3_000, 0)] {
            let replayed = replay(
                &log,
                &spans,
                crate::empty_state(&config),
                0..0,
                Duration::from_millis(timeout_ms),
                |_| {},
            )
            .await
            .expect("replayed");
            let counters = replayed.state.counters();
            assert_eq!(
                (counters.counted, counters.late),
                (3 - late, late),
                "idle timeout {timeout_ms} ms"
            );
        }

        // Partition 2, known from before the replay (a restored clock)
        // and silent in it, goes idle the timeout after the replay's first
        // record: partition 1 then moves the watermark alone.
        log.append(
            "funnel-events",
            vec![click("b2", t + 1_000, 1, appended + 5_000)],
        )
        .await
        .expect("appended");
        let mut restored = crate::empty_state(&config);
        restored.expect_partition("funnel-events", 2);
        let spans: Vec<ReplaySpan> =
            spans_to(&log, |_, partition, end| (partition == 1).then_some(end))
                .await
                .expect("spans");
        for (timeout_ms, watermark) in [(5_000, None), (4_999, Some(t + 1_000 - 60_000))] {
            let replayed = replay(
                &log,
                &spans,
                restored.clone(),
                0..0,
                Duration::from_millis(timeout_ms),
                |_| {},
            )
            .await
            .expect("replayed");
            assert_eq!(
                replayed.state.watermark(),
                watermark,
                "idle timeout {timeout_ms} ms"
            );
        }

        // A record stamped a year ahead of the wall clock (a producer's
        // clock) moves the log's clock only to about the wall clock's
        // time (the log stamps it by its clock, which follows the wall
        // clock): it does not mark partition 1, which sent a second
        // before, idle.
        let now = chrono::Utc::now().timestamp_millis();
        for record in [
            click("b3", t + 2_000, 1, now - 1_000),
            click("a3", t + 3_000, 0, now + 31_536_000_000),
        ] {
            log.append("funnel-events", vec![record])
                .await
                .expect("appended");
        }
        let spans = spans_to(&log, |_, _, end| Some(end)).await.expect("spans");
        let replayed = replay(
            &log,
            &spans,
            crate::empty_state(&config),
            0..0,
            Duration::from_secs(30),
            |_| {},
        )
        .await
        .expect("replayed");
        let state = &replayed.state;
        let wall = chrono::Utc::now().timestamp_millis();
        assert!(
            state.log_time().is_some_and(|at| at <= wall + 60_000),
            "{:?}",
            state.log_time()
        );
        let idle: Vec<(u32, bool)> = state
            .clocks()
            .iter()
            .map(|c| (c.partition, c.idle))
            .collect();
        assert_eq!(idle, [(1, false), (0, false)]);
    }

    /// Records of one millisecond (one request's) send together: the
    /// live loop meets them in one fetch and marks none of their
    /// partitions idle, and neither does a replay, whichever partition it
    /// folds first. And a partition new to the state that sends when every
    /// partition it knows goes idle joins the watermark before its first
    /// event is judged, as one it knew would (the highest idle clock
    /// counted, and the event was late).
    #[tokio::test]
    async fn records_of_one_millisecond_send_together_and_a_newcomer_is_not_late() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = three_funnel_partitions(dir.path()).await;
        let (t, a) = (1_767_225_600_000_i64, 1_767_229_200_000_i64);
        let reading = |id: &str, ts: i64, at: i64| {
            let line = format!(
                r#"{{"event_id":"{id}","ts":{ts},"event_type":"sensor_reading","device_id":"d","sensor":"t","value":1.5}}"#
            );
            lambda_log::Record::keyed("d", line.into_bytes(), at)
        };
        let config = crate::SpeedConfig::with_data_dir(dir.path());
        // Partition 1 quiet for 2.5 s, then one request: b2 on partition
        // 1, a2 on partition 0 (folded first), and an IoT reading.
        log.append("funnel-events", vec![click("b1", t + 60_000, 1, a)])
            .await
            .expect("appended");
        log.append("funnel-events", vec![click("a1", t + 60_000, 0, a + 100)])
            .await
            .expect("appended");
        log.append("iot-events", vec![reading("i1", t + 60_000, a + 200)])
            .await
            .expect("appended");
        log.append(
            "funnel-events",
            vec![
                click("b2", t + 120_000, 1, a + 2_600),
                click("a2", t + 600_000, 0, a + 2_600),
            ],
        )
        .await
        .expect("appended");
        log.append("iot-events", vec![reading("i2", t + 120_000, a + 2_600)])
            .await
            .expect("appended");
        let state = replay_all(&log, &config).await;
        assert_eq!(
            (state.counters().counted, state.counters().late),
            (6, 0),
            "b2 and i2 sent with a2: counted"
        );
        assert!(state.clocks().iter().all(|c| !c.idle));

        // Partitions 0 and 1 and the IoT one quiet for 2.5 s more; then
        // partition 2's first record, behind their clocks.
        log.append(
            "funnel-events",
            vec![click("c1", t + 300_000, 2, a + 5_100)],
        )
        .await
        .expect("appended");
        let state = replay_all(&log, &config).await;
        assert_eq!(
            (state.counters().counted, state.counters().late),
            (7, 0),
            "c1 counted"
        );
        assert_eq!(state.watermark(), Some(t + 240_000));
    }

    /// An embedded log in `dir` with three `funnel-events` partitions and
    /// one `iot-events` partition.
    async fn three_funnel_partitions(dir: &std::path::Path) -> lambda_log::EmbeddedLog {
        let log = lambda_log::EmbeddedLog::open(dir.join("log"), Default::default())
            .await
            .expect("the log");
        log.create_topic("funnel-events", 3).await.expect("a topic");
        log.create_topic("iot-events", 1).await.expect("a topic");
        log
    }

    /// A click at `ts` by a user on `funnel-events`/`partition` (of three),
    /// appended at `at`.
    fn click(id: &str, ts: i64, partition: u32, at: i64) -> lambda_log::Record {
        let user = crate::key_on(partition, 3);
        let line = format!(
            r#"{{"event_id":"{id}","ts":{ts},"event_type":"click","user_id":"{user}","campaign_id":"c"}}"#
        );
        lambda_log::Record::keyed(user, line.into_bytes(), at)
    }

    /// All of `log` replayed into an empty state, with a 2 s idle timeout.
    async fn replay_all(log: &lambda_log::EmbeddedLog, config: &crate::SpeedConfig) -> SpeedState {
        let spans = spans_to(log, |_, _, end| Some(end)).await.expect("spans");
        let state = crate::empty_state(config);
        replay(log, &spans, state, 0..0, Duration::from_secs(2), |_| {})
            .await
            .expect("replayed")
            .state
    }

    fn lanes_of(partitions: &[Vec<i64>]) -> Lanes {
        let topic: std::sync::Arc<str> = "funnel-events".into();
        let lanes = partitions
            .iter()
            .enumerate()
            .map(|(p, stamps)| Lane {
                span: ValueSpan {
                    position: FetchPosition {
                        topic: topic.to_string(),
                        partition: p as u32,
                        offset: stamps.len() as u64,
                    },
                    end: stamps.len() as u64,
                    records: stamps
                        .iter()
                        .enumerate()
                        .map(|(offset, &ts)| ValueRecord {
                            value: Default::default(),
                            timestamp_ms: ts,
                            offset: offset as u64,
                        })
                        .collect(),
                },
                taken: 0,
                start: 0,
                caught_up: false,
                until: 0,
            })
            .collect::<Vec<_>>();
        let mut heads = Tournament::new(lanes.len());
        for (i, lane) in lanes.iter().enumerate() {
            let head = lane.front().map(|r| heads.key(r.timestamp_ms, i));
            heads.set(i, head);
        }
        heads.play_all();
        Lanes {
            lanes,
            heads,
            dry: 0,
            empty_in_a_row: 0,
            bytes: 0,
            bound: HeadKey::MAX,
            promised: false,
        }
    }

    /// A replay folds what one fold of the same records in append order
    /// does (record timestamp, then lane): however the
    /// fetches cut the lanes, and whatever runs each lane is decoded in.
    /// Late, repeated and malformed events among them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replay_folds_what_one_fold_in_append_order_does() {
        use lambda_events::{Event, EventRef, event::clock_ts};
        use lambda_ingest::generator::{Generator, GeneratorConfig};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = lambda_log::EmbeddedLog::open(dir.path().join("log"), Default::default())
            .await
            .expect("the log");
        let log = std::sync::Arc::new(log);
        for topic in Topic::ALL {
            log.create_topic(topic.name(), 3).await.expect("a topic");
        }
        let mut generator = Generator::new(GeneratorConfig {
            seed: 11,
            start_ms: 1_767_225_600_000,
            rate: 2.0,
            users: 40,
            devices: 4,
            late_fraction: 0.05,
            duplicate_fraction: 0.05,
            malformed_fraction: 0.02,
            ..GeneratorConfig::default()
        });
        // Records stamped when they are written (the newest event time so
        // far): a late event's record comes in its place in the log, not
        // at its event's time. Every fifth is stamped with its event's own
        // time instead, so stamps also go back within a partition.
        let mut now = 1_767_225_600_000;
        for i in 0..1_200 {
            let line = generator.next_line().bytes;
            let (topic, stamp) = match Event::from_json(&line) {
                Ok(event) => {
                    now = now.max(event.ts);
                    (event.topic(), if i % 5 == 0 { event.ts } else { now })
                }
                Err(_) => (Topic::Funnel, now),
            };
            let record = lambda_log::Record::keyed(format!("k{}", i % 7), line, stamp);
            log.append(topic.name(), vec![record])
                .await
                .expect("appended");
        }
        let spans = spans_to(log.as_ref(), |_, _, end| Some(end))
            .await
            .expect("spans");
        let config = crate::SpeedConfig::with_data_dir(dir.path());

        // The reference: the records merged one at a time (the least
        // (append key, lane) of the partitions' next records each time —
        // a sort would move a record stamped back ahead of its partition's
        // earlier ones), each folded in turn.
        let mut partitions = Vec::new();
        for span in spans.iter().filter(|s| s.start < s.end) {
            let position = FetchPosition {
                topic: span.topic.clone(),
                partition: span.partition,
                offset: 0,
            };
            let fetched = log
                .fetch(&[position], 100_000, Duration::from_millis(10))
                .await
                .expect("fetched");
            assert_eq!(fetched.len() as u64, span.end);
            partitions.push(std::collections::VecDeque::from(fetched));
        }
        let mut records = Vec::new();
        while let Some(lane) = (0..partitions.len())
            .filter_map(|lane| partitions[lane].front().map(|r| (append_key(r), lane)))
            .min()
            .map(|(_, lane)| lane)
        {
            records.extend(partitions[lane].pop_front());
        }
        let mut expected = crate::empty_state(&config);
        let mut counted = HashSet::new();
        let mut bytes = 0;
        for stored in &records {
            let record = &stored.record;
            bytes += record.size() as u64;
            match EventRef::from_log_record(&record.value, &stored.topic, record.timestamp_ms) {
                Ok(event) => {
                    let clock = clock_ts(event.ts, record.timestamp_ms);
                    let applied = expected.apply_at(&stored.topic, stored.partition, &event, clock);
                    if applied == Applied::Counted {
                        counted.insert(event.event_id.to_string());
                    }
                }
                Err(_) => expected.counters.invalid += 1,
            }
        }
        // Once, at the end, where the replay evicts after each refill: what
        // the horizon has passed is late from the event that moves it on,
        // whenever its views go (see `SpeedState::keep_horizon`).
        expected.evict();
        // And the log's clock, each partition's last append with it.
        for stored in &records {
            expected.appended(&stored.topic, stored.partition, stored.record.timestamp_ms);
        }
        for span in &spans {
            expected
                .offsets
                .insert((span.topic.clone(), span.partition), span.end);
        }
        assert!(expected.counters.invalid > 0, "some records are malformed");
        assert!(expected.counters.late > 0, "some events are late");
        assert!(
            expected.counters.duplicates > 0,
            "some events are sent twice"
        );

        // One record a fetch, a few, and all at once; reading in place (a
        // worker of this multi-threaded runtime) and, on a current-thread
        // runtime, on the blocking pool.
        for fetch_max in [1, 5, 64, FETCH_MAX_RECORDS] {
            let in_place = replay_fetching(
                log.as_ref(),
                &spans,
                crate::empty_state(&config),
                never_idle(0..i64::MAX),
                |_| {},
                fetch_max,
            )
            .await
            .expect("replayed");
            let (pooled_log, pooled_spans) = (std::sync::Arc::clone(&log), spans.clone());
            let state = crate::empty_state(&config);
            let pooled = tokio::task::spawn_blocking(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime");
                runtime.block_on(replay_fetching(
                    pooled_log.as_ref(),
                    &pooled_spans,
                    state,
                    never_idle(0..i64::MAX),
                    |_| {},
                    fetch_max,
                ))
            })
            .await
            .expect("the current-thread replay ran")
            .expect("replayed");
            for (replayed, how) in [(in_place, "in place"), (pooled, "on the pool")] {
                let what = format!("fetching {fetch_max} {how}");
                assert_eq!(replayed.records, records.len() as u64, "{what}");
                assert_eq!(replayed.bytes, bytes, "{what}");
                assert!(replayed.counted == counted, "{what}: the ids counted");
                assert!(
                    crate::checkpoint::encode(&replayed.state)
                        == crate::checkpoint::encode(&expected),
                    "{what}: the replay's state differs from one fold in append order"
                );
            }
        }
    }

    /// A span past its partition's end (spans of another log, or a log
    /// that lost records) ends the replay with an error naming it: the
    /// fetch is refused, nothing moves, and it was asked again forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_span_past_the_log_s_end_is_an_error_not_a_loop() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = lambda_log::EmbeddedLog::open(dir.path().join("log"), Default::default())
            .await
            .expect("the log");
        log.create_topic("funnel-events", 1).await.expect("a topic");
        let spans = [ReplaySpan {
            topic: "funnel-events".into(),
            partition: 0,
            start: 10,
            end: 20,
        }];
        let config = crate::SpeedConfig::with_data_dir(dir.path());
        let replayed = tokio::time::timeout(
            Duration::from_secs(60),
            replay(
                &log,
                &spans,
                crate::empty_state(&config),
                0..0,
                config.idle_timeout,
                |_| {},
            ),
        )
        .await
        .expect("the replay ends");
        let Err(error) = replayed else {
            panic!("a replay past the log's end succeeded")
        };
        let error = format!("{error:#}");
        assert!(error.contains("funnel-events/0 at 10 of 20"), "{error}");
        assert!(error.contains("out of range"), "{error}");
    }

    /// Live, the merge takes only records stamped before the log's
    /// promise (the bound): the rest wait, in order, for a later one.
    #[test]
    fn the_merge_takes_only_what_is_stamped_before_the_promise() {
        let mut lanes = lanes_of(&[vec![1, 5, 90], vec![2, 5, 7]]);
        let (key, mut order) = (|lanes: &Lanes, ts| lanes.heads.key(ts, 0), Vec::new());
        lanes.bound = key(&lanes, 5);
        lanes.merge(&mut order);
        assert_eq!(order, [0, 1], "stamped before 5");
        lanes.bound = key(&lanes, 8);
        lanes.merge(&mut order);
        assert_eq!(order, [0, 1, 0, 1, 1], "then before 8");
        lanes.bound = HeadKey::MAX;
        lanes.merge(&mut order);
        assert_eq!(order, [0, 1, 0, 1, 1, 0], "then all");
    }

    /// A key compares as (timestamp, lane) over the timestamps it holds,
    /// whatever the number of lanes; one further from 1970 goes in at the
    /// bound, still before a lane without a head and still naming its lane.
    #[test]
    fn a_key_orders_by_timestamp_then_lane_within_its_bounds() {
        for lanes in [1, 2, 3, 24, 1 << 16] {
            let tournament = Tournament::new(lanes);
            let last = lanes - 1;
            let stamps = [-(1 << 40), -1, 0, 1, 1_767_225_600_000, 1 << 40];
            let pairs: Vec<(i64, usize)> = stamps
                .iter()
                .flat_map(|ts| [(*ts, 0), (*ts, last)])
                .collect();
            for a in &pairs {
                for b in &pairs {
                    let keys = (tournament.key(a.0, a.1), tournament.key(b.0, b.1));
                    assert_eq!(keys.0.cmp(&keys.1), a.cmp(b), "{lanes} lanes: {a:?} {b:?}");
                }
            }
            for ts in [i64::MIN, i64::MAX] {
                let key = tournament.key(ts, last);
                assert_eq!(tournament.lane_of(key), last);
                assert!(!tournament.is_no_head(key) && key < tournament.no_head(0));
            }
            assert_eq!(tournament.key(i64::MIN, 0), tournament.key(i64::MIN + 1, 0));
            assert!(tournament.is_no_head(tournament.no_head(last)));
        }
    }

    proptest! {
        /// The tournament's winner is always the least (key, lane) head,
        /// as winners are replaced and as every match is played again.
        #[test]
        fn the_tournament_winner_is_the_least_head(
            lanes in proptest::collection::vec(
                proptest::collection::vec((-4i64..4, 0u32..3), 0..30),
                0..11,
            ),
            replay_every in 1usize..9,
        ) {
            // Negative timestamps, and timestamps shared across lanes
            // (partitions too): ties go to the lane.
            let topic: std::sync::Arc<str> = "funnel-events".into();
            let records: Vec<Vec<StoredRecord>> = lanes
                .iter()
                .map(|lane| {
                    lane.iter()
                        .enumerate()
                        .map(|(offset, &(ts, partition))| {
                            stamped(&topic, partition, offset as u64, ts)
                        })
                        .collect()
                })
                .collect();
            let mut fronts = vec![0usize; lanes.len()];
            let mut tournament = Tournament::new(lanes.len());
            for (lane, records) in records.iter().enumerate() {
                tournament.set(lane, records.first().map(|r| tournament.key(append_key(r), lane)));
            }
            tournament.play_all();
            for step in 0.. {
                let least = (0..lanes.len())
                    .filter_map(|lane| records[lane].get(fronts[lane]).map(|r| (append_key(r), lane)))
                    .min()
                    .map(|(_, lane)| lane);
                prop_assert_eq!(tournament.winner(), least);
                let Some(lane) = least else { break };
                fronts[lane] += 1;
                tournament.replace_winner(
                    records[lane].get(fronts[lane]).map(|r| tournament.key(append_key(r), lane)),
                );
                if step % replay_every == 0 {
                    tournament.play_all();
                }
            }
            prop_assert!(fronts.iter().zip(&lanes).all(|(f, l)| *f == l.len()));
        }

        /// The merge takes what a merge taking one record at a time does
        /// (the least (key, lane) head each time, whatever order the
        /// timestamps within a partition come in), and stops where a lane
        /// with records still due has none fetched.
        #[test]
        fn the_merge_takes_the_one_at_a_time_order_until_a_lane_runs_dry(
            partitions in proptest::collection::vec(
                (proptest::collection::vec(0i64..20, 0..40), any::<bool>()),
                1..6,
            ),
        ) {
            let stamps: Vec<Vec<i64>> = partitions.iter().map(|(s, _)| s.clone()).collect();
            let mut reference = Vec::new();
            let mut fronts: Vec<usize> = vec![0; stamps.len()];
            loop {
                let waiting = (0..stamps.len())
                    .any(|p| partitions[p].1 && fronts[p] == stamps[p].len());
                let next = (0..stamps.len())
                    .filter(|&p| fronts[p] < stamps[p].len())
                    .min_by_key(|&p| (stamps[p][fronts[p]], p));
                let (false, Some(p)) = (waiting, next) else { break };
                reference.push((p as u32, fronts[p] as u64));
                fronts[p] += 1;
            }
            let mut lanes = lanes_of(&stamps);
            for (lane, (_, due)) in lanes.lanes.iter_mut().zip(&partitions) {
                lane.span.end += u64::from(*due);
            }
            lanes.dry = lanes.lanes.iter().filter(|l| l.dry()).count();
            let mut order = Vec::new();
            lanes.merge(&mut order);
            let mut taken = vec![0u64; stamps.len()];
            let merged: Vec<(u32, u64)> = order
                .iter()
                .map(|&lane| {
                    let lane = lane as usize;
                    taken[lane] += 1;
                    (lane as u32, taken[lane] - 1)
                })
                .collect();
            prop_assert_eq!(merged, reference);
            let any_due = partitions.iter().any(|(_, due)| *due);
            prop_assert_eq!(lanes.finished(), !any_due);
        }
    }

    /// Each window's start and views.
    fn windows_of(state: &SpeedState) -> Vec<(i64, lambda_events::kpi::BucketViews)> {
        state
            .windows()
            .iter()
            .map(|(k, w)| (*k, w.views.clone()))
            .collect()
    }

    /// A live fold ([`Live`]) and one restarted from a state it left (what
    /// a checkpoint holds, its offsets and last appends) fold what a replay
    /// of the whole log folds.
    async fn live_and_restarted_against_a_replay(
        steps: &[(u8, u32, i64, u8, i64)],
        restart_at: usize,
    ) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = three_funnel_partitions(dir.path()).await;
        let mut config = crate::SpeedConfig::with_data_dir(dir.path());
        config.idle_timeout = Duration::from_secs(2);
        let (t, a) = (1_767_225_600_000_i64, 1_767_229_200_000_i64);
        let lanes: Vec<(&str, u32)> = vec![
            ("funnel-events", 0),
            ("funnel-events", 1),
            ("funnel-events", 2),
            ("iot-events", 0),
        ];
        let positions = |state: &SpeedState| -> Vec<FetchPosition> {
            lanes
                .iter()
                .map(|(topic, partition)| FetchPosition {
                    topic: topic.to_string(),
                    partition: *partition,
                    offset: state
                        .offsets
                        .get(&(topic.to_string(), *partition))
                        .copied()
                        .unwrap_or(0),
                })
                .collect()
        };
        let start = |state: SpeedState| {
            let views: SpeedViews = std::sync::Arc::new(parking_lot::RwLock::new(state));
            let live = Live::new(
                &positions(&views.read()),
                &[],
                &views.read(),
                config.idle_timeout,
                false,
                64,
            );
            (views, live)
        };
        let mut running = vec![start(crate::empty_state(&config))];
        let mut appended = 0u64;
        for (i, &(kind, lane, jitter, id, ts)) in steps.iter().enumerate() {
            if i == restart_at {
                let left = running[0].0.read().clone();
                running.push(start(left));
            }
            if kind == 0 {
                for (views, live) in &mut running {
                    live.fetch(&log, Duration::ZERO).await.expect("fetched");
                    live.fold(views);
                }
                continue;
            }
            // Requests stamped about 0.4 s apart, up to 1.5 s out of the
            // order they are written in; a few ids sent again, events of
            // up to four minutes back (late ones among them).
            let at = a + i as i64 * 400 + jitter;
            let id = format!("e{id}");
            let (topic, partition) = lanes[lane as usize];
            let record = match topic {
                "iot-events" => {
                    let line = format!(
                        r#"{{"event_id":"{id}","ts":{},"event_type":"sensor_reading","device_id":"d","sensor":"t","value":1.5}}"#,
                        t + ts
                    );
                    lambda_log::Record::keyed("d", line.into_bytes(), at)
                }
                _ => click(&id, t + ts, partition, at),
            };
            // One request's lines share a millisecond: some on two partitions.
            let mut request = vec![record];
            if kind == 3 && topic == "funnel-events" {
                request.push(click(
                    &format!("{id}x"),
                    t + ts + 1,
                    (partition + 1) % 3,
                    at,
                ));
            }
            appended += request.len() as u64;
            log.append(topic, request).await.expect("appended");
        }
        let replayed = replay_all(&log, &config).await;
        for (n, (views, live)) in running.iter_mut().enumerate() {
            let folded = |views: &SpeedViews| views.read().offsets.values().sum::<u64>();
            for _ in 0..1_000 {
                if folded(views) >= appended {
                    break;
                }
                live.fetch(&log, Duration::ZERO).await.expect("fetched");
                live.fold(views);
            }
            let state = views.read();
            let what = if n == 0 { "live" } else { "restarted" };
            assert_eq!(
                state.offsets.values().sum::<u64>(),
                appended,
                "{what}: all folded"
            );
            assert_eq!(state.counters, replayed.counters, "{what}: counters");
            assert_eq!(state.watermark(), replayed.watermark(), "{what}: watermark");
            assert_eq!(state.clocks(), replayed.clocks(), "{what}: clocks");
            assert_eq!(
                state.log_time(),
                replayed.log_time(),
                "{what}: the log's clock"
            );
            assert!(
                windows_of(&state) == windows_of(&replayed),
                "{what}: windows"
            );
        }
    }

    /// Whenever the state is read while a live fold goes on (a snapshot
    /// for a checkpoint, or served over HTTP, from another thread), its
    /// offsets are where its events were folded to: every record below
    /// folded once, none above — the fold lets readers in only with each
    /// partition's offset told.
    #[test]
    fn a_snapshot_taken_while_a_live_fold_goes_on_holds_its_events_offsets() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let t = 1_767_225_600_000_i64;
        let total = 20_000u64;
        let log = runtime.block_on(async {
            let log = three_funnel_partitions(dir.path()).await;
            let records: Vec<lambda_log::Record> = (0..total)
                .map(|i| {
                    // Every tenth a resend of the one before: duplicates too.
                    let id = format!("e{}", i - u64::from(i % 10 == 9));
                    click(&id, t + i as i64 * 10, (i % 3) as u32, t + i as i64 * 10)
                })
                .collect();
            for chunk in records.chunks(1_000) {
                log.append("funnel-events", chunk.to_vec())
                    .await
                    .expect("appended");
            }
            log
        });
        let config = crate::SpeedConfig::with_data_dir(dir.path());
        let views = crate::new_views(&config);
        let positions: Vec<FetchPosition> = (0..3)
            .map(|partition| FetchPosition {
                topic: "funnel-events".into(),
                partition,
                offset: 0,
            })
            .collect();
        let folding = std::sync::Arc::clone(&views);
        let fold = std::thread::spawn(move || {
            runtime.block_on(async {
                let mut live = Live::new(
                    &positions,
                    &[],
                    &folding.read(),
                    config.idle_timeout,
                    false,
                    4096,
                );
                while live.records() < total {
                    live.fetch(&log, Duration::ZERO).await.expect("fetched");
                    live.fold(&folding);
                }
            })
        });
        let folded_and_offsets = || {
            let state = views.read();
            let c = &state.counters;
            let folded = c.counted + c.duplicates + c.late + c.invalid;
            (folded, state.offsets.values().sum::<u64>())
        };
        let mut between = 0;
        while !fold.is_finished() {
            let (folded, offsets) = folded_and_offsets();
            assert_eq!(folded, offsets, "records folded beside the offsets read to");
            between += u32::from(folded > 0 && folded < total);
        }
        fold.join().expect("the fold thread");
        assert_eq!(folded_and_offsets(), (total, total));
        assert!(views.read().counters.duplicates > 0);
        assert!(between > 0, "read while the fold went on");
    }

    /// With records stamped as the collector stamps them — a request a few
    /// milliseconds before it is written, from three writers at once, one
    /// id sent on several partitions, events minutes out of order — a live
    /// fold that fetches while they are written, holding back what the log
    /// has not promised yet (the current millisecond, a group being
    /// written), folds what a replay of the log folds once all is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_fold_beside_concurrent_writers_folds_what_a_replay_folds() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = std::sync::Arc::new(three_funnel_partitions(dir.path()).await);
        let mut config = crate::SpeedConfig::with_data_dir(dir.path());
        config.idle_timeout = Duration::from_secs(2);
        let views = crate::new_views(&config);
        let positions: Vec<FetchPosition> = [
            ("funnel-events", 0),
            ("funnel-events", 1),
            ("funnel-events", 2),
            ("iot-events", 0),
        ]
        .iter()
        .map(|(topic, partition)| FetchPosition {
            topic: topic.to_string(),
            partition: *partition,
            offset: 0,
        })
        .collect();
        let mut live = Live::new(
            &positions,
            &[],
            &views.read(),
            config.idle_timeout,
            false,
            64,
        );
        let (writers, requests) = (3u64, 150u64);
        let t = chrono::Utc::now().timestamp_millis() - 600_000;
        let writing: Vec<_> = (0..writers)
            .map(|w| {
                let log = std::sync::Arc::clone(&log);
                tokio::spawn(async move {
                    for k in 0..requests {
                        let stamped = chrono::Utc::now().timestamp_millis() - ((k + w) % 4) as i64;
                        let ts = t + ((k * 37 + w * 11) % 600) as i64 * 1_000;
                        let id = format!("e{}", (k * 7 + w) % 60);
                        let request = vec![click(&id, ts, ((k + w) % 3) as u32, stamped)];
                        log.append("funnel-events", request)
                            .await
                            .expect("appended");
                        if k % 8 == w {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                })
            })
            .collect();
        let total = writers * requests;
        let folded = |views: &SpeedViews| views.read().offsets.values().sum::<u64>();
        let mut rounds = 0u32;
        while folded(&views) < total {
            live.fetch(log.as_ref(), Duration::from_millis(5))
                .await
                .expect("fetched");
            live.fold(&views);
            rounds += 1;
            assert!(
                rounds < 100_000,
                "the live fold stalled at {}",
                folded(&views)
            );
        }
        for writer in writing {
            writer.await.expect("a writer");
        }
        let replayed = replay_all(&log, &config).await;
        let state = views.read();
        assert_eq!(state.counters, replayed.counters, "counters");
        assert!(state.counters.duplicates > 0 && state.counters.late > 0);
        assert_eq!(state.watermark(), replayed.watermark(), "watermark");
        assert_eq!(state.clocks(), replayed.clocks(), "clocks");
        assert!(windows_of(&state) == windows_of(&replayed), "windows");
    }

    /// Two requests stamped in one order and written in the other (the
    /// collector stamps a request before it writes it), on two partitions,
    /// with one id between them: the live fold met the later-stamped one
    /// first and counted it; a replay of the log counts it too — the log
    /// stamped the other after the time it had promised the live fold.
    /// (The live loop folded each fetch as it came, and a restart, by
    /// timestamp, counted the other: a hostile run's finding, 10 of 60
    /// trials.) So with the two of one millisecond.
    #[tokio::test]
    async fn requests_written_out_of_their_stamps_order_fold_alike_live_and_replayed() {
        // Stamped 100 ms before the first, and in its millisecond.
        for jitter in [-900, -800] {
            let steps = [
                (1, 1, 0, 7, 30_000),
                (0, 0, 0, 0, 0),
                (1, 0, jitter, 7, 90_000),
                (0, 0, 0, 0, 0),
            ];
            live_and_restarted_against_a_replay(&steps, 2).await;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// However appends and live fetches interleave, the live fold, and
        /// one restarted from where it was at any step, fold what a replay
        /// of the log folds: requests written out of their stamps' order,
        /// lines of one request on two partitions, idle gaps, late and
        /// repeated events.
        #[test]
        fn a_live_fold_folds_what_a_replay_of_the_log_folds(
            steps in proptest::collection::vec(
                (0u8..4, 0u32..4, -1_500i64..1_500, 0u8..12, -240_000i64..120_000),
                1..40,
            ),
            restart_at in 0usize..40,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(live_and_restarted_against_a_replay(&steps, restart_at));
        }
    }
}
