//! The roles as separate services on a real Kafka-protocol broker: one
//! ingest, two speed-layer instances sharing the partitions, one batch
//! runner, one serve that combines both speed instances' views. The answers
//! must equal a plain fold of what was sent, and stay equal after one speed
//! instance is stopped and restarted from its checkpoint (serving sees its new
//! epoch and reloads its windows).

use std::time::Duration;

use lambda_events::Severity;
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_pipeline::roles::{self, Instance, Peers, Running, Shared};
use lambda_testkit::Tansu;
use serde_json::Value;

use crate::common::{MINUTE, check_answers, eventually, get, post_lines};

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn any_port() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn speed(shared: &Shared, index: u32) -> Running {
    roles::speed(shared, any_port(), Instance::new(index, 2))
        .await
        .unwrap()
}

/// Waits until both speed instances and the batch runner have everything.
async fn caught_up(client: &reqwest::Client, base: &str, runs_after: u64) -> Value {
    eventually(
        "both speed instances and the batch runner catching up",
        Duration::from_secs(90),
        || async {
            let status = get(client, format!("{base}/api/v1/status")).await;
            let done = |section: &str| {
                status[section]["partitions"].as_array().is_some_and(|ps| {
                    ps.len() == 8
                        && ps
                            .iter()
                            .all(|p| p["lag"] == 0 && p["end"].as_u64() > Some(0))
                })
            };
            let instances_ok = status["speed_instances"]
                .as_array()
                .is_some_and(|i| i.len() == 2 && i.iter().all(|i| i["ok"] == true));
            let runs = status["batch"]["runs_ok"].as_u64().unwrap_or(0);
            if done("speed") && done("batch") && instances_ok && runs > runs_after {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await
}

async fn check(client: &reqwest::Client, base: &str, lines: &[Vec<u8>]) {
    let checked = check_answers(
        client,
        base,
        lines,
        START_MS - 15 * MINUTE,
        START_MS + 30 * MINUTE,
    )
    .await;
    let (batch, speed) = (checked.batch_buckets, checked.speed_buckets);
    assert!(
        batch > 3 && speed >= 1,
        "{batch} batch, {speed} speed buckets"
    );
}

/// (source, rule, key, state, event time) of alert transitions.
type Transition = (u64, String, String, String, i64);

fn transition(source: u64, a: &Value) -> Transition {
    (
        source,
        a["rule"].as_str().unwrap().to_string(),
        a["key"].as_str().unwrap().to_string(),
        a["state"].as_str().unwrap().to_string(),
        a["ts"].as_i64().unwrap(),
    )
}

/// Serving's alert feed holds every transition of both speed instances, each
/// under its instance's index, and nothing else.
async fn check_alerts(client: &reqwest::Client, base: &str, instances: [std::net::SocketAddr; 2]) {
    let mut expected = Vec::new();
    for (source, addr) in instances.iter().enumerate() {
        let snapshot = get(
            client,
            format!(
                "http://{addr}{}?epoch=0&since=0",
                lambda_speed::http::SNAPSHOT_PATH
            ),
        )
        .await;
        let alerts = snapshot["alerts"].as_array().unwrap();
        assert!(!alerts.is_empty(), "instance {source} raised no alert");
        expected.extend(alerts.iter().map(|a| transition(source as u64, a)));
    }
    expected.sort();
    let expected = &expected;
    eventually(
        "serving's alert feed holding both instances' transitions",
        Duration::from_secs(10),
        || async move {
            let feed = get(client, format!("{base}/api/v1/alerts?limit=1000")).await;
            let mut fed: Vec<Transition> = feed["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| transition(a["source"].as_u64().unwrap(), a))
                .collect();
            fed.sort();
            if fed == *expected {
                Ok(())
            } else {
                Err(format!("serving's {fed:?}\ninstances' {expected:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_speed_instances_behind_one_serve() {
    let broker = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    // Every alarm raises an alert, so both instances have some to report.
    let mut alert_rules = lambda_speed::alerts::AlertRules::defaults();
    if let Some(alarm) = alert_rules.alarm.as_mut() {
        alarm.severities = Severity::ALL.to_vec();
    }
    let shared = |name: &str| Shared {
        alert_rules: alert_rules.clone(),
        admin_token: Some("roles-token".into()),
        log_url: Some(broker.log_url()),
        lake_url: Some(format!("file://{}", dir.path().join("lake").display())),
        ..Shared::new(dir.path().join(name))
    };
    let ingest = roles::ingest(&shared("ingest"), any_port()).await.unwrap();
    let speed0 = speed(&shared("speed-0"), 0).await;
    let mut speed1 = speed(&shared("speed-1"), 1).await;
    let batch = roles::batch(&shared("batch"), any_port(), "*/2 * * * * *")
        .await
        .unwrap();
    let speed1_addr = speed1.addr;
    let peers = Peers {
        speed_urls: vec![
            format!("http://{}", speed0.addr),
            format!("http://{speed1_addr}"),
        ],
        batch_url: Some(format!("http://{}", batch.addr)),
        ..Peers::default()
    };
    let serve = roles::serve(&shared("serve"), any_port(), peers)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let (ingest_url, base) = (
        format!("http://{}", ingest.addr),
        format!("http://{}", serve.addr),
    );

    let mut generator = Generator::new(GeneratorConfig {
        seed: 7,
        start_ms: START_MS,
        rate: 8.0,
        ..GeneratorConfig::default()
    });
    let mut lines: Vec<Vec<u8>> = (0..5000).map(|_| generator.next_line().bytes).collect();
    post_lines(&client, &ingest_url, &lines).await;
    let status = caught_up(&client, &base, 0).await;
    // Each instance consumed only its own partitions, and both counted events.
    let speed_status = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            get(
                &client,
                format!(
                    "http://{addr}{}?epoch=0&since=0",
                    lambda_speed::http::SNAPSHOT_PATH
                ),
            )
            .await
        }
    };
    let (s0, s1) = (
        speed_status(speed0.addr).await,
        speed_status(speed1_addr).await,
    );
    for (snapshot, owned) in [(&s0, [0, 2]), (&s1, [1, 3])] {
        let partitions: Vec<u64> = snapshot["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o[1].as_u64().unwrap())
            .collect();
        assert!(
            partitions.iter().all(|p| owned.contains(&(*p as i32))),
            "{partitions:?}"
        );
        assert!(snapshot["counters"][0].as_u64().unwrap() > 1000);
    }
    let counted = s0["counters"][0].as_u64().unwrap() + s1["counters"][0].as_u64().unwrap();
    assert_eq!(status["speed"]["events_counted"].as_u64(), Some(counted));
    check(&client, &base, &lines).await;
    check_alerts(&client, &base, [speed0.addr, speed1_addr]).await;

    // Stop instance 1 and start it again on its data dir: it restores its
    // checkpoint under a new epoch, and serving reloads its windows.
    speed1.supervisor.stop().await.unwrap();
    speed1 = roles::speed(&shared("speed-1"), speed1_addr, Instance::new(1, 2))
        .await
        .unwrap();
    let more: Vec<Vec<u8>> = (0..1000).map(|_| generator.next_line().bytes).collect();
    post_lines(&client, &ingest_url, &more).await;
    lines.extend(more);
    let runs = status["batch"]["runs_ok"].as_u64().unwrap();
    caught_up(&client, &base, runs).await;
    check(&client, &base, &lines).await;

    // A run on request through serve, forwarded to the batch runner with the token.
    let response = client
        .post(format!("{base}/api/v1/admin/batch/run"))
        .bearer_auth("roles-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert!(report["version"].as_u64() > Some(0), "{report}");
    let refused = client
        .post(format!("{base}/api/v1/admin/batch/run"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        401,
        "the runner checks the forwarded token"
    );

    for running in [serve, batch, speed1, speed0, ingest] {
        running.supervisor.stop().await.unwrap();
    }
}
