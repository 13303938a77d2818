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

use lambda_batch::{BatchHandle, Lake, RunReport};
use lambda_ingest::IngestConfig;
use lambda_ingest::generator::GeneratorConfig;
use lambda_ingest::sender::SenderConfig;
use lambda_log::EventLog;
use lambda_serving::admin::BatchRunner;
use lambda_serving::{SharedBatchViews, Sources, SpeedSource, Supervisor};
use lambda_speed::{SpeedBoundary, SpeedReader};
use tokio_util::sync::CancellationToken;

use crate::roles::Shared;
use lambda_kappa::{Architecture, Boundary, Kappa, KappaRoutes};

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

impl GeneratorSettings {
    /// The generator's config: these settings, events from `start_ms`, at
    /// `event_rate` events per second of event time.
    pub fn generator(&self, start_ms: i64, event_rate: f64) -> GeneratorConfig {
        GeneratorConfig {
            seed: self.seed,
            start_ms,
            rate: event_rate,
            late_fraction: self.late_fraction,
            duplicate_fraction: self.duplicate_fraction,
            malformed_fraction: self.malformed_fraction,
            ..GeneratorConfig::default()
        }
    }
}

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// What every role shares: data dir, log, lake, lateness, alert rules, …
    pub shared: Shared,
    /// Address of the HTTP API (ingest and serving).
    pub listen: SocketAddr,
    /// The built-in generator, if on.
    pub generator: Option<GeneratorSettings>,
    /// Cron expression (with seconds) of batch runs.
    pub batch_schedule: String,
    /// Show a progress line for the generator.
    pub progress: bool,
}

impl DemoConfig {
    /// The defaults, with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> DemoConfig {
        DemoConfig {
            shared: Shared::new(data_dir),
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            generator: None,
            batch_schedule: lambda_batch::DEFAULT_SCHEDULE.to_string(),
            progress: false,
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
    pub speed: SpeedReader,
    boundary: Option<SpeedBoundary>,
    /// The kappa views and their replays (kappa mode only).
    pub kappa: Option<Arc<Kappa>>,
    supervisor: Supervisor,
}

impl Demo {
    /// Opens everything under the data dir and starts every layer: the
    /// same start functions as the one-role commands, with in-process
    /// sources instead of URLs.
    pub async fn start(config: DemoConfig) -> anyhow::Result<Demo> {
        let shared = &config.shared;
        let log = shared.open_log().await?;
        // The batch layer writes the lake; everything else gets the read-only handle.
        let lake_writer = shared.open_lake_writer()?;
        let lake = lake_writer.lake().clone();
        let lambda = shared.architecture == Architecture::Lambda;
        let mut supervisor = Supervisor::new(Some(Arc::clone(&log)));
        let shutdown = supervisor.shutdown.clone();

        // Speed layer (in kappa mode, the current view version and its
        // replays); serving below moves its B. The collector already
        // dead-letters invalid lines.
        let speed = lambda_kappa::start_speed(
            shared.architecture,
            shared.data_dir.join("kappa"),
            shared.speed_config(),
            &log,
            Boundary::Serving,
            shutdown.clone(),
        )
        .await?;
        supervisor.spawn_all(speed.tasks);
        let kappa = speed.kappa;

        // Batch layer (lambda only). In kappa mode the handle has no runner:
        // a run asked for fails, naming that.
        let batch = if lambda {
            let ctx = shared.run_context(Arc::clone(&log), lake_writer)?;
            let started = lambda_batch::start(&config.batch_schedule, ctx, shutdown.clone());
            supervisor.spawn("batch", started.task);
            started.handle
        } else {
            lambda_batch::control(&config.batch_schedule).0
        };

        // Ingest and serving, on one port.
        let ingest = lambda_ingest::start(Arc::clone(&log), IngestConfig::default());
        let sources = Sources {
            speed: SpeedSource::Local(
                SpeedReader::new(&speed.views),
                SpeedBoundary::new(&speed.views),
            ),
            lake: lambda.then(|| lake.clone()),
            runner: match lambda {
                true => BatchRunner::Local(batch.clone()),
                false => BatchRunner::Absent,
            },
            log: Some(Arc::clone(&log)),
            sections: lambda_kappa::status_sections(shared.architecture, kappa.as_ref())
                .into_iter()
                .chain([("ingest".to_string(), ingest.status)])
                .collect(),
            metrics: vec![ingest.metrics],
        };
        let serving = lambda_serving::start(shared.serving_config(), sources, &shutdown).await;
        supervisor.spawn_all(serving.tasks);
        let compare =
            lambda_kappa::compare::CompareState::new(lambda_kappa::compare::CompareSources {
                log: Arc::clone(&log),
                lake: lambda.then(|| lake.clone()),
                allowed_lateness_ms: shared.allowed_lateness_ms,
                idle_timeout: shared.idle_timeout,
                engine: shared.batch_engine.clone(),
            });
        let kappa_routes = KappaRoutes {
            kappa: kappa.clone(),
            admin: serving.admin,
        };
        let app = ingest
            .router
            .merge(serving.router)
            .merge(lambda_kappa::compare::router(compare))
            .merge(lambda_kappa::router(kappa_routes));
        let addr = supervisor.serve_http(config.listen, app).await?;
        supervisor.spawn_retention(Arc::clone(&log));

        if let Some(generator) = &config.generator {
            let task = generate(generator.clone(), addr, config.progress, shutdown.clone());
            supervisor.spawn("generator", task);
        }

        tracing::info!(%addr, data_dir = %shared.data_dir.display(), architecture = shared.architecture.as_str(), "demo started");
        Ok(Demo {
            addr,
            shutdown,
            log,
            lake,
            batch,
            batch_views: serving.batch,
            speed: serving.speed,
            boundary: serving.boundary,
            kappa,
            supervisor,
        })
    }

    /// Runs a batch now and makes serving load its views before returning.
    pub async fn run_batch(&self) -> anyhow::Result<RunReport> {
        let report = self.batch.run_now().await?;
        lambda_serving::refresh_batch_views(&self.lake, &self.batch_views, self.boundary.as_ref())
            .await?;
        Ok(report)
    }

    /// Stops the demo on Ctrl-C or SIGTERM.
    pub fn cancel_on_signal(&self) {
        self.supervisor.cancel_on_signal();
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

/// The built-in generator, sending to the demo at `addr`.
async fn generate(
    settings: GeneratorSettings,
    addr: SocketAddr,
    progress: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let sender = SenderConfig {
        target: format!("http://{addr}"),
        rate: settings.rate,
        duration: None,
        batches_per_second: 10,
        progress,
    };
    let generator = settings.generator(chrono::Utc::now().timestamp_millis(), settings.rate);
    lambda_ingest::sender::run(sender, generator, shutdown)
        .await
        .map(|_| ())
}
