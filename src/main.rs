//! The `lambda` command: `demo` runs every layer in one process; `ingest`,
//! `speed`, `batch` and `serve` run one role each; `generate` sends traffic
//! to an ingest endpoint. Flags have `LAMBDA_*` env equivalents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use lambda_events::Severity;
use lambda_events::time::{parse_duration, parse_instant};
use lambda_ingest::generator::GeneratorConfig;
use lambda_ingest::sender::SenderConfig;
use lambda_pipeline::demo::{Demo, DemoConfig, GeneratorSettings};
use lambda_pipeline::kappa::{Architecture, ReplayState};
use lambda_pipeline::roles::{self, Shared};
use lambda_pipeline::telemetry;
use lambda_speed::alerts::{AlertRules, SensorRange};
use tokio_util::sync::CancellationToken;

/// The allocator: the pipeline allocates many small, short-lived strings
/// (decoded events, keys); mimalloc serves those faster than glibc's malloc
/// (see `lambda bench speed`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Rust reference implementation of the Lambda architecture.
#[derive(Debug, Parser)]
#[command(name = "lambda", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every layer in one process on the embedded defaults, with the generator on.
    Demo(DemoArgs),
    /// Run the collector: POST /api/v1/events into the shared log.
    Ingest(IngestArgs),
    /// Run a speed-layer instance: windows over its share of the partitions.
    Speed(SpeedArgs),
    /// Run the batch layer on its cron schedule (or once, with --once).
    Batch(BatchArgs),
    /// Run the query API and dashboard over the lake and the speed instances.
    Serve(ServeArgs),
    /// Send generated traffic to an ingest endpoint.
    Generate(GenerateArgs),
    /// Kappa mode: `lambda kappa replay` recomputes the views by replaying the log into a new version.
    #[command(subcommand)]
    Kappa(KappaCommand),
    /// Compute an interval's views both ways — batch (lambda) and log replay (kappa) — and show where and why they differ.
    Compare(CompareArgs),
    /// Benchmarks: `lambda bench speed`.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Events per second per core from the log into the speed layer's views, beside a parse-only baseline.
    Speed(SpeedBenchArgs),
    /// Rows per second per core and bytes of the master dataset's Parquet writer and compaction, beside DuckDB's COPY.
    Batch(BatchBenchArgs),
    /// Latency of the merged funnel over 24 hours at 1-minute steps at a fixed request rate, beside a static handler.
    Serve(ServeBenchArgs),
}

#[derive(Debug, Args)]
struct ServeBenchArgs {
    /// Requests per second offered to each endpoint, e.g. 1000.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Seconds of load per endpoint.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Debug, Args)]
struct BatchBenchArgs {
    /// Events to generate, e.g. 1000000.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Small files per topic that compaction merges.
    #[arg(long, default_value_t = 8)]
    files: usize,
}

#[derive(Debug, Args)]
struct SpeedBenchArgs {
    /// Events to generate, e.g. 500000.
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    /// Size of the user population.
    #[arg(long, default_value_t = 5_000)]
    users: u32,
    /// Number of IoT devices.
    #[arg(long, default_value_t = 50)]
    devices: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
}

/// Settings every process shares.
#[derive(Debug, Args)]
struct SharedArgs {
    /// Directory for local state (checkpoints, caches; the embedded log and lake by default), e.g. ./data.
    #[arg(long, env = "LAMBDA_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// The log, e.g. kafka://127.0.0.1:9092 or kafka://b1:9092?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512 (default: embedded://DATA_DIR/log).
    #[arg(long, env = "LAMBDA_LOG_URL")]
    log_url: Option<String>,
    /// Partitions per event topic when they are created, e.g. 4.
    #[arg(long, env = "LAMBDA_PARTITIONS", default_value_t = lambda_ingest::DEFAULT_PARTITIONS)]
    partitions: u32,
    /// How far the watermark trails the newest event, e.g. 60s.
    #[arg(long, env = "LAMBDA_ALLOWED_LATENESS", default_value = "60s", value_parser = parse_duration)]
    allowed_lateness: Duration,
    /// A partition that sends nothing for this long stops holding the speed layer's watermark back, e.g. 30s.
    #[arg(long, env = "LAMBDA_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Alert rules as TOML (see infra/alerts.example.toml); without it, the built-in defaults.
    #[arg(long, env = "LAMBDA_ALERTS_FILE")]
    alerts_file: Option<PathBuf>,
    #[command(flatten)]
    alerts: AlertArgs,
    /// Bearer token that POST /api/v1/admin/batch/run requires; without it the admin endpoints are off.
    #[arg(long, env = "LAMBDA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    lake: LakeArgs,
    /// lambda: batch views before the boundary B, speed views after it; kappa: no batch layer, the speed layer's views kept whole and recomputed by `lambda kappa replay`.
    #[arg(long, env = "LAMBDA_ARCHITECTURE", default_value_t = Architecture::Lambda,
          value_parser = clap::builder::PossibleValuesParser::new(["lambda", "kappa"])
              .map(|s| s.parse::<Architecture>().expect("one of the possible values")))]
    architecture: Architecture,
}

/// Alert rules set by flags: each one given replaces that rule of the file
/// (or of the defaults).
#[derive(Debug, Args)]
struct AlertArgs {
    /// Sensor ranges, SENSOR:MIN:MAX[:N] (N readings in a row outside raise; default 3), repeatable or comma-separated, e.g. temperature:15:27:3.
    #[arg(
        long = "alert-sensor-range",
        env = "LAMBDA_ALERT_SENSOR_RANGE",
        value_delimiter = ','
    )]
    sensor_range: Vec<SensorRange>,
    /// A device offline (by its last status) for longer than this raises, e.g. 5m.
    #[arg(long = "alert-offline-after", env = "LAMBDA_ALERT_OFFLINE_AFTER", value_parser = parse_duration)]
    offline_after: Option<Duration>,
    /// Alarm severities that raise, e.g. high,critical.
    #[arg(long = "alert-severities", env = "LAMBDA_ALERT_SEVERITIES", value_delimiter = ',', value_parser = parse_severity)]
    severities: Vec<Severity>,
    /// A page's errors per page view in a closed minute above this raises, e.g. 0.1.
    #[arg(long = "alert-error-rate", env = "LAMBDA_ALERT_ERROR_RATE", value_parser = parse_rate)]
    error_rate: Option<f64>,
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::parse(text.trim())
        .ok_or_else(|| format!("unknown severity {text:?}: expected low, medium, high or critical"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{text:?} is not a rate between 0 and 1, e.g. 0.1"))
}

impl AlertArgs {
    /// `rules` with the rules these flags set replaced.
    fn apply(&self, mut rules: AlertRules) -> AlertRules {
        use lambda_speed::alerts::{AlarmRule, DeviceOffline, PageErrorRate};
        let defaults = AlertRules::defaults();
        if !self.sensor_range.is_empty() {
            rules.sensor_range = self.sensor_range.clone();
        }
        if let Some(after) = self.offline_after {
            rules.device_offline = Some(DeviceOffline {
                after_ms: after.as_millis() as i64,
            });
        }
        if !self.severities.is_empty() {
            let clear_after_ms = rules
                .alarm
                .as_ref()
                .or(defaults.alarm.as_ref())
                .map_or(600_000, |a| a.clear_after_ms);
            rules.alarm = Some(AlarmRule {
                severities: self.severities.clone(),
                clear_after_ms,
            });
        }
        if let Some(threshold) = self.error_rate {
            let min_views = rules
                .page_error_rate
                .as_ref()
                .or(defaults.page_error_rate.as_ref())
                .map_or(20, |r| r.min_views);
            rules.page_error_rate = Some(PageErrorRate {
                threshold,
                min_views,
            });
        }
        rules
    }
}

impl SharedArgs {
    fn alert_rules(&self) -> anyhow::Result<AlertRules> {
        let rules = match &self.alerts_file {
            None => AlertRules::defaults(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("alert rules in {}", path.display()))?
            }
        };
        Ok(self.alerts.apply(rules))
    }

    fn shared(&self) -> anyhow::Result<Shared> {
        Ok(Shared {
            alert_rules: self.alert_rules()?,
            admin_token: self.admin_token.clone(),
            data_dir: self.data_dir.clone(),
            log_url: self.log_url.clone(),
            lake_url: self.lake.lake_url.clone(),
            lake_options: self.lake.options(),
            partitions: self.partitions,
            allowed_lateness_ms: self.allowed_lateness.as_millis() as i64,
            idle_timeout: self.idle_timeout,
            architecture: self.architecture,
        })
    }
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Address of the collector, e.g. 0.0.0.0:8081.
    #[arg(long, env = "LAMBDA_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    #[command(flatten)]
    shared: SharedArgs,
}

#[derive(Debug, Args)]
struct SpeedArgs {
    /// Address of the internal views endpoint serving polls, e.g. 0.0.0.0:8082.
    #[arg(long, env = "LAMBDA_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// This instance's index, 0..instances: it consumes partitions p with p % instances == instance.
    #[arg(long, env = "LAMBDA_SPEED_INSTANCE", default_value_t = 0)]
    instance: u32,
    /// How many speed instances share the partitions.
    #[arg(long, env = "LAMBDA_SPEED_INSTANCES", default_value_t = 1)]
    instances: u32,
    /// How often state and consumed offsets are checkpointed together, e.g. 5s.
    #[arg(long, env = "LAMBDA_CHECKPOINT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    checkpoint_interval: Duration,
    #[command(flatten)]
    shared: SharedArgs,
}

#[derive(Debug, Args)]
struct BatchArgs {
    /// Address of the batch runner's status and health endpoints, e.g. 0.0.0.0:8083.
    #[arg(long, env = "LAMBDA_LISTEN", default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    /// Cron expression with seconds for batch runs, e.g. '0 * * * * *' (every minute).
    #[arg(long, env = "LAMBDA_BATCH_SCHEDULE", default_value = lambda_batch::DEFAULT_SCHEDULE)]
    batch_schedule: String,
    /// Run once, print the report and exit.
    #[arg(long)]
    once: bool,
    #[command(subcommand)]
    action: Option<BatchAction>,
    #[command(flatten)]
    shared: SharedArgs,
}

#[derive(Debug, Subcommand)]
enum BatchAction {
    /// Recompute the batch views of an interval's hours from the master dataset and swap them in with one manifest commit.
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
struct BackfillArgs {
    /// Start of the interval: ms since the epoch or RFC 3339, e.g. 2026-01-01T00:00:00Z.
    #[arg(long, value_parser = parse_start)]
    from: i64,
    /// End of the interval (exclusive), same forms.
    #[arg(long, value_parser = parse_start)]
    to: i64,
    #[command(flatten)]
    shared: SharedArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address of the API and dashboard, e.g. 0.0.0.0:8080.
    #[arg(long, env = "LAMBDA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Base URL of a speed instance; repeat, or comma-separate in the env, for several.
    #[arg(
        long = "speed-url",
        env = "LAMBDA_SPEED_URLS",
        value_delimiter = ',',
        required = true
    )]
    speed_urls: Vec<String>,
    /// Base URL of the batch runner, for its schedule and last run in /api/v1/status.
    #[arg(long, env = "LAMBDA_BATCH_URL")]
    batch_url: Option<String>,
    #[command(flatten)]
    shared: SharedArgs,
}

#[derive(Debug, Args)]
struct TrafficArgs {
    /// Lines per second, e.g. 200.
    #[arg(long, env = "LAMBDA_RATE", default_value_t = 200.0)]
    rate: f64,
    /// Seed: the same seed gives the same events (default: from the clock).
    #[arg(long, env = "LAMBDA_SEED")]
    seed: Option<u64>,
    /// Share of events sent 2–10 minutes late, e.g. 0.01.
    #[arg(long, env = "LAMBDA_LATE_FRACTION", default_value_t = 0.01)]
    late_fraction: f64,
    /// Share of lines that resend an earlier event (same event_id), e.g. 0.01.
    #[arg(long, env = "LAMBDA_DUPLICATE_FRACTION", default_value_t = 0.01)]
    duplicate_fraction: f64,
    /// Share of malformed lines, e.g. 0.005.
    #[arg(long, env = "LAMBDA_MALFORMED_FRACTION", default_value_t = 0.005)]
    malformed_fraction: f64,
}

impl TrafficArgs {
    fn seed(&self) -> u64 {
        self.seed
            .unwrap_or_else(|| chrono::Utc::now().timestamp_micros() as u64)
    }
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Address of the HTTP API and dashboard, e.g. 127.0.0.1:8080.
    #[arg(long, env = "LAMBDA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Do not start the built-in traffic generator.
    #[arg(long, env = "LAMBDA_NO_GENERATOR")]
    no_generator: bool,
    /// Cron expression with seconds for batch runs, e.g. '0 * * * * *' (every minute).
    #[arg(long, env = "LAMBDA_BATCH_SCHEDULE", default_value = lambda_batch::DEFAULT_SCHEDULE)]
    batch_schedule: String,
    #[command(flatten)]
    shared: SharedArgs,
    #[command(flatten)]
    traffic: TrafficArgs,
}

#[derive(Debug, Args)]
struct LakeArgs {
    /// The lake, e.g. s3://lake/pipeline (default: file://DATA_DIR/lake).
    #[arg(long, env = "LAMBDA_LAKE_URL")]
    lake_url: Option<String>,
    /// S3 endpoint for an s3:// lake on MinIO or another S3-compatible server, e.g. http://127.0.0.1:9000.
    #[arg(long, env = "LAMBDA_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region, e.g. us-east-1.
    #[arg(long, env = "LAMBDA_S3_REGION", default_value = "us-east-1")]
    s3_region: String,
}

impl LakeArgs {
    /// Object store options: the flags, plus credentials from the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
    fn options(&self) -> Vec<(String, String)> {
        let mut options = vec![
            ("aws_region".to_string(), self.s3_region.clone()),
            // Manifests are committed with a conditional put.
            ("aws_conditional_put".to_string(), "etag".to_string()),
        ];
        if let Some(endpoint) = &self.s3_endpoint {
            options.push(("aws_endpoint".into(), endpoint.clone()));
            if endpoint.starts_with("http://") {
                options.push(("aws_allow_http".into(), "true".into()));
            }
        }
        for (var, key) in [
            ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
            ("AWS_SESSION_TOKEN", "aws_session_token"),
        ] {
            if let Ok(value) = std::env::var(var) {
                options.push((key.to_string(), value));
            }
        }
        options
    }
}

#[derive(Debug, Subcommand)]
enum KappaCommand {
    /// Replay the log from the earliest retained offset into a new view version, show progress, and switch serving to it once it has caught up.
    Replay(KappaReplayArgs),
}

#[derive(Debug, Args)]
struct KappaReplayArgs {
    /// The kappa demo, or a `lambda speed --architecture kappa` instance, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "LAMBDA_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin bearer token the process was started with.
    #[arg(long, env = "LAMBDA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Allowed lateness of the new version, e.g. 15m (default: the current version's).
    #[arg(long, value_parser = parse_duration)]
    allowed_lateness: Option<Duration>,
    /// Print the final status only, without a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The demo or `lambda serve` to ask, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "LAMBDA_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Interval start: ms since the epoch, RFC 3339, `now` or a time before now such as `-30m` (default: 1 hour before --to).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_when)]
    from: Option<i64>,
    /// Interval end, in the same forms (default: now).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_when)]
    to: Option<i64>,
    /// Print the comparison as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Base URL of the ingest endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "LAMBDA_TARGET", default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Stop after this long, e.g. 60s or 10m (default: until Ctrl-C).
    #[arg(long, env = "LAMBDA_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Event time of the first event, in ms since the epoch or RFC 3339 (default: now).
    /// With --seed, the same start gives the same events.
    #[arg(long, env = "LAMBDA_START", value_parser = parse_start)]
    start: Option<i64>,
    /// Event time passes this many times faster than wall time, e.g. 60 sends an hour of traffic in a minute.
    #[arg(long, env = "LAMBDA_SPEEDUP", default_value_t = 1.0)]
    speedup: f64,
    #[command(flatten)]
    traffic: TrafficArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo(args).await,
            Command::Ingest(args) => {
                let running = roles::ingest(&args.shared.shared()?, args.listen).await?;
                run_role("ingest", running).await
            }
            Command::Speed(args) => {
                let instance = roles::Instance {
                    index: args.instance,
                    count: args.instances,
                    checkpoint_interval: args.checkpoint_interval,
                };
                let running = roles::speed(&args.shared.shared()?, args.listen, instance).await?;
                run_role("speed", running).await
            }
            Command::Batch(BatchArgs {
                action: Some(BatchAction::Backfill(args)),
                ..
            }) => backfill(args).await,
            Command::Batch(args) if args.once => {
                let report = roles::batch_once(&args.shared.shared()?).await?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&lambda_serving::admin::report_json(&report))?
                );
                Ok(())
            }
            Command::Batch(args) => {
                let running =
                    roles::batch(&args.shared.shared()?, args.listen, &args.batch_schedule).await?;
                run_role("batch", running).await
            }
            Command::Serve(args) => {
                let peers = roles::Peers {
                    speed_urls: args.speed_urls,
                    batch_url: args.batch_url,
                };
                let running = roles::serve(&args.shared.shared()?, args.listen, peers).await?;
                run_role("serve", running).await
            }
            Command::Generate(args) => generate(args).await,
            Command::Compare(args) => compare(args).await,
            Command::Kappa(KappaCommand::Replay(args)) => kappa_replay(args).await,
            Command::Bench(BenchCommand::Speed(args)) => {
                lambda_pipeline::bench::speed(lambda_pipeline::bench::SpeedBench {
                    events: args.events,
                    users: args.users,
                    devices: args.devices,
                    partitions: args.partitions,
                })
                .await
            }
            Command::Bench(BenchCommand::Serve(args)) => {
                lambda_pipeline::bench::serve(lambda_pipeline::bench::ServeBench {
                    rate: args.rate,
                    seconds: args.seconds,
                })
                .await
            }
            Command::Bench(BenchCommand::Batch(args)) => {
                lambda_pipeline::bench::batch(lambda_pipeline::bench::BatchBench {
                    events: args.events,
                    files: args.files,
                })
                .await
            }
        }
    })
}

/// Prints where a role listens, then runs it until a signal.
async fn run_role(name: &str, running: roles::Running) -> anyhow::Result<()> {
    println!("lambda {name} is listening on http://{}", running.addr);
    cancel_on_signal(running.supervisor.shutdown.clone());
    running.supervisor.wait().await
}

async fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    let lake = args.shared.shared()?.open_lake_writer()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("backfill {pos}/{len} hours {bar:30} {elapsed}")
            .expect("a template"),
    );
    let report = lambda_batch::backfill(&lake, args.from, args.to, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::json!({ "version": report.version, "hours_recomputed": report.hours })
    );
    Ok(())
}

/// A point in time: like [`parse_start`], or `now`, or `-30m` / `now-30m` (a duration before now).
fn parse_when(text: &str) -> Result<i64, String> {
    let now = chrono::Utc::now().timestamp_millis();
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-").or_else(|| text.strip_prefix('-')) {
        return parse_duration(ago).map(|d| now - d.as_millis() as i64);
    }
    parse_start(text).map_err(|e| format!("{e}; or `now`, or a time before now such as -30m"))
}

async fn kappa_replay(args: KappaReplayArgs) -> anyhow::Result<()> {
    use lambda_pipeline::kappa::{REPLAY_PATH, STATUS_PATH};
    let base = args.url.trim_end_matches('/').to_string();
    let client = reqwest::Client::new();
    let mut request = client.post(format!("{base}{REPLAY_PATH}"));
    if let Some(token) = &args.admin_token {
        request = request.bearer_auth(token);
    }
    if let Some(lateness) = args.allowed_lateness {
        let lateness = format!("{}ms", lateness.as_millis());
        request = request.json(&serde_json::json!({ "allowed_lateness": lateness }));
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("asking {base}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("reading the answer")?;
    anyhow::ensure!(
        status.is_success(),
        "{base}{REPLAY_PATH} answered {status}: {}",
        body["error"].as_str().unwrap_or("(no reason given)")
    );
    let version = body["version"]
        .as_u64()
        .context("the answer names no version")?;
    let bar = indicatif::ProgressBar::new(0);
    if args.no_progress {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "version {prefix} {msg:12} {bar:30} {pos}/{len} records {elapsed}",
        )
        .expect("a template"),
    );
    bar.set_prefix(version.to_string());
    loop {
        let kappa: serde_json::Value = client
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
                println!(
                    "switched to version {version}: replayed {} records with allowed lateness {} s in {:.1} s; serving answers from it now",
                    replay["records"],
                    replay["allowed_lateness_ms"].as_i64().unwrap_or(0) / 1000,
                    took as f64 / 1000.0
                );
                return Ok(());
            }
            ReplayState::Failed => {
                bar.abandon();
                anyhow::bail!("replay to version {version} failed: {}", replay["error"]);
            }
            running => bar.set_message(running.as_str().replace('_', " ")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(from) = args.from {
        query.push(("from", from.to_string()));
    }
    if let Some(to) = args.to {
        query.push(("to", to.to_string()));
    }
    let url = format!(
        "{}{}",
        args.url.trim_end_matches('/'),
        lambda_pipeline::compare::COMPARE_PATH
    );
    let spinner = indicatif::ProgressBar::new_spinner();
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
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("{url} answered {status}: {message}");
    }
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let comparison: lambda_pipeline::compare::Comparison =
        serde_json::from_str(&body).context("reading the comparison")?;
    print!("{}", lambda_pipeline::compare::render(&comparison));
    Ok(())
}

/// A point in time on the command line: milliseconds since the epoch or
/// RFC 3339, within the events' bounds (1970 to the end of 9999).
fn parse_start(text: &str) -> Result<i64, String> {
    let ms = parse_instant(text)?;
    let (earliest, latest) = lambda_events::limits::QUERY_TIME_RANGE;
    if (earliest..=latest).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "{ms} is outside {earliest}..={latest} (1970 to the end of 9999)"
        ))
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
fn cancel_on_signal(token: CancellationToken) {
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

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let generator = (!args.no_generator).then(|| GeneratorSettings {
        rate: args.traffic.rate,
        seed: args.traffic.seed(),
        late_fraction: args.traffic.late_fraction,
        duplicate_fraction: args.traffic.duplicate_fraction,
        malformed_fraction: args.traffic.malformed_fraction,
    });
    let shared = args.shared.shared()?;
    let config = DemoConfig {
        listen: args.listen,
        data_dir: shared.data_dir,
        generator,
        batch_schedule: args.batch_schedule,
        partitions: shared.partitions,
        allowed_lateness_ms: shared.allowed_lateness_ms,
        idle_timeout: shared.idle_timeout,
        alert_rules: shared.alert_rules,
        admin_token: shared.admin_token,
        progress: false,
        log_url: shared.log_url,
        lake_options: shared.lake_options,
        lake_url: shared.lake_url,
        architecture: shared.architecture,
    };
    let demo = Demo::start(config).await?;
    let url = format!("http://{}", demo.addr);
    println!("lambda demo is serving on {url}");
    println!();
    println!("  try:");
    println!("    curl -s '{url}/api/v1/funnel?step=1m' | head -c 600");
    println!("    curl -s '{url}/api/v1/iot?step=5m&sensor=temperature'");
    println!("    curl -s '{url}/api/v1/status'");
    println!("    curl -s -XPOST '{url}/api/v1/events' --data-binary @events.ndjson");
    println!();
    match &demo.kappa {
        None => println!(
            "  batch runs on '{}'; press Ctrl-C to stop",
            demo.batch.status.read().schedule
        ),
        Some(_) => println!(
            "  kappa mode: no batch layer; `lambda kappa replay` recomputes the views; press Ctrl-C to stop"
        ),
    }
    cancel_on_signal(demo.shutdown.clone());
    demo.wait().await
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speedup.is_finite() && args.speedup > 0.0,
        "--speedup must be a positive number, got {}",
        args.speedup
    );
    let token = CancellationToken::new();
    cancel_on_signal(token.clone());
    let sender = SenderConfig {
        target: args.target,
        rate: args.traffic.rate,
        duration: args.duration,
        batches_per_second: 10,
        progress: !args.no_progress,
    };
    let generator = GeneratorConfig {
        seed: args.traffic.seed(),
        start_ms: args
            .start
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        rate: args.traffic.rate / args.speedup,
        late_fraction: args.traffic.late_fraction,
        duplicate_fraction: args.traffic.duplicate_fraction,
        malformed_fraction: args.traffic.malformed_fraction,
        ..GeneratorConfig::default()
    };
    let report = lambda_ingest::sender::run(sender, generator, token).await?;
    println!(
        "sent {} lines: {} accepted, {} rejected, {} retries",
        report.lines, report.accepted, report.rejected, report.retries
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(args: &[&str]) -> Result<AlertRules, String> {
        let cli = Cli::try_parse_from(["lambda", "speed"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        let Command::Speed(speed) = cli.command else {
            unreachable!("parsed as speed")
        };
        speed.shared.alert_rules().map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn alert_flags_replace_the_rules_they_name() {
        assert_eq!(rules(&[]).unwrap(), AlertRules::defaults());
        let set = rules(&[
            "--alert-sensor-range",
            "temperature:10:20:2,pressure:990:1030",
            "--alert-offline-after",
            "90s",
            "--alert-severities",
            "critical",
            "--alert-error-rate",
            "0.25",
        ])
        .unwrap();
        let ranges: Vec<(&str, f64, f64, u32)> = set
            .sensor_range
            .iter()
            .map(|r| (r.sensor.as_str(), r.min, r.max, r.consecutive))
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("temperature", 10.0, 20.0, 2),
                ("pressure", 990.0, 1030.0, 3)
            ]
        );
        assert_eq!(set.device_offline.unwrap().after_ms, 90_000);
        let alarm = set.alarm.unwrap();
        assert_eq!(alarm.severities, vec![Severity::Critical]);
        assert_eq!(alarm.clear_after_ms, 600_000, "kept from the defaults");
        let errors = set.page_error_rate.unwrap();
        assert_eq!((errors.threshold, errors.min_views), (0.25, 20));
    }

    #[test]
    fn bad_alert_flags_are_named() {
        let check = |args: &[&str], part: &str| {
            let error = rules(args).unwrap_err();
            assert!(error.contains(part), "{args:?}: {error}");
        };
        check(
            &["--alert-sensor-range", "temperature:30:20"],
            "min 30 is above max 20",
        );
        check(
            &["--alert-severities", "urgent"],
            "unknown severity \"urgent\"",
        );
        check(&["--alert-error-rate", "1.5"], "not a rate between 0 and 1");
        check(&["--alert-offline-after", "5x"], "unknown duration unit");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.toml");
        std::fs::write(&file, "[alarm]\nseverity = [\"high\"]\n").unwrap();
        check(&["--alerts-file", file.to_str().unwrap()], "severity");
    }
}
