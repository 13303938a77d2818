//! `lambda bench speed`: how fast the speed layer turns log records into
//! views, per core, beside a parse-only baseline on the same bytes in the
//! same run, plus the state's size and the process's memory.
//!
//! 1. N seeded generator lines are appended to an embedded log in a
//!    temporary directory (not timed).
//! 2. Baseline: `Event::from_record` over the same record values, nothing else.
//! 3. Log → views: fetch from the log in the speed layer's batch size, decode,
//!    fold into windows (dedup, sketches, late ledger), as `lambda speed` does.
//!
//! Rates are events per CPU-second of this process (user + system), so they
//! are per core; wall rates are printed beside them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lambda_events::{Event, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{EmbeddedConfig, EventLog, FetchPosition, Record};
use lambda_speed::SpeedConfig;

/// Settings of the speed benchmark.
#[derive(Debug, Clone)]
pub struct SpeedBench {
    /// Events to generate.
    pub events: usize,
    /// Size of the user population.
    pub users: u32,
    /// Number of IoT devices.
    pub devices: u32,
    /// Partitions per topic.
    pub partitions: u32,
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[derive(Default)]
struct Measured {
    cpu: Duration,
    wall: Duration,
}

fn measure<T>(f: impl FnOnce() -> T) -> (T, Measured) {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let out = f();
    let measured = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    (out, measured)
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a template"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Runs the benchmark and prints its report.
pub async fn speed(bench: SpeedBench) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let log: Arc<dyn EventLog> = lambda_log::open(
        &format!("embedded://{}", dir.path().join("log").display()),
        EmbeddedConfig::default(),
    )
    .await?;
    lambda_ingest::ensure_topics(&log, bench.partitions).await?;

    // 1. Generate and append (not timed).
    let bar = ProgressBar::new(bench.events as u64);
    bar.set_style(
        ProgressStyle::with_template("appending {pos}/{len} events to a log {bar:30} {elapsed}")
            .expect("a template"),
    );
    let mut generator = Generator::new(GeneratorConfig {
        seed: 1,
        start_ms: 1_767_225_600_000,
        rate: 200.0,
        users: bench.users,
        devices: bench.devices,
        late_fraction: 0.01,
        duplicate_fraction: 0.01,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut values: Vec<(String, Vec<u8>)> = Vec::with_capacity(bench.events);
    let mut pending: Vec<(String, Record)> = Vec::new();
    for _ in 0..bench.events {
        let line = generator.next_line().bytes;
        let event = Event::from_json(&line).context("the generator made an invalid line")?;
        let topic = event.topic().name().to_string();
        let key = event
            .user_id
            .clone()
            .or_else(|| event.device_id.clone())
            .unwrap_or_default();
        pending.push((topic.clone(), Record::keyed(key, line.clone(), event.ts)));
        values.push((topic, line));
        if pending.len() == 10_000 {
            append(&log, &mut pending).await?;
            bar.set_position(values.len() as u64);
        }
    }
    append(&log, &mut pending).await?;
    bar.finish_and_clear();

    // 2. Baseline: parse only, the same bytes.
    let bar = spinner("parse-only baseline");
    let (parsed, base) = measure(|| {
        values
            .iter()
            .filter(|(topic, bytes)| Event::from_record(bytes, topic).is_ok())
            .count()
    });
    bar.finish_and_clear();
    anyhow::ensure!(
        parsed == values.len(),
        "the baseline parsed {parsed} of {}",
        values.len()
    );
    drop(values);

    // 3. From the log into views.
    let bar = spinner("log → views");
    let config = SpeedConfig::with_data_dir(dir.path());
    let views = lambda_speed::new_views(&config);
    let mut positions = Vec::new();
    for topic in Topic::ALL {
        for partition in 0..bench.partitions {
            positions.push(FetchPosition {
                topic: topic.name().to_string(),
                partition,
                offset: 0,
            });
        }
    }
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let mut read = 0usize;
    while read < bench.events {
        let records = log
            .fetch(&positions, 4096, Duration::from_millis(100))
            .await?;
        anyhow::ensure!(!records.is_empty(), "the log ended after {read} records");
        read += records.len();
        lambda_speed::consumer::apply(&views, &mut positions, records);
    }
    let full = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    bar.finish_and_clear();

    let state = views.read();
    let checkpoint = lambda_speed::checkpoint::encode(&state);
    let (rss, peak) = memory();
    let per_sec = |d: Duration| bench.events as f64 / d.as_secs_f64().max(1e-9);
    // Per core: over CPU time (the wall time if the clock ticks are too coarse to see).
    let per_core = |m: &Measured| per_sec(if m.cpu.is_zero() { m.wall } else { m.cpu });
    let base_rate = per_core(&base);
    let full_rate = per_core(&full);
    println!(
        "lambda bench speed: {} events ({} users, {} devices, {} partitions per topic)",
        bench.events, bench.users, bench.devices, bench.partitions
    );
    println!(
        "  parse only (baseline): {:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s)",
        base_rate,
        base.cpu.as_secs_f64(),
        base.wall.as_secs_f64()
    );
    println!(
        "  log -> views:          {:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s, {:.0} events/s wall)",
        full_rate,
        full.cpu.as_secs_f64(),
        full.wall.as_secs_f64(),
        per_sec(full.wall)
    );
    println!(
        "  ratio log->views / parse-only: {:.2} (aim: at least 0.50)",
        full_rate / base_rate
    );
    println!(
        "  state: {} windows, {} counted, {} duplicates, {} late; checkpoint {:.1} MB",
        state.windows.len(),
        state.counters.counted,
        state.counters.duplicates,
        state.counters.late,
        checkpoint.len() as f64 / 1e6
    );
    println!(
        "  memory: RSS {:.0} MB now, peak {:.0} MB (the whole benchmark process, generated bytes included)",
        rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    drop(state);
    log.close().await?;
    Ok(())
}

async fn append(
    log: &Arc<dyn EventLog>,
    pending: &mut Vec<(String, Record)>,
) -> anyhow::Result<()> {
    for topic in Topic::ALL {
        let records: Vec<Record> = pending
            .iter()
            .filter(|(t, _)| t == topic.name())
            .map(|(_, r)| r.clone())
            .collect();
        if !records.is_empty() {
            log.append(topic.name(), records).await?;
        }
    }
    pending.clear();
    Ok(())
}

/// Settings of the batch benchmark.
#[derive(Debug, Clone)]
pub struct BatchBench {
    /// Events to generate.
    pub events: usize,
    /// Small files the compaction input is split into, per topic.
    pub files: usize,
}

/// One writer's figures.
#[derive(Default)]
struct Written {
    rows: u64,
    bytes: u64,
    measured: Measured,
}

impl Written {
    fn rate(&self) -> f64 {
        let cpu = if self.measured.cpu.is_zero() {
            self.measured.wall
        } else {
            self.measured.cpu
        };
        self.rows as f64 / cpu.as_secs_f64().max(1e-9)
    }

    fn line(&self, name: &str) -> String {
        format!(
            "  {name:<34} {:>10.0} rows/s per core  {:>8.2} MB  (cpu {:.2} s, wall {:.2} s)",
            self.rate(),
            self.bytes as f64 / 1e6,
            self.measured.cpu.as_secs_f64(),
            self.measured.wall.as_secs_f64()
        )
    }
}

/// `lambda bench batch`: the master dataset's Parquet writer (sorting and
/// writing a run's events; compacting small files into one) beside DuckDB's
/// `COPY … TO … (FORMAT parquet, COMPRESSION zstd)` of the same rows, in
/// the same process and run.
pub async fn batch(bench: BatchBench) -> anyhow::Result<()> {
    use lambda_batch::baseline::DuckTable;
    use lambda_batch::master::{self, LoggedEvent};

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let bar = spinner("generating events");
    let mut generator = Generator::new(GeneratorConfig {
        seed: 1,
        start_ms: 1_767_225_600_000,
        rate: 200.0,
        late_fraction: 0.0,
        duplicate_fraction: 0.0,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut by_topic: std::collections::BTreeMap<Topic, Vec<LoggedEvent>> = Default::default();
    for offset in 0..bench.events {
        let event = Event::from_json(&generator.next_line().bytes)
            .context("the generator made an invalid line")?;
        by_topic
            .entry(event.topic())
            .or_default()
            .push(LoggedEvent {
                event,
                partition: 0,
                offset: offset as u64,
            });
    }
    bar.finish_and_clear();

    let mut ours = Written::default();
    let mut compacted = Written::default();
    let mut duck = Written::default();
    for (topic, events) in &mut by_topic {
        let topic = *topic;
        // Ours, a run's write: sort the events, encode them as one file.
        let bar = spinner(&format!("{topic}: ours"));
        let (bytes, m) = measure(|| {
            events.sort_by(|a, b| {
                (a.event.ts, &a.event.event_id).cmp(&(b.event.ts, &b.event.event_id))
            });
            master::encode(topic, events)
        });
        let bytes = bytes?;
        bar.finish_and_clear();
        add(&mut ours, events.len() as u64, bytes.len() as u64, &m);
        let whole = dir.path().join(format!("{topic}-ours.parquet"));
        std::fs::write(&whole, &bytes)?;

        // Compaction's input: the same rows as small files, as runs leave them.
        let chunk = events.len().div_ceil(bench.files.max(1));
        let mut small = Vec::new();
        for (i, part) in events.chunks(chunk.max(1)).enumerate() {
            let path = dir.path().join(format!("{topic}-small-{i}.parquet"));
            std::fs::write(&path, master::encode(topic, part)?)?;
            small.push(path);
        }
        let bar = spinner(&format!("{topic}: compaction"));
        let (merged, m) = measure(|| master::compact(topic, &small));
        let merged = merged?;
        bar.finish_and_clear();
        add(&mut compacted, events.len() as u64, merged.len() as u64, &m);

        // DuckDB: the same rows in a table (not timed), then COPY.
        let bar = spinner(&format!("{topic}: duckdb copy"));
        let table = DuckTable::load(std::slice::from_ref(&whole))?;
        anyhow::ensure!(
            table.rows() == events.len() as u64,
            "duckdb loaded {} of {} rows",
            table.rows(),
            events.len()
        );
        let out = dir.path().join(format!("{topic}-duckdb.parquet"));
        let (copied, m) = measure(|| table.copy_to(&out));
        copied?;
        bar.finish_and_clear();
        add(&mut duck, table.rows(), std::fs::metadata(&out)?.len(), &m);
    }
    println!(
        "lambda bench batch: {} events, compaction input {} files per topic",
        bench.events, bench.files
    );
    println!("{}", duck.line("duckdb COPY (baseline)"));
    println!("{}", ours.line("ours: sort + write a run's file"));
    println!("{}", compacted.line("ours: compact small files"));
    println!(
        "  speed vs duckdb: write {:.2}x, compaction {:.2}x (aim: at least 1.00)",
        ours.rate() / duck.rate(),
        compacted.rate() / duck.rate()
    );
    println!(
        "  size vs duckdb:  write {:.3}x, compaction {:.3}x (aim: at most 1.10)",
        ours.bytes as f64 / duck.bytes as f64,
        compacted.bytes as f64 / duck.bytes as f64
    );
    Ok(())
}

fn add(total: &mut Written, rows: u64, bytes: u64, m: &Measured) {
    total.rows += rows;
    total.bytes += bytes;
    total.measured.cpu += m.cpu;
    total.measured.wall += m.wall;
}

/// Settings of the serving benchmark.
#[derive(Debug, Clone)]
pub struct ServeBench {
    /// Requests per second offered (open loop: sent on schedule, answered or not).
    pub rate: u32,
    /// Seconds of load per endpoint.
    pub seconds: u64,
}

/// Latencies of one endpoint under load.
struct Load {
    sent: usize,
    failed: usize,
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Load {
    fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }

    fn line(&self, name: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "  {name:<40} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms  ({} sent, {} failed, {:.0} answered/s)",
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.sent,
            self.failed,
            self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
        )
    }
}

/// Connections the load generator keeps open at most: a request due while
/// all are busy waits for one, and its latency still counts from when it
/// was due.
const MAX_IN_FLIGHT: usize = 256;

/// Sends GET `url` at `rate` per second for `seconds`, each request on its
/// own schedule (latency counts from when it was due, so a slow server
/// cannot hide its queue: no coordinated omission).
async fn offer(client: &reqwest::Client, url: &str, rate: u32, seconds: u64) -> Load {
    let total = rate as usize * seconds as usize;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (client, url, slots) = (client.clone(), url.to_string(), Arc::clone(&slots));
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            let ok = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            (ok, due.elapsed())
        });
    }
    let mut load = Load {
        sent: total,
        failed: 0,
        latencies: Vec::with_capacity(total),
        wall: Duration::ZERO,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((true, latency)) => load.latencies.push(latency),
            _ => load.failed += 1,
        }
    }
    load.wall = started.elapsed();
    load.latencies.sort();
    load
}

/// `lambda bench serve`: the merged funnel endpoint over 24 hours at 1-minute
/// steps (1 440 buckets, batch views before B and speed windows after),
/// beside a static JSON handler on the same server, each at the same fixed
/// request rate in the same run.
pub async fn serve(bench: ServeBench) -> anyhow::Result<()> {
    use crate::demo::{Demo, DemoConfig};
    use axum::routing::get;

    const T0: i64 = 1_767_225_600_000;
    const DAY_MINUTES: i64 = 24 * 60;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let demo = Demo::start(DemoConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        batch_schedule: "0 0 0 1 1 * 2099".into(),
        ..DemoConfig::new(dir.path())
    })
    .await?;
    let client = reqwest::Client::new();
    let base = format!("http://{}", demo.addr);

    // A day of events, a few a minute: 23 hours go through a batch run, the
    // last hour stays with the speed layer.
    let bar = spinner("loading a day of events");
    let post = |minutes: std::ops::Range<i64>| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let mut body = Vec::new();
            for minute in minutes.clone() {
                for (k, kind) in ["impression", "impression", "click", "purchase"]
                    .iter()
                    .enumerate()
                {
                    let ts = T0 + minute * 60_000 + k as i64 * 10_000;
                    let mut line = serde_json::json!({
                        "event_id": format!("m{minute}-{k}"), "ts": ts, "event_type": kind,
                        "user_id": format!("u{}", (minute * 7 + k as i64) % 97),
                        "campaign_id": format!("c{}", minute % 5),
                    });
                    if *kind == "purchase" {
                        line["amount_cents"] = serde_json::json!(1999);
                    }
                    body.extend(serde_json::to_vec(&line)?);
                    body.push(b'\n');
                }
                if body.len() > 256 * 1024 || minute + 1 == minutes.end {
                    let response = client
                        .post(format!("{base}/api/v1/events"))
                        .body(std::mem::take(&mut body))
                        .send()
                        .await?;
                    anyhow::ensure!(
                        response.status() == 202,
                        "loading events: {}",
                        response.status()
                    );
                }
            }
            anyhow::Ok(())
        }
    };
    post(0..DAY_MINUTES - 60).await?;
    demo.run_batch().await?;
    post(DAY_MINUTES - 60..DAY_MINUTES).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while demo.speed.read().max_event_ts < Some(T0 + (DAY_MINUTES - 1) * 60_000) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the speed layer did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();

    // The query API over the demo's views, and a static handler, on one server.
    let state = lambda_serving::ServingState {
        speed: Arc::clone(&demo.speed),
        batch: Arc::clone(&demo.batch_views),
        status: lambda_serving::StatusSources::default(),
        alerts: Arc::default(),
        requests: Arc::default(),
        cache: Arc::default(),
    };
    let fixed = serde_json::json!({ "status": "ok", "buckets": [] }).to_string();
    let app = lambda_serving::router(state).route(
        "/bench/static",
        get(move || {
            let fixed = fixed.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    fixed,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let funnel_url = format!(
        "http://{addr}/api/v1/funnel?from={T0}&to={}&step=1m",
        T0 + DAY_MINUTES * 60_000
    );
    let sample: serde_json::Value = client.get(&funnel_url).send().await?.json().await?;
    let buckets = sample["buckets"].as_array().map_or(0, Vec::len);
    let layer_count = |layer: &str| {
        sample["buckets"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|x| x["layer"] == layer).count())
    };
    let size = serde_json::to_vec(&sample)?.len();
    let static_url = format!("http://{addr}/bench/static");
    let bar = spinner("static handler under load");
    let baseline = offer(&client, &static_url, bench.rate, bench.seconds).await;
    bar.finish_and_clear();
    let bar = spinner("merged funnel under load");
    let funnel = offer(&client, &funnel_url, bench.rate, bench.seconds).await;
    bar.finish_and_clear();
    server.abort();
    demo.stop().await?;

    println!(
        "lambda bench serve: {} requests/s offered for {} s each; funnel over 24 h at 1m: {buckets} buckets ({} batch, {} speed), {:.0} KB per answer",
        bench.rate,
        bench.seconds,
        layer_count("batch"),
        layer_count("speed"),
        size as f64 / 1024.0
    );
    println!("{}", baseline.line("static JSON (baseline)"));
    println!("{}", funnel.line("merged funnel, 24 h at 1m"));
    let ratio = |q: f64| {
        funnel.percentile(q).as_secs_f64() / baseline.percentile(q).as_secs_f64().max(1e-9)
    };
    println!(
        "  funnel / static: p50 {:.1}x, p99 {:.1}x (aim: funnel p99 under 2 ms at 10 000 requests/s)",
        ratio(0.50),
        ratio(0.99)
    );
    Ok(())
}
