//! `lambda bench serve`: the merged funnel under load beside a static handler.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use lambda_batch::{LakeWriter, RunContext};
use lambda_kappa::{Architecture, Boundary};
use lambda_log::EmbeddedConfig;
use lambda_serving::{SharedBatchViews, SpeedSource, Supervisor};
use lambda_speed::{SpeedBoundary, SpeedConfig, SpeedReader};
use parking_lot::RwLock;

use crate::client::Connections;
use crate::measure::spinner;
use crate::report::{Aim, Figure};

/// Settings of the serving benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct ServeBench {
    /// Requests per second of the 24-hour query offered to each endpoint (open loop: sent on schedule, answered or not), e.g. 1000.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// Requests per second of a dashboard's query (the last hour at 1m) offered, e.g. 10000.
    #[arg(long, default_value_t = 10_000)]
    pub dashboard_rate: u32,
    /// Connections sending back to back, for the throughput of the 24-hour query against the static handler.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Events per second sent into the last hour while the dashboard's query is measured (its views change under it).
    #[arg(long, default_value_t = 1_000)]
    pub ingest_rate: u32,
    /// Seconds of load per step (back to back: twice that of each endpoint, in rounds taken in turn).
    #[arg(long, default_value_t = 5)]
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
    /// Latencies of the answers computed afresh (`x-cache: miss`).
    computed: Vec<Duration>,
    wall: Duration,
    /// How late the generator released requests after they were due, at
    /// most (its timer's resolution, or its own falling behind).
    release_lag: Duration,
}

impl Load {
    fn percentile(&self, q: f64) -> Duration {
        crate::measure::percentile(&self.latencies, q)
    }

    fn line(&self, name: &str) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut line = format!(
            "  {name:<40} p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms  ({} sent, {} failed, {:.0} answered/s; released up to {:.3} ms after due)",
            ms(self.percentile(0.50)),
            ms(self.percentile(0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.sent,
            self.failed,
            self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9),
            ms(self.release_lag)
        );
        if !self.computed.is_empty() {
            let computed = |q| ms(crate::measure::percentile(&self.computed, q));
            line.push_str(&format!(
                "\n  {:<40} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} answers computed afresh)",
                "  of which computed",
                computed(0.50),
                computed(0.99),
                self.computed.len()
            ));
        }
        line
    }
}

/// Connections the load generator keeps open at most: a request due while
/// all are busy waits for one, and its latency still counts from when it
/// was due.
const MAX_IN_FLIGHT: usize = 256;

/// How late tokio's timer may wake a sleeper (it fires on whole
/// milliseconds): what [`offer`] forgives of a request's release.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// Sends GET `url` at `rate` per second for `seconds`, each request on its
/// own schedule, never waiting for an answer before sending the next (a
/// slow server cannot hide its queue: no coordinated omission). Latency
/// counts from when the request was due, forgiving only the timer's
/// resolution: tokio's timer fires on whole milliseconds, so at 10 000
/// requests/s a request due 0.1 ms after a tick leaves up to 0.9 ms late,
/// and counting from when it was due added that rounding to every answer.
/// A release later than [`TIMER_RESOLUTION`] after it was due (the
/// generator starved of CPU by the server beside it) still counts in full
/// beyond it; `release_lag` reports the latest release. Requests go out on
/// `server`'s keep-alive connections ([`Connections`]: hyper's connection
/// API; with `reqwest` the static handler's own p99 at 10 000 requests/s
/// was 1.99–2.11 ms, with these 1.49–1.74 ms the same day).
async fn offer(server: &Arc<Connections>, url: &str, rate: u32, seconds: u64) -> Load {
    let uri = origin_form(url);
    let total = rate as usize * seconds as usize;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut release_lag = Duration::ZERO;
    for i in 0..total {
        let due = started + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let released = Instant::now();
        release_lag = release_lag.max(released.saturating_duration_since(due));
        let (server, uri, slots) = (Arc::clone(server), uri.clone(), Arc::clone(&slots));
        tasks.spawn(async move {
            // A wait for a free connection still counts: the server's.
            let _slot = slots.acquire_owned().await.expect("never closed");
            let (ok, computed) = match server.get(&uri).await {
                Ok(answer) => (
                    answer.status.is_success() && answer.bytes > 0,
                    answer.computed,
                ),
                Err(_) => (false, false),
            };
            (ok, computed, released.min(due + TIMER_RESOLUTION).elapsed())
        });
    }
    let mut load = Load {
        sent: total,
        failed: 0,
        latencies: Vec::with_capacity(total),
        computed: Vec::new(),
        wall: Duration::ZERO,
        release_lag,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((true, computed, latency)) => {
                load.latencies.push(latency);
                if computed {
                    load.computed.push(latency);
                }
            }
            _ => load.failed += 1,
        }
    }
    load.wall = started.elapsed();
    load.latencies.sort();
    load.computed.sort();
    load
}

/// The path and query of `url` (`http://host:port/path?query`), as an
/// HTTP/1.1 request names its target.
fn origin_form(url: &str) -> hyper::Uri {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .find('/')
        .map_or("/", |slash| &after_scheme[slash..]);
    path.parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"))
}

/// Sorted rates, for a report: "9870 11020 ...".
fn rounds_list(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rounds of back-to-back load on each of the two endpoints compared.
const SATURATE_ROUNDS: usize = 5;

/// The median of `rates` (the upper of the middle two of an even count).
fn median_of(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}

/// Sends GET `url` back to back on `connections` connections for
/// `seconds` (closed loop): answers per second, the server's throughput
/// with this load generator beside it.
async fn saturate(
    addr: SocketAddr,
    url: &str,
    connections: usize,
    span: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + span;
    let started = Instant::now();
    let uri = origin_form(url);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        // One connection each, kept from request to request.
        let (server, uri, url) = (Connections::to(addr), uri.clone(), url.to_string());
        tasks.spawn(async move {
            let mut answered = 0u64;
            while Instant::now() < deadline {
                let answer = server.get(&uri).await?;
                anyhow::ensure!(answer.status.is_success(), "{url}: {}", answer.status);
                answered += 1;
            }
            anyhow::Ok(answered)
        });
    }
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        answered += joined??;
    }
    Ok(answered as f64 / started.elapsed().as_secs_f64())
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
    let sample = client.get(&funnel_url).send().await?.bytes().await?;
    let parsed: serde_json::Value = serde_json::from_slice(&sample)?;
    let buckets = parsed["buckets"].as_array().map_or(0, Vec::len);
    let layer_count = |layer: &str| {
        parsed["buckets"]
            .as_array()
            .map_or(0, |b| b.iter().filter(|x| x["layer"] == layer).count())
    };
    // The static handler serves these very bytes.
    *pipeline.fixed.write() = sample.clone();
    let static_url = format!("{base}/bench/static");

    let step = |what: &str| spinner(what);
    let bar = step("static handler, open loop");
    let server = Connections::to(addr);
    let baseline = offer(&server, &static_url, bench.rate, bench.seconds).await;
    bar.finish_and_clear();
    let bar = step("merged funnel 24 h, open loop");
    let funnel = offer(&server, &funnel_url, bench.rate, bench.seconds).await;
    bar.finish_and_clear();
    // Back to back: rounds of each taken in turn, which goes first
    // alternating (one 5 s step of each, one after the other, gave ratios
    // from 0.72 to 0.93 on this machine for the same binary: a stretch of
    // a crowded machine fell on one of the two), and the median of each.
    let bar = step("static handler and merged funnel 24 h, back to back, in turn");
    let round = Duration::from_secs(bench.seconds).mul_f64(2.0 / SATURATE_ROUNDS as f64);
    let (mut statics, mut funnels) = (Vec::new(), Vec::new());
    for i in 0..SATURATE_ROUNDS {
        let order = if i % 2 == 0 {
            [(&static_url, &mut statics), (&funnel_url, &mut funnels)]
        } else {
            [(&funnel_url, &mut funnels), (&static_url, &mut statics)]
        };
        for (url, rates) in order {
            rates.push(saturate(addr, url, bench.connections, round).await?);
        }
    }
    let (static_rps, funnel_rps) = (median_of(&mut statics), median_of(&mut funnels));
    bar.finish_and_clear();

    // A dashboard's query: the last hour at 1m (the speed layer's buckets),
    // while events keep arriving in that hour (its views change under it).
    let hour_url = format!(
        "{base}/api/v1/funnel?from={}&to={}&step=1m",
        T0 + (DAY_MINUTES - 60) * 60_000,
        T0 + DAY_MINUTES * 60_000
    );
    let hour_sample = client.get(&hour_url).send().await?.bytes().await?;
    let hour_size = hour_sample.len();
    *pipeline.fixed.write() = hour_sample;
    // Into the last minute, at or after the watermark: each batch is
    // counted (not late), so the views change ten times a second. It runs
    // under both steps: the baseline shares the machine with the same ingest.
    let trickle = tokio::spawn(trickle(
        client.clone(),
        base.clone(),
        T0 + DAY_MINUTES * 60_000 - 30_000,
        bench.ingest_rate,
    ));
    let bar = step("static handler (the last hour's bytes), open loop, events arriving");
    let hour_baseline = offer(&server, &static_url, bench.dashboard_rate, bench.seconds).await;
    bar.finish_and_clear();
    let bar = step("the last hour at 1m, open loop, events arriving");
    let (hits_before, misses_before) = pipeline.answers.counts();
    let hour = offer(&server, &hour_url, bench.dashboard_rate, bench.seconds).await;
    trickle.abort();
    let (hits, misses) = pipeline.answers.counts();
    let (hits, misses) = (hits - hits_before, misses - misses_before);
    bar.finish_and_clear();
    pipeline.supervisor.stop().await?;

    println!(
        "lambda bench serve: funnel over 24 h at 1m: {buckets} buckets ({} batch, {} speed), {:.0} KB per answer; the last hour: {:.1} KB",
        layer_count("batch"),
        layer_count("speed"),
        sample.len() as f64 / 1024.0,
        hour_size as f64 / 1024.0,
    );
    println!(
        "  at {} requests/s offered for {} s:",
        bench.rate, bench.seconds
    );
    println!("{}", baseline.line("static, the same bytes (baseline)"));
    println!("{}", funnel.line("merged funnel, 24 h at 1m"));
    println!(
        "  back to back on {} connections, the median of {SATURATE_ROUNDS} rounds of {:.1} s each in turn: static {static_rps:.0}/s, funnel {funnel_rps:.0}/s ({:.2}x; rounds: static {}, funnel {})",
        bench.connections,
        round.as_secs_f64(),
        funnel_rps / static_rps.max(1e-9),
        rounds_list(&statics),
        rounds_list(&funnels)
    );
    println!(
        "  the last hour at 1m, {} requests/s offered, {} events/s arriving ({hits} answers from the cache, {misses} computed):",
        bench.dashboard_rate, bench.ingest_rate
    );
    println!(
        "{}",
        hour_baseline.line("static, the same bytes (baseline)")
    );
    println!("{}", hour.line("merged funnel, last hour at 1m"));
    let ms = |load: &Load, q: f64| load.percentile(q).as_secs_f64() * 1e3;
    let day = |q: &str| format!("merged funnel 24 h at 1m, {q} at {} requests/s", bench.rate);
    let hour_name = format!(
        "a dashboard's query (last hour at 1m), p99 at {} requests/s, {} events/s arriving",
        bench.dashboard_rate, bench.ingest_rate
    );
    let same_bytes = "static handler, the same bytes";
    anyhow::ensure!(
        funnel.failed == 0 && hour.failed == 0,
        "requests failed: {} of the 24 h query, {} of the last hour",
        funnel.failed,
        hour.failed
    );
    Ok(vec![
        Figure::new(
            "serve",
            day("p50"),
            "ms",
            ms(&funnel, 0.50),
            same_bytes,
            ms(&baseline, 0.50),
            Aim::None,
        ),
        Figure::new(
            "serve",
            day("p99"),
            "ms",
            ms(&funnel, 0.99),
            same_bytes,
            ms(&baseline, 0.99),
            Aim::None,
        ),
        Figure::new(
            "serve",
            format!(
                "merged funnel 24 h at 1m, back to back on {} connections",
                bench.connections
            ),
            "answers/s",
            funnel_rps,
            same_bytes,
            static_rps,
            Aim::AtLeast(0.8),
        ),
        Figure::new(
            "serve",
            hour_name.clone(),
            "ms",
            ms(&hour, 0.99),
            same_bytes,
            ms(&hour_baseline, 0.99),
            Aim::None,
        ),
        Figure::new(
            "serve",
            hour_name,
            "ms",
            ms(&hour, 0.99),
            "the aim, 2 ms (absolute)",
            2.0,
            Aim::AtMost(1.0),
        ),
    ])
}

/// Sends `rate` clicks a second stamped in the 30 s from `from`, ten
/// batches a second, until aborted: the speed views change under the queries.
async fn trickle(client: reqwest::Client, base: String, from: i64, rate: u32) {
    let per_batch = (rate / 10).max(1) as i64;
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for batch in 0i64.. {
        interval.tick().await;
        let mut body = Vec::new();
        for i in 0..per_batch {
            let n = batch * per_batch + i;
            let line = serde_json::json!({
                "event_id": format!("t{n}"), "ts": from + (n * 997) % 30_000,
                "event_type": "click", "user_id": format!("u{}", n % 97), "campaign_id": "c1",
            });
            body.extend(line.to_string().into_bytes());
            body.push(b'\n');
        }
        let sent = client
            .post(format!("{base}/api/v1/events"))
            .body(body)
            .send()
            .await;
        if sent.is_err() {
            return;
        }
    }
}

/// The layers the benchmark loads and queries, in this process: the
/// collector and serving on one server (as `lambda demo` runs them), beside
/// a static handler of a small fixed answer.
pub(crate) struct Pipeline {
    /// What the static handler answers.
    fixed: Arc<RwLock<Bytes>>,
    /// Serving's answer cache (hits and misses under load).
    answers: Arc<lambda_serving::cache::AnswerCache>,
    speed: SpeedReader,
    boundary: Option<SpeedBoundary>,
    batch_views: SharedBatchViews,
    lake: lambda_batch::Lake,
    ctx: RunContext,
    pub(crate) supervisor: Supervisor,
}

impl Pipeline {
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<(SocketAddr, Pipeline)> {
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
        let fixed: Arc<RwLock<Bytes>> = Arc::default();
        let serves = Arc::clone(&fixed);
        let ingest = lambda_ingest::start(Arc::clone(&log), Default::default());
        let app = ingest.router.merge(serving.router).route(
            "/bench/static",
            get(move || {
                let body = serves.read().clone();
                async move { ([(CONTENT_TYPE, "application/json")], body) }
            }),
        );
        let addr = supervisor
            .serve_http(SocketAddr::from(([127, 0, 0, 1], 0)), app)
            .await?;
        let ctx = RunContext {
            log,
            lake: writer,
            allowed_lateness_ms: config.allowed_lateness_ms,
            engine: Default::default(),
        };
        let pipeline = Pipeline {
            fixed,
            answers: serving.answers,
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
