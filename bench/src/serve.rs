//! `lambda bench serve`: the merged funnel under load beside a static handler.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use lambda_batch::{LakeWriter, RunContext};
use lambda_kappa::{Architecture, Boundary};
use lambda_log::EmbeddedConfig;
use lambda_serving::{SharedBatchViews, SpeedSource, Supervisor};
use lambda_speed::{SpeedBoundary, SpeedConfig, SpeedReader};

use crate::measure::spinner;
use crate::report::{Aim, Figure};

/// Settings of the serving benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct ServeBench {
    /// Requests per second offered to each endpoint (open loop: sent on schedule, answered or not), e.g. 1000.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Seconds of load per endpoint.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

impl Default for ServeBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> ServeBench {
        <ServeBench as clap::Parser>::parse_from(["serve"])
    }
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
pub async fn run(bench: ServeBench) -> anyhow::Result<Vec<Figure>> {
    const T0: i64 = 1_767_225_600_000;
    const DAY_MINUTES: i64 = 24 * 60;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let (addr, pipeline) = Pipeline::start(dir.path()).await?;
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");

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
    pipeline.run_batch().await?;
    post(DAY_MINUTES - 60..DAY_MINUTES).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    while pipeline.speed.read().max_event_ts() < Some(T0 + (DAY_MINUTES - 1) * 60_000) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the speed layer did not catch up"
        );
        interval.tick().await;
    }
    bar.finish_and_clear();

    let funnel_url = format!(
        "{base}/api/v1/funnel?from={T0}&to={}&step=1m",
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
    let static_url = format!("{base}/bench/static");
    let bar = spinner("static handler under load");
    let baseline = offer(&client, &static_url, bench.rate, bench.seconds).await;
    bar.finish_and_clear();
    let bar = spinner("merged funnel under load");
    let funnel = offer(&client, &funnel_url, bench.rate, bench.seconds).await;
    bar.finish_and_clear();
    pipeline.supervisor.stop().await?;

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
    let ms = |load: &Load, q: f64| load.percentile(q).as_secs_f64() * 1e3;
    let name = |q: &str| format!("merged funnel 24 h at 1m, {q} at {} requests/s", bench.rate);
    let baseline_name = "static handler, the same bytes";
    Ok(vec![
        Figure::new(
            "serve",
            name("p50"),
            "ms",
            ms(&funnel, 0.50),
            baseline_name,
            ms(&baseline, 0.50),
            Aim::None,
        ),
        Figure::new(
            "serve",
            name("p99"),
            "ms",
            ms(&funnel, 0.99),
            baseline_name,
            ms(&baseline, 0.99),
            Aim::None,
        ),
    ])
}

/// The layers the benchmark loads and queries, in this process: the
/// collector and serving on one server (as `lambda demo` runs them), beside
/// a static handler of a small fixed answer.
struct Pipeline {
    speed: SpeedReader,
    boundary: Option<SpeedBoundary>,
    batch_views: SharedBatchViews,
    lake: lambda_batch::Lake,
    ctx: RunContext,
    supervisor: Supervisor,
}

impl Pipeline {
    async fn start(dir: &Path) -> anyhow::Result<(SocketAddr, Pipeline)> {
        let log = lambda_log::open(
            &format!("embedded://{}", dir.join("log").display()),
            EmbeddedConfig::default(),
        )
        .await?;
        lambda_ingest::ensure_topics(&log, lambda_ingest::DEFAULT_PARTITIONS).await?;
        let lake_url = format!("file://{}", dir.join("lake").display());
        let writer = LakeWriter::open(&lake_url, dir.join("cache"))?;
        let lake = writer.lake().clone();
        let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
        let shutdown = supervisor.shutdown.clone();
        let config = SpeedConfig::with_data_dir(dir);
        let speed = lambda_kappa::start_speed(
            Architecture::Lambda,
            dir.join("kappa"),
            config.clone(),
            &log,
            Boundary::Serving,
            shutdown.clone(),
        )
        .await?;
        supervisor.spawn_all(speed.tasks);
        let sources = lambda_serving::Sources {
            speed: SpeedSource::Local(
                SpeedReader::new(&speed.views),
                SpeedBoundary::new(&speed.views),
            ),
            lake: Some(lake.clone()),
            runner: lambda_serving::admin::BatchRunner::Absent,
            log: None,
            sections: Vec::new(),
            metrics: Vec::new(),
        };
        let serving_config = lambda_serving::start::Config {
            allowed_lateness_ms: config.allowed_lateness_ms,
            admin_token: None,
        };
        let serving = lambda_serving::start(serving_config, sources, &shutdown).await;
        supervisor.spawn_all(serving.tasks);
        let fixed = serde_json::json!({ "status": "ok", "buckets": [] }).to_string();
        let ingest = lambda_ingest::start(Arc::clone(&log), Default::default());
        let app = ingest.router.merge(serving.router).route(
            "/bench/static",
            get(move || {
                let fixed = fixed.clone();
                async move { ([(CONTENT_TYPE, "application/json")], fixed) }
            }),
        );
        let addr = supervisor
            .serve_http(SocketAddr::from(([127, 0, 0, 1], 0)), app)
            .await?;
        let ctx = RunContext {
            log,
            lake: writer,
            allowed_lateness_ms: config.allowed_lateness_ms,
        };
        let pipeline = Pipeline {
            speed: serving.speed,
            boundary: serving.boundary,
            batch_views: serving.batch,
            lake,
            ctx,
            supervisor,
        };
        Ok((addr, pipeline))
    }

    /// One batch run, whose views serving then answers from.
    async fn run_batch(&self) -> anyhow::Result<()> {
        lambda_batch::run_once(&self.ctx).await?;
        lambda_serving::refresh_batch_views(&self.lake, &self.batch_views, self.boundary.as_ref())
            .await?;
        Ok(())
    }
}
