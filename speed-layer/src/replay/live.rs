//! The live speed layer's reading of the log through the replay's merge and
//! fold ([`Live`]).

use std::time::Duration;

use lambda_log::{EventLog, FetchPosition, LogError, Record};

use super::ReplaySpan;
use super::fold::{Folded, Idleness};
use super::merge::Lanes;
use crate::SpeedViews;
use crate::window::SpeedState;

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
    pub(super) lanes: Lanes,
    pub(super) folded: Folded,
    /// The lane of each record the merge takes (kept from fetch to fetch).
    pub(super) order: Vec<u32>,
    pub(super) fetch_max: usize,
    /// Offsets moved without a fold (a retention skip, the start): the
    /// state is told at the next fold.
    pub(super) moved: bool,
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
    pub(super) fn holding(&self) -> bool {
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
