//! `lambda demo`: every layer in one process on the embedded defaults —
//! embedded log under `DATA/log`, lake at `file://DATA/lake`, speed
//! checkpoint under `DATA/speed` — with ingest and serving on one port.
//!
//! Shutdown goes through a [`Supervisor`]: a signal or any task's error
//! cancels the rest, they drain within a grace period (speed writes its
//! checkpoint, the log's writer syncs what it holds), then the log is closed.
//! Restarted on the same data dir, it carries on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lambda_batch::{BatchHandle, Lake, RunContext, RunReport};
use lambda_ingest::generator::GeneratorConfig;
use lambda_ingest::sender::SenderConfig;
use lambda_ingest::{IngestConfig, IngestState};
use lambda_log::EventLog;
use lambda_serving::{ServingState, SharedBatchViews, StatusSources};
use lambda_speed::{SpeedConfig, SpeedViews};
use tokio_util::sync::CancellationToken;

use crate::kappa::{Architecture, Kappa};
use crate::roles::{Shared, ingest_telemetry};
use crate::supervisor::Supervisor;

/// Traffic the built-in generator sends.
#[derive(Debug, Clone)]
pub struct GeneratorSettings {
    /// Lines per second.
    pub rate: f64,
    /// Seed; the same seed gives the same events.
    pub seed: u64,
    /// Share of late events.
    pub late_fraction: f64,
    /// Share of duplicate resends.
    pub duplicate_fraction: f64,
    /// Share of malformed lines.
    pub malformed_fraction: f64,
}

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Address of the HTTP API (ingest and serving).
    pub listen: SocketAddr,
    /// Where the log, lake and checkpoints live.
    pub data_dir: PathBuf,
    /// The built-in generator, if on.
    pub generator: Option<GeneratorSettings>,
    /// Cron expression (with seconds) of batch runs.
    pub batch_schedule: String,
    /// Partitions per event topic.
    pub partitions: u32,
    /// Allowed lateness of the speed layer (and the boundary B).
    pub allowed_lateness_ms: i64,
    /// When a quiet partition stops holding the speed layer's watermark back.
    pub idle_timeout: std::time::Duration,
    /// The speed layer's alert rules.
    pub alert_rules: lambda_speed::alerts::AlertRules,
    /// Bearer token of the admin endpoints (`None`: they are off).
    pub admin_token: Option<String>,
    /// Show a progress line for the generator.
    pub progress: bool,
    /// The log; `None` is the embedded log under `data_dir/log`.
    pub log_url: Option<String>,
    /// The lake; `None` is `file://data_dir/lake`.
    pub lake_url: Option<String>,
    /// Object store options for an `s3://` lake (`aws_endpoint`, `aws_region`, …).
    pub lake_options: Vec<(String, String)>,
    /// Lambda (batch and speed layers) or kappa (the speed layer's views
    /// alone, kept whole, recomputed by replaying the log).
    pub architecture: Architecture,
}

impl DemoConfig {
    /// The defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> DemoConfig {
        DemoConfig {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            data_dir: data_dir.into(),
            generator: None,
            batch_schedule: lambda_batch::DEFAULT_SCHEDULE.to_string(),
            partitions: lambda_ingest::DEFAULT_PARTITIONS,
            allowed_lateness_ms: 60_000,
            idle_timeout: std::time::Duration::from_secs(30),
            alert_rules: lambda_speed::alerts::AlertRules::defaults(),
            admin_token: None,
            progress: false,
            log_url: None,
            lake_url: None,
            lake_options: Vec::new(),
            architecture: Architecture::Lambda,
        }
    }
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Cancel to stop every task.
    pub shutdown: CancellationToken,
    /// The log.
    pub log: Arc<dyn EventLog>,
    /// The lake.
    pub lake: Lake,
    /// Ask the batch layer for a run.
    pub batch: BatchHandle,
    /// The batch views serving answers from.
    pub batch_views: SharedBatchViews,
    /// The speed layer's views (in kappa mode, the current version's).
    pub speed: SpeedViews,
    /// The kappa views and their replays (kappa mode only).
    pub kappa: Option<Arc<Kappa>>,
    supervisor: Supervisor,
}

impl Demo {
    /// Opens everything under the data dir and starts every layer.
    pub async fn start(config: DemoConfig) -> anyhow::Result<Demo> {
        let data_dir = &config.data_dir;
        let shared = Shared {
            data_dir: data_dir.clone(),
            log_url: config.log_url.clone(),
            lake_url: config.lake_url.clone(),
            lake_options: config.lake_options.clone(),
            partitions: config.partitions,
            allowed_lateness_ms: config.allowed_lateness_ms,
            idle_timeout: config.idle_timeout,
            alert_rules: config.alert_rules.clone(),
            admin_token: config.admin_token.clone(),
            architecture: config.architecture,
        };
        let log = shared.open_log().await?;
        // The batch layer writes the lake; everything else gets the read-only handle.
        let lake_writer = shared.open_lake_writer()?;
        let lake = lake_writer.lake().clone();
        let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
        let shutdown = supervisor.shutdown.clone();

        // Speed layer (in kappa mode, the current view version and its replays).
        // The collector already dead-letters invalid lines.
        let speed_config = SpeedConfig {
            allowed_lateness_ms: config.allowed_lateness_ms,
            idle_timeout: config.idle_timeout,
            alert_rules: config.alert_rules.clone(),
            ..SpeedConfig::with_data_dir(data_dir)
        };
        let started = crate::kappa::start_speed(
            config.architecture,
            data_dir.join("kappa"),
            speed_config,
            &log,
            supervisor.shutdown.clone(),
        )
        .await?;
        supervisor.spawn(started.task_name, started.task);
        let (speed, kappa) = (started.views, started.kappa);

        // Batch layer and serving's copy of its views (lambda only). In kappa
        // mode the handle has no runner: a run asked for fails, naming that.
        let (batch, batch_views) = if kappa.is_none() {
            let ctx = RunContext {
                log: Arc::clone(&log),
                lake: lake_writer,
                allowed_lateness_ms: config.allowed_lateness_ms,
            };
            let started = lambda_batch::start(&config.batch_schedule, ctx, shutdown.clone());
            supervisor.spawn("batch", started.task);
            let (views, loader) = lambda_serving::start_batch_views(
                lake.clone(),
                Some(Arc::clone(&speed)),
                shutdown.clone(),
            )
            .await;
            supervisor.spawn("view-loader", loader);
            (started.handle, views)
        } else {
            (
                lambda_batch::control(&config.batch_schedule).0,
                SharedBatchViews::default(),
            )
        };

        // HTTP: ingest and serving on one port.
        let ingest = IngestState::new(Arc::clone(&log), IngestConfig::default());
        let (ingest_section, ingest_metrics) = ingest_telemetry(&ingest);
        let alerts: lambda_serving::alerts::SharedFeed = Arc::default();
        {
            let (speed, feed, token) = (Arc::clone(&speed), Arc::clone(&alerts), shutdown.clone());
            supervisor.spawn(
                "alerts",
                lambda_serving::alerts::run_local_source(speed, feed, token),
            );
        }
        let serving = ServingState {
            alerts,
            requests: Arc::default(),
            cache: Arc::default(),
            speed: Arc::clone(&speed),
            batch: Arc::clone(&batch_views),
            status: StatusSources {
                log: Some(Arc::clone(&log)),
                batch: kappa.is_none().then(|| batch.clone()),
                remote_batch: None,
                sections: crate::kappa::status_sections(config.architecture, kappa.as_ref())
                    .into_iter()
                    .chain([("ingest".to_string(), ingest_section)])
                    .collect(),
                metrics: vec![ingest_metrics],
            },
        };
        let runner = match kappa {
            None => lambda_serving::admin::BatchRunner::Local(batch.clone()),
            Some(_) => lambda_serving::admin::BatchRunner::Absent,
        };
        let admin = lambda_serving::admin::AdminState::new(config.admin_token.clone(), runner);
        let kappa_routes = crate::kappa::KappaRoutes {
            kappa: kappa.clone(),
            admin: admin.clone(),
        };
        let compare = crate::compare::CompareState::new(crate::compare::CompareSources {
            log: Arc::clone(&log),
            lake: kappa.is_none().then(|| lake.clone()),
            allowed_lateness_ms: config.allowed_lateness_ms,
        });
        let app = lambda_ingest::router(ingest)
            .merge(lambda_serving::router(serving))
            .merge(lambda_serving::admin::router(admin))
            .merge(crate::compare::router(compare))
            .merge(crate::kappa::router(kappa_routes));
        let addr = supervisor.serve_http(config.listen, app).await?;
        supervisor.spawn_retention(Arc::clone(&log));

        // Generator.
        if let Some(generator) = &config.generator {
            let sender = SenderConfig {
                target: format!("http://{addr}"),
                rate: generator.rate,
                duration: None,
                batches_per_second: 10,
                progress: config.progress,
            };
            let generator = GeneratorConfig {
                seed: generator.seed,
                start_ms: chrono::Utc::now().timestamp_millis(),
                rate: generator.rate,
                late_fraction: generator.late_fraction,
                duplicate_fraction: generator.duplicate_fraction,
                malformed_fraction: generator.malformed_fraction,
                ..GeneratorConfig::default()
            };
            let token = shutdown.clone();
            supervisor.spawn("generator", async move {
                lambda_ingest::sender::run(sender, generator, token)
                    .await
                    .map(|_| ())
            });
        }

        tracing::info!(%addr, data_dir = %data_dir.display(), architecture = config.architecture.as_str(), "demo started");
        Ok(Demo {
            addr,
            shutdown,
            log,
            lake,
            batch,
            batch_views,
            speed,
            kappa,
            supervisor,
        })
    }

    /// Runs a batch now and makes serving load its views before returning.
    pub async fn run_batch(&self) -> anyhow::Result<RunReport> {
        let report = self.batch.run_now().await?;
        lambda_serving::refresh_batch_views(&self.lake, &self.batch_views, Some(&self.speed))
            .await?;
        Ok(report)
    }

    /// Waits until shutdown is asked for or a task fails, then stops everything.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.supervisor.wait().await
    }

    /// Cancels every task, waits for them, then closes the log.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.supervisor.stop().await
    }
}
