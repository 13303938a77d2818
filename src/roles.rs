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
use lambda_batch::{Lake, LakeWriter, RunContext};
use lambda_ingest::IngestConfig;
use lambda_log::{EmbeddedConfig, EventLog};
use lambda_serving::admin::{AdminState, BatchRunner};
use lambda_serving::status::{ProcessTelemetry, process_router};
use lambda_serving::{SpeedSource, Supervisor};
use lambda_speed::SpeedConfig;

use lambda_kappa::{Architecture, Boundary, KappaRoutes};

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
    /// Lambda, or kappa (no batch layer; see [`lambda_kappa`]).
    pub architecture: Architecture,
    /// The engine that computes batch views (DuckDB in the process, or Spark).
    pub batch_engine: lambda_batch::BatchEngine,
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
            batch_engine: lambda_batch::BatchEngine::DuckDb,
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
        let url = self.lake_url();
        Lake::open_with_options(&url, self.lake_options.clone(), self.data_dir.join("cache"))
            .with_context(|| format!("opening the lake {url}"))
    }

    /// Opens the lake for writing: the batch layer only.
    pub fn open_lake_writer(&self) -> anyhow::Result<LakeWriter> {
        let url = self.lake_url();
        LakeWriter::open_with_options(&url, self.lake_options.clone(), self.data_dir.join("cache"))
            .with_context(|| format!("opening the lake {url}"))
    }

    fn lake_url(&self) -> String {
        self.lake_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.data_dir.join("lake").display()))
    }

    /// The speed layer's settings with these.
    pub fn speed_config(&self) -> SpeedConfig {
        SpeedConfig {
            allowed_lateness_ms: self.allowed_lateness_ms,
            idle_timeout: self.idle_timeout,
            alert_rules: self.alert_rules.clone(),
            ..SpeedConfig::with_data_dir(&self.data_dir)
        }
    }

    /// Serving's settings with these.
    pub fn serving_config(&self) -> lambda_serving::start::Config {
        lambda_serving::start::Config {
            allowed_lateness_ms: self.allowed_lateness_ms,
            admin_token: self.admin_token.clone(),
        }
    }

    /// What a batch run reads and writes; an error if the batch engine
    /// cannot compute this lake's views (Spark and a `memory://` lake).
    pub fn run_context(
        &self,
        log: Arc<dyn EventLog>,
        lake: LakeWriter,
    ) -> anyhow::Result<RunContext> {
        self.batch_engine.check_lake(&lake)?;
        Ok(RunContext {
            log,
            lake,
            allowed_lateness_ms: self.allowed_lateness_ms,
            engine: self.batch_engine.clone(),
        })
    }

    /// Refuses kappa mode, which has no batch layer.
    fn refuse_kappa(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.architecture == Architecture::Lambda,
            "kappa mode has no batch layer: run lambda batch with --architecture lambda (the views come from `lambda speed --architecture kappa`)"
        );
        Ok(())
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

/// `lambda ingest`: the collector, writing to the shared log.
pub async fn ingest(shared: &Shared, listen: SocketAddr) -> anyhow::Result<Running> {
    shared.require_shared_log("ingest")?;
    let log = shared.open_log().await?;
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    let ingest = lambda_ingest::start(log, IngestConfig::default());
    let app = ingest.router.merge(process_router(ProcessTelemetry {
        problems: Arc::new(Vec::new),
        sections: vec![("ingest".to_string(), ingest.status)],
        metrics: vec![ingest.metrics],
    }));
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

    /// What tells this instance's files apart from the others' in one data dir.
    fn suffix(&self) -> String {
        match self.count {
            1 => String::new(),
            count => format!("-{}-of-{count}", self.index),
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
    let suffix = instance.suffix();
    let mut config = SpeedConfig {
        checkpoint_interval: instance.checkpoint_interval,
        instance: (instance.index, instance.count),
        ..shared.speed_config()
    };
    if instance.count > 1 {
        config.checkpoint_path =
            (shared.data_dir.join("speed")).join(format!("checkpoint{suffix}.json"));
    }
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    // Each instance keeps its own kappa view versions.
    let started = lambda_kappa::start_speed(
        shared.architecture,
        shared.data_dir.join(format!("kappa{suffix}")),
        config,
        &log,
        Boundary::Lake(lake),
        supervisor.shutdown.clone(),
    )
    .await?;
    supervisor.spawn_all(started.tasks);
    let admin = AdminState::new(shared.admin_token.clone(), BatchRunner::Absent);
    let kappa = KappaRoutes {
        kappa: started.kappa,
        admin,
    };
    let app = lambda_speed::http::router(started.views, log).merge(lambda_kappa::router(kappa));
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, instance = instance.index, instances = instance.count, "speed started");
    Ok(Running { addr, supervisor })
}

/// How a speed instance takes part in a group (`lambda speed --group`).
#[derive(Debug, Clone)]
pub struct SpeedGroup {
    /// The consumer group's name.
    pub group: String,
    /// Where partition state lives, e.g. `s3://bucket/speed` or `file:///data/speed-store`.
    pub checkpoint_url: String,
    /// Where this instance answers, for serving (default: `http://` and the bound address).
    pub advertise_url: Option<String>,
    /// This member's name (default: from its advertised host and port).
    pub member: Option<String>,
    /// A member not heard from for this long loses its partitions.
    pub session_timeout: Duration,
    /// How often each owned partition is checkpointed.
    pub checkpoint_interval: Duration,
}

/// `lambda speed --group G --checkpoint-url URL`: one member of a speed
/// group. The group (Kafka's protocol) decides which partitions it owns;
/// each partition's state lives in the checkpoint store (see
/// `lambda_speed::group`).
pub async fn speed_group(
    shared: &Shared,
    listen: SocketAddr,
    group: SpeedGroup,
) -> anyhow::Result<Running> {
    shared.require_shared_log("speed")?;
    anyhow::ensure!(
        shared.architecture == Architecture::Lambda,
        "lambda speed --group runs the lambda architecture's speed layer; kappa's views are kept by one instance (drop --group, or --architecture lambda)"
    );
    let log_url = shared.log_url.clone().unwrap_or_default();
    let kafka = lambda_log::KafkaConfig::from_url_tail(
        log_url.strip_prefix("kafka://").unwrap_or(&log_url),
    )?;
    let store = lambda_speed::store::CheckpointStore::open(
        &group.checkpoint_url,
        shared.lake_options.clone(),
    )?;
    let log = shared.open_log().await?;
    let lake = shared.open_lake()?;
    let config = SpeedConfig {
        checkpoint_interval: group.checkpoint_interval,
        group: group.group.clone(),
        ..shared.speed_config()
    };
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    // Bound first: the advertised URL defaults to the bound address.
    let placeholder = lambda_speed::group::GroupViews::new("");
    let app = lambda_speed::http::group_router(placeholder.clone(), Arc::clone(&log));
    let addr = supervisor.serve_http(listen, app).await?;
    let url = match &group.advertise_url {
        Some(url) => url.clone(),
        None if addr.ip().is_unspecified() => {
            // Listening on every address: the host's name is how others
            // reach it (a container's name in compose).
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty() && h != "localhost");
            let Some(host) = host else {
                anyhow::bail!(
                    "lambda speed --group listens on {addr} and this host has no name to advertise: pass --advertise-url http://HOST:{} (or LAMBDA_ADVERTISE_URL)",
                    addr.port()
                );
            };
            format!("http://{host}:{}", addr.port())
        }
        None => format!("http://{addr}"),
    };
    let member = match &group.member {
        Some(member) => member.clone(),
        None => member_name(&url),
    };
    lambda_speed::group::check_member_free(&store, &member, &url).await?;
    placeholder.set_member(&member);
    let topics: Vec<&str> = lambda_events::Topic::ALL.iter().map(|t| t.name()).collect();
    let mut membership = lambda_log::kafka::MembershipConfig::new(&group.group, &member, &topics);
    membership.session_timeout = group.session_timeout;
    let group_config = lambda_speed::group::GroupConfig {
        speed: config,
        kafka,
        membership,
        store,
        url: url.clone(),
    };
    let following = placeholder.clone();
    supervisor.spawn(
        "boundary",
        Box::pin(lambda_kappa::follow_boundary(
            lake,
            move |boundary| following.set_boundary(boundary),
            supervisor.shutdown.clone(),
        )),
    );
    supervisor.spawn(
        "speed-group",
        Box::pin(lambda_speed::group::run(
            group_config,
            log,
            placeholder,
            supervisor.shutdown.clone(),
        )),
    );
    tracing::info!(%addr, %url, %member, group = %group.group, "speed started in a group");
    Ok(Running { addr, supervisor })
}

/// A member name from an advertised URL: its host and port, with every
/// other character made '-' (names are ASCII letters, digits, '-', '.').
fn member_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let name: String = host_port
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("speed-{name}")
    } else {
        name
    }
}

/// `lambda batch`: the cron-scheduled batch runner over the shared log and lake.
pub async fn batch(shared: &Shared, listen: SocketAddr, schedule: &str) -> anyhow::Result<Running> {
    shared.refuse_kappa()?;
    shared.require_shared_log("batch")?;
    let log = shared.open_log().await?;
    let lake = shared.open_lake_writer()?;
    let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
    let ctx = shared.run_context(log, lake)?;
    let started = lambda_batch::start(schedule, ctx, supervisor.shutdown.clone());
    supervisor.spawn("batch", started.task);
    let app = lambda_serving::remote::runner_router(started.handle, shared.admin_token.clone());
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, %schedule, "batch started");
    Ok(Running { addr, supervisor })
}

/// `lambda batch --once`: one run, then exit.
pub async fn batch_once(shared: &Shared) -> anyhow::Result<lambda_batch::RunReport> {
    shared.refuse_kappa()?;
    shared.require_shared_log("batch")?;
    let log = shared.open_log().await?;
    let ctx = shared.run_context(Arc::clone(&log), shared.open_lake_writer()?)?;
    let report = lambda_batch::run_once(&ctx).await;
    log.close().await.context("closing the log")?;
    report
}

/// Where `lambda serve` finds the other roles.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Base URLs of the speed instances, e.g. `http://speed:8082`.
    pub speed_urls: Vec<String>,
    /// The checkpoint store of a speed group, whose members serving finds there.
    pub speed_checkpoint_url: Option<String>,
    /// Base URL of the batch runner, for its schedule and last run in the status.
    pub batch_url: Option<String>,
}

/// `lambda serve`: the query API over the lake's batch views and the speed
/// instances' views.
pub async fn serve(shared: &Shared, listen: SocketAddr, peers: Peers) -> anyhow::Result<Running> {
    anyhow::ensure!(
        peers.speed_urls.is_empty() != peers.speed_checkpoint_url.is_none(),
        "lambda serve needs the speed layer: pass --speed-url http://HOST:PORT (or LAMBDA_SPEED_URLS) for instances of `lambda speed --instance`, or --speed-checkpoint-url URL (or LAMBDA_SPEED_CHECKPOINT_URL) for a `lambda speed --group`, not both"
    );
    let speed = match &peers.speed_checkpoint_url {
        Some(url) => SpeedSource::Group(lambda_speed::store::CheckpointStore::open(
            url,
            shared.lake_options.clone(),
        )?),
        None => SpeedSource::Remote(peers.speed_urls.clone()),
    };
    // The log is optional here: with it, the status shows end offsets and lag,
    // and /api/v1/compare can replay it.
    let log = match &shared.log_url {
        Some(_) => Some(shared.open_log().await?),
        None => None,
    };
    let lake = shared.open_lake()?;
    let lambda = shared.architecture == Architecture::Lambda;
    if log.is_some() && lambda {
        // Its comparisons recompute batch views with the batch engine.
        shared.batch_engine.check_lake(&lake)?;
    }
    let mut supervisor = Supervisor::new(log.clone());
    let sources = lambda_serving::Sources {
        speed,
        lake: lambda.then(|| lake.clone()),
        runner: match &peers.batch_url {
            Some(url) => BatchRunner::Remote(url.clone()),
            None => BatchRunner::Absent,
        },
        log: log.clone(),
        sections: lambda_kappa::status_sections(shared.architecture, None),
        metrics: Vec::new(),
    };
    let serving =
        lambda_serving::start(shared.serving_config(), sources, &supervisor.shutdown).await;
    supervisor.spawn_all(serving.tasks);
    let mut app = serving.router;
    if let Some(log) = log {
        let compare =
            lambda_kappa::compare::CompareState::new(lambda_kappa::compare::CompareSources {
                log,
                lake: lambda.then_some(lake),
                allowed_lateness_ms: shared.allowed_lateness_ms,
                idle_timeout: shared.idle_timeout,
                engine: shared.batch_engine.clone(),
            });
        app = app.merge(lambda_kappa::compare::router(compare));
    }
    let addr = supervisor.serve_http(listen, app).await?;
    tracing::info!(%addr, speed = ?peers.speed_urls, "serve started");
    Ok(Running { addr, supervisor })
}
