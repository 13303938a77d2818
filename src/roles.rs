//! One role per process — `lambda ingest`, `lambda speed`, `lambda batch`,
//! `lambda serve` — what docker-compose starts. They share a log (Kafka) and
//! a lake (S3 or a shared directory); serving reads the speed layer's views
//! over HTTP (`GET /internal/v1/speed`, see ARCHITECTURE.md) and the batch
//! views from the lake's manifests.
//!
//! | role | reads | writes | HTTP |
//! |---|---|---|---|
//! | ingest | — | event topics, `dead-letter` | `POST /api/v1/events`, `/healthz`, `/metrics` |
//! | speed | event topics, lake manifests (for B) | checkpoint, `dead-letter` | `/internal/v1/speed`, `/healthz`, `/metrics` |
//! | batch | event topics | lake | `/internal/v1/batch`, `/healthz`, `/metrics` |
//! | serve | lake, speed instances, batch runner | — | the query API, `/`, `/api/v1/status`, `/metrics` |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use lambda_batch::{BatchHandle, Lake, LakeWriter, RunContext};
use lambda_ingest::{IngestConfig, IngestState};
use lambda_log::{EmbeddedConfig, EventLog};
use lambda_serving::remote::SpeedHealth;
use lambda_serving::status::{MetricsSection, StatusSection};
use lambda_serving::{ServingState, SharedBatchViews, StatusSources};
use lambda_speed::{SpeedConfig, SpeedViews};
use parking_lot::RwLock;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::kappa::Architecture;
use crate::supervisor::Supervisor;

/// How often the speed role reads the newest manifest to learn B.
pub const BOUNDARY_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often serving fetches the batch runner's status.
pub const RUNNER_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Path of the batch runner's status.
pub const RUNNER_STATUS_PATH: &str = "/internal/v1/batch";

/// Settings every role shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Local state: checkpoints, the lake's read cache, the embedded log.
    pub data_dir: PathBuf,
    /// The log; `None` is the embedded log under `data_dir/log` (one process only).
    pub log_url: Option<String>,
    /// The lake; `None` is `file://data_dir/lake`.
    pub lake_url: Option<String>,
    /// Object store options for an `s3://` lake.
    pub lake_options: Vec<(String, String)>,
    /// Partitions per event topic, when a role creates them.
    pub partitions: u32,
    /// Allowed lateness of the speed layer and the batch boundary.
    pub allowed_lateness_ms: i64,
    /// When a quiet partition stops holding the speed layer's watermark back.
    pub idle_timeout: Duration,
    /// The speed layer's alert rules.
    pub alert_rules: lambda_speed::alerts::AlertRules,
    /// Bearer token of the admin endpoints (`None`: they are off).
    pub admin_token: Option<String>,
    /// Lambda, or kappa (no batch layer; see [`crate::kappa`]).
    pub architecture: Architecture,
}

impl Shared {
    /// The defaults with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Shared {
        Shared {
            data_dir: data_dir.into(),
            log_url: None,
            lake_url: None,
            lake_options: Vec::new(),
            partitions: lambda_ingest::DEFAULT_PARTITIONS,
            allowed_lateness_ms: 60_000,
            idle_timeout: Duration::from_secs(30),
            alert_rules: lambda_speed::alerts::AlertRules::defaults(),
            admin_token: None,
            architecture: Architecture::Lambda,
        }
    }

    /// Opens the log and creates the topics if they are missing.
    pub async fn open_log(&self) -> anyhow::Result<Arc<dyn EventLog>> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let url = self
            .log_url
            .clone()
            .unwrap_or_else(|| format!("embedded://{}", self.data_dir.join("log").display()));
        // The embedded log keeps what the batch layer has not put in the lake;
        // `dead-letter`, which no layer reads on a schedule, has its own
        // retention (on Kafka: the topic's retention.ms/retention.bytes).
        let config = EmbeddedConfig {
            retention_guards: vec![lambda_batch::run::CONSUMER_GROUP.to_string()],
            topic_retention: lambda_ingest::topic_retention(),
            ..EmbeddedConfig::default()
        };
        let log = lambda_log::open(&url, config)
            .await
            .with_context(|| format!("opening the log {url}"))?;
        lambda_ingest::ensure_topics(&log, self.partitions)
            .await
            .context("creating topics")?;
        Ok(log)
    }

    /// Opens the lake, read-only (serving, the speed layer's boundary).
    pub fn open_lake(&self) -> anyhow::Result<Lake> {
        self.open_lake_writer().map(|writer| writer.lake().clone())
    }

    /// Opens the lake for writing: the batch layer only.
    pub fn open_lake_writer(&self) -> anyhow::Result<LakeWriter> {
        let url = self
            .lake_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("lake").display()));
        LakeWriter::open_with_options(&url, self.lake_options.clone(), self.data_dir.join("cache"))
            .with_context(|| format!("opening the lake {url}"))
    }

    /// The roles run in separate processes, so they need a log they can all reach.
    fn require_shared_log(&self, role: &str) -> anyhow::Result<()> {
        match &self.log_url {
            Some(url) if url.starts_with("kafka://") => Ok(()),
            _ => anyhow::bail!(
                "lambda {role} needs a shared log: pass --log-url kafka://HOST:PORT (or LAMBDA_LOG_URL); \
                 the embedded log belongs to one process — use `lambda demo` to run every layer on it"
            ),
        }
    }
}

/// A running role: its HTTP address and its tasks.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The tasks; `wait` or `stop` it.
    pub supervisor: Supervisor,
}

/// The collector's status section and metric families.
pub fn ingest_telemetry(ingest: &IngestState) -> (StatusSection, MetricsSection) {
    let counters = Arc::clone(&ingest.counters);
    let section: StatusSection = Arc::new(move || counters.status());
    let counters = Arc::clone(&ingest.counters);
    let metrics: MetricsSection = Arc::new(move |out: &mut String| {
        for (name, kind, help, samples) in counters.metric_families() {
            lambda_serving::metrics::family(out, name, kind, help, &samples);
        }
    });
    (section, metrics)
}

fn text_metrics(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// `lambda ingest`: the collector, writing to the shared log.
pub async fn ingest(shared: &Shared, listen: SocketAddr) -> anyhow::Result<Running> {
    shared.require_shared_log("ingest")?;
    let log = shared.open_log().await?;
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    let state = IngestState::new(log, IngestConfig::default());
    let (section, metrics) = ingest_telemetry(&state);
    let app = lambda_ingest::router(state)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/api/v1/status",
            get(move || {
                let section = Arc::clone(&section);
                async move { axum::Json(serde_json::json!({ "ingest": section() })) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    let mut out = String::new();
                    metrics(&mut out);
                    text_metrics(out)
                }
            }),
        );
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, "ingest started");
    Ok(Running { addr, supervisor })
}

/// Which partitions one speed instance owns.
#[derive(Debug, Clone, Copy)]
pub struct Instance {
    /// This instance, `0..count`.
    pub index: u32,
    /// How many instances share the partitions.
    pub count: u32,
    /// How often it checkpoints.
    pub checkpoint_interval: Duration,
}

impl Instance {
    /// Instance `index` of `count`, checkpointing every 5 s.
    pub fn new(index: u32, count: u32) -> Instance {
        Instance {
            index,
            count,
            checkpoint_interval: Duration::from_secs(5),
        }
    }
}

/// `lambda speed`: consumes its share of the partitions, learns B from the
/// lake, serves its views on `/internal/v1/speed`.
pub async fn speed(
    shared: &Shared,
    listen: SocketAddr,
    instance: Instance,
) -> anyhow::Result<Running> {
    shared.require_shared_log("speed")?;
    anyhow::ensure!(
        instance.count >= 1 && instance.index < instance.count,
        "--instance {} must be below --instances {}",
        instance.index,
        instance.count
    );
    let log = shared.open_log().await?;
    let lake = shared.open_lake()?;
    let mut config = SpeedConfig {
        allowed_lateness_ms: shared.allowed_lateness_ms,
        idle_timeout: shared.idle_timeout,
        alert_rules: shared.alert_rules.clone(),
        checkpoint_interval: instance.checkpoint_interval,
        instance: (instance.index, instance.count),
        ..SpeedConfig::with_data_dir(&shared.data_dir)
    };
    if instance.count > 1 {
        config.checkpoint_path = shared.data_dir.join("speed").join(format!(
            "checkpoint-{}-of-{}.json",
            instance.index, instance.count
        ));
    }
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    // Each instance keeps its own kappa view versions.
    let kappa_dir = shared.data_dir.join(if instance.count > 1 {
        format!("kappa-{}-of-{}", instance.index, instance.count)
    } else {
        "kappa".to_string()
    });
    let started = crate::kappa::start_speed(
        shared.architecture,
        kappa_dir,
        config,
        &log,
        supervisor.shutdown.clone(),
    )
    .await?;
    supervisor.spawn(started.task_name, started.task);
    let (views, kappa) = (started.views, started.kappa);
    if kappa.is_none() {
        let (views, token) = (Arc::clone(&views), supervisor.shutdown.clone());
        supervisor.spawn("boundary", follow_boundary(lake, views, token));
    }
    let admin = lambda_serving::admin::AdminState::new(
        shared.admin_token.clone(),
        lambda_serving::admin::BatchRunner::Absent,
    );
    let app = lambda_speed::http::router(views, log).merge(crate::kappa::router(
        crate::kappa::KappaRoutes { kappa, admin },
    ));
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, instance = instance.index, instances = instance.count, "speed started");
    Ok(Running { addr, supervisor })
}

/// Keeps the speed layer's B equal to the newest manifest's, so it can drop
/// windows the batch views now answer.
async fn follow_boundary(
    lake: Lake,
    views: SpeedViews,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(BOUNDARY_POLL_INTERVAL);
    let mut known = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        match lambda_batch::manifest::latest(&lake).await {
            Ok(Some(manifest)) if manifest.boundary_ms != known => {
                known = manifest.boundary_ms;
                views.write().set_batch_boundary(known);
                tracing::debug!(boundary = ?known, version = manifest.version, "batch boundary moved");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the manifest failed")
            }
        }
    }
}

/// `lambda batch`: the cron-scheduled batch runner over the shared log and lake.
fn refuse_kappa(shared: &Shared) -> anyhow::Result<()> {
    anyhow::ensure!(
        shared.architecture == Architecture::Lambda,
        "kappa mode has no batch layer: run lambda batch with --architecture lambda (the views come from `lambda speed --architecture kappa`)"
    );
    Ok(())
}

pub async fn batch(shared: &Shared, listen: SocketAddr, schedule: &str) -> anyhow::Result<Running> {
    refuse_kappa(shared)?;
    shared.require_shared_log("batch")?;
    let log = shared.open_log().await?;
    let lake = shared.open_lake_writer()?;
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    let ctx = RunContext {
        log,
        lake,
        allowed_lateness_ms: shared.allowed_lateness_ms,
    };
    let started = lambda_batch::start(schedule, ctx, supervisor.shutdown.clone());
    supervisor.spawn("batch", started.task);
    let handle = started.handle;
    let admin = lambda_serving::admin::AdminState::new(
        shared.admin_token.clone(),
        lambda_serving::admin::BatchRunner::Local(handle.clone()),
    );
    let app = runner_router(handle).merge(lambda_serving::admin::router(admin));
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, %schedule, "batch started");
    Ok(Running { addr, supervisor })
}

fn runner_router(handle: BatchHandle) -> Router {
    let status = handle.clone();
    let health = handle.clone();
    Router::new()
        .route(
            "/healthz",
            get(move || {
                let problems: Vec<String> = health.status.read().unhealthy().into_iter().collect();
                async move { lambda_speed::http::health(&problems) }
            }),
        )
        .route(
            RUNNER_STATUS_PATH,
            get(move || {
                let s = status.status.read().clone();
                async move { axum::Json(lambda_serving::status::runner_status(&s)) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut out = String::new();
                lambda_serving::metrics::runner_metrics(&handle.status.read(), &mut out);
                async move { text_metrics(out) }
            }),
        )
}

/// `lambda batch --once`: one run, then exit.
pub async fn batch_once(shared: &Shared) -> anyhow::Result<lambda_batch::RunReport> {
    refuse_kappa(shared)?;
    shared.require_shared_log("batch")?;
    let log = shared.open_log().await?;
    let ctx = RunContext {
        log: Arc::clone(&log),
        lake: shared.open_lake_writer()?,
        allowed_lateness_ms: shared.allowed_lateness_ms,
    };
    let report = lambda_batch::run_once(&ctx).await;
    log.close().await.context("closing the log")?;
    report
}

/// Where `lambda serve` finds the other roles.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Base URLs of the speed instances, e.g. `http://speed:8082`.
    pub speed_urls: Vec<String>,
    /// Base URL of the batch runner, for its schedule and last run in the status.
    pub batch_url: Option<String>,
}

/// `lambda serve`: the query API over the lake's batch views and the speed
/// instances' views.
pub async fn serve(shared: &Shared, listen: SocketAddr, peers: Peers) -> anyhow::Result<Running> {
    anyhow::ensure!(
        !peers.speed_urls.is_empty(),
        "lambda serve needs at least one speed instance: pass --speed-url http://HOST:PORT (or LAMBDA_SPEED_URLS)"
    );
    // The log is optional here: with it, the status shows end offsets and lag.
    let log = match &shared.log_url {
        Some(_) => Some(shared.open_log().await?),
        None => None,
    };
    let lake = shared.open_lake()?;
    let mut supervisor = Supervisor::new(log.clone());
    let speed: SpeedViews = lambda_speed::new_views(&SpeedConfig {
        allowed_lateness_ms: shared.allowed_lateness_ms,
        ..SpeedConfig::with_data_dir(&shared.data_dir)
    });
    let health: SpeedHealth = Arc::default();
    let alerts: lambda_serving::alerts::SharedFeed = Arc::default();
    {
        let horizon = speed.read().horizon_ms;
        let (views, feed, health, token) = (
            Arc::clone(&speed),
            Arc::clone(&alerts),
            Arc::clone(&health),
            supervisor.shutdown.clone(),
        );
        supervisor.spawn(
            "speed-mirror",
            lambda_serving::remote::run_speed_mirror(
                peers.speed_urls.clone(),
                views,
                feed,
                health,
                horizon,
                token,
            ),
        );
    }
    let lambda = shared.architecture == Architecture::Lambda;
    let batch_views = if lambda {
        let (views, loader) =
            lambda_serving::start_batch_views(lake.clone(), None, supervisor.shutdown.clone())
                .await;
        supervisor.spawn("view-loader", loader);
        views
    } else {
        SharedBatchViews::default()
    };
    let remote_batch = peers.batch_url.as_ref().map(|url| {
        let cell: Arc<RwLock<Option<Value>>> = Arc::default();
        let (url, target, token) = (url.clone(), Arc::clone(&cell), supervisor.shutdown.clone());
        supervisor.spawn("runner-status", follow_runner(url, target, token));
        cell
    });
    let health_section: StatusSection = {
        let health = Arc::clone(&health);
        Arc::new(move || lambda_serving::remote::health_section(&health))
    };
    let compare = log.as_ref().map(|log| {
        crate::compare::CompareState::new(crate::compare::CompareSources {
            log: Arc::clone(log),
            lake: lambda.then(|| lake.clone()),
            allowed_lateness_ms: shared.allowed_lateness_ms,
        })
    });
    let state = ServingState {
        alerts,
        requests: Arc::default(),
        cache: Arc::default(),
        speed,
        batch: batch_views,
        status: StatusSources {
            log,
            batch: None,
            remote_batch,
            sections: crate::kappa::status_sections(shared.architecture, None)
                .into_iter()
                .chain([("speed_instances".to_string(), health_section)])
                .collect(),
            metrics: Vec::new(),
        },
    };
    let runner = match &peers.batch_url {
        Some(url) => lambda_serving::admin::BatchRunner::Remote(url.clone()),
        None => lambda_serving::admin::BatchRunner::Absent,
    };
    let admin = lambda_serving::admin::AdminState::new(shared.admin_token.clone(), runner);
    let mut app = lambda_serving::router(state).merge(lambda_serving::admin::router(admin));
    if let Some(compare) = compare {
        app = app.merge(crate::compare::router(compare));
    }
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, speed = ?peers.speed_urls, "serve started");
    Ok(Running { addr, supervisor })
}

/// Keeps `target` equal to the batch runner's status.
async fn follow_runner(
    url: String,
    target: Arc<RwLock<Option<Value>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("building the HTTP client")?;
    let url = format!("{}{RUNNER_STATUS_PATH}", url.trim_end_matches('/'));
    let mut interval = tokio::time::interval(RUNNER_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
        }
        let fetched = async {
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json::<Value>()
                .await
        }
        .await;
        match fetched {
            Ok(value) => *target.write() = Some(value),
            Err(error) => tracing::debug!(%error, %url, "batch runner status unavailable"),
        }
    }
}
