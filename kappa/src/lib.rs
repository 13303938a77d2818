//! lambda-kappa: the kappa architecture beside the lambda one — the kappa
//! views and their replays (this module), and the comparison of both on the
//! same data ([`compare`]).
//!
//! Kappa mode: no batch layer. The views are the speed layer's own, kept for
//! the whole history (closed minutes are never evicted), and recomputing
//! them is a replay: a new *view version* reads the log from each
//! partition's earliest retained offset through the same fold, catches up
//! with the live version, and serving switches to it in one step.
//!
//! On disk (`DATA/kappa/`):
//!
//! ```text
//! current.json               {"version": N}   the version serving answers from
//! v<N>/version.json          its settings (allowed lateness) and creation time
//! v<N>/checkpoint.json       its speed-layer checkpoint (state + offsets)
//! ```
//!
//! A replay to version N+1, step by step:
//! 1. `v<N+1>/` is created (a leftover from an interrupted replay is wiped);
//! 2. the log is replayed in append order up to the end offsets of the moment
//!    (`lambda_speed::replay`), with progress in `GET /api/v1/kappa`;
//! 3. the new version runs the live loop from there, reading what arrived
//!    meanwhile, until it has reached every offset the live version has —
//!    all this time serving answers from version N;
//! 4. both versions stop and write their final checkpoints, `current.json`
//!    is replaced atomically, the new state takes the old one's place under
//!    one write lock (serving's next read sees the new version whole), and
//!    the live loop carries on as version N+1. Versions older than N are deleted.
//!
//! A crash before step 4 leaves `current.json` at N: the restart serves N and
//! the half-built N+1 is wiped by the next replay. A crash after it resumes N+1.

pub mod client;
pub mod compare;
mod http;
mod start;

pub use http::{KappaRoutes, router};
pub use start::{
    BOUNDARY_POLL_INTERVAL, Boundary, SpeedStart, follow_boundary, start_speed, status_sections,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lambda_log::EventLog;
use lambda_speed::{SpeedConfig, SpeedState, SpeedViews};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How views are computed: both layers, or the speed layer alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Architecture {
    /// Batch views before the boundary B, speed views after it.
    #[default]
    Lambda,
    /// The speed layer's views only; recomputing is a replay of the log.
    Kappa,
}

impl Architecture {
    /// Both, in the order the CLI lists them.
    pub const ALL: [Architecture; 2] = [Architecture::Lambda, Architecture::Kappa];

    /// `lambda` or `kappa`.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Lambda => "lambda",
            Architecture::Kappa => "kappa",
        }
    }
}

impl std::str::FromStr for Architecture {
    type Err = String;

    fn from_str(text: &str) -> Result<Architecture, String> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not an architecture: use lambda or kappa"))
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Windows are never evicted by age in kappa mode: the closed minutes are the view.
pub const KAPPA_HORIZON_MS: i64 = i64::MAX / 4;
/// Path of the replay request.
pub const REPLAY_PATH: &str = "/api/v1/admin/kappa/replay";
/// Path of the kappa status.
pub const STATUS_PATH: &str = "/api/v1/kappa";
/// How often a replay checks whether it has caught up.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// Settings of one view version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    /// The version number.
    pub version: u64,
    /// Allowed lateness of its fold.
    pub allowed_lateness_ms: i64,
    /// When it was created (ms).
    pub created_ms: i64,
}

/// The steps of a replay, in order; `switched` and `failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    /// Asked for, not started yet.
    Queued,
    /// Reading the log from the earliest retained offsets.
    Replaying,
    /// Following the live version until it has every offset the live one has.
    CatchingUp,
    /// Serving answers from the new version.
    Switched,
    /// Given up; the current version stays.
    Failed,
}

impl ReplayState {
    /// Whether the replay is still going (another one must wait).
    pub fn is_running(self) -> bool {
        matches!(
            self,
            ReplayState::Queued | ReplayState::Replaying | ReplayState::CatchingUp
        )
    }

    /// As the status shows it: `queued`, `replaying`, `catching_up`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayState::Queued => "queued",
            ReplayState::Replaying => "replaying",
            ReplayState::CatchingUp => "catching_up",
            ReplayState::Switched => "switched",
            ReplayState::Failed => "failed",
        }
    }
}

/// Where a replay is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayStatus {
    /// The version it builds.
    pub version: u64,
    /// Its allowed lateness.
    pub allowed_lateness_ms: i64,
    /// Where it is.
    pub state: ReplayState,
    /// Records folded so far.
    pub records: u64,
    /// Records between the earliest retained offsets and the ends when it started.
    pub target: u64,
    /// Wall time it started (ms).
    pub started_ms: i64,
    /// Wall time it switched or failed (ms).
    pub finished_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

impl ReplayStatus {
    /// A replay asked for and not started yet.
    fn queued(request: ReplayRequest) -> ReplayStatus {
        ReplayStatus {
            version: request.version,
            allowed_lateness_ms: request.allowed_lateness_ms,
            state: ReplayState::Queued,
            records: 0,
            target: 0,
            started_ms: now_ms(),
            finished_ms: None,
            error: None,
        }
    }
}

/// What `GET /api/v1/kappa` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KappaStatus {
    /// The version serving answers from.
    pub version: u64,
    /// Its allowed lateness.
    pub allowed_lateness_ms: i64,
    /// The newest replay, if any ran since the start.
    pub replay: Option<ReplayStatus>,
}

/// A replay asked for.
#[derive(Debug, Clone, Copy)]
struct ReplayRequest {
    version: u64,
    allowed_lateness_ms: i64,
}

/// The kappa views of one process: the live version and its replays.
#[derive(Debug)]
pub struct Kappa {
    dir: PathBuf,
    base: SpeedConfig,
    log: Arc<dyn EventLog>,
    /// What serving reads; its contents are replaced at a switch.
    pub live: SpeedViews,
    status: RwLock<KappaStatus>,
    requests: mpsc::Sender<ReplayRequest>,
    receiver: Mutex<Option<mpsc::Receiver<ReplayRequest>>>,
    /// The version current when opened (what [`Kappa::run`] starts with).
    opened: VersionMeta,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).expect("plain data serializes");
    Ok(lambda_speed::checkpoint::write(path, &bytes)?)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[derive(Serialize, Deserialize)]
struct Current {
    version: u64,
}

impl Kappa {
    /// Opens the kappa directory `dir` (creating version 1 with `base`'s
    /// lateness if there is none) and restores the current version's
    /// checkpoint into [`Kappa::live`]. Run [`Kappa::run`] to start it.
    pub async fn open(
        dir: PathBuf,
        base: SpeedConfig,
        log: Arc<dyn EventLog>,
    ) -> anyhow::Result<Arc<Kappa>> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let version = match read_json::<Current>(&dir.join("current.json"))? {
            Some(current) => current.version,
            None => {
                let meta = VersionMeta {
                    version: 1,
                    allowed_lateness_ms: base.allowed_lateness_ms,
                    created_ms: now_ms(),
                };
                write_json(&dir.join("v1").join("version.json"), &meta)?;
                write_json(&dir.join("current.json"), &Current { version: 1 })?;
                1
            }
        };
        let meta: VersionMeta =
            read_json(&dir.join(format!("v{version}")).join("version.json"))?
                .with_context(|| format!("kappa version {version} has no version.json"))?;
        let (requests, receiver) = mpsc::channel(1);
        let kappa = Kappa {
            opened: meta,
            dir,
            base,
            log,
            live: Arc::new(RwLock::new(SpeedState::new(0, 0))),
            status: RwLock::new(KappaStatus {
                version,
                allowed_lateness_ms: meta.allowed_lateness_ms,
                replay: None,
            }),
            requests,
            receiver: Mutex::new(Some(receiver)),
        };
        let config = kappa.config(&meta);
        *kappa.live.write() = lambda_speed::empty_state(&config);
        lambda_speed::restore(&config, &kappa.live)
            .await
            .with_context(|| format!("restoring kappa version {version}"))?;
        Ok(Arc::new(kappa))
    }

    /// The speed layer's settings for one version.
    fn config(&self, meta: &VersionMeta) -> SpeedConfig {
        let dir = self.dir.join(format!("v{}", meta.version));
        SpeedConfig {
            allowed_lateness_ms: meta.allowed_lateness_ms,
            horizon_ms: KAPPA_HORIZON_MS,
            checkpoint_path: dir.join("checkpoint.json"),
            group: format!("kappa-v{}", meta.version),
            ..self.base.clone()
        }
    }

    /// What `GET /api/v1/kappa` shows.
    pub fn status(&self) -> KappaStatus {
        self.status.read().clone()
    }

    /// Asks for a replay into a new version with `allowed_lateness_ms`
    /// (`None`: the current version's). Returns the new version's number;
    /// `Err` with the reason while another replay runs.
    pub fn request_replay(&self, allowed_lateness_ms: Option<i64>) -> Result<u64, String> {
        let mut status = self.status.write();
        if let Some(replay) = &status.replay
            && replay.state.is_running()
        {
            return Err(format!(
                "a replay to version {} is already {}",
                replay.version,
                replay.state.as_str()
            ));
        }
        let request = ReplayRequest {
            version: status.version + 1,
            allowed_lateness_ms: allowed_lateness_ms.unwrap_or(status.allowed_lateness_ms),
        };
        self.requests
            .try_send(request)
            .map_err(|_| "the kappa job is not taking requests".to_string())?;
        status.replay = Some(ReplayStatus::queued(request));
        Ok(request.version)
    }

    fn set_replay(&self, f: impl FnOnce(&mut ReplayStatus)) {
        if let Some(replay) = self.status.write().replay.as_mut() {
            f(replay);
        }
    }

    fn spawn_job(
        &self,
        meta: &VersionMeta,
        views: &SpeedViews,
        shutdown: &CancellationToken,
    ) -> Job {
        let token = shutdown.child_token();
        let handle = tokio::spawn(lambda_speed::run(
            self.config(meta),
            Arc::clone(&self.log),
            Arc::clone(views),
            token.clone(),
        ));
        Job { token, handle }
    }

    /// Runs the current version, and replays as they are asked for, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut requests = self
            .receiver
            .lock()
            .take()
            .context("the kappa job runs once")?;
        let meta = self.opened;
        let version = meta.version;
        let dir = self.dir.join(format!("v{version}"));
        let mut live = if dir.join("checkpoint.json").exists() {
            Some(self.spawn_job(&meta, &self.live, &shutdown))
        } else {
            // A first start: version 1 is built by a replay of what the log holds.
            None
        };
        if live.is_none() {
            let bootstrap = ReplayRequest {
                version,
                allowed_lateness_ms: meta.allowed_lateness_ms,
            };
            self.status.write().replay = Some(ReplayStatus::queued(bootstrap));
            live = Some(self.replay(bootstrap, None, &shutdown).await?);
        }
        let mut live = live.expect("started above");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                finished = &mut live.handle => {
                    return finished.context("kappa live job")?.context("kappa live job");
                }
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    live = self.replay(request, Some(live), &shutdown).await?;
                }
            }
        }
        live.stop().await
    }

    /// Builds `request.version` by a replay and switches to it; returns the
    /// job now serving (the old one if the replay failed or was cut short).
    async fn replay(
        &self,
        request: ReplayRequest,
        old: Option<Job>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Job> {
        let meta = VersionMeta {
            version: request.version,
            allowed_lateness_ms: request.allowed_lateness_ms,
            created_ms: now_ms(),
        };
        match self.build(&meta, old.as_ref(), shutdown).await {
            Ok(Some((state, new))) => {
                // Switch: both versions stop and checkpoint, then the pointer moves.
                if let Some(old) = old {
                    old.stop().await?;
                }
                new.stop().await?;
                write_json(
                    &self.dir.join("current.json"),
                    &Current {
                        version: meta.version,
                    },
                )?;
                let next = std::mem::replace(&mut *state.write(), SpeedState::new(0, 0));
                *self.live.write() = next;
                {
                    let mut status = self.status.write();
                    status.version = meta.version;
                    status.allowed_lateness_ms = meta.allowed_lateness_ms;
                }
                self.set_replay(|r| {
                    r.state = ReplayState::Switched;
                    r.finished_ms = Some(now_ms());
                });
                tracing::info!(
                    version = meta.version,
                    "kappa: serving switched to the replayed version"
                );
                self.delete_versions_before(meta.version.saturating_sub(1));
                Ok(self.spawn_job(&meta, &self.live, shutdown))
            }
            Ok(None) => {
                // Shut down half way: the current version stays.
                match old {
                    Some(old) => Ok(old),
                    None => Ok(self.spawn_job(&meta, &self.live, shutdown)),
                }
            }
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    version = meta.version,
                    "kappa replay failed"
                );
                self.set_replay(|r| {
                    r.state = ReplayState::Failed;
                    r.finished_ms = Some(now_ms());
                    r.error = Some(format!("{error:#}"));
                });
                match old {
                    Some(old) => Ok(old),
                    None => Err(error),
                }
            }
        }
    }

    /// Steps 1–3: the new version's state, replayed and caught up with `old`
    /// (`None` when shut down first).
    async fn build(
        &self,
        meta: &VersionMeta,
        old: Option<&Job>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<(SpeedViews, Job)>> {
        let dir = self.dir.join(format!("v{}", meta.version));
        if meta.version != self.status.read().version && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the leftover {}", dir.display()))?;
        }
        write_json(&dir.join("version.json"), meta)?;
        let config = self.config(meta);
        // Everything this instance's partitions hold now, folded as far as
        // the log promises it complete (read first: every record stamped
        // before it is within the spans); the live loop goes on from there.
        let promise = self.log.complete_before();
        let spans = lambda_speed::replay::spans_to(self.log.as_ref(), |_, partition, end| {
            config.owns(partition).then_some(end)
        })
        .await?;
        let target: u64 = spans.iter().map(|s| s.end - s.start).sum();
        self.set_replay(|r| {
            r.state = ReplayState::Replaying;
            r.target = target;
        });
        tracing::info!(
            version = meta.version,
            records = target,
            "kappa: replaying the log"
        );
        let replayed = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            replayed = lambda_speed::replay::replay_before(
                self.log.as_ref(),
                &spans,
                lambda_speed::empty_state(&config),
                promise,
                config.idle_timeout,
                |records| self.set_replay(|r| r.records = records),
            ) => replayed?,
        };
        // The replay stopped at the promise: what it folded is its whole
        // part; records written since are the live loop's to catch up.
        let folded = replayed.records;
        let views: SpeedViews = Arc::new(RwLock::new(replayed.state));
        let job = self.spawn_job(meta, &views, shutdown);
        self.set_replay(|r| {
            r.state = ReplayState::CatchingUp;
            r.records = folded;
            r.target = folded;
        });
        let Some(old) = old else {
            return Ok(Some((views, job)));
        };
        loop {
            let caught_up = {
                let (new, live) = (views.read(), self.live.read());
                live.offsets()
                    .iter()
                    .all(|(key, offset)| new.offsets().get(key).is_some_and(|o| o >= offset))
            };
            if caught_up {
                return Ok(Some((views, job)));
            }
            if job.handle.is_finished() || old.handle.is_finished() {
                job.stop().await?;
                anyhow::bail!("a kappa job stopped while the replay was catching up");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    job.stop().await?;
                    return Ok(None);
                }
                _ = tokio::time::sleep(CATCH_UP_POLL) => {}
            }
        }
    }

    fn delete_versions_before(&self, keep_from: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.parse::<u64>().ok());
            if version.is_some_and(|v| v < keep_from)
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(%error, path = %entry.path().display(), "deleting an old kappa version failed");
            }
        }
    }
}

/// A running live loop of one version.
#[derive(Debug)]
struct Job {
    token: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Job {
    /// Stops it; it writes its final checkpoint first.
    async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.handle.await.context("kappa job")?
    }
}
