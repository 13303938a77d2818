//! `lambda bench ingest`: NDJSON over HTTP into the durable embedded log,
//! beside a handler that only reads the same bodies (the HTTP ceiling on
//! this machine with this load generator), and the freshness of what was
//! acknowledged: from `202` to visible in a query.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::EmbeddedConfig;
use lambda_serving::Supervisor;

use crate::measure::{percentile, spinner};
use crate::report::{Aim, Figure};

/// Settings of the ingest benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct IngestBench {
    /// Connections posting back to back (wrk's `-c`), e.g. 8.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Events per request body, e.g. 1000.
    #[arg(long, default_value_t = 1_000)]
    pub events_per_body: usize,
    /// Events per second offered while freshness is measured, e.g. 100000.
    #[arg(long, default_value_t = 100_000)]
    pub freshness_rate: u32,
    /// Seconds of load per step.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// A Kafka broker (HOST:PORT): also the collector writing to it, beside a bare rdkafka producer sending the same records to it.
    #[arg(long)]
    pub brokers: Option<String>,
}

impl Default for IngestBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> IngestBench {
        <IngestBench as clap::Parser>::parse_from(["ingest"])
    }
}

/// Distinct bodies the load generator cycles through.
const BODIES: usize = 32;

/// What one closed-loop run got.
struct Posted {
    events: u64,
    latencies: Vec<Duration>,
    wall: Duration,
    /// CPU time of the whole process meanwhile (load generator included).
    cpu: Duration,
}

impl Posted {
    fn rate(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU microseconds per event: steadier than the rate on a machine
    /// whose disk's fsyncs come slow at times (that run waits, its CPU
    /// per event does not grow).
    fn cpu_us_per_event(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.events.max(1) as f64
    }

    fn percentile(&self, q: f64) -> Duration {
        percentile(&self.latencies, q)
    }
}

/// `count` NDJSON bodies of `events` generated events each (every event id
/// its own), stamped around now (within the collector's bounds), funnel and
/// IoT mixed.
fn make_bodies(count: usize, events: usize) -> Vec<Bytes> {
    let mut generator = Generator::new(GeneratorConfig {
        seed: 7,
        start_ms: chrono::Utc::now().timestamp_millis() - 60_000,
        rate: 1_000_000.0,
        late_fraction: 0.0,
        duplicate_fraction: 0.0,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    (0..count)
        .map(|_| {
            let mut body = Vec::with_capacity(events * 200);
            for _ in 0..events {
                body.extend(generator.next_line().bytes);
                body.push(b'\n');
            }
            Bytes::from(body)
        })
        .collect()
}

/// POSTs `bodies` round robin to `url` on `connections` connections back to
/// back for `seconds`; each answer must be `202` accepting every event.
async fn post_back_to_back(
    url: &str,
    bodies: &[Bytes],
    per_body: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<Posted> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let next = Arc::new(AtomicUsize::new(0));
    let (started, cpu0) = (Instant::now(), crate::measure::cpu_time());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let client = crate::measure::one_connection_client()?;
        let (url, bodies, next) = (url.to_string(), bodies.to_vec(), Arc::clone(&next));
        tasks.spawn(async move {
            let mut latencies: Vec<Duration> = Vec::new();
            while Instant::now() < deadline {
                let body = bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()].clone();
                let sent = Instant::now();
                let response = client.post(&url).body(body).send().await?;
                let status = response.status();
                let answer = response.bytes().await?;
                anyhow::ensure!(
                    status == StatusCode::ACCEPTED,
                    "{url}: {status} {}",
                    String::from_utf8_lossy(&answer)
                );
                latencies.push(sent.elapsed());
                // Every event accepted: a rejected line is not ingest speed.
                let accepted =
                    serde_json::from_slice::<serde_json::Value>(&answer)?["accepted"].as_u64();
                anyhow::ensure!(
                    accepted == Some(per_body as u64),
                    "{url}: {accepted:?} of {per_body} events accepted"
                );
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let (wall, cpu) = (
        started.elapsed(),
        crate::measure::cpu_time().saturating_sub(cpu0),
    );
    latencies.sort();
    Ok(Posted {
        events: (latencies.len() * per_body) as u64,
        latencies,
        wall,
        cpu,
    })
}

/// The collector alone on an embedded log under `dir`, beside `/bench/null`:
/// the same server reading the same bodies and answering `202` with nothing
/// done (what HTTP and the load generator cost on this machine).
async fn collector(dir: &std::path::Path) -> anyhow::Result<(SocketAddr, Supervisor)> {
    let log = lambda_log::open(
        &format!("embedded://{}", dir.join("log").display()),
        EmbeddedConfig::default(),
    )
    .await?;
    lambda_ingest::ensure_topics(&log, lambda_ingest::DEFAULT_PARTITIONS).await?;
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    let ingest = lambda_ingest::start(log, Default::default());
    let app = ingest.router.route(
        "/bench/null",
        post(|body: Bytes| async move {
            let lines = body.iter().filter(|b| **b == b'\n').count();
            (
                StatusCode::ACCEPTED,
                format!(r#"{{"accepted":{lines},"rejected":[]}}"#),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(
            lambda_events::limits::MAX_BODY_BYTES,
        )),
    );
    let addr = supervisor
        .serve_http(SocketAddr::from(([127, 0, 0, 1], 0)), app)
        .await?;
    Ok((addr, supervisor))
}

/// The records the collector makes of `bodies`, by topic: what the bare
/// producer sends.
fn records_of(bodies: &[Bytes]) -> anyhow::Result<Vec<Vec<(&'static str, String, Vec<u8>)>>> {
    bodies
        .iter()
        .map(|body| {
            body.split(|b| *b == b'\n')
                .filter(|line| !line.is_empty())
                .map(|line| {
                    let event = lambda_events::EventRef::from_json(line)
                        .map_err(|e| anyhow::anyhow!("a generated line is invalid: {e}"))?;
                    Ok((
                        event.topic().name(),
                        event.key().to_string(),
                        event.to_json(),
                    ))
                })
                .collect()
        })
        .collect()
}

/// A bare rdkafka producer, set as the Kafka log's (idempotent, `acks=all`,
/// `linger.ms=5`), sending the records of one body at a time on each of
/// `connections` tasks and waiting for every delivery (as a request waits to
/// be durable) back to back for `seconds`: events/s.
async fn bare_producer(
    brokers: &str,
    bodies: &[Vec<(&'static str, String, Vec<u8>)>],
    partitions: u32,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the bare producer")?;
    let bodies = Arc::new(bodies.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (producer, bodies, next) = (producer.clone(), Arc::clone(&bodies), Arc::clone(&next));
        tasks.spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let body = &bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()];
                let mut deliveries = Vec::with_capacity(body.len());
                for (topic, key, value) in body {
                    let partition =
                        lambda_log::partitioner::partition_for_key(key.as_bytes(), partitions);
                    let record = FutureRecord::to(topic)
                        .partition(partition as i32)
                        .key(key.as_bytes())
                        .payload(value.as_slice());
                    match producer.send_result(record) {
                        Ok(delivery) => deliveries.push(delivery),
                        Err((e, _)) => anyhow::bail!("producing: {e}"),
                    }
                }
                for delivery in deliveries {
                    match delivery.await {
                        Ok(Ok(_)) => sent += 1,
                        Ok(Err((e, _))) => anyhow::bail!("delivery: {e}"),
                        Err(_) => anyhow::bail!("the producer went away"),
                    }
                }
            }
            anyhow::Ok(sent)
        });
    }
    let mut sent = 0;
    while let Some(joined) = tasks.join_next().await {
        sent += joined??;
    }
    Ok(sent as f64 / started.elapsed().as_secs_f64())
}

/// The collector alone on the Kafka log at `brokers`.
async fn kafka_collector(brokers: &str) -> anyhow::Result<(SocketAddr, Supervisor)> {
    let log = lambda_log::open(&format!("kafka://{brokers}"), EmbeddedConfig::default()).await?;
    lambda_ingest::ensure_topics(&log, lambda_ingest::DEFAULT_PARTITIONS).await?;
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    let ingest = lambda_ingest::start(log, Default::default());
    let addr = supervisor
        .serve_http(SocketAddr::from(([127, 0, 0, 1], 0)), ingest.router)
        .await?;
    Ok((addr, supervisor))
}

/// Freshness: while `rate` events a second are offered in bodies of
/// `per_body`, a probe event every 20 ms with a campaign of its own; the time
/// from its `202` to the first query that counts it.
/// How long the offered load runs before freshness probes start.
const FRESHNESS_WARMUP: Duration = Duration::from_secs(1);

async fn freshness(bench: &IngestBench, bodies: &[Bytes]) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let (addr, pipeline) = crate::serve::Pipeline::start(dir.path()).await?;
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    // The offered load, open loop: a body on schedule, answered or not.
    let per_second = (bench.freshness_rate as f64 / bench.events_per_body as f64).max(1.0);
    let period = Duration::from_secs_f64(1.0 / per_second);
    let load = {
        let (client, url, bodies) = (
            client.clone(),
            format!("{base}/api/v1/events"),
            bodies.to_vec(),
        );
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            for i in 0usize.. {
                interval.tick().await;
                let (client, url, body) = (
                    client.clone(),
                    url.clone(),
                    bodies[i % bodies.len()].clone(),
                );
                tokio::spawn(async move { client.post(&url).body(body).send().await });
            }
        })
    };
    // Probes start once the load has run for a while: the first second's
    // are the runtime and the client warming up (threads spawned,
    // connections opened, the first window's tables growing from empty).
    tokio::time::sleep(FRESHNESS_WARMUP).await;
    let mut seen = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(bench.seconds);
    let mut probe = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        probe += 1;
        let now = chrono::Utc::now().timestamp_millis();
        let campaign = format!("probe-{probe}");
        let line = serde_json::json!({
            "event_id": format!("probe-{probe}"), "ts": now, "event_type": "impression",
            "user_id": "prober", "campaign_id": campaign,
        });
        let response = client
            .post(format!("{base}/api/v1/events"))
            .body(line.to_string())
            .send()
            .await?;
        anyhow::ensure!(response.status() == 202, "probe: {}", response.status());
        let acknowledged = Instant::now();
        let minute = now - now.rem_euclid(60_000);
        let url = format!(
            "{base}/api/v1/funnel?campaign_id={campaign}&from={minute}&to={}&step=1m",
            minute + 60_000
        );
        loop {
            let answer: serde_json::Value = client.get(&url).send().await?.json().await?;
            if answer["buckets"][0]["impressions"].as_u64() == Some(1) {
                seen.push(acknowledged.elapsed());
                // `RUST_LOG=lambda_bench=debug`: when the slow ones came
                // (how the tail was found to follow the id tables' growth).
                tracing::debug!(
                    probe,
                    since_start_ms = (started.elapsed().as_secs_f64() * 1e3) as u64,
                    visible_after_us = acknowledged.elapsed().as_micros() as u64,
                    "freshness probe"
                );
                break;
            }
            anyhow::ensure!(
                acknowledged.elapsed() < Duration::from_secs(30),
                "probe {probe} not visible after 30 s"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    load.abort();
    pipeline.supervisor.stop().await?;
    seen.sort();
    Ok(seen)
}

/// `lambda bench ingest`.
pub async fn run(bench: IngestBench) -> anyhow::Result<Vec<Figure>> {
    let bar = spinner("generating bodies");
    let bodies = make_bodies(BODIES, bench.events_per_body);
    let body_kb =
        bodies.iter().map(Bytes::len).sum::<usize>() as f64 / bodies.len() as f64 / 1024.0;
    bar.finish_and_clear();

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let (addr, supervisor) = collector(dir.path()).await?;
    // Every step posts the same bodies the same way; only the URL changes.
    let post = |url: String| {
        let bodies = &bodies;
        let bench = &bench;
        async move {
            post_back_to_back(
                &url,
                bodies,
                bench.events_per_body,
                bench.connections,
                bench.seconds,
            )
            .await
        }
    };
    let bar = spinner("the HTTP ceiling: bodies read and answered, nothing done");
    let ceiling = post(format!("http://{addr}/bench/null")).await?;
    bar.finish_and_clear();
    let bar = spinner("the collector into the embedded log");
    let ours = post(format!("http://{addr}/api/v1/events")).await?;
    bar.finish_and_clear();
    supervisor.stop().await?;

    let kafka = match &bench.brokers {
        None => None,
        Some(brokers) => {
            let records = records_of(&bodies)?;
            // The collector first: it creates the topics both write to.
            let (addr, supervisor) = kafka_collector(brokers).await?;
            let bar = spinner("Kafka: a bare rdkafka producer, the same records");
            let bare = bare_producer(
                brokers,
                &records,
                lambda_ingest::DEFAULT_PARTITIONS,
                bench.connections,
                bench.seconds,
            )
            .await?;
            bar.finish_and_clear();
            let bar = spinner("Kafka: the collector");
            let ours = post(format!("http://{addr}/api/v1/events")).await?;
            supervisor.stop().await?;
            bar.finish_and_clear();
            Some((bare, ours))
        }
    };

    // Every event of the offered load new to the speed layer (a body sent
    // twice would be folded as duplicates: no change to the views).
    let bar = spinner("generating the freshness load");
    let offered = (bench.freshness_rate as f64
        * (bench.seconds as f64 + FRESHNESS_WARMUP.as_secs_f64())) as usize;
    let fresh_bodies = make_bodies(
        offered.div_ceil(bench.events_per_body.max(1)) + 1,
        bench.events_per_body,
    );
    bar.finish_and_clear();
    let bar = spinner("freshness: 202 to visible in a query, under load");
    let fresh = freshness(&bench, &fresh_bodies).await?;
    bar.finish_and_clear();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "lambda bench ingest: {} connections back to back, {} events ({body_kb:.0} KB) per body, {} s each",
        bench.connections, bench.events_per_body, bench.seconds
    );
    for (name, posted) in [
        ("HTTP ceiling (baseline)", &ceiling),
        ("collector -> embedded log", &ours),
    ] {
        println!(
            "  {name:<28} {:>10.0} events/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests; {:.3} us of CPU per event)",
            posted.rate(),
            ms(posted.percentile(0.5)),
            ms(posted.percentile(0.99)),
            posted.latencies.len(),
            posted.cpu_us_per_event()
        );
    }
    println!(
        "  freshness at {} events/s offered: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes)",
        bench.freshness_rate,
        ms(percentile(&fresh, 0.5)),
        ms(percentile(&fresh, 0.99)),
        ms(fresh.last().copied().unwrap_or_default()),
        fresh.len()
    );
    if let Some((bare, ours)) = &kafka {
        println!(
            "  Kafka at {}: bare rdkafka producer {bare:.0} events/s; collector {:.0} events/s, p99 {:.2} ms ({:.2}x)",
            bench.brokers.as_deref().unwrap_or_default(),
            ours.rate(),
            ms(ours.percentile(0.99)),
            ours.rate() / bare
        );
    }
    let into_log = format!(
        "HTTP into the embedded log ({} connections, {}-event bodies)",
        bench.connections, bench.events_per_body
    );
    let mut figures = vec![
        Figure::new(
            "ingest",
            into_log.clone(),
            "events/s",
            ours.rate(),
            "HTTP ceiling: the same bodies read and answered 202",
            ceiling.rate(),
            Aim::None,
        ),
        Figure::new(
            "ingest",
            into_log.clone(),
            "events/s",
            ours.rate(),
            "the aim, 1 M events/s (absolute)",
            1e6,
            Aim::AtLeast(1.0),
        ),
        Figure::new(
            "ingest",
            format!("{into_log}, p99"),
            "ms",
            ms(ours.percentile(0.99)),
            "the aim, 50 ms (absolute)",
            50.0,
            Aim::AtMost(1.0),
        ),
        Figure::new(
            "ingest",
            format!(
                "freshness, 202 to visible in a query, p99 at {} events/s offered",
                bench.freshness_rate
            ),
            "ms",
            ms(percentile(&fresh, 0.99)),
            "the aim, 25 ms (absolute)",
            25.0,
            Aim::AtMost(1.0),
        ),
    ];
    if let Some((bare, ours)) = kafka {
        figures.push(Figure::new(
            "ingest",
            format!(
                "HTTP into Kafka ({} connections, {}-event bodies)",
                bench.connections, bench.events_per_body
            ),
            "events/s",
            ours.rate(),
            "a bare rdkafka producer, the same records and broker",
            bare,
            Aim::AtLeast(0.8),
        ));
    }
    Ok(figures)
}
