//! Kappa mode: the demo without a batch layer, its views from the speed
//! layer's fold alone; `lambda kappa replay` builds a new view version from
//! the log and switches serving to it in one step; the version survives a
//! restart.

use std::collections::HashSet;
use std::time::Duration;

use lambda_ingest::generator::{Generator, GeneratorConfig, LineKind};
use lambda_kappa::Architecture;
use lambda_pipeline::demo::{Demo, DemoConfig};
use lambda_testkit::eventually_every;
use serde_json::Value;

use crate::common::{
    MINUTE, check_funnel, check_iot, check_pages, demo_config, eventually, fold, get, post_lines,
    speed_caught_up,
};

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const TOKEN: &str = "kappa-token";

fn config(dir: &std::path::Path) -> DemoConfig {
    let mut config = demo_config(dir);
    config.shared.architecture = Architecture::Kappa;
    config.shared.admin_token = Some(TOKEN.into());
    config
}

fn lines() -> (Vec<Vec<u8>>, usize) {
    let mut generator = Generator::new(GeneratorConfig {
        seed: 77,
        start_ms: START_MS,
        rate: 10.0,
        late_fraction: 0.03,
        duplicate_fraction: 0.02,
        malformed_fraction: 0.01,
        ..GeneratorConfig::default()
    });
    let mut late = 0;
    let lines = (0..5000)
        .map(|_| {
            let line = generator.next_line();
            late += usize::from(line.kind == LineKind::Late);
            line.bytes
        })
        .collect();
    (lines, late)
}

async fn kappa_status(client: &reqwest::Client, base: &str) -> Value {
    get(client, format!("{base}/api/v1/kappa")).await
}

fn range() -> String {
    format!(
        "from={}&to={}&step=1m",
        START_MS - 15 * MINUTE,
        START_MS + 15 * MINUTE
    )
}

async fn answers(client: &reqwest::Client, base: &str) -> (Value, Value, Value) {
    let r = range();
    (
        get(client, format!("{base}/api/v1/funnel?{r}")).await,
        get(client, format!("{base}/api/v1/iot?{r}")).await,
        get(client, format!("{base}/api/v1/pages?{r}")).await,
    )
}

fn total(funnel: &Value, field: &str) -> u64 {
    funnel["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[field].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kappa_views_come_from_the_fold_and_a_replay_switches_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();
    let (lines, late_lines) = lines();
    assert!(late_lines > 50);
    post_lines(&client, &base, &lines).await;
    let status = speed_caught_up(&client, &base).await;
    assert_eq!(status["architecture"], "kappa");
    assert_eq!(status["kappa"]["version"], 1);
    assert!(status["batch"].is_null(), "no batch layer: {status}");

    // Every bucket is the speed layer's; there is no boundary. Late events
    // (minutes behind the watermark) are missing: nothing heals them.
    let (funnel_v1, _, _) = answers(&client, &base).await;
    assert!(funnel_v1["boundary"].is_null(), "{}", funnel_v1["boundary"]);
    let (expected_funnel, expected_iot, _) = fold(&lines);
    let sent_clicks: u64 = expected_funnel.values().map(|f| f.clicks).sum();
    let sent_impressions: u64 = expected_funnel.values().map(|f| f.impressions).sum();
    assert!(
        funnel_v1["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["layer"] == "speed")
    );
    assert!(
        total(&funnel_v1, "clicks") + total(&funnel_v1, "impressions")
            < sent_clicks + sent_impressions,
        "late events are dropped in kappa mode"
    );

    // No batch layer: a batch run and a comparison are refused, by name.
    let run = client
        .post(format!("{base}/api/v1/admin/batch/run"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 503);
    let compare = client
        .get(format!("{base}/api/v1/compare"))
        .send()
        .await
        .unwrap();
    assert_eq!(compare.status(), 409);
    let body: Value = compare.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("kappa"), "{body}");

    // A replay needs the token, and a readable lateness.
    let replay = format!("{base}/api/v1/admin/kappa/replay");
    assert_eq!(client.post(&replay).send().await.unwrap().status(), 401);
    let bad = client
        .post(&replay)
        .bearer_auth(TOKEN)
        .body(r#"{"allowed_lateness":"soon"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["parameter"], "allowed_lateness");
    // The token is checked before the body is read: a request announcing a
    // body it never sends is refused at once (it used to wait for the body,
    // with no time limit). With the token, a body past 4 KiB is 413.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
        socket
            .write_all(
                b"POST /api/v1/admin/kappa/replay HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n{",
            )
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut head))
            .await
            .expect("answered without the body")
            .unwrap();
        assert_eq!(&head, b"HTTP/1.1 401");
    }
    let big = client
        .post(&replay)
        .bearer_auth(TOKEN)
        .body(format!(
            r#"{{"allowed_lateness":"15m","pad":"{}"}}"#,
            "x".repeat(5000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let body: Value = big.json().await.unwrap();
    assert_eq!(body["parameter"], "body", "{body}");

    // Replay with a lateness wider than the generator's lateness (2–10 min):
    // the new version counts every event. Until the switch, readers see
    // version 1 whole; after it, version 2 whole — never a mix.
    let accepted = client
        .post(&replay)
        .bearer_auth(TOKEN)
        .body(r#"{"allowed_lateness":"15m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(body["version"], 2);
    let again = client
        .post(&replay)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let conflict = again.status();
    let seen = std::cell::RefCell::new(HashSet::new());
    // Sampled every 20 ms: every answer on the way is one version's or the other's.
    let every = Duration::from_millis(20);
    let kappa = eventually_every(
        "version 2 switched to",
        Duration::from_secs(120),
        every,
        || async {
            let (funnel, _, _) = answers(&client, &base).await;
            seen.borrow_mut().insert(funnel["buckets"].to_string());
            let kappa = kappa_status(&client, &base).await;
            assert_ne!(kappa["replay"]["state"], "failed", "{kappa}");
            match kappa["version"] == 2 {
                true => Ok(kappa),
                false => Err(kappa.to_string()),
            }
        },
    )
    .await;
    assert_eq!(kappa["replay"]["state"], "switched");
    assert_eq!(kappa["allowed_lateness_ms"], 900_000);
    assert_eq!(kappa["replay"]["records"], kappa["replay"]["target"]);
    let seen = seen.into_inner();
    assert!(
        conflict == 409 || conflict == 202,
        "a second replay while one runs is refused (or queued after it switched): {conflict}"
    );
    speed_caught_up(&client, &base).await;
    let (funnel_v2, iot_v2, pages_v2) = answers(&client, &base).await;
    let (_, funnel_buckets) = check_funnel(&funnel_v2, &expected_funnel, i64::MIN);
    assert!(
        funnel_buckets > 5,
        "{funnel_buckets} funnel buckets compared"
    );
    assert!(check_iot(&iot_v2, &expected_iot, i64::MIN) > 5);
    assert!(check_pages(&pages_v2, &expected_funnel, i64::MIN) > 0);
    let (v1, v2) = (
        funnel_v1["buckets"].to_string(),
        funnel_v2["buckets"].to_string(),
    );
    assert!(
        seen.iter().all(|s| *s == v1 || *s == v2),
        "every answer during the replay was one version or the other"
    );

    // The command: progress, then the switch (to version 3 if the second
    // request above was queued after version 2, else to 3 now).
    if conflict == 202 {
        eventually(
            "the queued replay switching",
            Duration::from_secs(30),
            || async {
                let kappa = kappa_status(&client, &base).await;
                if kappa["replay"]["state"] == "switched" {
                    Ok(())
                } else {
                    Err(kappa.to_string())
                }
            },
        )
        .await;
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["kappa", "replay", "--no-progress", "--url", &base])
        .env("LAMBDA_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let version = kappa_status(&client, &base).await["version"]
        .as_u64()
        .unwrap();
    assert!(
        stdout.contains(&format!("switched to version {version}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("allowed lateness 900 s"),
        "the version's lateness carries over: {stdout}"
    );
    speed_caught_up(&client, &base).await;
    let (funnel_v3, _, _) = answers(&client, &base).await;
    assert_eq!(
        funnel_v3["buckets"], funnel_v2["buckets"],
        "the same code and lateness give the same views"
    );
    // Versions older than the previous one are deleted.
    let kept: Vec<String> = std::fs::read_dir(dir.path().join("kappa"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('v'))
        .collect();
    assert!(
        kept.len() <= 2 && kept.contains(&format!("v{version}")),
        "{kept:?}"
    );
    demo.stop().await.unwrap();

    // A restart serves the current version from its checkpoint.
    let demo = Demo::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let status = speed_caught_up(&client, &base).await;
    assert_eq!(status["kappa"]["version"], version);
    let (funnel_again, _, _) = answers(&client, &base).await;
    assert_eq!(funnel_again["buckets"], funnel_v2["buckets"]);
    demo.stop().await.unwrap();
}

/// The page error rate alerts of `/api/v1/alerts`' active list, as
/// `(rule, key, message)`.
async fn active_alerts(client: &reqwest::Client, base: &str) -> Vec<(String, String, String)> {
    let listed = get(client, format!("{base}/api/v1/alerts")).await;
    let field = |a: &Value, name: &str| a[name].as_str().unwrap_or_default().to_string();
    listed["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (field(a, "rule"), field(a, "key"), field(a, "message")))
        .collect()
}

/// After a replay switches versions, the active alerts are the new
/// version's: an alert only the old version raised (it had missed, as
/// late, the page views that bring the error rate under the threshold)
/// is no longer listed. (It stayed listed until a restart: the feed took
/// the new version's transitions but kept the old one's alerts active; a
/// hostile run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_the_active_alerts_are_the_new_version_s() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();
    let m = START_MS;
    let view = |i: usize, ts: i64| {
        format!(
            r#"{{"event_id":"v{i}","ts":{ts},"event_type":"page_view","user_id":"u{}","page":"/x"}}"#,
            i % 30
        )
        .into_bytes()
    };
    let closers = |tag: &str, ts: i64| -> Vec<Vec<u8>> {
        (0..30)
            .map(|u| {
                format!(
                    r#"{{"event_id":"{tag}{u}","ts":{ts},"event_type":"click","user_id":"u{u}"}}"#
                )
                .into_bytes()
            })
            .collect()
    };
    // Minute m: 20 views of /x and 10 errors (50 %), then the minute closes
    // (the default lateness is a minute).
    let mut first: Vec<Vec<u8>> = (0..20).map(|i| view(i, m + 1_000 + i as i64)).collect();
    first.extend((0..10).map(|i| {
        format!(
            r#"{{"event_id":"e{i}","ts":{},"event_type":"error","user_id":"u{i}","page":"/x","error_code":500}}"#,
            m + 30_000 + i
        )
        .into_bytes()
    }));
    post_lines(&client, &base, &first).await;
    speed_caught_up(&client, &base).await;
    post_lines(&client, &base, &closers("c", m + 3 * MINUTE)).await;
    let raised = |active: &[(String, String, String)]| {
        active
            .iter()
            .any(|(rule, key, _)| rule == "page_error_rate" && key == "/x")
    };
    eventually("version 1 raising /x", Duration::from_secs(30), || async {
        let active = active_alerts(&client, &base).await;
        if raised(&active) {
            Ok(())
        } else {
            Err(format!("{active:?}"))
        }
    })
    .await;
    // 200 more views of minute m: late for version 1, on time for a
    // version with 15 minutes of lateness (10 errors in 220 views: 4.5 %).
    let late: Vec<Vec<u8>> = (20..220).map(|i| view(i, m + 40_000)).collect();
    post_lines(&client, &base, &late).await;
    speed_caught_up(&client, &base).await;
    post_lines(&client, &base, &closers("d", m + 20 * MINUTE)).await;
    speed_caught_up(&client, &base).await;
    assert!(
        raised(&active_alerts(&client, &base).await),
        "version 1 keeps it"
    );

    let accepted = client
        .post(format!("{base}/api/v1/admin/kappa/replay"))
        .bearer_auth(TOKEN)
        .body(r#"{"allowed_lateness":"15m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    eventually("version 2 switched to", Duration::from_secs(60), || async {
        let kappa = kappa_status(&client, &base).await;
        match kappa["version"] == 2 && kappa["replay"]["state"] == "switched" {
            true => Ok(()),
            false => Err(kappa.to_string()),
        }
    })
    .await;
    eventually(
        "version 2's active alerts",
        Duration::from_secs(10),
        || async {
            let active = active_alerts(&client, &base).await;
            if raised(&active) {
                Err(format!("{active:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    demo.stop().await.unwrap();
}
