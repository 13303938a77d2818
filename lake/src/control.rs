//! The batch runner's handle and status, as serving and the demo see them:
//! ask for a run now ([`BatchHandle::run_now`]) and read how runs went
//! ([`BatchStatus`]). The scheduler itself (cron, backoff, the run) is the
//! batch layer's; it takes the other end, [`BatchTriggers`].

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot};

use crate::manifest::RunStats;

/// Triggered runs the queue holds.
pub const TRIGGER_QUEUE_CAPACITY: usize = 8;

/// What a committed run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The manifest version committed (the previous one if there was nothing new).
    pub version: u64,
    /// Whether a new manifest was written.
    pub committed: bool,
    /// Figures of the run.
    pub stats: RunStats,
    /// The boundary B after the run.
    pub boundary_ms: Option<i64>,
}

/// What serving shows about the batch layer.
#[derive(Debug, Clone, Default)]
pub struct BatchStatus {
    /// The cron expression.
    pub schedule: String,
    /// When the next scheduled run is due (ms).
    pub next_run_ms: Option<i64>,
    /// Whether a run is in progress.
    pub running: bool,
    /// The last run's start (ms), duration and outcome.
    pub last_run: Option<LastRun>,
    /// Runs that committed or found nothing new.
    pub runs_ok: u64,
    /// Runs that failed.
    pub runs_failed: u64,
    /// Scheduled ticks skipped because a run was still going.
    pub ticks_skipped: u64,
    /// Runs that failed since the last one that did not.
    pub consecutive_failures: u32,
    /// When the failed run is retried (ms), if one failed last.
    pub retry_at_ms: Option<i64>,
}

impl BatchStatus {
    /// Why the batch layer is unhealthy, if it is: its last run failed (the
    /// views are the last committed ones, and B does not move).
    pub fn unhealthy(&self) -> Option<String> {
        let run = self.last_run.as_ref()?;
        let error = run.outcome.as_ref().err()?;
        Some(format!(
            "batch layer: {} run(s) in a row failed, retrying at {}: {error}",
            self.consecutive_failures,
            self.retry_at_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map_or_else(|| "the next tick".to_string(), |t| t.to_rfc3339()),
        ))
    }
}

/// The outcome of the last run.
#[derive(Debug, Clone)]
pub struct LastRun {
    /// Start (ms).
    pub started_ms: i64,
    /// Duration (ms).
    pub duration_ms: u64,
    /// The report, or the error.
    pub outcome: Result<RunReport, String>,
}

/// Where a triggered run sends its outcome.
pub type Reply = oneshot::Sender<Result<RunReport, String>>;

/// Why a run asked for with [`BatchHandle::run_now`] gave no report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunNowError {
    /// No batch runner is running (kappa mode, or it has stopped).
    #[error("batch layer is not running")]
    NotRunning,
    /// The runner stopped (shutdown) before the run finished.
    #[error("batch layer stopped before the run finished")]
    Stopped,
    /// The run failed; the runner's error, in words.
    #[error("{0}")]
    Failed(String),
}

/// A handle to ask for a run now and to read the status.
#[derive(Debug, Clone)]
pub struct BatchHandle {
    trigger: mpsc::Sender<Reply>,
    /// Shared status.
    pub status: Arc<RwLock<BatchStatus>>,
}

impl BatchHandle {
    /// Runs a batch now (after any run in progress) and returns its report.
    pub async fn run_now(&self) -> Result<RunReport, RunNowError> {
        let (reply, rx) = oneshot::channel();
        self.trigger
            .send(reply)
            .await
            .map_err(|_| RunNowError::NotRunning)?;
        rx.await
            .map_err(|_| RunNowError::Stopped)?
            .map_err(RunNowError::Failed)
    }
}

/// The scheduler's receiving side (`lambda_batch::start` makes and keeps it).
#[derive(Debug)]
pub struct BatchTriggers(mpsc::Receiver<Reply>);

impl BatchTriggers {
    /// The next run asked for (`None` once every handle is gone).
    pub async fn next(&mut self) -> Option<Reply> {
        self.0.recv().await
    }
}

/// A handle and the trigger queue it feeds.
pub fn control(schedule: &str) -> (BatchHandle, BatchTriggers) {
    let (tx, rx) = mpsc::channel(TRIGGER_QUEUE_CAPACITY);
    let status = BatchStatus {
        schedule: schedule.to_string(),
        ..Default::default()
    };
    (
        BatchHandle {
            trigger: tx,
            status: Arc::new(RwLock::new(status)),
        },
        BatchTriggers(rx),
    )
}
