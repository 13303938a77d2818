//! The merge: the partitions being read, each a lane of records fetched,
//! taken in append order (record timestamp, then lane) through a
//! tournament of their heads.

use std::time::Duration;

use anyhow::Context;
use lambda_log::{EventLog, FetchPosition, LogError, ValueRecord, ValueSpan};

use super::ReplaySpan;

/// How long one fetch may wait.
const FETCH_MAX_WAIT: Duration = Duration::from_millis(200);
/// Fetches in a row that may come back empty while records are still due.
const EMPTY_FETCHES_ALLOWED: u32 = 50;

/// Where a record comes in append order: its record timestamp (when it was
/// appended: the collector stamps each record with the time it took it).
/// Records of one timestamp in different partitions go in the order of
/// their lanes (the spans' order; callers give them by topic, then
/// partition — the order the live loop folds a fetch's partitions in).
pub(super) type AppendKey = i64;

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
pub(super) struct Lane {
    pub(super) span: ValueSpan,
    pub(super) taken: usize,
    pub(super) start: usize,
    /// Live: the last fetch read the partition to its end, after the
    /// log's promise ([`EventLog::complete_before`]) was read. Every
    /// record stamped before it is then fetched, and the lane holds back
    /// nothing of the merge when it has no record left.
    pub(super) caught_up: bool,
    /// Live, on a log that promises nothing (Kafka): the partition's end
    /// when the loop started. Until the lane reads that far it has not
    /// caught up, so the backlog a restart finds is merged in append order
    /// as a whole, not a fetch at a time.
    pub(super) until: u64,
}

impl Lane {
    /// Records fetched and not taken yet.
    pub(super) fn pending(&self) -> usize {
        self.span.records.len() - self.taken
    }

    /// The next record not taken.
    pub(super) fn front(&self) -> Option<&ValueRecord> {
        self.span.records.get(self.taken)
    }

    /// Records still due and none fetched: the merge waits for this lane.
    pub(super) fn dry(&self) -> bool {
        self.pending() == 0 && self.span.position.offset < self.span.end && !self.caught_up
    }

    /// The offset of the lane's first record not folded, `next` being its
    /// index in the lane's records.
    pub(super) fn offset_at(&self, next: usize) -> u64 {
        self.span
            .records
            .get(next)
            .map_or(self.span.position.offset, |r| r.offset)
    }
}

/// The partitions being replayed, merged in append order.
pub(super) struct Lanes {
    pub(super) lanes: Vec<Lane>,
    /// The lanes' first buffered records, merged: the next record in
    /// append order is the winner's.
    pub(super) heads: Tournament,
    /// Lanes with records due and none fetched: while there is one, the
    /// next record in append order is not known.
    pub(super) dry: usize,
    /// Fetches in a row that brought nothing of use.
    pub(super) empty_in_a_row: u32,
    /// Bytes of the records fetched into the lanes (keys and values).
    pub(super) bytes: u64,
    /// Live: the merge takes only records whose key is below this (those
    /// stamped before the log's promise); `u64::MAX` otherwise.
    pub(super) bound: HeadKey,
    /// Live: whether the log made a promise at the last fetch.
    pub(super) promised: bool,
}

impl Lanes {
    pub(super) fn new(spans: &[ReplaySpan]) -> Lanes {
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
    pub(super) fn merge(&mut self, order: &mut Vec<u32>) {
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
    pub(super) fn finished(&self) -> bool {
        self.dry == 0 && (self.heads.winner().is_none() || self.heads.first() >= self.bound)
    }

    /// A replay's fetch ([`Lanes::fetch`]): retention moving on while we
    /// read skips what is gone; a transient error waits a little; a log
    /// that keeps answering nothing below the end offsets is an error.
    pub(super) async fn refill(
        &mut self,
        log: &dyn EventLog,
        fetch_max: usize,
    ) -> anyhow::Result<()> {
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
    pub(super) async fn fetch(
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
    pub(super) fn reheads(&mut self) {
        for (i, lane) in self.lanes.iter().enumerate() {
            self.heads
                .set(i, lane.front().map(|r| self.heads.key(r.timestamp_ms, i)));
        }
        // New heads: every match played again (a few per lane).
        self.heads.play_all();
        self.dry = self.lanes.iter().filter(|l| l.dry()).count();
    }

    /// The merge's bound for the log's promise `promise` (none: no bound).
    pub(super) fn bound_of(&self, promise: Option<i64>) -> HeadKey {
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
pub(super) struct Tournament {
    /// Each lane's head ([`Tournament::key`]; a lane without a head, and
    /// the leaves past the last lane, [`Tournament::no_head`]).
    pub(super) heads: Vec<HeadKey>,
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
pub(super) type HeadKey = u64;

impl Tournament {
    pub(super) fn new(lanes: usize) -> Tournament {
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
    pub(super) fn key(&self, timestamp: AppendKey, lane: usize) -> HeadKey {
        let time = ((timestamp as u64) ^ (1 << 63))
            .saturating_sub(self.time_offset)
            .min(self.last_time);
        (time << self.lane_bits) | lane as u64
    }

    /// The key of lane `lane` without a head: after every record's, and
    /// still naming its lane.
    pub(super) fn no_head(&self, lane: usize) -> HeadKey {
        ((self.last_time + 1) << self.lane_bits) | lane as u64
    }

    /// Whether `key` is a lane's without a head.
    pub(super) fn is_no_head(&self, key: HeadKey) -> bool {
        key >> self.lane_bits > self.last_time
    }

    /// The lane a key names.
    pub(super) fn lane_of(&self, key: HeadKey) -> usize {
        (key & ((1 << self.lane_bits) - 1)) as usize
    }

    /// Sets lane `lane`'s head (its key); [`Tournament::play_all`] must follow.
    pub(super) fn set(&mut self, lane: usize, head: Option<HeadKey>) {
        self.heads[lane] = head.unwrap_or_else(|| self.no_head(lane));
    }

    /// Plays every match from the leaves up.
    pub(super) fn play_all(&mut self) {
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
    pub(super) fn first(&self) -> HeadKey {
        self.nodes[0]
    }

    /// The lane with the first head (`None`: no lane has one).
    pub(super) fn winner(&self) -> Option<usize> {
        let top = self.nodes[0];
        (!self.is_no_head(top)).then(|| self.lane_of(top))
    }

    /// The winner's head is now `head`: the matches on its way up are
    /// played again. Without a branch: which lane wins is a coin toss
    /// when the lanes' records alternate, and a mispredicted branch per
    /// level cost more than the comparison.
    pub(super) fn replace_winner(&mut self, head: Option<HeadKey>) {
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
