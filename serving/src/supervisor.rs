//! Named tasks under one root `CancellationToken`: a signal or any task's
//! error cancels the rest, they drain within [`SHUTDOWN_GRACE`], then the log
//! (if the process has one) is closed. Every process — the demo and each
//! role — runs its work through one; each layer's start function returns
//! its tasks as named [`Task`]s for it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lambda_log::EventLog;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long tasks get to finish after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often log retention is applied.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// A layer's long-running task, as its start function returns it: it ends
/// when the process's shutdown token is cancelled.
pub type Task = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// The tasks of one process.
#[derive(Debug)]
pub struct Supervisor {
    /// Cancel to stop every task.
    pub shutdown: CancellationToken,
    tasks: Tasks,
    log: Option<Arc<dyn EventLog>>,
}

impl Supervisor {
    /// No tasks yet; `log` is closed last when stopping.
    pub fn new(log: Option<Arc<dyn EventLog>>) -> Supervisor {
        Supervisor {
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
            log,
        }
    }

    /// Runs `task` under `name`.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Runs every named task.
    pub fn spawn_all(&mut self, tasks: impl IntoIterator<Item = (&'static str, Task)>) {
        for (name, task) in tasks {
            self.spawn(name, task);
        }
    }

    /// Cancels every task on Ctrl-C or SIGTERM.
    pub fn cancel_on_signal(&self) {
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let terminate = std::future::pending::<()>();
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate => {}
            }
            tracing::info!("shutdown requested");
            token.cancel();
        });
    }

    /// Binds `listen` and serves `app` on it until shutdown; returns the bound address.
    pub async fn serve_http(
        &mut self,
        listen: SocketAddr,
        app: axum::Router,
    ) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let token = self.shutdown.clone();
        self.spawn("http", async move {
            crate::server::serve(listener, app, Default::default(), token).await;
            Ok(())
        });
        Ok(addr)
    }

    /// Applies the log's retention every [`RETENTION_INTERVAL`].
    pub fn spawn_retention(&mut self, log: Arc<dyn EventLog>) {
        let token = self.shutdown.clone();
        self.spawn("retention", async move {
            let mut interval = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    _ = interval.tick() => {
                        if let Err(error) = log.enforce_retention().await {
                            tracing::warn!(%error, "log retention failed");
                        }
                    }
                }
            }
        });
    }

    /// Waits until shutdown is asked for or a task ends, then stops everything.
    /// A task that ends by itself with an error fails the process; one that
    /// ends cleanly (e.g. a generator with a duration) leaves the rest running.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Ok((name, Ok(())))) => tracing::info!(task = name, "task finished"),
                    Some(Ok((name, Err(error)))) => {
                        tracing::error!(task = name, error = format!("{error:#}"), "task failed; shutting down");
                        first_error = Some(error.context(format!("task {name}")));
                        break;
                    }
                    Some(Err(error)) => {
                        first_error = Some(anyhow::anyhow!("task panicked: {error}"));
                        break;
                    }
                },
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
        if let Some(log) = &self.log {
            log.close().await.context("closing the log")?;
        }
        tracing::info!("stopped");
        first_error.map_or(Ok(()), Err)
    }
}
