//! What `/api/v1/status` and `/metrics` say about the speed layer, copied
//! out of the state under the read lock so both render without holding it.

use std::collections::BTreeMap;

use lambda_events::Topic;

use crate::SpeedState;
use crate::alerts::{AlertState, RuleName};
use crate::window::{PartitionClock, SpeedCounters};

/// A copy of the speed layer's progress, counters and health (no windows).
#[derive(Debug, Clone)]
pub struct SpeedSummary {
    /// The watermark.
    pub watermark: Option<i64>,
    /// Greatest event time seen.
    pub max_event_ts: Option<i64>,
    /// Allowed lateness in ms.
    pub allowed_lateness_ms: i64,
    /// Windows held in memory.
    pub windows: usize,
    /// Events counted, duplicates, late, invalid.
    pub counters: SpeedCounters,
    /// Next offset to read, per (topic, partition).
    pub offsets: Vec<(String, u32, u64)>,
    /// How far each partition's events have got.
    pub clocks: Vec<PartitionClock>,
    /// Late events per topic over the horizon.
    pub late_by_topic: BTreeMap<Topic, u64>,
    /// Late events per (topic, window start), oldest first.
    pub ledger: Vec<(Topic, i64, u64)>,
    /// Alert transitions by (rule, state).
    pub alert_totals: BTreeMap<(RuleName, AlertState), u64>,
    /// Alerts raised and not cleared.
    pub alerts_active: usize,
    /// Alert keys not tracked because the state was at its cap.
    pub alert_keys_dropped: u64,
    /// When the newest checkpoint was written.
    pub last_checkpoint_ms: Option<i64>,
    /// Why the newest checkpoint attempt failed, if it did.
    pub checkpoint_error: Option<String>,
    /// Checkpoint attempts that failed.
    pub checkpoint_failures: u64,
}

impl SpeedState {
    /// The summary of this state.
    pub fn summary(&self) -> SpeedSummary {
        SpeedSummary {
            watermark: self.watermark(),
            max_event_ts: self.max_event_ts,
            allowed_lateness_ms: self.allowed_lateness_ms,
            windows: self.windows.len(),
            counters: self.counters,
            offsets: self.offsets_list(),
            clocks: self.clocks.clone(),
            late_by_topic: self.late_by_topic(),
            ledger: self.ledger_list(),
            alert_totals: self.alerts.totals().clone(),
            alerts_active: self.alerts.active().count(),
            alert_keys_dropped: self.alerts.dropped_keys(),
            last_checkpoint_ms: self.last_checkpoint_ms,
            checkpoint_error: self.checkpoint_error.clone(),
            checkpoint_failures: self.checkpoint_failures,
        }
    }
}
