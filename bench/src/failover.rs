//! `lambda bench failover`: how long a speed group takes to consume a lost
//! instance's partitions again, and how far they fall behind meanwhile —
//! after a SIGKILL (the group notices only when the session times out)
//! beside a clean stop (SIGTERM: the instance checkpoints and leaves, the
//! partitions move at once), the same instance, the same traffic, in the
//! same run.
//!
//! 1. librdkafka's mock cluster (in this process) holds the topics; three
//!    `lambda speed --group` processes (this program) share them, with a
//!    `file://` checkpoint store in a temporary directory; this process
//!    produces `--rate` events/s throughout.
//! 2. The third instance is stopped with SIGTERM; every 100 ms the bench
//!    reads each of its partitions' end offset and the survivors' offsets.
//!    *Owned again*: every lost partition is claimed by a survivor.
//!    *Consumed again*: the survivors have read past everything that was in
//!    the lost partitions when the instance stopped. *Peak lag*: the most
//!    records of the lost partitions not yet read, over the samples.
//! 3. It is started again and the group settles; then it is killed with
//!    SIGKILL, measured the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lambda_events::Event;
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::kafka::MockKafka;
use lambda_log::{EventLog, KafkaConfig, KafkaLog, Record};
use lambda_speed::group::Ownership;
use tokio_util::sync::CancellationToken;

use crate::report::{Aim, Figure};

/// Settings of the failover benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct FailoverBench {
    /// Events per second produced throughout.
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// The group's session timeout (`lambda speed --session-timeout`), in seconds.
    #[arg(long, default_value_t = 6)]
    pub session_timeout_seconds: u64,
    /// Partitions per event topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Keep the temporary directory (the instances' logs, the store) and print where it is.
    #[arg(long)]
    pub keep: bool,
}

impl Default for FailoverBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> FailoverBench {
        <FailoverBench as clap::Parser>::parse_from(["failover"])
    }
}

const TOPICS: [&str; 2] = ["funnel-events", "iot-events"];
const INSTANCES: usize = 3;

/// One instance: its port and process.
struct Instance {
    port: u16,
    child: Option<tokio::process::Child>,
}

/// What one stop cost.
#[derive(Debug, Default)]
struct Move {
    owned_ms: f64,
    consumed_ms: f64,
    peak_lag: u64,
}

/// Runs the benchmark and prints its report.
pub async fn run(bench: FailoverBench) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(
        bench.rate > 0.0 && bench.rate <= 50_000.0,
        "--rate must be in (0, 50000]"
    );
    anyhow::ensure!(
        (1..=60).contains(&bench.session_timeout_seconds),
        "--session-timeout-seconds must be in 1..=60"
    );
    anyhow::ensure!(
        (1..=32).contains(&bench.partitions),
        "--partitions must be in 1..=32"
    );
    let mock = MockKafka::new(1)?;
    for topic in TOPICS {
        mock.create_topic(topic, bench.partitions)?;
    }
    mock.create_topic("dead-letter", 1)?;
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    // `--keep`: the instances' logs and the store stay, to read.
    let kept = bench.keep.then(|| dir.path().to_path_buf());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let total = TOPICS.len() * bench.partitions as usize;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));

    let mut instances: Vec<Instance> = (0..INSTANCES)
        .map(|_| Instance {
            port: lambda_testkit::free_port(),
            child: None,
        })
        .collect();
    bar.set_message("starting three speed instances in one group");
    start(&bench, &bootstrap, dir.path(), &mut instances, 0)?;
    settle(&client, &instances, total, &[0]).await?;
    for i in 1..INSTANCES {
        start(&bench, &bootstrap, dir.path(), &mut instances, i)?;
    }
    settle(&client, &instances, total, &[0, 1, 2]).await?;

    let log = KafkaLog::open(KafkaConfig::new(bootstrap.clone()))?;
    let producing = CancellationToken::new();
    let producer = tokio::spawn(produce(log, bench.rate, producing.clone()));
    let reader = KafkaLog::open(KafkaConfig::new(bootstrap.clone()))?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let victim = INSTANCES - 1;
    bar.set_message("a clean stop (SIGTERM)");
    let clean = stop_and_measure(&client, &reader, &mut instances, victim, false).await?;
    start(&bench, &bootstrap, dir.path(), &mut instances, victim)?;
    settle(&client, &instances, total, &[0, 1, 2]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    bar.set_message("a SIGKILL");
    let killed = stop_and_measure(&client, &reader, &mut instances, victim, true).await?;
    producing.cancel();
    let produced = producer.await.context("the producer")??;
    bar.finish_and_clear();
    for instance in &mut instances {
        if let Some(child) = instance.child.as_mut() {
            let _ = child.kill().await;
        }
    }

    if let Some(kept) = kept {
        std::mem::forget(dir);
        println!("kept {}", kept.display());
    }
    let session_ms = bench.session_timeout_seconds as f64 * 1e3;
    println!(
        "lambda bench failover: 3 speed instances on the mock cluster, {total} partitions, {} events/s ({produced} produced), session timeout {} s, checkpoint every 1 s to a file:// store",
        bench.rate, bench.session_timeout_seconds
    );
    for (what, m) in [("SIGTERM", &clean), ("SIGKILL", &killed)] {
        println!(
            "  {what}: owned again after {:>7.0} ms, consumed again after {:>7.0} ms, peak lag {} records",
            m.owned_ms, m.consumed_ms, m.peak_lag
        );
    }
    let baseline = "a clean stop (SIGTERM) of the same instance";
    Ok(vec![
        Figure::new(
            "failover",
            "SIGKILL of 1 of 3: its partitions consumed again",
            "ms",
            killed.consumed_ms,
            baseline,
            clean.consumed_ms,
            Aim::None,
        ),
        Figure::new(
            "failover",
            "SIGKILL of 1 of 3: its partitions consumed again, beside the session timeout",
            "ms",
            killed.consumed_ms,
            "the group's session timeout",
            session_ms,
            Aim::AtMost(2.0),
        ),
        Figure::new(
            "failover",
            "SIGKILL of 1 of 3: peak lag of its partitions",
            "records",
            killed.peak_lag as f64,
            baseline,
            clean.peak_lag.max(1) as f64,
            Aim::None,
        ),
    ])
}

/// Starts instance `i` (this program's `speed --group`).
fn start(
    bench: &FailoverBench,
    bootstrap: &str,
    dir: &Path,
    instances: &mut [Instance],
    i: usize,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("finding this program")?;
    let data = dir.join(format!("speed-{i}"));
    std::fs::create_dir_all(&data)?;
    let out = std::fs::File::create(dir.join(format!("speed-{i}.log")))?;
    let mut command = tokio::process::Command::new(exe);
    for (key, _) in std::env::vars() {
        if key.starts_with("LAMBDA_") {
            command.env_remove(key);
        }
    }
    let port = instances[i].port;
    let child = command
        .args(["speed", "--group", "bench-failover", "--member"])
        .arg(format!("speed-{i}"))
        .arg("--checkpoint-url")
        .arg(format!("file://{}", dir.join("store").display()))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--checkpoint-interval", "1s", "--session-timeout"])
        .arg(format!("{}s", bench.session_timeout_seconds))
        .env("LAMBDA_LOG_URL", format!("kafka://{bootstrap}"))
        .env("LAMBDA_DATA_DIR", &data)
        .env(
            "LAMBDA_LAKE_URL",
            format!("file://{}", dir.join("lake").display()),
        )
        .env("LAMBDA_PARTITIONS", bench.partitions.to_string())
        .env("RUST_LOG", "info")
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .context("starting lambda speed")?;
    instances[i].child = Some(child);
    Ok(())
}

async fn ownership(client: &reqwest::Client, port: u16) -> Option<Ownership> {
    let url = format!("http://127.0.0.1:{port}/internal/v1/speed/partitions");
    client.get(url).send().await.ok()?.json().await.ok()
}

/// Waits (up to 2 min) until every partition has one owner and each of
/// `must_own` owns some.
async fn settle(
    client: &reqwest::Client,
    instances: &[Instance],
    total: usize,
    must_own: &[usize],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut owned = Vec::new();
        let mut each = vec![0usize; instances.len()];
        for (i, instance) in instances.iter().enumerate() {
            if instance.child.is_some()
                && let Some(o) = ownership(client, instance.port).await
            {
                each[i] = o.partitions.len();
                owned.extend(o.partitions.into_iter().map(|p| (p.topic, p.partition)));
            }
        }
        owned.sort();
        let n = owned.len();
        owned.dedup();
        if n == total && owned.len() == total && must_own.iter().all(|i| each[*i] > 0) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the group did not settle within 2 minutes: {each:?} of {total}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops `victim` (SIGKILL or SIGTERM) and samples its partitions until
/// the survivors have read past everything that was in them at the stop.
async fn stop_and_measure(
    client: &reqwest::Client,
    log: &KafkaLog,
    instances: &mut [Instance],
    victim: usize,
    kill: bool,
) -> anyhow::Result<Move> {
    let before = ownership(client, instances[victim].port)
        .await
        .context("the instance to stop does not answer")?;
    anyhow::ensure!(!before.partitions.is_empty(), "it owns nothing");
    let lost: Vec<(String, u32, u64)> = before
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition, p.offset.unwrap_or(0)))
        .collect();
    let at_stop = ends(log, &lost).await?;
    let started = Instant::now();
    let mut child = instances[victim].child.take().context("not running")?;
    if kill {
        child.start_kill()?;
    } else {
        let pid = child.id().context("no pid")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    }
    let mut result = Move::default();
    let mut owned_at = None;
    loop {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the lost partitions were not consumed again within 3 minutes"
        );
        let now_ends = ends(log, &lost).await?;
        let mut read: Vec<Option<u64>> = vec![None; lost.len()];
        for (i, instance) in instances.iter().enumerate() {
            if i == victim || instance.child.is_none() {
                continue;
            }
            if let Some(o) = ownership(client, instance.port).await {
                for p in o.partitions {
                    if let Some(at) = lost
                        .iter()
                        .position(|(t, n, _)| *t == p.topic && *n == p.partition)
                    {
                        read[at] = Some(p.offset.unwrap_or(0));
                    }
                }
            }
        }
        let lag: u64 = lost
            .iter()
            .zip(&read)
            .zip(&now_ends)
            .map(|(((_, _, last), read), end)| end.saturating_sub(read.unwrap_or(*last)))
            .sum();
        result.peak_lag = result.peak_lag.max(lag);
        if owned_at.is_none() && read.iter().all(Option::is_some) {
            owned_at = Some(started.elapsed());
        }
        if read
            .iter()
            .zip(&at_stop)
            .all(|(read, end)| read.is_some_and(|r| r >= *end))
        {
            result.owned_ms = owned_at.unwrap_or_default().as_secs_f64() * 1e3;
            result.consumed_ms = started.elapsed().as_secs_f64() * 1e3;
            let _ = child.wait().await;
            return Ok(result);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The end offsets of `partitions`, in their order.
async fn ends(log: &KafkaLog, partitions: &[(String, u32, u64)]) -> anyhow::Result<Vec<u64>> {
    let mut ends = Vec::with_capacity(partitions.len());
    for (topic, partition, _) in partitions {
        let ranges = log.ranges(topic).await?;
        ends.push(ranges.get(*partition as usize).map_or(0, |r| r.end));
    }
    Ok(ends)
}

/// Produces generated events at `rate` until `stop`; returns how many.
async fn produce(log: KafkaLog, rate: f64, stop: CancellationToken) -> anyhow::Result<u64> {
    let mut generator = Generator::new(GeneratorConfig {
        rate,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let tick = Duration::from_millis(50);
    let per_tick = (rate * tick.as_secs_f64()).ceil().max(1.0) as usize;
    let mut produced = 0u64;
    let mut interval = tokio::time::interval(tick);
    while !stop.is_cancelled() {
        interval.tick().await;
        let mut by_topic: [Vec<Record>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..per_tick {
            let line = generator.next_line().bytes;
            let Ok(event) = Event::from_json(&line) else {
                continue;
            };
            let key = event.key().to_string();
            let at = TOPICS
                .iter()
                .position(|t| *t == event.topic().name())
                .unwrap_or(0);
            by_topic[at].push(Record::keyed(key, line, event.ts));
        }
        for (topic, records) in TOPICS.iter().zip(by_topic) {
            if !records.is_empty() {
                produced += records.len() as u64;
                log.append(topic, records).await?;
            }
        }
    }
    Ok(produced)
}
