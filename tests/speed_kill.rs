//! Recovery: a `lambda speed` process is killed with SIGKILL at random
//! moments — six times while events are being produced, once more while it
//! catches up — and restarted on its data dir each time. Another `lambda
//! speed` process reads the same topics uninterrupted. Once both have read
//! everything, their views must be equal, window by window, and their counters
//! too: nothing lost, nothing counted twice.
//!
//! The events have resends (the dedup state must survive the kills) but no
//! late events: with a watermark per partition, which events are late depends
//! on how partitions interleave, and a process that restarts and catches up
//! interleaves them differently from one that never stopped. The late ledger's
//! recovery is covered by the checkpoint tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use lambda_events::Event;
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{EventLog, KafkaConfig, KafkaLog, Record};
use lambda_testkit::{KillOnDrop, Tansu, eventually, free_port, wait_for_port};
use serde_json::Value;

const LINES: usize = 12_000;
const KILLS_WHILE_FEEDING: usize = 6;

/// A small deterministic generator of kill delays (xorshift).
struct Delays(u64);

impl Delays {
    fn next(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(1_100 + self.0 % 1_500)
    }
}

fn start_speed(log_url: &str, dir: &Path, port: u16) -> Child {
    let lambda = env!("CARGO_BIN_EXE_lambda");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("speed.log"))
        .unwrap();
    let mut command = Command::new(lambda);
    for (key, _) in std::env::vars() {
        if key.starts_with("LAMBDA_") {
            command.env_remove(key);
        }
    }
    let child = command
        .args(["speed", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--checkpoint-interval", "1s"])
        // No partition goes idle during the test: idleness depends on wall time.
        .args(["--idle-timeout", "10m"])
        .env("LAMBDA_LOG_URL", log_url)
        .env("LAMBDA_DATA_DIR", dir)
        .env(
            "LAMBDA_LAKE_URL",
            format!("file://{}", dir.join("lake").display()),
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting lambda speed");
    wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
    child
}

/// Waits until the instance logging into `dir` has started consuming for the
/// `starts`th time.
async fn consuming(dir: &Path, starts: usize) {
    let log = dir.join("speed.log");
    eventually(
        "the restarted instance consuming",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let n = text.matches("speed layer consuming").count();
            if n >= starts {
                Ok(())
            } else {
                Err(format!("{n} starts consuming of {starts}:\n{}", tail(&log)))
            }
        },
    )
    .await;
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn snapshot(client: &reqwest::Client, port: u16) -> Option<Value> {
    let url = format!("http://127.0.0.1:{port}/internal/v1/speed?epoch=0&since=0");
    client.get(url).send().await.ok()?.json().await.ok()
}

/// Appends `records` (`(topic, record)`), one batch per topic.
async fn append(log: &KafkaLog, records: &[(String, Record)]) {
    let mut by_topic: BTreeMap<&str, Vec<Record>> = BTreeMap::new();
    for (topic, record) in records {
        by_topic.entry(topic).or_default().push(record.clone());
    }
    for (topic, batch) in by_topic {
        log.append(topic, batch).await.unwrap();
    }
}

/// Partitions whose clock has a record's time (not one waiting for its first).
fn started_clocks(snapshot: &Value) -> usize {
    snapshot["clocks"].as_array().map_or(0, |clocks| {
        clocks
            .iter()
            .filter(|c| c[2].as_i64() != Some(i64::MIN))
            .count()
    })
}

fn consumed(snapshot: &Value) -> u64 {
    snapshot["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o[2].as_u64().unwrap())
        .sum()
}

/// The windows as a map from start to views (the JSON of each window).
fn windows(snapshot: &Value) -> BTreeMap<i64, Value> {
    snapshot["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w[0].as_i64().unwrap(), w[1].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_speed_equals_an_uninterrupted_one() {
    let _alone = crate::one_at_a_time().await;
    let broker = Tansu::start();
    let log_url = broker.log_url();
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("killed"), dir.path().join("steady"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let mut killed = KillOnDrop(start_speed(&log_url, &dir_a, port_a));
    let _steady = KillOnDrop(start_speed(&log_url, &dir_b, port_b));

    // The events: resends but no late ones, keyed as the collector keys them.
    let mut generator = Generator::new(GeneratorConfig {
        seed: 99,
        start_ms: 1_767_225_600_000,
        rate: 20.0,
        late_fraction: 0.0,
        duplicate_fraction: 0.05,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut records: Vec<(String, Record)> = Vec::with_capacity(LINES);
    for _ in 0..LINES {
        let line = generator.next_line().bytes;
        let event = Event::from_json(&line).unwrap();
        let key = event.key().to_string();
        records.push((
            event.topic().name().to_string(),
            Record::keyed(key, line, event.ts),
        ));
    }
    let feeder_log = KafkaLog::open(
        KafkaConfig::from_url_tail(log_url.strip_prefix("kafka://").unwrap()).unwrap(),
    )
    .unwrap();
    // Every partition's clock starts in both processes before the rest is
    // fed: a process that has not seen a partition yet lets the others
    // alone move its watermark, so one that fell behind (a loaded machine)
    // and read a backlog folded one partition's minutes before another's
    // first record and counted that one's events late — a difference of
    // interleaving at the start, not of recovery.
    consuming(&dir_a, 1).await;
    consuming(&dir_b, 1).await;
    let (first, rest) = records.split_at(400);
    append(&feeder_log, first).await;
    let client = reqwest::Client::new();
    for port in [port_a, port_b] {
        eventually(
            "every partition's clock started",
            Duration::from_secs(60),
            || async {
                match snapshot(&client, port).await {
                    Some(s) if consumed(&s) == 400 && started_clocks(&s) == 8 => Ok(()),
                    other => Err(format!(
                        "{:?}",
                        other.map(|s| (consumed(&s), s["clocks"].clone()))
                    )),
                }
            },
        )
        .await;
    }
    let rest = rest.to_vec();
    let feeder = tokio::spawn(async move {
        for chunk in rest.chunks(100) {
            append(&feeder_log, chunk).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        feeder_log
    });

    // Kill at random moments while the feed runs, and once more after it.
    let mut delays = Delays(0x9e37_79b9_7f4a_7c15);
    let mut kills = 0;
    let mut port_a = port_a;
    let mut starts = 1;
    while kills < KILLS_WHILE_FEEDING || !feeder.is_finished() {
        // The delay counts from when it consumes: a slow start (a loaded CI
        // machine) would otherwise be killed before its first checkpoint.
        consuming(&dir_a, starts).await;
        tokio::time::sleep(delays.next()).await;
        killed.0.kill().unwrap(); // SIGKILL
        killed.0.wait().unwrap();
        kills += 1;
        port_a = free_port();
        killed = KillOnDrop(start_speed(&log_url, &dir_a, port_a));
        starts += 1;
    }
    let feeder_log = feeder.await.unwrap();
    consuming(&dir_a, starts).await;
    tokio::time::sleep(delays.next()).await;
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    kills += 1;
    killed = KillOnDrop(start_speed(&log_url, &dir_a, port_a));
    assert!(kills > KILLS_WHILE_FEEDING, "{kills} kills");

    // Wait until both have read every record.
    let mut total = 0;
    for topic in ["funnel-events", "iot-events"] {
        total += feeder_log
            .ranges(topic)
            .await
            .unwrap()
            .iter()
            .map(|r| r.end)
            .sum::<u64>();
    }
    assert_eq!(total, LINES as u64);
    let (a, b) = eventually(
        "both instances caught up",
        Duration::from_secs(90),
        || async {
            let (a, b) = (
                snapshot(&client, port_a).await,
                snapshot(&client, port_b).await,
            );
            match (a, b) {
                (Some(a), Some(b)) if consumed(&a) == total && consumed(&b) == total => Ok((a, b)),
                (a, b) => Err(format!(
                    "killed {:?}, steady {:?}\nsteady's log:\n{}",
                    a.as_ref().map(consumed),
                    b.as_ref().map(consumed),
                    tail(&dir_b.join("speed.log"))
                )),
            }
        },
    )
    .await;
    drop(killed);

    assert_eq!(
        a["counters"], b["counters"],
        "counted, duplicates, late, invalid"
    );
    let counters = a["counters"].as_array().unwrap();
    assert!(counters[0].as_u64().unwrap() > 10_000, "{counters:?}");
    assert!(
        counters[1].as_u64().unwrap() > 300,
        "resends were deduplicated: {counters:?}"
    );
    assert_eq!(
        counters[0].as_u64().unwrap() + counters[1].as_u64().unwrap(),
        LINES as u64,
        "every line counted once or recognised as a resend"
    );
    let (wa, wb) = (windows(&a), windows(&b));
    assert!(!wa.is_empty(), "no windows to compare");
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (start, views) in &wa {
        for (part, value) in views.as_object().unwrap() {
            let (mine, theirs) = (
                value.as_array().unwrap(),
                wb[start][part].as_array().unwrap(),
            );
            assert_eq!(mine.len(), theirs.len(), "window {start}, {part}");
            for (x, y) in mine.iter().zip(theirs) {
                assert_eq!(x, y, "window {start}, {part}");
            }
        }
    }
    assert_eq!(a["watermark"], b["watermark"]);
    // The killed process did restart from checkpoints, not from the start.
    let log = std::fs::read_to_string(dir_a.join("speed.log")).unwrap();
    assert!(
        log.matches("restored speed layer checkpoint").count() >= KILLS_WHILE_FEEDING,
        "restores:\n{log}"
    );
    eprintln!("speed kill test: {kills} kills, {} windows equal", wa.len());
}
