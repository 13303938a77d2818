//! Serving, started from its sources. `lambda demo` passes the layers
//! running in its own process; `lambda serve` passes other processes' URLs.
//! Either way the routes, the view loader and the status are the same code:
//! only where the views come from differs.

use std::sync::Arc;

use axum::Router;
use lambda_lake::Lake;
use lambda_log::EventLog;
use lambda_speed::{SpeedBoundary, SpeedReader, SpeedState, SpeedViews};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, BatchRunner};
use crate::status::{MetricsSection, StatusSection};
use crate::supervisor::Task;
use crate::{SharedBatchViews, StatusSources};

/// Where serving reads the speed layer's views.
#[derive(Debug, Clone)]
pub enum SpeedSource {
    /// The speed layer (or kappa's live views) in this process: serving
    /// reads it, and its view loader moves the boundary B when it loads new
    /// batch views, so both sides of B change together.
    Local(SpeedReader, SpeedBoundary),
    /// Speed instances by base URL (`http://speed:8082`), mirrored by
    /// polling `GET /internal/v1/speed`; each learns B from the lake itself.
    Remote(Vec<String>),
    /// A speed group (`lambda speed --group`): its members are found in
    /// this checkpoint store, and each partition is mirrored from the
    /// member that owns it now.
    Group(lambda_speed::store::CheckpointStore),
}

/// What serving answers from.
pub struct Sources {
    /// The speed layer's views.
    pub speed: SpeedSource,
    /// The lake whose batch views serving merges below B (`None`: kappa
    /// mode, no batch views).
    pub lake: Option<Lake>,
    /// The batch runner, for the status and the admin routes.
    pub runner: BatchRunner,
    /// The log, for end offsets and lag in the status.
    pub log: Option<Arc<dyn EventLog>>,
    /// Extra named sections of `/api/v1/status` (they replace built-in ones
    /// of the same name).
    pub sections: Vec<(String, StatusSection)>,
    /// Extra metric families of `/metrics`.
    pub metrics: Vec<MetricsSection>,
}

/// Serving's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The speed layer's allowed lateness (mirrored views are kept with it).
    pub allowed_lateness_ms: i64,
    /// Bearer token of the admin endpoints (`None`: they are off).
    pub admin_token: Option<String>,
}

/// Serving, started: its routes, the views they read, and the tasks that
/// keep those views current (for the caller's supervisor).
pub struct Started {
    /// The query API, status, health, metrics, dashboard and admin routes.
    pub router: Router,
    /// The speed views the routes read (the mirror's, for remote sources).
    pub speed: SpeedReader,
    /// What moves the in-process speed layer's B (`None` for remote sources).
    pub boundary: Option<SpeedBoundary>,
    /// The batch views the routes read.
    pub batch: SharedBatchViews,
    /// The routes' answer cache (for its counts).
    pub answers: Arc<crate::cache::AnswerCache>,
    /// The admin routes' state (other layers' admin routes share its token).
    pub admin: AdminState,
    /// View loader, alert feed, speed mirror, runner status follower.
    pub tasks: Vec<(&'static str, Task)>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sections: Vec<&String> = self.sections.iter().map(|(name, _)| name).collect();
        f.debug_struct("Sources")
            .field("speed", &self.speed)
            .field("lake", &self.lake)
            .field("runner", &self.runner)
            .field("log", &self.log)
            .field("sections", &sections)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tasks: Vec<&str> = self.tasks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Started")
            .field("tasks", &tasks)
            .finish_non_exhaustive()
    }
}

/// The state other processes' speed views are mirrored into.
fn mirrored_views(config: &Config) -> SpeedViews {
    Arc::new(RwLock::new(SpeedState::new(
        config.allowed_lateness_ms,
        lambda_speed::DEFAULT_HORIZON_MS,
    )))
}

/// Starts serving on `sources`; its tasks end when `shutdown` is cancelled.
pub async fn start(config: Config, sources: Sources, shutdown: &CancellationToken) -> Started {
    let mut tasks: Vec<(&'static str, Task)> = Vec::new();
    let alerts: crate::alerts::SharedFeed =
        Arc::new(parking_lot::RwLock::new(crate::alerts::AlertFeed::new()));
    let mut sections = Vec::new();
    let (speed, boundary) = match sources.speed {
        SpeedSource::Local(reader, boundary) => {
            let task = crate::alerts::run_local_source(
                reader.clone(),
                Arc::clone(&alerts),
                shutdown.clone(),
            );
            tasks.push(("alerts", Box::pin(task)));
            (reader, Some(boundary))
        }
        SpeedSource::Remote(urls) => {
            let views = mirrored_views(&config);
            let health: crate::remote::SpeedHealth = Arc::default();
            let mirror = crate::remote::run_speed_mirror(
                urls,
                Arc::clone(&views),
                Arc::clone(&alerts),
                Arc::clone(&health),
                lambda_speed::DEFAULT_HORIZON_MS,
                shutdown.clone(),
            );
            tasks.push(("speed-mirror", Box::pin(mirror)));
            let section: StatusSection = Arc::new(move || crate::remote::health_section(&health));
            sections.push(("speed_instances".to_string(), section));
            (SpeedReader::new(&views), None)
        }
        SpeedSource::Group(store) => {
            let views = mirrored_views(&config);
            let health: crate::remote::GroupHealth = Arc::default();
            let mirror = crate::remote::run_group_mirror(
                store,
                Arc::clone(&views),
                Arc::clone(&alerts),
                Arc::clone(&health),
                lambda_speed::DEFAULT_HORIZON_MS,
                shutdown.clone(),
            );
            tasks.push(("speed-group-mirror", Box::pin(mirror)));
            let section: StatusSection = Arc::new(move || health.read().clone());
            sections.push(("speed_group".to_string(), section));
            (SpeedReader::new(&views), None)
        }
    };
    let batch = match sources.lake {
        Some(lake) => {
            let (views, loader) =
                crate::start_batch_views(lake, boundary.clone(), shutdown.clone()).await;
            tasks.push(("view-loader", loader));
            views
        }
        None => SharedBatchViews::default(),
    };
    let (local_batch, remote_batch) = match &sources.runner {
        BatchRunner::Local(handle) => (Some(handle.clone()), None),
        BatchRunner::Remote(url) => {
            let cell: Arc<RwLock<Option<serde_json::Value>>> = Arc::default();
            let follow =
                crate::remote::follow_runner(url.clone(), Arc::clone(&cell), shutdown.clone());
            tasks.push(("runner-status", Box::pin(follow)));
            (None, Some(cell))
        }
        BatchRunner::Absent => (None, None),
    };
    sections.extend(sources.sections);
    let answers: Arc<crate::cache::AnswerCache> = Arc::default();
    let state = crate::ServingState {
        alerts,
        requests: Arc::default(),
        cache: Arc::default(),
        speed_buckets: Arc::default(),
        answers: Arc::clone(&answers),
        speed: speed.clone(),
        batch: Arc::clone(&batch),
        status: Arc::new(StatusSources {
            log: sources.log,
            batch: local_batch,
            remote_batch,
            sections,
            metrics: sources.metrics,
        }),
    };
    let admin = AdminState::new(config.admin_token, sources.runner);
    let router = crate::router(state).merge(crate::admin::router(admin.clone()));
    Started {
        router,
        speed,
        boundary,
        batch,
        answers,
        admin,
        tasks,
    }
}
