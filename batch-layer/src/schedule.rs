//! The batch layer's loop: runs on a `cron` schedule (with seconds), or when
//! triggered; runs never overlap — one task runs them one at a time, and
//! ticks that pass during a run are skipped and logged.
//!
//! A failed run (a full disk, an unreachable object store) leaves the last
//! committed views in place and is retried with a doubling backoff
//! ([`FIRST_RETRY_BACKOFF`] up to [`MAX_RETRY_BACKOFF`]) or at the next
//! tick, whichever comes first; until a run succeeds the layer reports
//! itself unhealthy ([`BatchStatus::unhealthy`]).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

pub use lambda_lake::control::{
    BatchHandle, BatchStatus, BatchTriggers, LastRun, TRIGGER_QUEUE_CAPACITY, control,
};

use crate::run::{RunContext, run_once};

/// Wait before retrying a failed run; it doubles with every failure in a row.
pub const FIRST_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between retries of failed runs.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(300);

/// How long to wait after `failures` failed runs in a row (at least one).
pub fn retry_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_BACKOFF)
}

/// The batch layer, started: the handle (ask for a run, read the status)
/// that serving and the admin route use, and the one task that runs on the
/// schedule, for the caller's supervisor. `lambda demo` and `lambda batch`
/// both start it this way.
pub struct Started {
    /// Ask for a run now; read the status.
    pub handle: BatchHandle,
    /// Runs batches on the schedule and on request until shutdown.
    pub task: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("handle", &self.handle)
            .finish()
    }
}

/// Starts the batch layer on `schedule` (cron with seconds) over `ctx`.
pub fn start(schedule: &str, ctx: RunContext, shutdown: CancellationToken) -> Started {
    let (handle, triggers) = control(schedule);
    let task = Box::pin(run(
        schedule.to_string(),
        ctx,
        handle.clone(),
        triggers,
        shutdown,
    ));
    Started { handle, task }
}

/// Runs batches on `schedule` (cron with seconds, e.g. `0 * * * * *`) and on trigger until `shutdown`.
#[tracing::instrument(name = "batch", skip_all, fields(schedule = %schedule))]
async fn run(
    schedule: String,
    ctx: RunContext,
    handle: BatchHandle,
    mut triggers: BatchTriggers,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cron = cron::Schedule::from_str(&schedule)
        .with_context(|| format!("batch schedule {schedule:?}"))?;
    let mut retry_at: Option<chrono::DateTime<Utc>> = None;
    loop {
        let tick = cron
            .upcoming(Utc)
            .next()
            .context("the batch schedule has no future run")?;
        let next = retry_at.map_or(tick, |retry| retry.min(tick));
        handle.status.write().next_run_ms = Some(next.timestamp_millis());
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        let reply = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => None,
            Some(reply) = triggers.next() => Some(reply),
        };
        let started = Utc::now();
        handle.status.write().running = true;
        let outcome = tokio::select! {
            // A run cut short leaves no manifest, so nothing of it is visible.
            _ = shutdown.cancelled() => break,
            outcome = run_once(&ctx) => outcome.map_err(|e| format!("{e:#}")),
        };
        let finished = Utc::now();
        let skipped = skipped_ticks(&cron, started, finished);
        if skipped > 0 {
            tracing::warn!(skipped, "batch ticks skipped while a run was in progress");
        }
        {
            let mut status = handle.status.write();
            status.running = false;
            status.ticks_skipped += skipped;
            match &outcome {
                Ok(_) => {
                    status.runs_ok += 1;
                    status.consecutive_failures = 0;
                    retry_at = None;
                }
                Err(error) => {
                    status.runs_failed += 1;
                    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                    let backoff = retry_backoff(status.consecutive_failures);
                    retry_at = chrono::Duration::from_std(backoff)
                        .ok()
                        .map(|b| finished + b);
                    tracing::error!(
                        %error,
                        failures = status.consecutive_failures,
                        retry_in_s = backoff.as_secs(),
                        "batch run failed; retrying with backoff"
                    );
                }
            }
            status.retry_at_ms = retry_at.map(|t| t.timestamp_millis());
            status.last_run = Some(LastRun {
                started_ms: started.timestamp_millis(),
                duration_ms: (finished - started).num_milliseconds().max(0) as u64,
                outcome: outcome.clone(),
            });
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
    tracing::info!("batch layer stopped");
    Ok(())
}

/// Ticks of `cron` that fell while a run went from `started` to `finished`:
/// they are skipped, not queued (runs never overlap, and one run catches up
/// everything anyway).
fn skipped_ticks(
    cron: &cron::Schedule,
    started: chrono::DateTime<Utc>,
    finished: chrono::DateTime<Utc>,
) -> u64 {
    cron.after(&started).take_while(|t| *t < finished).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn failed_runs_are_retried_with_a_doubling_capped_backoff() {
        let secs = |n| retry_backoff(n).as_secs();
        assert_eq!(
            [secs(0), secs(1), secs(2), secs(3), secs(4)],
            [5, 5, 10, 20, 40]
        );
        assert_eq!(secs(7), 300);
        assert_eq!(secs(u32::MAX), 300);
    }

    #[test]
    fn ticks_during_a_run_are_skipped() {
        let check = |schedule: &str, started: &str, finished: &str, expected: u64| {
            let cron = cron::Schedule::from_str(schedule).unwrap();
            assert_eq!(
                skipped_ticks(&cron, at(started), at(finished)),
                expected,
                "{schedule} from {started} to {finished}"
            );
        };
        let every_second = "* * * * * *";
        check(
            every_second,
            "2026-01-01T10:00:00.500Z",
            "2026-01-01T10:00:00.900Z",
            0,
        );
        check(
            every_second,
            "2026-01-01T10:00:00.500Z",
            "2026-01-01T10:00:03.200Z",
            3,
        );
        let every_minute = "0 * * * * *";
        check(
            every_minute,
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:00:59Z",
            0,
        );
        check(
            every_minute,
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:05:00.001Z",
            5,
        );
        check(
            "0 0 * * * *",
            "2026-01-01T10:00:00Z",
            "2026-01-01T10:30:00Z",
            0,
        );
    }
}
