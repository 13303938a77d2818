//! The speed layer: consumes the event topics, folds events into 1-minute
//! event-time windows, tracks the watermark and a late ledger, and
//! checkpoints its state together with the offsets it has consumed.
//!
//! Invariant: memory is bounded by the window horizon, not by history —
//! windows older than `watermark - horizon` are evicted.

pub mod alerts;
pub mod checkpoint;
pub mod consumer;
pub mod export;
pub mod group;
pub mod http;
pub mod metrics;
pub mod replay;
pub mod seen;
pub mod store;
pub mod summary;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

pub use consumer::{restore, run};
pub use summary::SpeedSummary;
pub use window::{Applied, SpeedState, ViewsStamp, WindowsStamp};

impl SpeedConfig {
    /// Whether this instance consumes `partition`.
    pub fn owns(&self, partition: u32) -> bool {
        let (index, count) = self.instance;
        count <= 1 || partition % count == index
    }
}

/// Consumer group the speed layer commits its offsets under.
pub const CONSUMER_GROUP: &str = "speed-layer";

/// Settings of the speed layer.
#[derive(Debug, Clone)]
pub struct SpeedConfig {
    /// How far behind the newest event time the watermark trails.
    pub allowed_lateness_ms: i64,
    /// Windows starting more than this before the watermark are evicted
    /// (and, once the batch boundary B is known, windows well before B).
    pub horizon_ms: i64,
    /// Where the checkpoint file lives.
    pub checkpoint_path: PathBuf,
    /// How often state and offsets are checkpointed.
    pub checkpoint_interval: Duration,
    /// Which partitions this instance consumes: `(index, count)` takes every
    /// partition `p` with `p % count == index`; `(0, 1)` takes all of them.
    pub instance: (u32, u32),
    /// Write records that are not valid events to `dead-letter` (with the
    /// reason). On when the speed layer is the first reader of topics that
    /// other producers write to; the collector already dead-letters what it is sent.
    pub dead_letter_invalid: bool,
    /// A partition that delivers no record for this long stops holding the
    /// watermark back until it delivers again (as Flink's `withIdleness`,
    /// but by the log's clock — the newest append timestamp read — where
    /// Flink reads the processing clock: [`replay::Live`]; the group
    /// mode's members read their own clock).
    pub idle_timeout: Duration,
    /// Alert rules.
    pub alert_rules: alerts::AlertRules,
    /// Consumer group its offsets are committed under (for lag reporting;
    /// the checkpoint holds the offsets it resumes from).
    pub group: String,
}

impl SpeedConfig {
    /// Defaults with the checkpoint under `data_dir/speed/`.
    pub fn with_data_dir(data_dir: &std::path::Path) -> SpeedConfig {
        SpeedConfig {
            allowed_lateness_ms: 60_000,
            horizon_ms: DEFAULT_HORIZON_MS,
            checkpoint_path: data_dir.join("speed").join("checkpoint.json"),
            checkpoint_interval: Duration::from_secs(5),
            instance: (0, 1),
            dead_letter_invalid: true,
            idle_timeout: Duration::from_secs(30),
            alert_rules: alerts::AlertRules::defaults(),
            group: CONSUMER_GROUP.to_string(),
        }
    }
}

/// The speed layer's live state, shared with serving (read) and the consumer (write).
pub type SpeedViews = Arc<RwLock<SpeedState>>;

/// A read-only handle on the speed views: what serving's query handlers
/// hold. It reads under the read lock and cannot write, so "serving does not
/// change the speed layer's state" holds by type.
#[derive(Debug, Clone)]
pub struct SpeedReader(SpeedViews);

impl SpeedReader {
    /// A reader of `views`.
    pub fn new(views: &SpeedViews) -> SpeedReader {
        SpeedReader(Arc::clone(views))
    }

    /// The state, under the read lock: hold it only while copying out what
    /// an answer needs.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, SpeedState> {
        self.0.read()
    }

    /// A copy of the progress, counters and health, taken under the read
    /// lock and rendered without it.
    pub fn summary(&self) -> SpeedSummary {
        self.0.read().summary()
    }
}

/// The one write serving makes to a speed layer in its own process: the
/// boundary B, moved when it loads newer batch views (so both sides of B
/// change together). It can do nothing else to the state.
#[derive(Debug, Clone)]
pub struct SpeedBoundary(SpeedViews);

impl SpeedBoundary {
    /// The boundary of `views`.
    pub fn new(views: &SpeedViews) -> SpeedBoundary {
        SpeedBoundary(Arc::clone(views))
    }

    /// Sets B (see [`SpeedState::set_batch_boundary`]).
    pub fn set(&self, boundary: Option<i64>) {
        self.0.write().set_batch_boundary(boundary);
    }
}

/// How long the speed layer keeps windows behind its watermark by default.
pub const DEFAULT_HORIZON_MS: i64 = 2 * 3_600_000;

/// An empty state with `config`'s lateness, horizon and alert rules.
pub fn empty_state(config: &SpeedConfig) -> SpeedState {
    let mut state = SpeedState::new(config.allowed_lateness_ms, config.horizon_ms);
    state.alerts = alerts::AlertEngine::new(config.alert_rules.clone());
    state
}

/// The speed layer's views, empty, with `config`'s lateness, horizon and alert rules.
pub fn new_views(config: &SpeedConfig) -> SpeedViews {
    Arc::new(RwLock::new(empty_state(config)))
}

/// The first of `user0`, `user1`, … that the log's partitioner puts on
/// `partition` of `partitions` (tests that need an event on a partition).
#[cfg(test)]
pub(crate) fn key_on(partition: u32, partitions: u32) -> String {
    (0..)
        .map(|i| format!("user{i}"))
        .find(|key| {
            lambda_log::partitioner::partition_for_key(key.as_bytes(), partitions) == partition
        })
        .unwrap_or_default()
}
