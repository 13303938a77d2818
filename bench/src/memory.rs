//! `lambda bench memory`: the speed layer's resident memory against key
//! cardinality (distinct users and devices within the window horizon),
//! each cardinality folded in a process of its own so that one's memory
//! does not hide in the next one's figure.

use std::time::Duration;

use anyhow::Context;
use lambda_events::Topic;
use lambda_log::{FetchPosition, Record, StoredRecord};
use lambda_speed::SpeedConfig;
use serde::{Deserialize, Serialize};

use crate::measure::{memory, spinner};
use crate::report::{Aim, Figure};

/// Settings of the memory benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct MemoryBench {
    /// Key cardinalities to fold, each in its own process, e.g. 10000,100000,1000000.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u32, 100_000, 1_000_000])]
    pub keys: Vec<u32>,
    /// Fold one cardinality in this process and print its figures as JSON (what each child runs).
    #[arg(long, hide = true)]
    pub one: Option<u32>,
}

impl Default for MemoryBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> MemoryBench {
        <MemoryBench as clap::Parser>::parse_from(["memory"])
    }
}

/// What one cardinality cost.
#[derive(Debug, Serialize, Deserialize)]
struct Point {
    keys: u32,
    events: u64,
    /// Resident memory growth while folding (generated records are made a
    /// batch at a time, so this is the state's).
    rss_growth: u64,
    /// The state's checkpoint, encoded.
    checkpoint_bytes: u64,
    windows: usize,
}

/// Event time the folded events span: within the default horizon, so
/// nothing is evicted and every key is held.
const SPAN_MS: i64 = 50 * 60_000;
const T0: i64 = 1_767_225_600_000;
const BATCH: usize = 4096;

/// The `i`-th of `2 * keys` events: an impression by user `u{k}` and a
/// temperature reading from device `d{k}`, stamped across the span in order.
fn record(i: u64, keys: u32) -> (Topic, Record) {
    let k = i / 2;
    let ts = T0 + (i as i64 * SPAN_MS) / (2 * keys as i64);
    let (topic, key, line) = if i % 2 == 0 {
        let user = format!("u{k}");
        let line = serde_json::json!({
            "event_id": format!("e{i}"), "ts": ts, "event_type": "impression",
            "user_id": user, "campaign_id": format!("c{}", k % 5),
        });
        (Topic::Funnel, user, line)
    } else {
        let device = format!("d{k}");
        let line = serde_json::json!({
            "event_id": format!("e{i}"), "ts": ts, "event_type": "sensor_reading",
            "device_id": device, "sensor": "temperature", "value": 21.5, "unit": "C",
        });
        (Topic::Iot, device, line)
    };
    (topic, Record::keyed(key, line.to_string().into_bytes(), ts))
}

/// Folds `keys` users and `keys` devices into a fresh speed state, in this process.
fn fold_one(keys: u32) -> anyhow::Result<Point> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let views = lambda_speed::new_views(&SpeedConfig::with_data_dir(dir.path()));
    let mut positions: Vec<FetchPosition> = Topic::ALL
        .iter()
        .map(|topic| FetchPosition {
            topic: topic.name().into(),
            partition: 0,
            offset: 0,
        })
        .collect();
    let events = 2 * keys as u64;
    let mut offsets = [0u64; 2];
    let (before, _) = memory();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..events {
        let (topic, record) = record(i, keys);
        let offset = &mut offsets[topic as usize];
        batch.push(StoredRecord {
            topic: topic.name().into(),
            partition: 0,
            offset: *offset,
            record,
        });
        *offset += 1;
        if batch.len() == BATCH || i + 1 == events {
            let invalid = lambda_speed::consumer::apply(
                &views,
                &mut positions,
                std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
            );
            anyhow::ensure!(
                invalid.is_empty(),
                "an invalid generated event: {invalid:?}"
            );
        }
    }
    let (after, _) = memory();
    let state = views.read();
    anyhow::ensure!(
        state.counters().counted == events,
        "{} of {events} events counted",
        state.counters().counted
    );
    Ok(Point {
        keys,
        events,
        rss_growth: after.saturating_sub(before),
        checkpoint_bytes: lambda_speed::checkpoint::encode(&state).len() as u64,
        windows: state.windows().len(),
    })
}

/// `lambda bench memory`.
pub async fn run(bench: MemoryBench) -> anyhow::Result<Vec<Figure>> {
    if let Some(keys) = bench.one {
        let point = tokio::task::spawn_blocking(move || fold_one(keys)).await??;
        println!("{}", serde_json::to_string(&point)?);
        return Ok(Vec::new());
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let child_json = scratch.path().join("child.json");
    let mut points = Vec::new();
    for keys in &bench.keys {
        let bar = spinner(&format!("folding {keys} users and {keys} devices"));
        let output = tokio::time::timeout(
            Duration::from_secs(600),
            tokio::process::Command::new(&exe)
                .args(["bench", "memory", "--one", &keys.to_string()])
                .arg("--json")
                .arg(&child_json)
                .env("RUST_LOG", "warn")
                .output(),
        )
        .await
        .context("a child took longer than 10 minutes")??;
        bar.finish_and_clear();
        anyhow::ensure!(
            output.status.success(),
            "the child for {keys} keys failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("the child printed no figures")?;
        points.push(serde_json::from_str::<Point>(line)?);
    }
    println!(
        "lambda bench memory: the speed layer's state against key cardinality (each in its own process; events over 50 min of event time, nothing evicted)"
    );
    println!(
        "  {:>9} {:>9} {:>12} {:>14} {:>13} {:>9}",
        "keys", "events", "RSS growth", "checkpoint", "RSS per key", "windows"
    );
    for p in &points {
        println!(
            "  {:>9} {:>9} {:>9.1} MB {:>11.1} MB {:>10.0} B {:>9}",
            p.keys,
            p.events,
            p.rss_growth as f64 / 1e6,
            p.checkpoint_bytes as f64 / 1e6,
            p.rss_growth as f64 / (2.0 * p.keys as f64),
            p.windows
        );
    }
    Ok(points
        .iter()
        .map(|p| {
            Figure::new(
                "memory",
                format!("speed state RSS, {} users + {} devices", p.keys, p.keys),
                "MB",
                p.rss_growth as f64 / 1e6,
                "its checkpoint, encoded",
                p.checkpoint_bytes as f64 / 1e6,
                Aim::None,
            )
        })
        .collect())
}
