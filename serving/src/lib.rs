//! Serving: the query API that merges the batch and speed views at the time
//! boundary B, plus status and health.
//!
//! Invariant: read-only over the views; a query holds the speed layer's read
//! lock only while it folds its buckets (rendering comes after), and never
//! waits on the log or the lake.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod boundary;
pub mod cache;
pub mod encoding;
pub mod metrics;
pub mod openapi;
pub mod query;
pub mod remote;
pub mod server;
pub mod start;
pub mod status;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use lambda_lake::{BatchViews, Lake};
use lambda_speed::{SpeedBoundary, SpeedReader};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

pub use api::router;
pub use start::{Sources, SpeedSource, start};
pub use status::StatusSources;
pub use supervisor::{Supervisor, Task};

/// The batch views serving answers from; replaced whole when a new manifest is loaded.
pub type SharedBatchViews = Arc<RwLock<Arc<BatchViews>>>;

/// What the handlers read.
#[derive(Debug, Clone)]
pub struct ServingState {
    /// The speed layer's live views, read-only.
    pub speed: SpeedReader,
    /// The batch views of the newest loaded manifest.
    pub batch: SharedBatchViews,
    /// Where `/api/v1/status` gets the rest (behind one counted reference:
    /// the state is cloned for every request, and its lists were copied).
    pub status: Arc<StatusSources>,
    /// Alert transitions from every speed instance.
    pub alerts: alerts::SharedFeed,
    /// Requests answered and how long they took, for `/metrics`.
    pub requests: Arc<metrics::RequestMetrics>,
    /// Rendered batch buckets, by manifest version.
    pub cache: Arc<cache::BucketCache>,
    /// Rendered speed and mixed buckets, by what they were rendered from.
    pub speed_buckets: Arc<cache::BucketCache<cache::SpeedBucket>>,
    /// Whole encoded answers, by query and the views' stamp.
    pub answers: Arc<cache::AnswerCache>,
}

/// How often serving looks for a newer manifest.
pub const MANIFEST_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Serving's copy of the batch views, started: loaded from the newest
/// manifest now (a failure is logged: the loader retries), and the task that
/// keeps loading newer ones (telling `speed`, when it runs in this process,
/// the new B), for the caller's supervisor. `lambda demo` and `lambda serve`
/// both start it this way.
pub async fn start_batch_views(
    lake: Lake,
    speed: Option<SpeedBoundary>,
    shutdown: CancellationToken,
) -> (SharedBatchViews, Task) {
    let views: SharedBatchViews = Arc::default();
    if let Err(error) = refresh_batch_views(&lake, &views, speed.as_ref()).await {
        tracing::warn!(
            error = format!("{error:#}"),
            "loading batch views failed; retrying in the background"
        );
    }
    let task = Box::pin(run_view_loader(lake, Arc::clone(&views), speed, shutdown));
    (views, task)
}

/// Loads the newest manifest's views into `shared` if it changed, and tells
/// the speed layer (when it runs in this process) the new boundary B so it
/// can drop windows the batch views now answer. Returns whether it changed.
pub async fn refresh_batch_views(
    lake: &Lake,
    shared: &SharedBatchViews,
    speed: Option<&SpeedBoundary>,
) -> Result<bool, lambda_lake::LakeError> {
    // Cheap check first: the held views are cloned only when a newer manifest exists.
    let held = shared.read().version();
    let latest = match lambda_lake::manifest::latest(lake).await? {
        Some(latest) if latest.version > held => latest,
        _ => return Ok(false),
    };
    let mut next = BatchViews::clone(&shared.read());
    next.load(lake, latest).await?;
    let boundary = next.boundary_ms();
    *shared.write() = Arc::new(next);
    if let Some(speed) = speed {
        speed.set(boundary);
    }
    Ok(true)
}

/// Polls the lake for new manifests until `shutdown`.
#[tracing::instrument(name = "serving-views", skip_all)]
pub async fn run_view_loader(
    lake: Lake,
    shared: SharedBatchViews,
    speed: Option<SpeedBoundary>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(MANIFEST_POLL_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {
                if let Err(error) = refresh_batch_views(&lake, &shared, speed.as_ref()).await {
                    tracing::warn!(error = format!("{error:#}"), "loading batch views failed; keeping the previous ones");
                }
            }
        }
    }
}
