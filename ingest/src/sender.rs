//! Sends generated lines to an ingest endpoint at a steady rate, in NDJSON
//! batches, honouring `429`/`503` + `Retry-After` by resending the same batch.

use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::generator::{Generator, GeneratorConfig};

/// Where and how fast to send.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Base URL of the ingest service, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    /// Lines per second.
    pub rate: f64,
    /// Stop after this long; `None` runs until cancelled.
    pub duration: Option<Duration>,
    /// Batches per second (each batch is one POST).
    pub batches_per_second: u32,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What was sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    /// Lines sent.
    pub lines: u64,
    /// Lines the collector accepted.
    pub accepted: u64,
    /// Lines the collector rejected.
    pub rejected: u64,
    /// Batches resent after 429/503.
    pub retries: u64,
}

/// Generates and sends until the duration is over or `shutdown` fires.
pub async fn run(
    sender: SenderConfig,
    generator: GeneratorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<SendReport> {
    let url = format!("{}/api/v1/events", sender.target.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the http client")?;
    let mut generator = Generator::new(generator);
    let batches_per_second = sender.batches_per_second.max(1);
    let tick = Duration::from_secs_f64(1.0 / f64::from(batches_per_second));
    let per_batch = sender.rate / f64::from(batches_per_second);
    let progress = progress_bar(&sender);
    let started = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = SendReport::default();
    let mut owed = 0.0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        if sender.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        owed += per_batch;
        let n = owed.floor() as usize;
        owed -= n as f64;
        if n == 0 {
            continue;
        }
        let mut body = Vec::new();
        for _ in 0..n {
            let line = generator.next_line();
            body.extend_from_slice(&line.bytes);
            body.push(b'\n');
        }
        let (accepted, rejected, retries) = post_with_retry(&client, &url, body, &shutdown).await?;
        report.lines += n as u64;
        report.accepted += accepted;
        report.rejected += rejected;
        report.retries += retries;
        progress.set_position(report.lines);
        progress.set_message(format!(
            "accepted {} rejected {} retries {}",
            report.accepted, report.rejected, report.retries
        ));
    }
    progress.finish();
    tracing::info!(
        lines = report.lines,
        accepted = report.accepted,
        rejected = report.rejected,
        "generator finished"
    );
    Ok(report)
}

fn progress_bar(sender: &SenderConfig) -> ProgressBar {
    if !sender.progress {
        return ProgressBar::hidden();
    }
    match sender.duration {
        Some(d) => {
            let bar = ProgressBar::new((sender.rate * d.as_secs_f64()) as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} lines ({per_sec}) {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} {spinner} {pos} lines ({per_sec}) {msg}",
                )
                .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        }
    }
}

/// POSTs one batch, resending it after `429`/`503`/connection errors with backoff.
async fn post_with_retry(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(u64, u64, u64)> {
    let mut retries = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        let response = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await;
        let wait = match response {
            Ok(response) if response.status() == reqwest::StatusCode::ACCEPTED => {
                let json: serde_json::Value =
                    response.json().await.context("reading the ingest answer")?;
                let accepted = json["accepted"].as_u64().unwrap_or(0);
                let rejected = json["rejected"].as_array().map_or(0, |r| r.len() as u64);
                return Ok((accepted, rejected, retries));
            }
            Ok(response) if matches!(response.status().as_u16(), 429 | 503) => {
                let seconds = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                seconds.map_or(backoff, Duration::from_secs)
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                bail!("ingest answered {status}: {text}");
            }
            Err(error) if retries < 20 => {
                tracing::warn!(%error, retries, "sending a batch failed; retrying");
                backoff
            }
            Err(error) => return Err(error).context(format!("sending to {url}")),
        };
        retries += 1;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok((0, 0, retries)),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
