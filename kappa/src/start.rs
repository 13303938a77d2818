//! The speed side of a process, started the one way both `lambda demo` and
//! `lambda speed` use: the speed layer (lambda) or the kappa views (kappa),
//! from a plain config and its sources (the log, and where B comes from).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lambda_batch::Lake;
use lambda_log::EventLog;
use lambda_serving::Task;
use lambda_speed::{SpeedConfig, SpeedViews};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{Architecture, Kappa};

/// Where the speed layer learns the boundary B (lambda mode).
#[derive(Debug, Clone)]
pub enum Boundary {
    /// Serving in this process moves B when it loads new batch views
    /// (`lambda demo`), so both sides of B change together.
    Serving,
    /// The speed layer reads the lake's newest manifest every
    /// [`BOUNDARY_POLL_INTERVAL`] (`lambda speed`, a process of its own).
    Lake(Lake),
}

/// How often a speed process of its own reads the newest manifest to learn B.
pub const BOUNDARY_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The speed side of a process, started: the views serving reads, the kappa
/// views (kappa mode), and the tasks that run it, for the caller's
/// supervisor.
pub struct SpeedStart {
    /// The views serving reads.
    pub views: SpeedViews,
    /// The kappa views and their replays (kappa mode only).
    pub kappa: Option<Arc<Kappa>>,
    /// The speed layer's fetch loop (`speed`) and boundary follower
    /// (`boundary`), or the kappa views' live job and replays (`kappa`).
    /// They end when `shutdown` is cancelled.
    pub tasks: Vec<(&'static str, Task)>,
}

impl std::fmt::Debug for SpeedStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeedStart")
            .field(
                "tasks",
                &self.tasks.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            )
            .field("kappa", &self.kappa.is_some())
            .finish()
    }
}

/// Starts the speed side of a process: in lambda mode the speed layer on
/// `config` (restored from its checkpoint) following B from `boundary`, in
/// kappa mode the kappa views under `kappa_dir` (no B). `lambda demo` and
/// `lambda speed` both start it this way. The tasks run until `shutdown`.
pub async fn start_speed(
    architecture: Architecture,
    kappa_dir: PathBuf,
    config: SpeedConfig,
    log: &Arc<dyn EventLog>,
    boundary: Boundary,
    shutdown: CancellationToken,
) -> anyhow::Result<SpeedStart> {
    match architecture {
        Architecture::Kappa => {
            let kappa = Kappa::open(kappa_dir, config, Arc::clone(log))
                .await
                .context("opening the kappa views")?;
            Ok(SpeedStart {
                views: Arc::clone(&kappa.live),
                tasks: vec![("kappa", Box::pin(Arc::clone(&kappa).run(shutdown)))],
                kappa: Some(kappa),
            })
        }
        Architecture::Lambda => {
            let views = lambda_speed::new_views(&config);
            lambda_speed::restore(&config, &views)
                .await
                .context("restoring the speed layer")?;
            let mut tasks: Vec<(&'static str, Task)> = Vec::new();
            if let Boundary::Lake(lake) = boundary {
                let following = Arc::clone(&views);
                let follow = follow_boundary(
                    lake,
                    move |boundary| following.write().set_batch_boundary(boundary),
                    shutdown.clone(),
                );
                tasks.push(("boundary", Box::pin(follow)));
            }
            let run = lambda_speed::run(config, Arc::clone(log), Arc::clone(&views), shutdown);
            tasks.push(("speed", Box::pin(run)));
            Ok(SpeedStart {
                views,
                kappa: None,
                tasks,
            })
        }
    }
}

/// The status sections a process of `architecture` adds to `/api/v1/status`:
/// `architecture`, and in kappa mode `batch: null` and (where the kappa views
/// live) `kappa` (version, lateness, replay).
pub fn status_sections(
    architecture: Architecture,
    kappa: Option<&Arc<Kappa>>,
) -> Vec<(String, lambda_serving::status::StatusSection)> {
    let mut sections: Vec<(String, lambda_serving::status::StatusSection)> = vec![(
        "architecture".into(),
        Arc::new(move || json!(architecture.as_str())),
    )];
    if architecture == Architecture::Kappa {
        // Named sections replace the built-in ones: there is no batch layer.
        sections.push(("batch".into(), Arc::new(|| serde_json::Value::Null)));
    }
    if let Some(kappa) = kappa {
        let kappa = Arc::clone(kappa);
        sections.push((
            "kappa".into(),
            Arc::new(move || serde_json::to_value(kappa.status()).expect("plain data")),
        ));
    }
    sections
}

/// Keeps the speed layer's B equal to the newest manifest's, so it can drop
/// windows the batch views now answer: `set` is told each new B.
pub async fn follow_boundary(
    lake: Lake,
    set: impl Fn(Option<i64>) + Send + 'static,
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
                set(known);
                tracing::debug!(boundary = ?known, version = manifest.version, "batch boundary moved");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "reading the manifest failed")
            }
        }
    }
}
