//! Serving's answer cache and content coding, on the demo: the same query
//! of unchanged views is the same bytes from the cache; a folded event or a
//! new manifest makes the next answer fresh; gzip and zstd are sent when
//! asked for and decode to the same JSON.

use std::io::Read;

use serde_json::{Value, json};

use crate::common::{MINUTE, demo_config, eventually, post_lines, text};

const T0: i64 = 1_767_225_600_000;

struct Got {
    cache: String,
    coding: Option<String>,
    vary: Option<String>,
    body: Vec<u8>,
}

async fn fetch(client: &reqwest::Client, url: &str, accept: Option<&str>) -> Got {
    let mut request = client.get(url);
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (cache, coding, vary) = (
        header("x-cache").unwrap_or_default(),
        header("content-encoding"),
        header("vary"),
    );
    let body = response.bytes().await.unwrap().to_vec();
    Got {
        cache,
        coding,
        vary,
        body,
    }
}

fn click(id: String, ts: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"event_id": id, "ts": ts, "event_type": "click", "user_id": "u"}))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_per_view_version_and_sent_compressed_when_asked() {
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let demo = lambda_pipeline::demo::Demo::start(demo_config(dir.path()))
        .await
        .unwrap();
    let base = format!("http://{}", demo.addr);
    // Two hours of clicks, one a minute: the first goes to a batch run.
    let lines: Vec<Vec<u8>> = (0..120)
        .map(|i| click(format!("c{i}"), T0 + i * MINUTE))
        .collect();
    post_lines(&client, &base, &lines).await;
    demo.run_batch().await.unwrap();
    let url = format!(
        "{base}/api/v1/funnel?from={T0}&to={}&step=1m",
        T0 + 120 * MINUTE
    );
    // Wait for the speed layer to have every click (the last minute's too).
    let first = eventually(
        "the speed layer folding the clicks",
        std::time::Duration::from_secs(30),
        || async {
            let got = fetch(&client, &url, None).await;
            let answer: Value = serde_json::from_slice(&got.body).unwrap();
            let clicks: u64 = answer["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["clicks"].as_u64().unwrap())
                .sum();
            if clicks == 120 {
                Ok(got)
            } else {
                Err(format!("{clicks} clicks"))
            }
        },
    )
    .await;
    let answer: Value = serde_json::from_slice(&first.body).unwrap();
    let layers = |answer: &Value, layer: &str| {
        answer["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["layer"] == layer)
            .count()
    };
    assert!(
        layers(&answer, "batch") > 0 && layers(&answer, "speed") > 0,
        "{answer}"
    );

    // Unchanged views: the cache, the same bytes.
    let again = fetch(&client, &url, None).await;
    assert_eq!(again.cache, "hit");
    assert_eq!(again.body, first.body);
    assert_eq!(again.coding, None);
    assert_eq!(again.vary.as_deref(), Some("accept-encoding"));
    let metrics = text(&client, format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lambda_serving_answer_cache_total{result=\"hit\"}"),
        "{metrics}"
    );

    // Compressed when asked, decoding to the same bytes.
    let gzip = fetch(&client, &url, Some("gzip")).await;
    assert_eq!(gzip.coding.as_deref(), Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gzip.body[..])
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, first.body);
    let zstd = fetch(&client, &url, Some("gzip, deflate, br, zstd")).await;
    assert_eq!(zstd.coding.as_deref(), Some("zstd"));
    assert_eq!(
        zstd::bulk::decompress(&zstd.body, first.body.len()).unwrap(),
        first.body
    );
    assert!(
        zstd.body.len() * 4 < first.body.len(),
        "{} of {}",
        zstd.body.len(),
        first.body.len()
    );
    // A short answer (an empty range) goes as is whatever is asked.
    let empty = format!(
        "{base}/api/v1/funnel?from={}&to={}&step=1m",
        T0 - 10 * MINUTE,
        T0 - 9 * MINUTE
    );
    assert_eq!(fetch(&client, &empty, Some("zstd")).await.coding, None);

    // A new click the speed layer folds: the next answer is fresh, its
    // last minute rendered again, the speed buckets before it copied.
    let speed_buckets = |metrics: &str, result: &str| -> u64 {
        let name = format!("lambda_serving_speed_bucket_cache_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    let speed_part = layers(&answer, "speed") + layers(&answer, "mixed");
    let before = text(&client, format!("{base}/metrics")).await;
    post_lines(
        &client,
        &base,
        &[click("new".into(), T0 + 119 * MINUTE + 5)],
    )
    .await;
    let fresh = eventually(
        "the new click in the answer",
        std::time::Duration::from_secs(30),
        || async {
            let got = fetch(&client, &url, None).await;
            let answer: Value = serde_json::from_slice(&got.body).unwrap();
            let last = answer["buckets"][119]["clicks"].as_u64();
            if last == Some(2) {
                Ok(got)
            } else {
                Err(format!("{last:?} in the last minute, {}", got.cache))
            }
        },
    )
    .await;
    assert_eq!(
        fresh.cache, "miss",
        "the first answer after the fold is computed"
    );
    assert_eq!(fetch(&client, &url, None).await.cache, "hit");
    let after = text(&client, format!("{base}/metrics")).await;
    let (hits, misses) = (
        speed_buckets(&after, "hit") - speed_buckets(&before, "hit"),
        speed_buckets(&after, "miss") - speed_buckets(&before, "miss"),
    );
    assert!(
        misses >= 1 && hits >= speed_part as u64 - 1,
        "{hits} hits and {misses} misses of {speed_part} speed buckets"
    );
    // Every bucket but the last as before, byte for byte.
    let fresh_answer: Value = serde_json::from_slice(&fresh.body).unwrap();
    assert_eq!(
        fresh_answer["buckets"].as_array().unwrap()[..119],
        answer["buckets"].as_array().unwrap()[..119]
    );

    // A late click healed by a batch run (a new manifest): fresh again.
    post_lines(&client, &base, &[click("late".into(), T0 + 5 * MINUTE + 1)]).await;
    demo.run_batch().await.unwrap();
    let healed = fetch(&client, &url, None).await;
    assert_eq!(healed.cache, "miss");
    let answer: Value = serde_json::from_slice(&healed.body).unwrap();
    assert_eq!(
        answer["buckets"][5]["clicks"], 2,
        "{}",
        answer["buckets"][5]
    );
    demo.stop().await.unwrap();
}
