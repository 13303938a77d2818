//! End to end: the demo in-process on an ephemeral port, fed a seeded event
//! set with late events, duplicate resends and malformed lines; after a batch
//! run, `/api/v1/funnel` and `/api/v1/iot` must equal answers computed here by
//! a plain fold over the generated lines (serde_json only, none of the
//! pipeline's code), buckets before B must say `batch` and the rest `speed`,
//! and a restart on the same data dir must answer the same. Also: a full
//! disk (a tmpfs) degrades the demo and it recovers by itself.

use std::time::Duration;

use lambda_ingest::generator::{Generator, GeneratorConfig, LineKind};
use lambda_pipeline::demo::{Demo, DemoConfig};
use serde_json::Value;

use crate::common::{
    MINUTE, check_funnel, check_iot, check_pages, demo_config, eventually, fold, get, post_lines,
    speed_caught_up, text,
};

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn generated_lines() -> (Vec<Vec<u8>>, usize) {
    let mut generator = Generator::new(GeneratorConfig {
        seed: 20261121,
        start_ms: START_MS,
        rate: 10.0,
        late_fraction: 0.03,
        duplicate_fraction: 0.03,
        malformed_fraction: 0.02,
        ..GeneratorConfig::default()
    });
    let mut malformed = 0;
    let lines = (0..8000)
        .map(|_| {
            let line = generator.next_line();
            if line.kind == LineKind::Malformed {
                malformed += 1;
            }
            line.bytes
        })
        .collect();
    (lines, malformed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_views_equal_an_independent_fold() {
    let dir = tempfile::tempdir().unwrap();
    check_pipeline(demo_config(dir.path())).await;
}

/// Feeds the seeded lines to a demo started from `config` and checks every answer.
async fn check_pipeline(config: DemoConfig) {
    let demo = Demo::start(config.clone()).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();

    // Feed the lines in NDJSON batches, as a producer would.
    let (lines, malformed) = generated_lines();
    let (accepted, rejected) = post_lines(&client, &base, &lines).await;
    assert_eq!(
        rejected, malformed,
        "every malformed line, and only those, is rejected"
    );
    assert_eq!(accepted as usize, lines.len() - malformed);

    let status = speed_caught_up(&client, &base).await;
    assert!(
        status["speed"]["duplicates"].as_u64().unwrap() > 0,
        "resends were recognised"
    );
    assert!(
        status["speed"]["late"].as_u64().unwrap() > 0,
        "late events reached the ledger: {status}"
    );
    let report = demo.run_batch().await.unwrap();
    assert!(report.committed);

    let (funnel_expected, iot_expected, max_ts) = fold(&lines);
    let boundary = (max_ts - 60_000).div_euclid(MINUTE) * MINUTE;
    let range = format!(
        "from={}&to={}",
        START_MS - 15 * MINUTE,
        START_MS + 20 * MINUTE
    );
    let funnel = get(&client, format!("{base}/api/v1/funnel?{range}&step=1m")).await;
    assert_eq!(funnel["boundary"].as_i64(), Some(boundary));
    // The watermark is the slowest partition's: at most the newest event's, minus the lateness.
    let watermark = funnel["watermark"].as_i64().unwrap();
    assert!(
        watermark <= max_ts - 60_000 && watermark > max_ts - 60_000 - 5 * MINUTE,
        "watermark {watermark}, newest event {max_ts}"
    );
    let (batch_buckets, speed_buckets) = check_funnel(&funnel, &funnel_expected, boundary);
    assert!(
        batch_buckets > 5 && speed_buckets >= 1,
        "both layers answered: {batch_buckets} batch, {speed_buckets} speed"
    );
    let iot = get(&client, format!("{base}/api/v1/iot?{range}&step=1m")).await;
    assert!(check_iot(&iot, &iot_expected, boundary) > 5);
    let pages = get(&client, format!("{base}/api/v1/pages?{range}&step=1m")).await;
    assert!(check_pages(&pages, &funnel_expected, boundary) > 5);

    // The fold's impressions of the five minutes from `start`.
    let five_minutes = |start: i64| -> u64 {
        (0..5)
            .map(|i| {
                funnel_expected
                    .get(&(start + i * MINUTE))
                    .map_or(0, |f| f.impressions)
            })
            .sum()
    };
    // A 5-minute roll-up that spans B is mixed and sums its minutes.
    let rollup = get(&client, format!("{base}/api/v1/funnel?{range}&step=5m")).await;
    let mut mixed = 0usize;
    let rollup_buckets = rollup["buckets"].as_array().unwrap();
    assert!(!rollup_buckets.is_empty(), "no 5m buckets: {rollup}");
    for bucket in rollup_buckets {
        let start = bucket["start"].as_i64().unwrap();
        let impressions = five_minutes(start);
        assert_eq!(
            bucket["impressions"].as_u64().unwrap(),
            impressions,
            "5m bucket {start}"
        );
        let expected_layer = if start + 5 * MINUTE <= boundary {
            "batch"
        } else if start >= boundary {
            "speed"
        } else {
            mixed += 1;
            "mixed"
        };
        assert_eq!(bucket["layer"], expected_layer, "5m bucket {start}");
    }
    let spans_b = boundary.rem_euclid(5 * MINUTE) != 0;
    assert_eq!(
        mixed,
        usize::from(spans_b),
        "one 5m bucket spans B unless B is on a 5m edge"
    );
    // A `to` in the middle of a bucket: the last bucket still sums all its
    // minutes, in both layers (a snapshot cut at `to` once lost the rest).
    let last_start = max_ts.div_euclid(5 * MINUTE) * 5 * MINUTE;
    let to = last_start + 1;
    let cut = get(
        &client,
        format!(
            "{base}/api/v1/funnel?from={}&to={to}&step=5m",
            last_start - 5 * MINUTE
        ),
    )
    .await;
    let buckets = cut["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty(), "{cut}");
    for bucket in buckets {
        let start = bucket["start"].as_i64().unwrap();
        let impressions = five_minutes(start);
        assert_eq!(
            bucket["impressions"].as_u64().unwrap(),
            impressions,
            "5m bucket {start} with to={to}"
        );
    }

    // Bad parameters are named.
    let response = client
        .get(format!("{base}/api/v1/funnel?step=2m"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["parameter"], "step");

    // Prometheus metrics tell the same story.
    let metrics = text(&client, format!("{base}/metrics")).await;
    let sample = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        sample("lambda_ingest_lines_total{outcome=\"rejected\"}"),
        malformed as f64
    );
    assert_eq!(
        sample("lambda_ingest_lines_total{outcome=\"accepted\"}"),
        accepted as f64
    );
    assert_eq!(sample("lambda_batch_boundary_ms"), boundary as f64);
    assert_eq!(
        sample("lambda_speed_events_total{outcome=\"late\"}"),
        status["speed"]["late"].as_f64().unwrap()
    );
    assert!(metrics.contains("# TYPE lambda_speed_events_total counter"));

    // Restarted on the same data dir, it carries on with the same answers.
    demo.stop().await.unwrap();
    let demo = Demo::start(config).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let again = get(&client, format!("{base}/api/v1/funnel?{range}&step=1m")).await;
    assert_eq!(again["boundary"], funnel["boundary"]);
    assert_eq!(again["buckets"], funnel["buckets"]);
    let report = demo.run_batch().await.unwrap();
    assert!(!report.committed, "nothing new to compact after a restart");
    demo.stop().await.unwrap();
}

/// A tmpfs of `size` mounted on a new directory, unmounted on drop (the
/// test command runs as root, as CI does).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root, as the test command has"
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system holding `path` until a write fails for lack of space.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0x5a; 64 * 1024];
    loop {
        if let Err(error) = file.write_all(&block).and_then(|()| file.sync_all()) {
            assert_eq!(error.raw_os_error(), Some(28), "{error}"); // ENOSPC
            return;
        }
    }
}

/// A demo with its data dir on a 96 MiB tmpfs, and a client for it:
/// (the tmpfs, the data dir, the demo, its base URL, the client).
async fn demo_on_a_small_disk() -> (Tmpfs, std::path::PathBuf, Demo, String, reqwest::Client) {
    let tmpfs = Tmpfs::mount("96m");
    let data = tmpfs.dir.path().join("data");
    let demo = Demo::start(demo_config(&data)).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    (tmpfs, data, demo, base, client)
}

/// A full disk degrades, never kills: ingest answers 503 (nothing is
/// acknowledged that is not durable), the speed layer keeps folding and
/// serving and retries its checkpoint with backoff, `/healthz` says what is
/// wrong, queries are answered — and everything recovers by itself once
/// space returns. (The process used to exit a second after the disk filled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_and_recovers_by_itself() {
    let (tmpfs, _data, demo, base, client) = demo_on_a_small_disk().await;
    let now = chrono::Utc::now().timestamp_millis();
    let click = |id: &str| {
        format!(r#"{{"event_id":"{id}","ts":{now},"event_type":"click","user_id":"u-{id}"}}"#)
    };
    let post = |body: String| {
        let client = client.clone();
        let url = format!("{base}/api/v1/events");
        async move { client.post(url).body(body).send().await.unwrap() }
    };
    assert_eq!(post(click("before")).await.status(), 202);

    let filler = tmpfs.dir.path().join("filler");
    fill(&filler);
    let refused = post(click("during")).await;
    assert_eq!(refused.status(), 503, "{:?}", refused.text().await);
    // The speed layer's next checkpoint fails: unhealthy, named, not dead.
    let health = wait_for_health(&client, &base, 503, Duration::from_secs(10)).await;
    assert!(health.contains("checkpoint"), "{health}");
    let status: Value = get(&client, format!("{base}/api/v1/status")).await;
    assert!(status["speed"]["checkpoint_error"].is_string(), "{status}");
    let funnel: Value = get(&client, format!("{base}/api/v1/funnel?step=1m")).await;
    let clicks: u64 = funnel["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["clicks"].as_u64().unwrap())
        .sum();
    assert_eq!(clicks, 1, "reads go on while the disk is full");

    // Space returns: everything recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    // (/healthz is ok again once a checkpoint is written.)
    wait_for_health(&client, &base, 200, Duration::from_secs(30)).await;
    eventually(
        "ingest accepts again once there is space",
        Duration::from_secs(10),
        || async {
            match post(click("after")).await.status().as_u16() {
                202 => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    eventually(
        "the refused event is not counted; the later one is",
        Duration::from_secs(5),
        || async {
            let funnel: Value = get(&client, format!("{base}/api/v1/funnel?step=1m")).await;
            let counted: u64 = funnel["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["clicks"].as_u64().unwrap())
                .sum();
            if counted == 2 {
                Ok(())
            } else {
                Err(format!("{counted} clicks"))
            }
        },
    )
    .await;
    demo.stop().await.unwrap();
}

/// Waits for `/healthz` to answer `status`; returns the body.
async fn wait_for_health(
    client: &reqwest::Client,
    base: &str,
    status: u16,
    within: Duration,
) -> String {
    let what = format!("/healthz answering {status}");
    eventually(&what, within, || async {
        let response = client.get(format!("{base}/healthz")).send().await.unwrap();
        let answered = response.status().as_u16();
        let body = response.text().await.unwrap();
        if answered == status {
            Ok(body)
        } else {
            Err(format!("{answered} {body}"))
        }
    })
    .await
}

/// A batch run on a full disk fails loudly and is retried by itself: the
/// run's error is in the status, `/healthz` names the batch layer, queries
/// keep answering from the last views, and once space returns a retry
/// (with backoff, no trigger, the schedule never fires) commits. Then the
/// demo restarts on a disk that is full again: it comes up, degraded, and
/// serves what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_on_a_full_disk_is_retried_until_it_commits() {
    let (tmpfs, data, demo, base, client) = demo_on_a_small_disk().await;
    let lines: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            format!(
                r#"{{"event_id":"c{i}","ts":1767225600000,"event_type":"click","user_id":"u{i}"}}"#
            )
            .into_bytes()
        })
        .collect();
    post_lines(&client, &base, &lines).await;

    let filler = tmpfs.dir.path().join("filler");
    fill(&filler);
    let error = demo
        .run_batch()
        .await
        .expect_err("no room for the run's files");
    let status: Value = get(&client, format!("{base}/api/v1/status")).await;
    let batch = &status["batch"];
    assert_eq!(batch["consecutive_failures"], 1, "{batch}");
    assert_eq!(batch["healthy"], false, "{batch}");
    assert!(batch["retry_at_ms"].is_i64(), "{batch}");
    assert!(batch["last_run"]["error"].is_string(), "{batch}: {error:#}");
    let health = wait_for_health(&client, &base, 503, Duration::from_secs(10)).await;
    assert!(health.contains("batch layer"), "{health}");
    let funnel: Value = get(
        &client,
        format!("{base}/api/v1/funnel?step=1m&from=1767225600000&to=1767225660000"),
    )
    .await;
    assert_eq!(funnel["buckets"][0]["clicks"], 200, "reads go on: {funnel}");

    // Space returns: the retry commits by itself (5 s after the failure).
    std::fs::remove_file(&filler).unwrap();
    wait_for_health(&client, &base, 200, Duration::from_secs(60)).await;
    let status: Value = get(&client, format!("{base}/api/v1/status")).await;
    let batch = &status["batch"];
    assert_eq!(batch["consecutive_failures"], 0, "{batch}");
    assert_eq!(batch["last_run"]["ok"], true, "{batch}");
    assert!(batch["runs_ok"].as_u64().unwrap() >= 1, "{batch}");
    assert!(batch["retry_at_ms"].is_null(), "{batch}");
    demo.stop().await.unwrap();

    // A restart on a full disk: the demo comes up and answers queries.
    fill(&filler);
    let demo = Demo::start(demo_config(&data)).await.unwrap();
    let base = format!("http://{}", demo.addr);
    eventually(
        "what was stored is served after a restart on a full disk",
        Duration::from_secs(10),
        || async {
            let funnel: Value = get(
                &client,
                format!("{base}/api/v1/funnel?step=1m&from=1767225600000&to=1767225660000"),
            )
            .await;
            let clicks = &funnel["buckets"][0]["clicks"];
            if *clicks == 200 {
                Ok(())
            } else {
                Err(format!("{clicks}"))
            }
        },
    )
    .await;
    std::fs::remove_file(&filler).unwrap();
    demo.stop().await.unwrap();
}
