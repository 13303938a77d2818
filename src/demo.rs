//! `lambda demo`: every layer in one process on the embedded defaults —
//! embedded log under `DATA/log`, lake at `file://DATA/lake`, speed
//! checkpoint under `DATA/speed` — with ingest and serving on one port.
//!
//! Shutdown: one root `CancellationToken`; named tasks in a `JoinSet`; a
//! signal or any task's error cancels the rest, they drain within a grace
//! period (speed writes its checkpoint, the log's writer syncs what it holds),
//! then the log is closed. Restarted on the same data dir, it carries on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lambda_batch::{BatchHandle, BatchViews, Lake, RunContext, RunReport};
use lambda_ingest::generator::GeneratorConfig;
use lambda_ingest::sender::SenderConfig;
use lambda_ingest::{IngestConfig, IngestState};
use lambda_log::{EmbeddedConfig, EventLog};
use lambda_serving::{ServingState, SharedBatchViews, StatusSources};
use lambda_speed::{SpeedConfig, SpeedViews};
use parking_lot::RwLock;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long tasks get to finish after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often log retention is applied.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

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
    /// Show a progress line for the generator.
    pub progress: bool,
    /// The log; `None` is the embedded log under `data_dir/log`.
    pub log_url: Option<String>,
    /// The lake; `None` is `file://data_dir/lake`.
    pub lake_url: Option<String>,
    /// Object store options for an `s3://` lake (`aws_endpoint`, `aws_region`, …).
    pub lake_options: Vec<(String, String)>,
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
            progress: false,
            log_url: None,
            lake_url: None,
            lake_options: Vec::new(),
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
    /// The speed layer's views.
    pub speed: SpeedViews,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Demo {
    /// Opens everything under the data dir and starts every layer.
    pub async fn start(config: DemoConfig) -> anyhow::Result<Demo> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let log_url = config
            .log_url
            .clone()
            .unwrap_or_else(|| format!("embedded://{}", data_dir.join("log").display()));
        let log = lambda_log::open(&log_url, EmbeddedConfig::default())
            .await
            .with_context(|| format!("opening the log {log_url}"))?;
        lambda_ingest::ensure_topics(&log, config.partitions)
            .await
            .context("creating topics")?;
        let lake_url = config
            .lake_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", data_dir.join("lake").display()));
        let lake = Lake::open_with_options(
            &lake_url,
            config.lake_options.clone(),
            data_dir.join("cache"),
        )
        .with_context(|| format!("opening the lake {lake_url}"))?;

        let shutdown = CancellationToken::new();
        let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

        // Speed layer.
        let speed_config = SpeedConfig {
            allowed_lateness_ms: config.allowed_lateness_ms,
            ..SpeedConfig::with_data_dir(data_dir)
        };
        let speed = lambda_speed::new_views(&speed_config);
        {
            let (log, speed, token) = (Arc::clone(&log), Arc::clone(&speed), shutdown.clone());
            tasks.spawn(async move {
                (
                    "speed",
                    lambda_speed::run(speed_config, log, speed, token).await,
                )
            });
        }

        // Batch layer.
        let (batch, triggers) = lambda_batch::control(&config.batch_schedule);
        {
            let ctx = RunContext {
                log: Arc::clone(&log),
                lake: lake.clone(),
                allowed_lateness_ms: config.allowed_lateness_ms,
            };
            let (schedule, handle, token) = (
                config.batch_schedule.clone(),
                batch.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                (
                    "batch",
                    lambda_batch::run(schedule, ctx, handle, triggers, token).await,
                )
            });
        }

        // Serving's copy of the batch views, loaded before the first request.
        let batch_views: SharedBatchViews = Arc::new(RwLock::new(Arc::new(BatchViews::default())));
        lambda_serving::refresh_batch_views(&lake, &batch_views, Some(&speed))
            .await
            .context("loading batch views")?;
        {
            let (lake, views, token) = (lake.clone(), Arc::clone(&batch_views), shutdown.clone());
            let speed = Some(Arc::clone(&speed));
            tasks.spawn(async move {
                let loaded = lambda_serving::run_view_loader(lake, views, speed, token).await;
                ("view-loader", loaded)
            });
        }

        // HTTP: ingest and serving on one port.
        let ingest = IngestState::new(Arc::clone(&log), IngestConfig::default());
        let counters = Arc::clone(&ingest.counters);
        let ingest_section: lambda_serving::status::StatusSection =
            Arc::new(move || counters.status());
        let counters = Arc::clone(&ingest.counters);
        let ingest_metrics: lambda_serving::status::MetricsSection =
            Arc::new(move |out: &mut String| {
                for (name, kind, help, samples) in counters.metric_families() {
                    lambda_serving::metrics::family(out, name, kind, help, &samples);
                }
            });
        let serving = ServingState {
            speed: Arc::clone(&speed),
            batch: Arc::clone(&batch_views),
            status: StatusSources {
                log: Some(Arc::clone(&log)),
                batch: Some(batch.clone()),
                sections: vec![("ingest".into(), ingest_section)],
                metrics: vec![ingest_metrics],
            },
        };
        let app = lambda_ingest::router(ingest).merge(lambda_serving::router(serving));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        {
            let token = shutdown.clone();
            tasks.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
                ("http", served.context("http server"))
            });
        }

        // Log retention.
        {
            let (log, token) = (Arc::clone(&log), shutdown.clone());
            tasks.spawn(async move {
                let mut interval = tokio::time::interval(RETENTION_INTERVAL);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return ("retention", Ok(())),
                        _ = interval.tick() => {
                            if let Err(error) = log.enforce_retention().await {
                                tracing::warn!(%error, "log retention failed");
                            }
                        }
                    }
                }
            });
        }

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
            tasks.spawn(async move {
                (
                    "generator",
                    lambda_ingest::sender::run(sender, generator, token)
                        .await
                        .map(|_| ()),
                )
            });
        }

        tracing::info!(%addr, data_dir = %data_dir.display(), "demo started");
        Ok(Demo {
            addr,
            shutdown,
            log,
            lake,
            batch,
            batch_views,
            speed,
            tasks,
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
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                match joined {
                    Ok((name, Ok(()))) => tracing::info!(task = name, "task finished"),
                    Ok((name, Err(error))) => {
                        tracing::error!(task = name, error = format!("{error:#}"), "task failed; shutting down");
                        first_error = Some(error.context(format!("task {name}")));
                    }
                    Err(error) => first_error = Some(anyhow::anyhow!("task panicked: {error}")),
                }
            }
        }
        let stopped = self.stop().await;
        match first_error {
            Some(error) => Err(error),
            None => stopped,
        }
    }

    /// Cancels every task, waits up to [`SHUTDOWN_GRACE`] for them, then closes the log.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let drain = async {
            let mut first_error = None;
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((name, Err(error))) => {
                        tracing::error!(
                            task = name,
                            error = format!("{error:#}"),
                            "task failed while stopping"
                        );
                        first_error.get_or_insert(error.context(format!("task {name}")));
                    }
                    Err(error) if error.is_cancelled() => {}
                    Err(error) => {
                        first_error.get_or_insert(anyhow::anyhow!("task panicked: {error}"));
                    }
                }
            }
            first_error
        };
        let first_error = match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
            Ok(first_error) => first_error,
            Err(_) => {
                tracing::warn!(
                    grace_s = SHUTDOWN_GRACE.as_secs(),
                    "tasks did not stop in time; aborting them"
                );
                self.tasks.abort_all();
                None
            }
        };
        self.log.close().await.context("closing the log")?;
        tracing::info!("demo stopped");
        first_error.map_or(Ok(()), Err)
    }
}
