//! Alerts for readers: `GET /api/v1/alerts?since&limit` and the SSE stream
//! `GET /api/v1/alerts/stream`.
//!
//! Serving keeps one [`AlertFeed`]: every alert transition from every speed
//! instance (in this process, or polled from others), numbered in the order
//! serving received them. `since` and SSE's `Last-Event-ID` are those numbers,
//! so a client that reconnects gets exactly what it missed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lambda_speed::SpeedReader;
use lambda_speed::alerts::{Alert, AlertState, RuleName};
use lambda_speed::http::refused;
use parking_lot::RwLock;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ServingState;

/// Transitions kept.
pub const FEED_CAPACITY: usize = 10_000;
/// Most alerts one request returns.
pub const MAX_LIMIT: usize = lambda_events::limits::MAX_ALERTS_PER_PAGE;
/// Alert streams open at once; one more is answered `503` with `Retry-After`.
pub const MAX_STREAMS: usize = lambda_events::limits::MAX_ALERT_STREAMS;

/// One transition as serving numbered it.
#[derive(Debug, Clone)]
pub struct FedAlert {
    /// Serving's number (1, 2, …).
    pub id: u64,
    /// Which speed instance raised it (index in `--speed-url` order; 0 in-process).
    pub source: usize,
    /// The transition.
    pub alert: Alert,
}

/// Every transition serving has received, the newest [`FEED_CAPACITY`].
#[derive(Debug)]
pub struct AlertFeed {
    log: VecDeque<FedAlert>,
    next_id: u64,
    /// Last alert seq taken from each source.
    cursors: HashMap<usize, u64>,
    /// The speed state's epoch each source last sent from.
    epochs: HashMap<usize, u64>,
    /// Shutting down: open streams end.
    closed: bool,
    notify: watch::Sender<u64>,
    /// One permit per open stream.
    streams: Arc<tokio::sync::Semaphore>,
}

impl Default for AlertFeed {
    fn default() -> Self {
        AlertFeed {
            log: VecDeque::new(),
            next_id: 1,
            cursors: HashMap::new(),
            epochs: HashMap::new(),
            closed: false,
            notify: watch::channel(0).0,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// The feed, shared by the sources and the handlers.
pub type SharedFeed = Arc<RwLock<AlertFeed>>;

impl AlertFeed {
    /// The last alert seq taken from `source`.
    pub fn cursor(&self, source: usize) -> u64 {
        self.cursors.get(&source).copied().unwrap_or(0)
    }

    /// The epoch `source` last sent from, if it sent.
    pub fn epoch(&self, source: usize) -> Option<u64> {
        self.epochs.get(&source).copied()
    }

    /// Appends the transitions of `source` (a speed state of `epoch`) that
    /// the feed has not seen yet.
    ///
    /// Within one epoch a transition is new when its seq is past the
    /// source's cursor. A new epoch (the instance restarted) sends every
    /// transition it keeps: its seqs may have started again, so those are
    /// taken unless the feed holds the same transition (rule, key, state,
    /// event time) from that source already — what a restored checkpoint
    /// replays is not repeated, what a fresh state raises is not lost.
    pub fn push(&mut self, source: usize, epoch: u64, alerts: impl IntoIterator<Item = Alert>) {
        let renewed = self
            .epochs
            .insert(source, epoch)
            .is_some_and(|e| e != epoch);
        let mut cursor = if renewed { 0 } else { self.cursor(source) };
        let known: std::collections::HashSet<(RuleName, String, AlertState, i64)> = if renewed {
            self.log
                .iter()
                .filter(|a| a.source == source)
                .map(|a| (a.alert.rule, a.alert.key.clone(), a.alert.state, a.alert.ts))
                .collect()
        } else {
            Default::default()
        };
        let before = self.next_id;
        for alert in alerts {
            if alert.seq <= cursor {
                continue;
            }
            cursor = alert.seq;
            let identity = (alert.rule, alert.key.clone(), alert.state, alert.ts);
            if known.contains(&identity) {
                continue;
            }
            cursor = alert.seq;
            self.log.push_back(FedAlert {
                id: self.next_id,
                source,
                alert,
            });
            self.next_id += 1;
        }
        self.cursors.insert(source, cursor);
        while self.log.len() > FEED_CAPACITY {
            self.log.pop_front();
        }
        if self.next_id != before {
            self.notify.send_replace(self.next_id - 1);
        }
    }

    /// Transitions after `since`, at most `limit`.
    pub fn after(&self, since: u64, limit: usize) -> Vec<FedAlert> {
        self.log
            .iter()
            .filter(|a| a.id > since)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest id.
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Alerts raised and not cleared, by (source, rule, key), as far as the feed remembers.
    pub fn active(&self) -> Vec<FedAlert> {
        let mut last: BTreeMap<(usize, RuleName, &str), &FedAlert> = BTreeMap::new();
        for a in &self.log {
            last.insert((a.source, a.alert.rule, &a.alert.key), a);
        }
        last.into_values()
            .filter(|a| a.alert.state == AlertState::Raised)
            .cloned()
            .collect()
    }

    /// Ends every open stream (at shutdown, so the HTTP server can drain).
    pub fn close(&mut self) {
        self.closed = true;
        self.notify.send_replace(self.last_id());
    }

    /// A receiver told the newest id whenever transitions arrive.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

/// The JSON of one transition.
pub fn to_json(a: &FedAlert) -> Value {
    json!({
        "id": a.id,
        "source": a.source,
        "rule": a.alert.rule,
        "key": a.alert.key,
        "state": a.alert.state,
        "ts": a.alert.ts,
        "message": a.alert.message,
        "value": a.alert.value,
    })
}

/// Feeds the alerts of a speed layer in this process into `feed` until `shutdown`.
pub async fn run_local_source(
    speed: SpeedReader,
    feed: SharedFeed,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                feed.write().close();
                return Ok(());
            }
            _ = interval.tick() => {}
        }
        let (cursor, known_epoch) = {
            let feed = feed.read();
            (feed.cursor(0), feed.epoch(0))
        };
        let (epoch, fresh) = {
            let speed = speed.read();
            let since = if known_epoch == Some(speed.epoch()) {
                cursor
            } else {
                0
            };
            let fresh: Vec<Alert> = speed.alerts().since(since).cloned().collect();
            (speed.epoch(), fresh)
        };
        if !fresh.is_empty() || known_epoch != Some(epoch) {
            feed.write().push(0, epoch, fresh);
        }
    }
}

/// Refuses a parameter not in `known`, naming it.
fn only(params: &HashMap<String, String>, known: &[&str]) -> Result<(), Response> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(refused(
            unknown,
            &format!("unknown parameter (expected {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Response> {
    match params.get(name) {
        None => Ok(None),
        Some(raw) => raw
            .parse()
            .map(Some)
            .map_err(|_| refused(name, &format!("expected an unsigned integer, got {raw:?}"))),
    }
}

/// `GET /api/v1/alerts?since=ID&limit=N`: transitions after `since` (default:
/// all kept), oldest first, at most `limit` (default 100, at most 1000), plus
/// the active alerts.
pub async fn list(
    State(state): State<ServingState>,
    lambda_speed::http::Params(params): lambda_speed::http::Params,
) -> Response {
    if let Err(response) = only(&params, &["since", "limit"]) {
        return response;
    }
    let since = match number(&params, "since") {
        Ok(v) => v.unwrap_or(0),
        Err(response) => return response,
    };
    let limit = match number(&params, "limit") {
        Ok(v) => v.unwrap_or(100) as usize,
        Err(response) => return response,
    };
    if limit == 0 || limit > MAX_LIMIT {
        return refused("limit", &format!("must be 1 to {MAX_LIMIT}"));
    }
    let feed = state.alerts.read();
    let alerts: Vec<Value> = feed.after(since, limit).iter().map(to_json).collect();
    let next = alerts
        .last()
        .and_then(|a| a["id"].as_u64())
        .unwrap_or(since);
    let active: Vec<Value> = feed.active().iter().map(to_json).collect();
    axum::Json(json!({ "alerts": alerts, "next": next, "last": feed.last_id(), "active": active }))
        .into_response()
}

/// `GET /api/v1/alerts/stream`: Server-Sent Events, one `alert` event per
/// transition with `id:` set; resumes after `Last-Event-ID` (or `?since=`),
/// else starts with what arrives next.
pub async fn stream(
    State(state): State<ServingState>,
    headers: HeaderMap,
    lambda_speed::http::Params(params): lambda_speed::http::Params,
) -> Response {
    let resume = match headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::parse::<u64>))
    {
        None => None,
        Some(Ok(Ok(id))) => Some(id),
        Some(_) => {
            return refused(
                "Last-Event-ID",
                "expected an unsigned integer (the id of the last event received)",
            );
        }
    };
    if let Err(response) = only(&params, &["since"]) {
        return response;
    }
    let since = match number(&params, "since") {
        Ok(v) => v,
        Err(response) => return response,
    };
    let feed = Arc::clone(&state.alerts);
    let (mut cursor, mut changes, streams) = {
        let f = feed.read();
        (
            resume.or(since).unwrap_or(f.last_id()),
            f.subscribe(),
            Arc::clone(&f.streams),
        )
    };
    let Ok(permit) = streams.try_acquire_owned() else {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": format!("{MAX_STREAMS} alert streams are open already; try again later") })),
        )
            .into_response();
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(5),
        );
        return response;
    };
    let events = async_stream(move |tx| async move {
        // Held while the stream is open.
        let _permit = permit;
        loop {
            let (fresh, closed) = {
                let f = feed.read();
                (f.after(cursor, MAX_LIMIT), f.closed)
            };
            for a in &fresh {
                cursor = a.id;
                let event = SseEvent::default()
                    .event("alert")
                    .id(a.id.to_string())
                    .data(to_json(a).to_string());
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if closed {
                return;
            }
            if fresh.len() < MAX_LIMIT {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    // The client went away: stop waiting for the next alert.
                    _ = tx.closed() => return,
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// A stream fed by a task through a small channel (ends when the task ends or the client goes).
fn async_stream<F, Fut>(
    task: F,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(task(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(seq: u64, key: &str, state: AlertState, ts: i64) -> Alert {
        Alert {
            seq,
            rule: RuleName::SensorRange,
            key: key.into(),
            state,
            ts,
            message: String::new(),
            value: None,
        }
    }

    fn keys(feed: &AlertFeed) -> Vec<(u64, usize, String, AlertState)> {
        feed.after(0, MAX_LIMIT)
            .into_iter()
            .map(|a| (a.id, a.source, a.alert.key, a.alert.state))
            .collect()
    }

    #[test]
    fn the_feed_takes_each_transition_once_across_restarts() {
        use AlertState::{Cleared, Raised};
        let mut feed = AlertFeed::default();
        feed.push(
            0,
            7,
            [alert(1, "a", Raised, 10), alert(2, "a", Cleared, 20)],
        );
        // The same again, and a second source with its own seqs.
        feed.push(
            0,
            7,
            [alert(1, "a", Raised, 10), alert(2, "a", Cleared, 20)],
        );
        feed.push(1, 9, [alert(1, "b", Raised, 15)]);
        assert_eq!(feed.cursor(0), 2);
        assert_eq!(
            keys(&feed),
            vec![
                (1, 0, "a".into(), Raised),
                (2, 0, "a".into(), Cleared),
                (3, 1, "b".into(), Raised)
            ]
        );
        // Source 0 restored a checkpoint taken after seq 1 (new epoch): it
        // replays seq 2 and goes on; only seq 3 is new.
        feed.push(
            0,
            8,
            [
                alert(1, "a", Raised, 10),
                alert(2, "a", Cleared, 20),
                alert(3, "c", Raised, 30),
            ],
        );
        assert_eq!(feed.last_id(), 4);
        // Source 1 started from nothing (new epoch, seqs from 1 again): its
        // new transitions are taken although their seqs were seen before.
        feed.push(1, 10, [alert(1, "d", Raised, 40)]);
        assert_eq!(
            keys(&feed)[3..],
            [(4, 0, "c".into(), Raised), (5, 1, "d".into(), Raised)]
        );
        let active: Vec<String> = feed.active().into_iter().map(|a| a.alert.key).collect();
        assert_eq!(active, vec!["c", "b", "d"]);
    }
}
