//! Operating the batch layer: `POST /api/v1/admin/batch/run` on the demo
//! (off without a configured token, `401` without the right one, and with it
//! a run now, answered with its report), `lambda batch backfill` on the
//! demo's lake from the command line, and a signal stopping the batch
//! runner while a Spark call keeps its run waiting.

use lambda_pipeline::demo::{Demo, DemoConfig};
use serde_json::{Value, json};

use crate::common::{NEVER, demo_config, get, post_lines, text};

const T0: i64 = 1_767_225_600_000;
const PATH: &str = "/api/v1/admin/batch/run";

fn config(dir: &std::path::Path, token: Option<&str>) -> DemoConfig {
    let mut config = demo_config(dir);
    config.shared.admin_token = token.map(str::to_string);
    config
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = client.post(url);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, response.json().await.unwrap(), challenge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_on_request_needs_the_token() {
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(config(dir.path(), Some("s3cret")))
        .await
        .unwrap();
    let base = format!("http://{}", demo.addr);
    let url = format!("{base}{PATH}");
    let lines: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            serde_json::to_vec(&json!({"event_id": format!("c{i}"), "ts": T0 + i * 1_000,
                                       "event_type": "click", "user_id": format!("u{i}")}))
            .unwrap()
        })
        .collect();
    post_lines(&client, &base, &lines).await;

    // The schedule and its next run are in the status.
    let status = get(&client, format!("{base}/api/v1/status")).await;
    assert_eq!(status["batch"]["schedule"], NEVER);
    assert_eq!(
        status["batch"]["next_run_ms"], 4_070_908_800_000i64,
        "2099-01-01"
    );

    let (status, body, challenge) = post(&client, &url, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    assert!(
        body["error"].as_str().unwrap().contains("authorization"),
        "{body}"
    );
    let (status, body, _) = post(&client, &url, Some("Bearer guess")).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("wrong bearer token"),
        "{body}"
    );
    assert!(demo.batch.status.read().last_run.is_none(), "nothing ran");

    let (status, body, _) = post(&client, &url, Some("Bearer s3cret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["committed"], true);
    assert_eq!(body["version"], 1);
    assert_eq!(body["events_written"], 50);
    assert_eq!(body["engine"], "duckdb");
    assert_eq!(
        body["boundary"],
        T0 + 49_000 - 60_000 - (T0 + 49_000 - 60_000).rem_euclid(60_000)
    );
    // The scheme is case-insensitive.
    let (status, again, _) = post(&client, &url, Some("bearer s3cret")).await;
    assert_eq!(status, 200);
    assert_eq!(again["committed"], false, "nothing new: {again}");
    assert_eq!(again["version"], 1);
    assert_eq!(demo.batch.status.read().runs_ok, 2);
    // The right token and a wrong one, as two headers: refused (which one a
    // proxy on the way would pass on is anyone's guess).
    let twice = client
        .post(&url)
        .header("authorization", "Bearer s3cret")
        .header("authorization", "Bearer guess")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 401);
    let body: serde_json::Value = twice.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("more than once"),
        "{body}"
    );
    assert_eq!(demo.batch.status.read().runs_ok, 2, "no run for it");
    demo.stop().await.unwrap();

    // Without a token configured, the endpoint is off whatever is sent.
    let demo = Demo::start(config(dir.path(), None)).await.unwrap();
    let (status, body, _) = post(
        &client,
        &format!("http://{}{PATH}", demo.addr),
        Some("Bearer s3cret"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--admin-token"),
        "{body}"
    );
    demo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_batch_backfill_swaps_in_recomputed_views() {
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(config(dir.path(), None)).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let lines: Vec<Vec<u8>> = (0..120)
        .map(|i| {
            serde_json::to_vec(&json!({"event_id": format!("c{i}"), "ts": T0 + i * 60_000,
                                       "event_type": "click", "user_id": format!("u{i}")}))
            .unwrap()
        })
        .collect();
    post_lines(&client, &base, &lines).await;
    let report = demo.run_batch().await.unwrap();
    assert_eq!(report.version, 1);
    let query = format!("/api/v1/funnel?from={T0}&to={}&step=1h", T0 + 2 * 3_600_000);
    let answer = get(&client, format!("{base}{query}")).await;
    assert_eq!(answer["buckets"][0]["clicks"], 60);
    assert_eq!(answer["buckets"][0]["layer"], "batch");
    demo.stop().await.unwrap();

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["batch", "backfill", "--from", "2026-01-01T00:00:00Z"])
        .args(["--to", &(T0 + 3_600_000).to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("LAMBDA_LAKE_URL")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        printed,
        json!({"version": 2, "hours_recomputed": 1, "hours_quarantined": [], "engine": "duckdb"})
    );

    let demo = Demo::start(config(dir.path(), None)).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let status = get(&client, format!("{base}/api/v1/status")).await;
    assert_eq!(status["batch"]["manifest_version"], 2);
    let again = get(&client, format!("{base}{query}")).await;
    assert_eq!(again["buckets"], answer["buckets"], "the same answers");
    let mut bad = std::process::Command::new(env!("CARGO_BIN_EXE_lambda"));
    let bad = bad
        .args(["batch", "backfill", "--from", "yesterday", "--to", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from"));
    demo.stop().await.unwrap();
}

/// Batch buckets are rendered once per manifest (a cache): a second query
/// over the same minutes hits it, and a batch run that heals a late event replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_batch_buckets_follow_the_newest_manifest() {
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(config(dir.path(), None)).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let click = |id: String, ts: i64| {
        serde_json::to_vec(
            &json!({"event_id": id, "ts": ts, "event_type": "click", "user_id": "u"}),
        )
        .unwrap()
    };
    let lines: Vec<Vec<u8>> = (0..120)
        .map(|i| click(format!("c{i}"), T0 + i * 60_000))
        .collect();
    post_lines(&client, &base, &lines).await;
    demo.run_batch().await.unwrap();
    let url = format!(
        "{base}/api/v1/funnel?from={T0}&to={}&step=1m",
        T0 + 30 * 60_000
    );
    let first = get(&client, url.clone()).await;
    // One minute longer: not the same answer (the answer cache misses), but
    // its first 30 buckets are the batch buckets rendered for the first.
    let longer = format!(
        "{base}/api/v1/funnel?from={T0}&to={}&step=1m",
        T0 + 31 * 60_000
    );
    let second = get(&client, longer).await;
    assert_eq!(
        first["buckets"].as_array().unwrap()[..],
        second["buckets"].as_array().unwrap()[..30]
    );
    assert_eq!(first["buckets"][5]["clicks"], 1);
    assert_eq!(first["buckets"][5]["layer"], "batch");
    let metrics = text(&client, format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lambda_serving_bucket_cache_total{result=\"hit\"} 30"),
        "the second query came from the cache:\n{metrics}"
    );
    // A late click for minute 5, healed by the next run: the answer changes.
    post_lines(&client, &base, &[click("late".into(), T0 + 5 * 60_000 + 1)]).await;
    demo.run_batch().await.unwrap();
    let third = get(&client, url).await;
    assert_eq!(third["buckets"][5]["clicks"], 2, "{}", third["buckets"][5]);
    demo.stop().await.unwrap();
}

/// A signal stops the batch runner (here the demo's, on the embedded log)
/// while its run waits on a Spark Connect server that takes connections
/// and never answers: Spark calls run on threads of their own, so shutdown
/// does not wait out `--spark-timeout` (ten minutes here).
#[cfg(feature = "spark")]
#[test]
fn a_signal_stops_the_batch_runner_while_spark_keeps_its_run_waiting() {
    use std::time::{Duration, Instant};

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("sc://{}", silent.local_addr().unwrap());
    let (accepted, connections) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
            if accepted.send(()).is_err() {
                break;
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lambda"));
    for (key, _) in std::env::vars() {
        if key.starts_with("LAMBDA_") {
            command.env_remove(key);
        }
    }
    let mut batch = command
        .args(["demo", "--no-generator", "--listen", "127.0.0.1:0"])
        .args(["--batch-schedule", "* * * * * *"])
        .args([
            "--batch-engine",
            "spark",
            "--spark-url",
            &url,
            "--spark-timeout",
            "10m",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The preflight's connection, then the client's own: the run now
    // waits for an answer that never comes.
    for _ in 0..2 {
        if connections.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = batch.kill();
            let output = batch.wait_with_output().unwrap();
            panic!(
                "the batch runner never connected to the Spark Connect server: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        batch.try_wait().unwrap().is_none(),
        "lambda demo ended by itself"
    );
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &batch.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(status) = batch.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(60) {
            batch.kill().unwrap();
            panic!("lambda demo still running a minute after SIGTERM (its run waits on Spark)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut batch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
}
