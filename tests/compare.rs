//! Lambda vs kappa on the same log: `GET /api/v1/compare` and `lambda
//! compare` over seeded events with late ones, checked against what the
//! generator sent; and a log whose oldest segments retention deleted, where
//! the replay misses what only the lake still has.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lambda_batch::{LakeWriter, RunContext};
use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts};
use lambda_events::{Event, EventType, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig, LineKind};
use lambda_kappa::compare::{self, CompareSources, Comparison};
use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog, Record};
use lambda_pipeline::demo::Demo;
use serde_json::Value;

use crate::common::{MINUTE, demo_config, get, post_lines, refused};

const START_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn view_of(t: EventType) -> &'static str {
    if FunnelCounts::counts(t) {
        "funnel"
    } else if PageCounts::counts(t) {
        "pages"
    } else {
        assert!(t == EventType::SensorReading || DeviceCounts::counts(t));
        "iot"
    }
}

/// Seeded lines, and per view the distinct events among them and the
/// distinct ones the generator made late (minutes behind the clock).
struct Sent {
    lines: Vec<Vec<u8>>,
    events: Vec<Event>,
    distinct: BTreeMap<&'static str, u64>,
    late: BTreeMap<&'static str, u64>,
}

fn sent(seed: u64, count: usize, duplicates: f64) -> Sent {
    let mut generator = Generator::new(GeneratorConfig {
        seed,
        start_ms: START_MS,
        rate: 10.0,
        late_fraction: 0.03,
        duplicate_fraction: duplicates,
        malformed_fraction: 0.01,
        ..GeneratorConfig::default()
    });
    let (mut lines, mut events) = (Vec::new(), Vec::new());
    let (mut distinct, mut late) = (BTreeMap::new(), BTreeMap::new());
    let mut ids = HashSet::new();
    for _ in 0..count {
        let line = generator.next_line();
        if let Ok(event) = Event::from_json(&line.bytes) {
            if ids.insert(event.event_id.clone()) {
                let view = view_of(event.event_type);
                *distinct.entry(view).or_default() += 1;
                if line.kind == LineKind::Late {
                    *late.entry(view).or_default() += 1;
                }
            }
            events.push(event);
        }
        lines.push(line.bytes);
    }
    Sent {
        lines,
        events,
        distinct,
        late,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_comparison_explains_every_difference_by_the_late_events() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(demo_config(dir.path())).await.unwrap();
    let base = format!("http://{}", demo.addr);
    let client = reqwest::Client::new();

    // Before any batch run there is nothing to compare with: 409, named.
    let response = client
        .get(format!("{base}/api/v1/compare"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("batch run"),
        "{body}"
    );

    let sent = sent(20261122, 6000, 0.03);
    post_lines(&client, &base, &sent.lines).await;
    demo.run_batch().await.unwrap();

    let (from, to) = (START_MS - 20 * MINUTE, START_MS + 20 * MINUTE);
    let url = format!("{base}/api/v1/compare?from={from}&to={to}");
    let comparison: Comparison = client.get(&url).send().await.unwrap().json().await.unwrap();

    // Anyone may ask for a comparison, and each replays the log: the same
    // one of the same data comes from the cache; a new one straight after
    // (within the 5 s pacing floor) is 429 with Retry-After.
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cache"], "hit");
    let response = client
        .get(format!(
            "{base}/api/v1/compare?from={from}&to={}",
            to - MINUTE
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // At least a second; at most the floor or as long as the first one took.
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("paced"), "{body}");

    for view in compare::VIEWS {
        let s = comparison.summary[&view];
        assert_eq!(s.unexplained, 0, "{view}: {s:?}");
        assert!(s.buckets >= 10, "{view}: {s:?}");
        assert!(s.equal >= 1, "{view}: some buckets agree: {s:?}");
        assert!(
            s.explained >= 1,
            "{view}: some differ by late events: {s:?}"
        );
        assert_eq!(s.lost_events, 0, "{view}: nothing is past retention");
        // The batch side is exact: every distinct event sent.
        assert_eq!(s.lambda_events, sent.distinct[view.as_str()], "{view}");
        // The kappa side lacks exactly the late ones it names...
        assert_eq!(s.kappa_events + s.late_events, s.lambda_events, "{view}");
        // ... and those are the generator's late events (minutes behind; a
        // few may still have been in time while a partition held the watermark back).
        let generated_late = sent.late[view.as_str()];
        assert!(
            s.late_events <= generated_late && s.late_events * 10 >= generated_late * 8,
            "{view}: {} late of {generated_late} sent late",
            s.late_events
        );
    }
    for d in &comparison.differences {
        assert!(d.explained, "{d:?}");
        let named: u64 = d.reasons.iter().map(|r| r.events).sum();
        assert_eq!(d.lambda_events - d.kappa_events, named, "{d:?}");
        assert!(
            d.reasons
                .iter()
                .all(|r| r.reason == compare::ReasonKind::Late),
            "{d:?}"
        );
    }
    let lambda = &comparison.cost.lambda;
    let kappa = &comparison.cost.kappa;
    let rows: u64 = sent.distinct.values().sum();
    assert_eq!(lambda.events_processed, rows, "one row per distinct event");
    assert_eq!(kappa.events_processed, comparison.log_records);
    assert!(
        kappa.events_processed > rows,
        "the replay reads resends too"
    );
    assert!(lambda.bytes_read > 0 && kappa.bytes_read > 0);

    // Bad parameters are named.
    let response = client
        .get(format!("{base}/api/v1/compare?from=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["parameter"], "from");

    // The batch side's engine: this demo has no Spark URL, so only DuckDB
    // (its own engine: the same answer, from the cache); others are named.
    let response = client
        .get(format!("{url}&engine=duckdb"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cache"], "hit");
    let again: Comparison = response.json().await.unwrap();
    assert!(
        again.cost.lambda.what.starts_with("DuckDB "),
        "{}",
        again.cost.lambda.what
    );
    for (engine, says) in [
        ("spark", "--spark-url"),
        ("auto", "--spark-url"),
        ("flink", "expected duckdb, spark or auto"),
        // Given twice: refused, whichever comes last.
        ("spark&engine=duckdb", "more than once"),
        ("duckdb&engine=duckdb", "more than once"),
    ] {
        let body = refused(&client, format!("{url}&engine={engine}")).await;
        assert_eq!(body["parameter"], "engine", "{body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
    // An unknown parameter beside it: the known ones are listed, engine too.
    let body = refused(&client, format!("{url}&engine=duckdb&foo=1")).await;
    assert_eq!(body["parameter"], "foo", "{body}");
    assert!(body["error"].as_str().unwrap().contains("engine"), "{body}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["compare", "--url", &base, "--batch-engine", "spark"])
        .env_remove("LAMBDA_BATCH_ENGINE")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("400") && stderr.contains("--spark-url"),
        "{stderr}"
    );

    // The command prints the same comparison as a table.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["compare", "--url", &base, "--from"])
        .arg(from.to_string())
        .arg("--to")
        .arg(to.to_string())
        // (The server's own engine: none named from the environment.)
        .env_remove("LAMBDA_BATCH_ENGINE")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let funnel = comparison.summary[&compare::View::Funnel];
    let row = format!(
        "  {:<8} {:>8} {:>8} {:>10} {:>12}",
        "funnel", funnel.buckets, funnel.equal, funnel.explained, 0
    );
    assert!(stdout.contains(&row), "{row:?} in\n{stdout}");
    assert!(stdout.contains(" late"), "{stdout}");
    let json = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda"))
        .args(["compare", "--json", "--url", &base, "--from"])
        .arg(from.to_string())
        .arg("--to")
        .arg(to.to_string())
        .env_remove("LAMBDA_BATCH_ENGINE")
        .output()
        .await
        .unwrap();
    let again: Comparison = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(again.summary, comparison.summary);
    assert_eq!(again.differences, comparison.differences);

    let status = get(&client, format!("{base}/api/v1/status")).await;
    assert!(status["speed"].is_object());

    // A client that goes away mid-comparison does not cancel it: it still
    // counts for the pacing (found by a hostile run — dropping and asking
    // again used to start comparisons back to back).
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
        let request = format!(
            "GET /api/v1/compare?from={from}&to={} HTTP/1.1\r\nhost: x\r\n\r\n",
            to - 2 * MINUTE
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client
        .get(format!(
            "{base}/api/v1/compare?from={from}&to={}",
            to - 3 * MINUTE
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "{:?}", response.text().await);
    demo.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_log_retention_are_named_as_what_a_replay_cannot_see() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so retention (7 days by default; the records are
    // stamped 1970) can delete the closed ones once the batch layer has them.
    let config = EmbeddedConfig {
        segment_bytes: 16 * 1024,
        retention_guards: vec![lambda_batch::run::CONSUMER_GROUP.to_string()],
        ..EmbeddedConfig::default()
    };
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(dir.path().join("log"), config)
            .await
            .unwrap(),
    );
    for topic in Topic::ALL {
        log.create_topic(topic.name(), 2).await.unwrap();
    }
    let sent = sent(7, 4000, 0.02);
    for topic in [Topic::Funnel, Topic::Iot] {
        let records: Vec<Record> = sent
            .events
            .iter()
            .filter(|e| e.topic() == topic)
            .map(|e| Record::keyed(e.key().as_bytes(), e.to_json(), 0))
            .collect();
        for chunk in records.chunks(100) {
            log.append(topic.name(), chunk.to_vec()).await.unwrap();
        }
    }
    let writer = LakeWriter::open(
        &format!("file://{}", dir.path().join("lake").display()),
        dir.path().join("cache"),
    )
    .unwrap();
    let lake = writer.lake().clone();
    let ctx = RunContext {
        log: Arc::clone(&log),
        lake: writer,
        allowed_lateness_ms: 60_000,
        engine: Default::default(),
    };
    lambda_batch::run_once(&ctx).await.unwrap();
    let deleted = log.enforce_retention().await.unwrap();
    assert!(deleted > 0, "retention deleted closed segments");
    let mut gone = 0;
    for topic in [Topic::Funnel, Topic::Iot] {
        gone += log
            .ranges(topic.name())
            .await
            .unwrap()
            .iter()
            .map(|r| r.start)
            .sum::<u64>();
    }
    assert!(gone > 100, "{gone} records past retention");

    let sources = CompareSources {
        log: Arc::clone(&log),
        lake: Some(lake),
        allowed_lateness_ms: 60_000,
        idle_timeout: std::time::Duration::from_secs(30),
        engine: Default::default(),
    };
    let c = compare::compare(&sources, START_MS - 20 * MINUTE, START_MS + 20 * MINUTE)
        .await
        .unwrap();
    let lost: u64 = c.summary.values().map(|s| s.lost_events).sum();
    let late: u64 = c.summary.values().map(|s| s.late_events).sum();
    assert!(lost > 0 && late > 0, "{:?}", c.summary);
    // Every record gone is an event the lake holds and the replay lacks,
    // less resends of it that are still in the log and late copies.
    assert!(
        lost <= gone && lost * 10 >= gone * 8,
        "{lost} lost of {gone} gone"
    );
    for (view, s) in &c.summary {
        assert_eq!(s.unexplained, 0, "{view}: {s:?}");
        assert_eq!(s.lambda_events, sent.distinct[view.as_str()], "{view}");
        assert_eq!(
            s.kappa_events + s.late_events + s.lost_events,
            s.lambda_events,
            "{view}: {s:?}"
        );
    }
    assert!(
        c.differences.iter().any(|d| d
            .reasons
            .iter()
            .any(|r| r.reason == compare::ReasonKind::Retention)),
        "some bucket names retention"
    );
    assert_eq!(
        c.cost.kappa.events_processed + gone,
        c.log_records,
        "the replay read what the log still holds"
    );
    log.close().await.unwrap();
}
