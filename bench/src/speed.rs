//! `lambda bench speed`: how fast the speed layer turns log records into
//! views, per core, beside a parse-only baseline on the same bytes in the
//! same run, plus the state's size and the process's memory.
//!
//! 1. N seeded generator lines are appended to an embedded log in a
//!    temporary directory (not timed).
//! 2. Decode only, three ways over the same record values: the typed-decode
//!    ceiling (`TypedBaseline`: serde's derive into a borrowed typed struct,
//!    no rule applied — the least work a Rust program does to read an event
//!    with serde_json), our decoder (`EventRef::from_record`, what the speed
//!    layer calls: the fast path's decode, the rule table, strings borrowed
//!    from the record), and the reference decoder it
//!    falls back to (`Value` tree, then the rule table).
//! 3. Log → views: fetch from the log in the speed layer's batch size, decode,
//!    fold into windows (dedup, sketches, late ledger), as `lambda speed` does.
//! 4. Kappa: the same log replayed through the same fold (`replay::replay`,
//!    records in append order across partitions). Five rounds of 3 and 4
//!    taken in turn, each into new views, and the median of each.
//!
//! Rates are events per CPU-second of this process (user + system), so they
//! are per core; wall rates are printed beside them. The two decode-only
//! figures are the median of three rounds taken in turn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lambda_events::decode::TypedBaseline;
use lambda_events::{Event, EventRef, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{EmbeddedConfig, EventLog, FetchPosition, Record};
use lambda_speed::SpeedConfig;

use crate::measure::{Measured, cpu_time, measure, median, memory, spinner};
use crate::report::{Aim, Figure};

/// Settings of the speed benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct SpeedBench {
    /// Events to generate, e.g. 500000.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    /// Size of the user population.
    #[arg(long, default_value_t = 5_000)]
    pub users: u32,
    /// Number of IoT devices.
    #[arg(long, default_value_t = 50)]
    pub devices: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// For a profiler (`perf record`, `valgrind --tool=callgrind`): after
    /// appending, run only this part — `live` (log -> views) or `kappa`
    /// (the replay) — five times, print each round's rate, and no table.
    #[arg(long, value_parser = ["live", "kappa"])]
    pub only: Option<String>,
}

impl Default for SpeedBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> SpeedBench {
        <SpeedBench as clap::Parser>::parse_from(["speed"])
    }
}

/// Rounds of log -> views and of the kappa replay. Three let one crowded
/// round of either move the ratio: the same binary gave 0.83, 0.92 and
/// 0.97 in three runs of `lambda bench speed` on a busy day.
const FOLD_ROUNDS: usize = 5;

/// Runs the benchmark and prints its report.
pub async fn run(bench: SpeedBench) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let log: Arc<dyn EventLog> = lambda_log::open(
        &format!("embedded://{}", dir.path().join("log").display()),
        EmbeddedConfig::default(),
    )
    .await?;
    lambda_ingest::ensure_topics(&log, bench.partitions).await?;

    // 1. Generate and append (not timed).
    let bar = ProgressBar::new(bench.events as u64);
    bar.set_style(
        ProgressStyle::with_template("appending {pos}/{len} events to a log {bar:30} {elapsed}")
            .expect("a template"),
    );
    let mut generator = Generator::new(GeneratorConfig {
        seed: 1,
        start_ms: 1_767_225_600_000,
        rate: 200.0,
        users: bench.users,
        devices: bench.devices,
        late_fraction: 0.01,
        duplicate_fraction: 0.01,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut values: Vec<(String, Vec<u8>)> = Vec::with_capacity(bench.events);
    let mut pending: Vec<(String, Record)> = Vec::new();
    for _ in 0..bench.events {
        let line = generator.next_line().bytes;
        let event = Event::from_json(&line).context("the generator made an invalid line")?;
        let topic = event.topic().name().to_string();
        let key = event
            .user_id
            .clone()
            .or_else(|| event.device_id.clone())
            .unwrap_or_default();
        pending.push((topic.clone(), Record::keyed(key, line.clone(), event.ts)));
        values.push((topic, line));
        if pending.len() == 10_000 {
            append(&log, &mut pending).await?;
            bar.set_position(values.len() as u64);
        }
    }
    append(&log, &mut pending).await?;
    bar.finish_and_clear();
    if let Some(part) = &bench.only {
        profile_rounds(&log, dir.path(), &bench, part).await?;
        log.close().await?;
        return Ok(Vec::new());
    }

    // 2. Decode only, the same bytes: the ceiling, ours, the reference.
    let bar = spinner("decode only");
    // Short and noisy on a shared machine: three rounds of each, taken in
    // turn, and the median of each.
    let (mut ceilings, mut bases) = (Vec::new(), Vec::new());
    let (mut decoded, mut parsed) = (0, 0);
    for _ in 0..3 {
        let m;
        (decoded, m) = measure(|| {
            values
                .iter()
                .filter(|(_, bytes)| TypedBaseline::decode(bytes).is_ok())
                .count()
        });
        ceilings.push(m);
        let m;
        (parsed, m) = measure(|| {
            values
                .iter()
                .filter(|(topic, bytes)| EventRef::from_record(bytes, topic).is_ok())
                .count()
        });
        bases.push(m);
    }
    let (ceiling, base) = (median(ceilings), median(bases));
    let (referenced, reference) = measure(|| {
        values
            .iter()
            .filter(|(_, bytes)| Event::from_json_reference(bytes).is_ok())
            .count()
    });
    bar.finish_and_clear();
    for (what, n) in [
        ("ceiling", decoded),
        ("decoder", parsed),
        ("reference", referenced),
    ] {
        anyhow::ensure!(
            n == values.len(),
            "the {what} decoded {n} of {}",
            values.len()
        );
    }
    drop(values);

    // 3. From the log into views, and 4. the kappa replay of the same log:
    // `FOLD_ROUNDS` of each, taken in turn (a round swings with the
    // machine; the two compared are measured side by side), which of the
    // two goes first alternating from round to round (neither is always
    // the one run on a machine warmed or crowded by the other), each into
    // new views from offset 0, and the median round of each.
    let bar = spinner("log → views, kappa replay");
    let config = SpeedConfig::with_data_dir(dir.path());
    let spans = lambda_speed::replay::spans_to(log.as_ref(), |_, _, end| Some(end)).await?;
    let (mut rounds, mut kappa_rounds) = (Vec::new(), Vec::new());
    let (mut last, mut replayed) = (None, None);
    for round in 0..FOLD_ROUNDS {
        if round % 2 == 0 {
            let (m, views) = live_round(&log, &config, &bench).await?;
            rounds.push(m);
            last = Some(views);
        }
        let (m, state) = kappa_round(&log, &config, &spans).await?;
        kappa_rounds.push(m);
        replayed = Some(state);
        if round % 2 == 1 {
            let (m, views) = live_round(&log, &config, &bench).await?;
            rounds.push(m);
            last = Some(views);
        }
    }
    let views = last.context("no round ran")?;
    let replayed = replayed.context("no round ran")?;
    let full = median(rounds);
    let kappa = median(kappa_rounds);
    bar.finish_and_clear();

    let state = views.read();
    let checkpoint = lambda_speed::checkpoint::encode(&state);
    let (rss, peak) = memory();
    let per_sec = |d: Duration| bench.events as f64 / d.as_secs_f64().max(1e-9);
    // Per core: over CPU time (the wall time if the clock ticks are too coarse to see).
    let per_core = |m: &Measured| per_sec(if m.cpu.is_zero() { m.wall } else { m.cpu });
    let base_rate = per_core(&base);
    let full_rate = per_core(&full);
    let ceiling_rate = per_core(&ceiling);
    let reference_rate = per_core(&reference);
    println!(
        "lambda bench speed: {} events ({} users, {} devices, {} partitions per topic)",
        bench.events, bench.users, bench.devices, bench.partitions
    );
    for (what, rate, m) in [
        ("typed decode (ceiling)", ceiling_rate, &ceiling),
        ("reference decoder", reference_rate, &reference),
        ("our decoder", base_rate, &base),
    ] {
        println!(
            "  {what:<23} {rate:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s)",
            m.cpu.as_secs_f64(),
            m.wall.as_secs_f64()
        );
    }
    println!(
        "  log -> views:          {:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s, {:.0} events/s wall)",
        full_rate,
        full.cpu.as_secs_f64(),
        full.wall.as_secs_f64(),
        per_sec(full.wall)
    );
    println!(
        "  ratio our decoder / ceiling: {:.2}; / reference: {:.2}",
        base_rate / ceiling_rate,
        base_rate / reference_rate
    );
    println!(
        "  ratio log->views / ceiling: {:.2} (aim: at least 0.50); / our decoder: {:.2}",
        full_rate / ceiling_rate,
        full_rate / base_rate
    );
    println!(
        "  state: {} windows, {} counted, {} duplicates, {} late; checkpoint {:.1} MB",
        state.windows().len(),
        state.counters().counted,
        state.counters().duplicates,
        state.counters().late,
        checkpoint.len() as f64 / 1e6
    );
    println!(
        "  memory: RSS {:.0} MB now, peak {:.0} MB (the whole benchmark process, generated bytes included)",
        rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    let live_counted = state.counters().counted;
    drop(state);

    let kappa_rate = per_core(&kappa);
    anyhow::ensure!(
        replayed.records == bench.events as u64,
        "the replay read {} of {} records",
        replayed.records,
        bench.events
    );
    println!(
        "  kappa replay:          {kappa_rate:>10.0} events/s per core   (cpu {:.2} s, wall {:.2} s; {} counted, the live fold {live_counted}); / log->views: {:.2} (aim: at least 1.00)",
        kappa.cpu.as_secs_f64(),
        kappa.wall.as_secs_f64(),
        replayed.state.counters().counted,
        kappa_rate / full_rate
    );
    log.close().await?;
    let ceiling_name = "typed decode (serde_json, borrowed)";
    Ok(vec![
        Figure::new(
            "speed",
            "our decoder",
            "events/s per core",
            base_rate,
            ceiling_name,
            ceiling_rate,
            Aim::None,
        ),
        Figure::new(
            "speed",
            "log -> views",
            "events/s per core",
            full_rate,
            ceiling_name,
            ceiling_rate,
            Aim::AtLeast(0.5),
        ),
        Figure::new(
            "speed",
            "log -> views",
            "events/s per core",
            full_rate,
            "the aim, 2 M events/s per core (absolute)",
            2e6,
            Aim::AtLeast(1.0),
        ),
        Figure::new(
            "speed",
            "kappa replay: log -> views",
            "events/s per core",
            kappa_rate,
            "the speed layer's log -> views, same run",
            full_rate,
            Aim::AtLeast(1.0),
        ),
    ])
}

/// `--only`: five rounds of one part, nothing else, for a profiler.
async fn profile_rounds(
    log: &Arc<dyn EventLog>,
    dir: &std::path::Path,
    bench: &SpeedBench,
    part: &str,
) -> anyhow::Result<()> {
    let config = SpeedConfig::with_data_dir(dir);
    let spans = lambda_speed::replay::spans_to(log.as_ref(), |_, _, end| Some(end)).await?;
    for round in 1..=5 {
        let measured = match part {
            "live" => live_round(log, &config, bench).await?.0,
            _ => kappa_round(log, &config, &spans).await?.0,
        };
        println!(
            "  {part} round {round}: {:.0} events/s per core (cpu {:.3} s, wall {:.3} s)",
            bench.events as f64 / measured.cpu.as_secs_f64().max(1e-9),
            measured.cpu.as_secs_f64(),
            measured.wall.as_secs_f64()
        );
    }
    Ok(())
}

/// One round from the log into new views, as the speed layer's loop does
/// it (fetches of all partitions in its batch size, merged in append order
/// and folded in behind the views' lock).
async fn live_round(
    log: &Arc<dyn EventLog>,
    config: &SpeedConfig,
    bench: &SpeedBench,
) -> anyhow::Result<(Measured, lambda_speed::SpeedViews)> {
    let views = lambda_speed::new_views(config);
    let mut positions = Vec::new();
    for topic in Topic::ALL {
        for partition in 0..bench.partitions {
            positions.push(FetchPosition {
                topic: topic.name().to_string(),
                partition,
                offset: 0,
            });
        }
    }
    let mut live = lambda_speed::replay::Live::new(
        &positions,
        &[],
        &views.read(),
        config.idle_timeout,
        false,
        lambda_speed::consumer::FETCH_MAX_RECORDS,
    );
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    // (A fetch may bring nothing while the newest millisecond is held.)
    let mut idle = 0;
    while live.records() < bench.events as u64 {
        let fetched = live
            .fetch(log.as_ref(), Duration::from_millis(100))
            .await?
            .records;
        let before = live.records();
        live.fold(&views);
        idle = if fetched > 0 || live.records() > before {
            0
        } else {
            idle + 1
        };
        anyhow::ensure!(idle < 50, "the log ended after {before} records");
    }
    let measured = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    Ok((measured, views))
}

/// The same log replayed through the same fold, as `lambda kappa replay`
/// and `lambda compare` do it (records folded in append order across
/// partitions).
async fn kappa_round(
    log: &Arc<dyn EventLog>,
    config: &SpeedConfig,
    spans: &[lambda_speed::replay::ReplaySpan],
) -> anyhow::Result<(Measured, lambda_speed::replay::Replayed)> {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let replayed = lambda_speed::replay::replay(
        log.as_ref(),
        spans,
        // The live fold's state and alert rules, as `lambda kappa replay` starts.
        lambda_speed::empty_state(config),
        0..0,
        config.idle_timeout,
        |_| {},
    )
    .await?;
    let measured = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    Ok((measured, replayed))
}

async fn append(
    log: &Arc<dyn EventLog>,
    pending: &mut Vec<(String, Record)>,
) -> anyhow::Result<()> {
    for topic in Topic::ALL {
        let records: Vec<Record> = pending
            .iter()
            .filter(|(t, _)| t == topic.name())
            .map(|(_, r)| r.clone())
            .collect();
        if !records.is_empty() {
            log.append(topic.name(), records).await?;
        }
    }
    pending.clear();
    Ok(())
}
