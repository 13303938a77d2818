//! The roles in other processes. Serving in its own process (`lambda serve`)
//! keeps a copy of each speed-layer instance's views by polling `GET
//! /internal/v1/speed` (only the windows that changed since its last poll
//! travel), and combines the copies into the [`SpeedViews`] the query
//! handlers read, as if the speed layer ran in this process (see
//! ARCHITECTURE.md, "Speed views across processes"). The batch runner's
//! status travels the same way: [`runner_router`] is what `lambda batch`
//! serves, [`follow_runner`] is serving polling it.

use std::sync::Arc;
use std::time::Duration;

use lambda_speed::SpeedViews;
use lambda_speed::export::{Mirror, Snapshot, combine};
use parking_lot::RwLock;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How often each speed instance is polled.
pub const SPEED_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long one poll may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

/// The client of every poll, each bounded by [`POLL_TIMEOUT`].
fn poll_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(POLL_TIMEOUT)
        .build()
        .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))
}

/// How each instance answered, for `/api/v1/status`.
#[derive(Debug, Clone, Default)]
pub struct InstanceHealth {
    /// Base URL of the instance.
    pub url: String,
    /// Wall time of the last good poll (ms).
    pub last_ok_ms: Option<i64>,
    /// The last poll's error, if it failed.
    pub error: Option<String>,
}

/// Health of every polled instance, shared with the status section.
pub type SpeedHealth = Arc<RwLock<Vec<InstanceHealth>>>;

/// The status section for [`SpeedHealth`].
pub fn health_section(health: &SpeedHealth) -> Value {
    let now = chrono::Utc::now().timestamp_millis();
    let instances: Vec<Value> = health
        .read()
        .iter()
        .map(|h| json!({ "url": h.url, "ok": h.error.is_none() && h.last_ok_ms.is_some(),
                         "last_ok_ms": h.last_ok_ms, "age_ms": h.last_ok_ms.map(|t| now - t), "error": h.error }))
        .collect();
    json!(instances)
}

/// Polls every instance in `urls` until `shutdown`, keeping `views` up to date.
/// An instance that does not answer keeps its last known windows (and is
/// reported in the health) until it answers again.
#[tracing::instrument(name = "speed-mirror", skip_all)]
pub async fn run_speed_mirror(
    urls: Vec<String>,
    views: SpeedViews,
    feed: crate::alerts::SharedFeed,
    health: SpeedHealth,
    horizon_ms: i64,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = poll_client()?;
    let mut mirrors = vec![Mirror::default(); urls.len()];
    *health.write() = urls
        .iter()
        .map(|url| InstanceHealth {
            url: url.clone(),
            ..InstanceHealth::default()
        })
        .collect();
    let mut interval = tokio::time::interval(SPEED_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                feed.write().close();
                return Ok(());
            }
            _ = interval.tick() => {}
        }
        let cursors: Vec<u64> = {
            let feed = feed.read();
            (0..urls.len()).map(|i| feed.cursor(i)).collect()
        };
        let polls = urls
            .iter()
            .zip(&mirrors)
            .zip(cursors)
            .map(|((url, mirror), alerts_since)| poll(&client, url, mirror.cursor(), alerts_since));
        let results = futures::future::join_all(polls).await;
        let mut changed = false;
        let now = chrono::Utc::now().timestamp_millis();
        for (i, result) in results.into_iter().enumerate() {
            let mut health = health.write();
            match result {
                Ok(snapshot) => {
                    // The mirror's meta is the previous snapshot without its windows.
                    changed |= !snapshot.windows.is_empty()
                        || Snapshot {
                            windows: Vec::new(),
                            ..snapshot.clone()
                        } != mirrors[i].meta;
                    let epoch = snapshot.epoch;
                    let alerts = mirrors[i].apply(snapshot);
                    if !alerts.is_empty() || feed.read().epoch(i) != Some(epoch) {
                        feed.write().push(i, epoch, alerts);
                    }
                    health[i].last_ok_ms = Some(now);
                    health[i].error = None;
                }
                Err(error) => {
                    if health[i].error.is_none() {
                        tracing::warn!(url = %urls[i], %error, "speed instance did not answer; serving its last known windows");
                    }
                    health[i].error = Some(error);
                }
            }
        }
        if changed {
            let combined = combine(&mirrors, horizon_ms);
            *views.write() = combined;
        }
    }
}

async fn poll(
    client: &reqwest::Client,
    url: &str,
    (epoch, since): (u64, u64),
    alerts_since: u64,
) -> Result<Snapshot, String> {
    let response = client
        .get(format!(
            "{}{}",
            url.trim_end_matches('/'),
            lambda_speed::http::SNAPSHOT_PATH
        ))
        .query(&[
            ("epoch", epoch),
            ("since", since),
            ("alerts_since", alerts_since),
        ])
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response
        .json::<Snapshot>()
        .await
        .map_err(|e| format!("decoding the snapshot: {e}"))
}

/// Path of the batch runner's status (`lambda batch` serves it).
pub const RUNNER_STATUS_PATH: &str = "/internal/v1/batch";
/// How often serving fetches the batch runner's status.
pub const RUNNER_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Keeps `target` equal to the batch runner's status at `url`, until `shutdown`.
pub async fn follow_runner(
    url: String,
    target: Arc<RwLock<Option<Value>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = poll_client()?;
    let url = format!("{}{RUNNER_STATUS_PATH}", url.trim_end_matches('/'));
    let mut interval = tokio::time::interval(RUNNER_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        let fetched = async {
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json::<Value>()
                .await
        }
        .await;
        match fetched {
            Ok(value) => *target.write() = Some(value),
            Err(error) => tracing::debug!(%error, %url, "batch runner status unavailable"),
        }
    }
}

/// The batch runner's own HTTP surface (`lambda batch`): `/healthz`,
/// `/api/v1/status` and `/metrics` about its runs, [`RUNNER_STATUS_PATH`]
/// for [`follow_runner`], and the admin routes that start a run.
pub fn runner_router(
    handle: lambda_lake::BatchHandle,
    admin_token: Option<String>,
) -> axum::Router {
    use crate::status::{ProcessTelemetry, process_router, runner_status};
    let (status, section, health, metrics) = (
        handle.clone(),
        handle.clone(),
        handle.clone(),
        handle.clone(),
    );
    let telemetry = ProcessTelemetry {
        problems: Arc::new(move || health.status.read().unhealthy().into_iter().collect()),
        sections: vec![(
            "batch".to_string(),
            Arc::new(move || runner_status(&section.status.read())),
        )],
        metrics: vec![Arc::new(move |out: &mut String| {
            crate::metrics::runner_metrics(&metrics.status.read(), out)
        })],
    };
    let admin =
        crate::admin::AdminState::new(admin_token, crate::admin::BatchRunner::Local(handle));
    process_router(telemetry)
        .route(
            RUNNER_STATUS_PATH,
            axum::routing::get(move || {
                let s = status.status.read().clone();
                async move { axum::Json(runner_status(&s)) }
            }),
        )
        .merge(crate::admin::router(admin))
}
