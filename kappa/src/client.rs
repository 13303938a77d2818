//! Clients of this crate's HTTP endpoints, for the CLI: `lambda kappa
//! replay` asks a kappa process for a replay and follows it to the switch;
//! `lambda compare` asks for a comparison and renders it.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::compare::{COMPARE_PATH, Comparison};
use crate::{REPLAY_PATH, ReplayState, STATUS_PATH};

/// How often `replay` reads the replay's progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// A replay to ask for.
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    /// Base URL of the kappa process (`http://127.0.0.1:8080`).
    pub url: String,
    /// Its admin token.
    pub admin_token: Option<String>,
    /// The new version's allowed lateness (`None`: the current one's).
    pub allowed_lateness: Option<Duration>,
    /// Draw a progress bar.
    pub progress: bool,
}

/// Asks for a replay and follows it until the process switches to the new
/// version (returning a line saying so) or the replay fails (an error
/// naming why).
pub async fn replay(request: ReplayRequest) -> anyhow::Result<String> {
    let base = request.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::new();
    let mut post = client.post(format!("{base}{REPLAY_PATH}"));
    if let Some(token) = &request.admin_token {
        post = post.bearer_auth(token);
    }
    if let Some(lateness) = request.allowed_lateness {
        let lateness = format!("{}ms", lateness.as_millis());
        post = post.json(&serde_json::json!({ "allowed_lateness": lateness }));
    }
    let response = post
        .send()
        .await
        .with_context(|| format!("asking {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.context("reading the answer")?;
    anyhow::ensure!(
        status.is_success(),
        "{base}{REPLAY_PATH} answered {status}: {}",
        body["error"].as_str().unwrap_or("(no reason given)")
    );
    let version = body["version"]
        .as_u64()
        .context("the answer names no version")?;
    let bar = ProgressBar::new(0);
    if !request.progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "version {prefix} {msg:12} {bar:30} {pos}/{len} records {elapsed}",
        )
        .expect("a template"),
    );
    bar.set_prefix(version.to_string());
    let mut interval = tokio::time::interval(PROGRESS_INTERVAL);
    loop {
        interval.tick().await;
        let kappa: Value = client
            .get(format!("{base}{STATUS_PATH}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let replay = &kappa["replay"];
        anyhow::ensure!(
            replay["version"].as_u64() == Some(version),
            "another replay took over: {replay}"
        );
        bar.set_length(replay["target"].as_u64().unwrap_or(0));
        bar.set_position(replay["records"].as_u64().unwrap_or(0));
        let state = serde_json::from_value::<ReplayState>(replay["state"].clone())
            .with_context(|| format!("reading the replay's state: {replay}"))?;
        match state {
            ReplayState::Switched => {
                bar.finish_and_clear();
                let took = replay["finished_ms"].as_i64().unwrap_or(0)
                    - replay["started_ms"].as_i64().unwrap_or(0);
                return Ok(format!(
                    "switched to version {version}: replayed {} records with allowed lateness {} s in {:.1} s; serving answers from it now",
                    replay["records"],
                    replay["allowed_lateness_ms"].as_i64().unwrap_or(0) / 1000,
                    took as f64 / 1000.0
                ));
            }
            ReplayState::Failed => {
                bar.abandon();
                anyhow::bail!("replay to version {version} failed: {}", replay["error"]);
            }
            running => bar.set_message(running.as_str().replace('_', " ")),
        }
    }
}

/// Asks `url` for the comparison of `from..to` (each optional: the
/// process's defaults). Returns the answer as sent and as read.
pub async fn compare(
    url: &str,
    from: Option<i64>,
    to: Option<i64>,
    engine: Option<&str>,
) -> anyhow::Result<(String, Comparison)> {
    let mut query: Vec<(&str, String)> = [("from", from), ("to", to)]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?.to_string())))
        .collect();
    if let Some(engine) = engine {
        query.push((crate::compare::ENGINE_PARAMETER, engine.to_string()));
    }
    let url = format!("{}{COMPARE_PATH}", url.trim_end_matches('/'));
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("replaying the log and recomputing the batch views…");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let response = reqwest::Client::new()
        .get(&url)
        .query(&query)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    spinner.finish_and_clear();
    let status = response.status();
    let body = response.text().await.context("reading the answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("{url} answered {status}: {message}");
    }
    let comparison = serde_json::from_str(&body).context("reading the comparison")?;
    Ok((body, comparison))
}
