//! The `lambda` command: `demo` runs every layer in one process; `ingest`,
//! `speed`, `batch` and `serve` run one role each; `generate` sends traffic
//! to an ingest endpoint; `kappa replay` and `compare` ask a running
//! process; `bench` measures. Flags have `LAMBDA_*` env equivalents (the
//! shared ones are in `flags.rs`); everything else is in the layer crates.

mod flags;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lambda_events::time::{parse_bounded_instant, parse_duration, parse_when};
use lambda_ingest::sender::SenderConfig;
use lambda_pipeline::demo::{Demo, DemoConfig};
use lambda_pipeline::roles;
use lambda_pipeline::telemetry;
use lambda_serving::Supervisor;

use crate::flags::{SharedArgs, TrafficArgs};

/// The allocator: the pipeline allocates many small, short-lived strings
/// (decoded events, keys); mimalloc serves those faster than glibc's malloc
/// (see `lambda bench speed`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Benchmarks, each beside a baseline measured in the same run: `lambda bench` runs them all and prints one table.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// One benchmark with its own settings; without one, all of them with their defaults.
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Where the figures are written as JSON (the table is printed too).
    #[arg(long, global = true, default_value = "bench.json")]
    json: std::path::PathBuf,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Events per second per core from the log into the speed layer's views, beside a typed-decode ceiling.
    Speed(lambda_bench::SpeedBench),
    /// Rows per second per core and bytes of the master dataset's Parquet writer and compaction, beside DuckDB's COPY.
    Batch(lambda_bench::BatchBench),
    /// Backfill of a large master dataset on Spark (two workers) beside DuckDB, and each engine's scheduled-run latency (starts a local Spark cluster without --spark-url; not part of `lambda bench`).
    Backfill(lambda_bench::BackfillBench),
    /// NDJSON over HTTP into the embedded log beside the HTTP ceiling; freshness from 202 to a query.
    Ingest(lambda_bench::IngestBench),
    /// Latency of the merged funnel over 24 hours at 1-minute steps at a fixed request rate, beside a static handler.
    Serve(lambda_bench::ServeBench),
    /// The speed layer's resident memory against key cardinality (10 k to 1 M users and devices), each in its own process.
    Memory(lambda_bench::MemoryBench),
    /// What a speed layer checkpoint costs: only the changed windows against the whole state, at the same moments.
    Checkpoint(lambda_bench::CheckpointBench),
    /// A speed group losing 1 of 3 instances: how long until its partitions are consumed again, and the peak lag, after a SIGKILL beside a clean stop.
    Failover(lambda_bench::FailoverBench),
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
    /// Share the partitions as this Kafka consumer group instead of --instance/--instances: partitions move between instances by themselves, their state kept in --checkpoint-url, e.g. speed-layer.
    #[arg(long, env = "LAMBDA_SPEED_GROUP", requires = "checkpoint_url", conflicts_with_all = ["instance", "instances"], value_parser = flags::parse_group)]
    group: Option<String>,
    /// The checkpoint store of --group, shared by its instances, e.g. s3://lake/speed-checkpoints or file:///shared/speed.
    #[arg(long, env = "LAMBDA_CHECKPOINT_URL", requires = "group")]
    checkpoint_url: Option<String>,
    /// Where serving reaches this instance in --group (default: http:// and the listen address, or $HOSTNAME when it listens on all addresses), e.g. http://speed-1:8082.
    #[arg(long, env = "LAMBDA_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// This instance's name in --group (default: its advertised host and port), e.g. speed-1.
    #[arg(long, env = "LAMBDA_SPEED_MEMBER", value_parser = flags::parse_member)]
    member: Option<String>,
    /// In --group, an instance not heard from for this long loses its partitions to the others (the failover time after a crash), e.g. 10s.
    #[arg(long, env = "LAMBDA_SESSION_TIMEOUT", default_value = "10s", value_parser = flags::parse_session_timeout)]
    session_timeout: Duration,
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
    #[arg(long, value_parser = parse_bounded_instant)]
    from: i64,
    /// End of the interval (exclusive), same forms.
    #[arg(long, value_parser = parse_bounded_instant)]
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
        required_unless_present = "speed_checkpoint_url"
    )]
    speed_urls: Vec<String>,
    /// The checkpoint store of a speed group (`lambda speed --group`): its instances are found there, whichever own the partitions now, e.g. s3://lake/speed-checkpoints.
    #[arg(
        long,
        env = "LAMBDA_SPEED_CHECKPOINT_URL",
        conflicts_with = "speed_urls"
    )]
    speed_checkpoint_url: Option<String>,
    /// Base URL of the batch runner, for its schedule and last run in /api/v1/status.
    #[arg(long, env = "LAMBDA_BATCH_URL")]
    batch_url: Option<String>,
    #[command(flatten)]
    shared: SharedArgs,
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
    #[arg(long, allow_hyphen_values = true, value_parser = when)]
    from: Option<i64>,
    /// Interval end, in the same forms (default: now).
    #[arg(long, allow_hyphen_values = true, value_parser = when)]
    to: Option<i64>,
    /// Print the comparison as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The batch side's engine: duckdb, or spark / auto on a server started with --spark-url (default: the server's own --batch-engine). Read from LAMBDA_BATCH_ENGINE like the other subcommands' flag: unset it to get the server's.
    #[arg(long, env = "LAMBDA_BATCH_ENGINE", value_parser = lambda_batch::ENGINE_NAMES)]
    batch_engine: Option<String>,
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
    #[arg(long, env = "LAMBDA_START", value_parser = parse_bounded_instant)]
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
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo(args).await,
        Command::Ingest(args) => {
            let running = roles::ingest(&args.shared.shared()?, args.listen).await?;
            run_role("ingest", running).await
        }
        Command::Speed(args) if args.group.is_some() => {
            let group = roles::SpeedGroup {
                group: args.group.unwrap_or_default(),
                checkpoint_url: args.checkpoint_url.unwrap_or_default(),
                advertise_url: args.advertise_url,
                member: args.member,
                session_timeout: args.session_timeout,
                checkpoint_interval: args.checkpoint_interval,
            };
            let running = roles::speed_group(&args.shared.shared()?, args.listen, group).await?;
            run_role("speed", running).await
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
            let report = lambda_serving::admin::report_json(&report);
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Batch(args) => {
            let shared = args.shared.shared()?;
            let running = roles::batch(&shared, args.listen, &args.batch_schedule).await?;
            run_role("batch", running).await
        }
        Command::Serve(args) => {
            let peers = roles::Peers {
                speed_urls: args.speed_urls,
                speed_checkpoint_url: args.speed_checkpoint_url,
                batch_url: args.batch_url,
            };
            let running = roles::serve(&args.shared.shared()?, args.listen, peers).await?;
            run_role("serve", running).await
        }
        Command::Generate(args) => generate(args).await,
        Command::Compare(args) => {
            let (json, comparison) = lambda_kappa::client::compare(
                &args.url,
                args.from,
                args.to,
                args.batch_engine.as_deref(),
            )
            .await?;
            match args.json {
                true => println!("{json}"),
                false => print!("{}", lambda_kappa::compare::render(&comparison)),
            }
            Ok(())
        }
        Command::Kappa(KappaCommand::Replay(args)) => {
            let request = lambda_kappa::client::ReplayRequest {
                url: args.url,
                admin_token: args.admin_token,
                allowed_lateness: args.allowed_lateness,
                progress: !args.no_progress,
            };
            println!("{}", lambda_kappa::client::replay(request).await?);
            Ok(())
        }
        Command::Bench(args) => {
            let figures = match args.command {
                None => return lambda_bench::all(&args.json).await.map(drop),
                Some(BenchCommand::Speed(bench)) => lambda_bench::speed::run(bench).await?,
                Some(BenchCommand::Batch(bench)) => lambda_bench::batch::run(bench).await?,
                Some(BenchCommand::Backfill(bench)) => lambda_bench::backfill::run(bench).await?,
                Some(BenchCommand::Ingest(bench)) => lambda_bench::ingest::run(bench).await?,
                Some(BenchCommand::Memory(bench)) => lambda_bench::memory::run(bench).await?,
                Some(BenchCommand::Checkpoint(bench)) => {
                    lambda_bench::checkpoint::run(bench).await?
                }
                Some(BenchCommand::Serve(bench)) => lambda_bench::serve::run(bench).await?,
                Some(BenchCommand::Failover(bench)) => lambda_bench::failover::run(bench).await?,
            };
            // (`bench speed --only` measures for a profiler: no figures, and
            // the last table's JSON is left as it was.)
            if figures.is_empty() {
                return Ok(());
            }
            let report = lambda_bench::Report::new(figures);
            println!("\n{}", report.table());
            report.write_json(&args.json)
        }
    }
}

/// A point in time relative to now: `now`, `-30m`, or an absolute one.
fn when(text: &str) -> Result<i64, String> {
    parse_when(text, chrono::Utc::now().timestamp_millis())
}

/// Prints where a role listens, then runs it until a signal.
async fn run_role(name: &str, running: roles::Running) -> anyhow::Result<()> {
    println!("lambda {name} is listening on http://{}", running.addr);
    running.supervisor.cancel_on_signal();
    running.supervisor.wait().await
}

async fn backfill(args: BackfillArgs) -> anyhow::Result<()> {
    let shared = args.shared.shared()?;
    let lake = shared.open_lake_writer()?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("backfill {pos}/{len} hours {bar:30} {elapsed}")
            .expect("a template"),
    );
    let report = lambda_batch::backfill(
        &lake,
        &shared.batch_engine,
        args.from,
        args.to,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await?;
    bar.finish_and_clear();
    let report = serde_json::json!({
        "version": report.version,
        "hours_recomputed": report.hours,
        "hours_quarantined": report.quarantined,
        "engine": report.views_engine.name(),
    });
    println!("{report}");
    Ok(())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let config = DemoConfig {
        shared: args.shared.shared()?,
        listen: args.listen,
        generator: (!args.no_generator).then(|| args.traffic.settings()),
        batch_schedule: args.batch_schedule,
        progress: false,
    };
    let demo = Demo::start(config).await?;
    let url = format!("http://{}", demo.addr);
    println!("lambda demo is serving on {url}\n\n  try:");
    println!("    curl -s '{url}/api/v1/funnel?step=1m' | head -c 600");
    println!("    curl -s '{url}/api/v1/iot?step=5m&sensor=temperature'");
    println!("    curl -s '{url}/api/v1/status'");
    println!("    curl -s -XPOST '{url}/api/v1/events' --data-binary @events.ndjson\n");
    match &demo.kappa {
        None => println!(
            "  batch runs on '{}'; press Ctrl-C to stop",
            demo.batch.status.read().schedule
        ),
        Some(_) => println!(
            "  kappa mode: no batch layer; `lambda kappa replay` recomputes the views; press Ctrl-C to stop"
        ),
    }
    demo.cancel_on_signal();
    demo.wait().await
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speedup.is_finite() && args.speedup > 0.0,
        "--speedup must be a positive number, got {}",
        args.speedup
    );
    let supervisor = Supervisor::new(None);
    supervisor.cancel_on_signal();
    let sender = SenderConfig {
        target: args.target,
        rate: args.traffic.rate,
        duration: args.duration,
        batches_per_second: 10,
        progress: !args.no_progress,
    };
    let start_ms = (args.start).unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let settings = args.traffic.settings();
    let generator = settings.generator(start_ms, settings.rate / args.speedup);
    let report = lambda_ingest::sender::run(sender, generator, supervisor.shutdown).await?;
    println!(
        "sent {} lines: {} accepted, {} rejected, {} retries",
        report.lines, report.accepted, report.rejected, report.retries
    );
    Ok(())
}
