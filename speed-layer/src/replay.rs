//! A replay: the log read again, from each partition's earliest retained
//! offset up to given end offsets, through the same fold the speed layer
//! runs ([`SpeedState::apply_from`]) — kappa's way of recomputing a view.
//! `lambda compare` uses it to set the kappa views beside the batch views of
//! the same log prefix, and keeps what it needs to explain a difference: the
//! events the fold dropped as late.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::Context;
use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Event, Topic, floor_to};
use lambda_log::{EventLog, FetchPosition, LogError, Record, ValueRecord, ValueSpan};
use tokio_util::sync::CancellationToken;

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
        self.pending() == 0 && self.span.position.offset < self.span.end
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
    let fold = Fold {
        keep,
        idle_timeout,
        invalid: Invalid::Count,
    };
    replay_fetching(log, spans, state, fold, progress, FETCH_MAX_RECORDS).await
}

/// The speed layer's catch-up at start: the records `spans` hold past the
/// checkpoint `state` was restored from (or from the start of the log, for
/// a state without one), folded into it as the live loop met them — in
/// append order ([`replay`]), where reading them partition by partition,
/// as the live loop's fetches of a backlog do, folded minutes of one
/// partition before another's, so an event the live loop had dropped as
/// late was counted after a restart (and the watermark came out lower).
/// Records that are not valid events are written to the dead-letter topic
/// of `log`, as the live loop does (it had not, or not durably: the
/// checkpoint's offsets are before them), retried until `shutdown`.
pub async fn catch_up(
    log: &dyn EventLog,
    spans: &[ReplaySpan],
    state: SpeedState,
    idle_timeout: Duration,
    dead_letter: bool,
    shutdown: &CancellationToken,
) -> anyhow::Result<Replayed> {
    let fold = Fold {
        keep: 0..0,
        idle_timeout,
        invalid: match dead_letter {
            true => Invalid::DeadLetter(shutdown),
            false => Invalid::Count,
        },
    };
    replay_fetching(log, spans, state, fold, |_| {}, FETCH_MAX_RECORDS).await
}

/// How a replay folds: the minutes whose late and counted events it keeps,
/// the live loop's idle timeout, what it does with invalid records.
struct Fold<'s> {
    keep: Range<i64>,
    idle_timeout: Duration,
    invalid: Invalid<'s>,
}

/// What a replay does with records that are not valid events.
#[derive(Debug, Clone, Copy)]
enum Invalid<'s> {
    /// Counts them (`counters.invalid`).
    Count,
    /// Counts them and writes each to the dead-letter topic of the log
    /// read, with the reason (writes retried until the token fires).
    DeadLetter(&'s CancellationToken),
}

/// [`replay`], fetching at most `fetch_max` records at a time.
async fn replay_fetching(
    log: &dyn EventLog,
    spans: &[ReplaySpan],
    mut state: SpeedState,
    fold: Fold<'_>,
    mut progress: impl FnMut(u64),
    fetch_max: usize,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let Fold {
        keep,
        idle_timeout,
        invalid,
    } = fold;
    let mut lanes = Lanes::new(spans);
    let mut folded = Folded {
        dead_letters: matches!(invalid, Invalid::DeadLetter(_)).then(Vec::new),
        idleness: Idleness::new(idle_timeout, lanes.lanes.len(), &state),
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
        if let (Invalid::DeadLetter(shutdown), Some(records)) =
            (invalid, folded.dead_letters.as_mut())
            && !records.is_empty()
        {
            crate::consumer::dead_letter(log, std::mem::take(records), shutdown).await?;
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
            })
            .collect();
        Lanes {
            dry: lanes.len(),
            heads: Tournament::new(lanes.len()),
            lanes,
            empty_in_a_row: 0,
            bytes: 0,
        }
    }

    /// Appends to `order` the lane of each record taken next in append
    /// order (record timestamp, then lane), until a lane with records
    /// due has none fetched (the next record is not known then) or every
    /// lane is read to its end.
    fn merge(&mut self, order: &mut Vec<u32>) {
        while self.dry == 0 {
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

    /// Fetches for the lanes that ran dry, and those running low beside
    /// them: each lane a share of `fetch_max`, as the live loop
    /// fetches every partition at once. (A lane that ran dry alone used to
    /// get all of them: 12 lanes then held 50 000 records, out of cache by
    /// the time they were folded, and the replay ran at 0.85× the live
    /// fold.) Retention moving on while we read skips what is gone; a
    /// transient error waits a little; a log that keeps answering nothing
    /// below the end offsets is an error.
    async fn refill(&mut self, log: &dyn EventLog, fetch_max: usize) -> anyhow::Result<()> {
        let due = |l: &Lane| l.span.position.offset < l.span.end;
        let reading = self.lanes.iter().filter(|l| due(l)).count();
        let share = (fetch_max / reading.max(1)).max(1);
        // What was taken has been folded. A lane holding at most half a
        // share lets it go now (its untaken records move to the front: at
        // most half a share); one holding more (it is not fetched into
        // this time) keeps it until then, its next round starting after
        // it. Moving every lane's untaken records at every refill was
        // 0.9 % of the replay's instructions (callgrind).
        for lane in &mut self.lanes {
            if lane.pending() <= share / 2 {
                lane.span.records.drain(..lane.taken);
                lane.taken = 0;
            }
            lane.start = lane.taken;
        }
        let mut asked: Vec<&mut ValueSpan> = Vec::new();
        for lane in &mut self.lanes {
            if due(lane) && lane.pending() <= share / 2 {
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
        }
        if asked.is_empty() {
            return Ok(());
        }
        let max_records = share.saturating_mul(asked.len());
        let read = match log
            .fetch_values(&mut asked, max_records, FETCH_MAX_WAIT)
            .await
        {
            Ok(read) => read,
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
        self.bytes += read.bytes;
        // Every lane's head is its first record not taken.
        for (i, lane) in self.lanes.iter().enumerate() {
            self.heads
                .set(i, lane.front().map(|r| self.heads.key(r.timestamp_ms, i)));
        }
        // New heads: every match played again (a few per lane).
        self.heads.play_all();
        self.dry = self.lanes.iter().filter(|l| l.dry()).count();
        if read.records > 0 {
            self.empty_in_a_row = 0;
            return Ok(());
        }
        self.nothing_of_use("nothing")
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
    /// append timestamp ahead of it counts as this, as in the live loop
    /// ([`crate::consumer::Idleness`]).
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
    /// and then folds it.
    fn fold(&mut self, state: &mut SpeedState, lanes: &[Lane], order: &[u32], keep: &Range<i64>) {
        self.idleness.wall = chrono::Utc::now().timestamp_millis();
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
        for &lane in order {
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
    fn never_idle(keep: Range<i64>) -> Fold<'static> {
        Fold {
            keep,
            idle_timeout: Duration::from_secs(u64::MAX / 2_000),
            invalid: Invalid::Count,
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
        // clock) moves the log's clock only to the wall clock's time: it
        // does not mark partition 1, which sent a second before, idle.
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
            state.log_time().is_some_and(|at| at <= wall),
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
}
