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

use lambda_events::limits::{MAX_GROUP_PARTITIONS, MAX_SNAPSHOT_BYTES};
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
    while next_poll(&mut interval, &shutdown, &feed).await {
        let cursors: Vec<u64> = {
            let feed = feed.read();
            (0..urls.len()).map(|i| feed.cursor(i)).collect()
        };
        let polls = urls
            .iter()
            .zip(&mirrors)
            .zip(cursors)
            .map(|((url, mirror), alerts_since)| {
                let url = format!(
                    "{}{}",
                    url.trim_end_matches('/'),
                    lambda_speed::http::SNAPSHOT_PATH
                );
                let (client, cursor) = (&client, mirror.cursor());
                async move { poll(client, &url, cursor, alerts_since).await }
            });
        let results = futures::future::join_all(polls).await;
        let mut changed = false;
        let now = chrono::Utc::now().timestamp_millis();
        for (i, result) in results.into_iter().enumerate() {
            let mut health = health.write();
            match result {
                Ok(snapshot) => {
                    changed |= take_snapshot(&mut mirrors[i], snapshot, i, &feed);
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
    Ok(())
}

/// Waits for the next poll; `false` once `shutdown` fires (the alert feed
/// is closed then, so its streams end).
async fn next_poll(
    interval: &mut tokio::time::Interval,
    shutdown: &CancellationToken,
    feed: &crate::alerts::SharedFeed,
) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => {
            feed.write().close();
            false
        }
        _ = interval.tick() => true,
    }
}

/// Applies a polled snapshot to `mirror` and passes its alert transitions
/// to the feed as `source`; whether the mirror changed.
fn take_snapshot(
    mirror: &mut Mirror,
    snapshot: Snapshot,
    source: usize,
    feed: &crate::alerts::SharedFeed,
) -> bool {
    // The mirror's meta is the previous snapshot without its windows.
    let changed = !snapshot.windows.is_empty()
        || Snapshot {
            windows: Vec::new(),
            ..snapshot.clone()
        } != mirror.meta;
    let epoch = snapshot.epoch;
    let news = mirror.apply(snapshot);
    if !news.is_empty() || feed.read().epoch(source) != Some(epoch) {
        feed.write()
            .push(source, epoch, news.transitions, news.active);
    }
    changed
}

/// One snapshot from `url` (a full snapshot path).
async fn poll(
    client: &reqwest::Client,
    url: &str,
    (epoch, since): (u64, u64),
    alerts_since: u64,
) -> Result<Snapshot, String> {
    let response = client
        .get(url)
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
    let body = read_at_most(response, MAX_SNAPSHOT_BYTES, "the snapshot").await?;
    let snapshot: Snapshot =
        serde_json::from_slice(&body).map_err(|e| format!("decoding the snapshot: {e}"))?;
    snapshot
        .check()
        .map_err(|e| format!("refusing the snapshot: {e}"))?;
    Ok(snapshot)
}

/// A response's body (`what` it is), refused past `max` bytes: an answer
/// of another process (a speed instance, the batch runner) is outside
/// input.
async fn read_at_most(
    mut response: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, String> {
    let over = || format!("{what} is over {max} bytes (MAX_SNAPSHOT_BYTES)");
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(over());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading {what}: {e}"))?
    {
        if chunk.len() > max - body.len() {
            return Err(over());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
            let response = client
                .get(&url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| e.to_string())?;
            let body = read_at_most(response, MAX_SNAPSHOT_BYTES, "the runner's status").await?;
            serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string())
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

/// How often serving lists the speed group's members in the checkpoint store.
pub const MEMBERS_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// A member record not rewritten for this long is left out (its instance
/// stopped without withdrawing it: killed, or its host lost). Members
/// rewrite theirs every checkpoint interval.
pub const MEMBER_EXPIRY: Duration = Duration::from_secs(60);

/// What serving last saw of the speed group, for `/api/v1/status`.
pub type GroupHealth = Arc<RwLock<Value>>;

/// One partition's copy, from its current owner.
#[derive(Debug, Default)]
struct PartitionCopy {
    /// Its source index in the alert feed.
    source: usize,
    /// The member it is mirrored from, and that member's URL.
    owner: String,
    url: String,
    /// The owner's claimed checkpoint version.
    version: u64,
    last_checkpoint_ms: Option<i64>,
    mirror: Mirror,
    /// The owner changed: ask the new one for everything, and keep the
    /// old copy until it answers.
    fresh: bool,
    error: Option<String>,
}

/// Mirrors a speed group found in `store` until `shutdown`: lists its
/// members, asks each what it owns, and mirrors every partition from the
/// member that claimed it with the highest checkpoint version (two may
/// both say they own one for a moment while it moves: the newer claim is
/// the owner; the older one's next checkpoint is fenced). A partition
/// whose owner does not answer keeps its last known windows.
#[tracing::instrument(name = "speed-group-mirror", skip_all)]
pub async fn run_group_mirror(
    store: lambda_speed::store::CheckpointStore,
    views: SpeedViews,
    feed: crate::alerts::SharedFeed,
    health: GroupHealth,
    horizon_ms: i64,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use lambda_speed::group::Ownership;
    use lambda_speed::store::{MemberRecord, PartitionId};
    let client = poll_client()?;
    let mut members: Vec<MemberRecord> = Vec::new();
    let mut members_error: Option<String> = None;
    let mut listed_at: Option<tokio::time::Instant> = None;
    let mut copies: std::collections::BTreeMap<PartitionId, PartitionCopy> = Default::default();
    let mut warned_not_mirrored = false;
    // Each partition's source in the alert feed, never reused.
    let mut sources = 0usize;
    let mut interval = tokio::time::interval(SPEED_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next_poll(&mut interval, &shutdown, &feed).await {
        if listed_at.is_none_or(|at| at.elapsed() >= MEMBERS_POLL_INTERVAL) {
            listed_at = Some(tokio::time::Instant::now());
            match store.members().await {
                Ok(listed) => {
                    let now = chrono::Utc::now().timestamp_millis();
                    let expiry = MEMBER_EXPIRY.as_millis() as i64;
                    members = listed
                        .into_iter()
                        // Not rewritten for a minute, or stamped a minute
                        // ahead of this clock: not a live member.
                        .filter(|m| {
                            now.saturating_sub(m.updated_ms).unsigned_abs() < expiry.unsigned_abs()
                        })
                        .collect();
                    members_error = None;
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    if members_error.is_none() {
                        tracing::warn!(error = %message, "listing the speed group's members failed; keeping the last list");
                    }
                    members_error = Some(message);
                }
            }
        }
        // What each member says it owns.
        let asked = members.iter().map(|m| {
            let url = format!(
                "{}{}",
                m.url.trim_end_matches('/'),
                lambda_speed::http::PARTITIONS_PATH
            );
            let client = &client;
            async move {
                let response = client.get(url).send().await.map_err(|e| format!("{e}"))?;
                if !response.status().is_success() {
                    return Err(format!("HTTP {}", response.status()));
                }
                let body = read_at_most(response, MAX_SNAPSHOT_BYTES, "what it owns").await?;
                serde_json::from_slice::<Ownership>(&body)
                    .map_err(|e| format!("decoding what it owns: {e}"))
            }
        });
        let owned: Vec<Result<Ownership, String>> = futures::future::join_all(asked).await;
        // The owner of each partition: the highest claimed version.
        let mut owners: std::collections::BTreeMap<PartitionId, (usize, u64, Option<i64>)> =
            Default::default();
        let mut not_mirrored = 0usize;
        for (i, answer) in owned.iter().enumerate() {
            let Ok(ownership) = answer else { continue };
            // What a member says it owns is outside input: only the event
            // topics' partitions below the bound are mirrored (claims of
            // 200 KB topic names, 50 new ones a poll, grew serving to 9.6
            // GB and never shrank: a hostile run).
            let mirrored = |p: &&lambda_speed::group::OwnedPartition| {
                lambda_events::Topic::from_name(&p.topic).is_some()
                    && p.partition < MAX_GROUP_PARTITIONS
            };
            not_mirrored += ownership.partitions.iter().filter(|p| !mirrored(p)).count();
            for p in ownership.partitions.iter().filter(mirrored) {
                let id = PartitionId::new(p.topic.clone(), p.partition);
                let candidate = (i, p.version, p.last_checkpoint_ms);
                owners
                    .entry(id)
                    .and_modify(|o| {
                        if p.version > o.1 {
                            *o = candidate;
                        }
                    })
                    .or_insert(candidate);
            }
        }
        for (id, (i, version, checkpoint_ms)) in &owners {
            let member = &members[*i];
            let copy = copies.entry(id.clone()).or_insert_with(|| {
                sources += 1;
                PartitionCopy {
                    source: sources,
                    ..PartitionCopy::default()
                }
            });
            if copy.owner != member.member || copy.url != member.url {
                // A new owner restored the partition from its checkpoint:
                // its windows and seq are not the old owner's. Everything
                // from it; the old copy stays until it answers.
                copy.owner = member.member.clone();
                copy.url = member.url.clone();
                copy.fresh = true;
            }
            copy.version = *version;
            copy.last_checkpoint_ms = *checkpoint_ms;
        }
        let polls = owners.keys().map(|id| {
            let copy = &copies[id];
            let alerts_since = feed.read().cursor(copy.source);
            let url = format!(
                "{}{}/{}/{}",
                copy.url.trim_end_matches('/'),
                lambda_speed::http::PARTITION_PATH,
                id.topic,
                id.partition
            );
            let cursor = if copy.fresh {
                (0, 0)
            } else {
                copy.mirror.cursor()
            };
            let client = &client;
            async move { (id.clone(), poll(client, &url, cursor, alerts_since).await) }
        });
        let results = futures::future::join_all(polls).await;
        let mut changed = false;
        for (id, result) in results {
            let Some(copy) = copies.get_mut(&id) else {
                continue;
            };
            match result {
                Ok(snapshot) => {
                    if copy.fresh {
                        copy.mirror = Mirror::default();
                        copy.fresh = false;
                        changed = true;
                    }
                    changed |= take_snapshot(&mut copy.mirror, snapshot, copy.source, &feed);
                    copy.error = None;
                }
                Err(error) => copy.error = Some(error),
            }
        }
        if changed {
            let mirrors: Vec<Mirror> = copies.values().map(|c| c.mirror.clone()).collect();
            *views.write() = combine(&mirrors, horizon_ms);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let member_list: Vec<Value> = members
            .iter()
            .zip(&owned)
            .map(|(m, answer)| match answer {
                Ok(o) => json!({ "member": m.member, "url": m.url, "ok": true,
                    "announced_age_ms": now.saturating_sub(m.updated_ms), "rebalances": o.rebalances,
                    "partitions": o.partitions.len() }),
                Err(error) => json!({ "member": m.member, "url": m.url, "ok": false,
                    "announced_age_ms": now.saturating_sub(m.updated_ms), "error": error }),
            })
            .collect();
        let partition_list: Vec<Value> = copies
            .iter()
            .map(|(id, c)| {
                json!({ "topic": id.topic, "partition": id.partition, "owner": c.owner, "url": c.url,
                    "owned_now": owners.contains_key(id),
                    "checkpoint_version": c.version,
                    "checkpoint_age_ms": c.last_checkpoint_ms.map(|t| now.saturating_sub(t).max(0)),
                    "watermark": c.mirror.meta.watermark,
                    "error": c.error })
            })
            .collect();
        if not_mirrored > 0 && !warned_not_mirrored {
            warned_not_mirrored = true;
            tracing::warn!(
                not_mirrored,
                "speed group members claim partitions serving does not mirror (not an event topic, or partition {MAX_GROUP_PARTITIONS} or past): their views are not in answers"
            );
        }
        *health.write() = json!({
            "checkpoint_store": store.url(),
            "claims_not_mirrored": not_mirrored,
            "members": member_list,
            "members_error": members_error,
            "partitions": partition_list,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot's body is read up to the bound and refused one byte past
    /// it, whether the instance says its length or sends it in chunks (a
    /// body had no bound: a hostile instance could fill serving's memory);
    /// the bound here is small, the code path MAX_SNAPSHOT_BYTES takes.
    #[tokio::test]
    async fn a_snapshot_body_is_read_up_to_its_bound() {
        use axum::body::Body;
        let app =
            axum::Router::new()
                .route(
                    "/sized/{n}",
                    axum::routing::get(
                        |axum::extract::Path(n): axum::extract::Path<usize>| async move {
                            vec![b' '; n]
                        },
                    ),
                )
                .route(
                    "/chunked/{n}",
                    axum::routing::get(
                        |axum::extract::Path(n): axum::extract::Path<usize>| async move {
                            let chunks = (0..n).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1]));
                            Body::from_stream(futures::stream::iter(chunks))
                        },
                    ),
                );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = poll_client().unwrap();
        for kind in ["sized", "chunked"] {
            for (n, fits) in [(100, true), (101, false)] {
                let response = client
                    .get(format!("http://{addr}/{kind}/{n}"))
                    .send()
                    .await
                    .unwrap();
                let read = read_at_most(response, 100, "the snapshot").await;
                match read {
                    Ok(body) => assert!(fits && body.len() == n, "{kind} {n}"),
                    Err(e) => {
                        assert!(!fits, "{kind} {n}: {e}");
                        assert!(e.contains("over 100 bytes"), "{e}");
                    }
                }
            }
        }
    }
}
