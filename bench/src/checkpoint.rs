//! `lambda bench checkpoint`: what a speed layer checkpoint costs once the
//! state holds its whole window horizon — written incrementally (only the
//! windows that changed, [`lambda_speed::checkpoint::Checkpointer`]) against
//! the whole state re-encoded into one file (what every checkpoint did
//! before; still [`lambda_speed::checkpoint::encode`]), the same state at
//! the same moments, in the same run.
//!
//! 1. Generated events over the horizon (2 h at `--rate` events/s of event
//!    time) are folded, with no checkpoint (not timed).
//! 2. The next `--minutes` of events are folded, and every
//!    `--interval-seconds` of event time the state is checkpointed both
//!    ways into temporary directories (fsync included, as the speed layer
//!    does). Bytes written, time taken (this thread does nothing else) and
//!    the time the fold is held (the part taken under the state's lock in
//!    the speed layer) are summed per way.
//! 3. The same events are also folded into one state per log partition
//!    (`--partitions`, split by key as the log splits them), and each is
//!    checkpointed at the same moments into a `file://` checkpoint store as
//!    `lambda speed --group` does (`Snapshot::write_to_store`: new files,
//!    then the manifest by conditional put, fsync'd): the per-partition cost
//!    is that sum divided by the partitions.

use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lambda_events::Event;
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_speed::checkpoint::{Checkpointer, StoreWrite, encode, write};
use lambda_speed::store::{CheckpointStore, PartitionId};
use lambda_speed::{SpeedConfig, SpeedState};

use crate::report::{Aim, Figure};

/// Settings of the checkpoint benchmark.
#[derive(Debug, Clone, clap::Parser)]
pub struct CheckpointBench {
    /// Events per second of event time.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Minutes of event time measured after the horizon is full.
    #[arg(long, default_value_t = 10)]
    pub minutes: u32,
    /// Event time between two checkpoints (the speed layer's default interval is 5 s).
    #[arg(long, default_value_t = 5)]
    pub interval_seconds: u32,
    /// Log partitions the events are split into for the per-partition (group) checkpoints.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
}

impl Default for CheckpointBench {
    /// The flags' defaults (what `lambda bench` runs).
    fn default() -> CheckpointBench {
        <CheckpointBench as clap::Parser>::parse_from(["checkpoint"])
    }
}

/// One way of checkpointing, summed over the run.
#[derive(Debug, Default)]
struct Cost {
    bytes: u64,
    /// Wall time of the whole checkpoint (copy, encode, write, fsync).
    took: Duration,
    /// Wall time the state is held (under its lock in the speed layer).
    held: Duration,
    checkpoints: u32,
}

impl Cost {
    fn per_checkpoint(&self, of: impl Fn(&Cost) -> f64) -> f64 {
        of(self) / f64::from(self.checkpoints.max(1))
    }
}

/// Runs the benchmark and prints its report.
pub async fn run(bench: CheckpointBench) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(
        bench.rate > 0.0 && bench.rate <= 100_000.0,
        "--rate must be in (0, 100000]"
    );
    anyhow::ensure!(
        bench.interval_seconds > 0,
        "--interval-seconds must be at least 1"
    );
    anyhow::ensure!(
        (1..=256).contains(&bench.partitions),
        "--partitions must be in 1..=256"
    );
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || measure(&bench, &handle))
        .await
        .context("the checkpoint benchmark")?
}

/// The partition a key's records go to (any stable hash splits alike).
fn partition_of(event: &Event, partitions: u32) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.key().hash(&mut hasher);
    (hasher.finish() % u64::from(partitions)) as usize
}

fn measure(
    bench: &CheckpointBench,
    handle: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let config = SpeedConfig::with_data_dir(dir.path());
    let mut state = lambda_speed::empty_state(&config);
    let mut parts: Vec<SpeedState> = (0..bench.partitions)
        .map(|_| lambda_speed::empty_state(&config))
        .collect();
    let mut generator = Generator::new(GeneratorConfig {
        rate: bench.rate,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let start = generator.clock_ms();
    let horizon_end = start + config.horizon_ms;
    let end = horizon_end + i64::from(bench.minutes) * 60_000;
    let bar = ProgressBar::new((end - start) as u64).with_style(
        ProgressStyle::with_template("{msg:<24} {bar:30} {percent:>3}%").expect("a valid template"),
    );
    bar.set_message("fold the horizon");
    let partitions = bench.partitions;
    let mut fold_until =
        |state: &mut SpeedState, parts: &mut [SpeedState], until: i64, bar: &ProgressBar| {
            while generator.clock_ms() < until {
                let line = generator.next_line();
                if let Ok(event) = Event::from_json(&line.bytes) {
                    state.apply(&event);
                    parts[partition_of(&event, partitions)].apply(&event);
                }
            }
            state.evict();
            parts.iter_mut().for_each(|p| {
                p.evict();
            });
            bar.set_position((until - start) as u64);
        };
    fold_until(&mut state, &mut parts, horizon_end, &bar);

    bar.set_message("checkpoint both ways");
    let incremental_path = dir.path().join("incremental").join("checkpoint.json");
    let whole_path = dir.path().join("whole").join("checkpoint.json");
    let mut checkpointer = Checkpointer::new(&incremental_path, &mut state);
    // The first incremental checkpoint writes every window: not measured,
    // as a running speed layer has long written them.
    let first = checkpointer.snapshot(&state).write()?;
    checkpointer.written(&first);
    // The group's checkpoints: one store, a partition each, the first one
    // (every window) not measured either.
    let store = CheckpointStore::open(
        &format!("file://{}", dir.path().join("store").display()),
        Vec::new(),
    )?;
    let mut group: Vec<(PartitionId, Checkpointer, u64)> = Vec::new();
    for (i, part) in parts.iter_mut().enumerate() {
        let id = PartitionId::new("funnel-events", i as u32);
        let mut checkpointer = Checkpointer::new(std::path::Path::new(""), part);
        let StoreWrite::Durable(first) = checkpointer
            .snapshot(part)
            .write_to_store(None, &store, &id, 1, handle)?
        else {
            anyhow::bail!("a fresh store fenced {id}");
        };
        checkpointer.written(&first);
        group.push((id, checkpointer, 1));
    }
    let (mut incremental, mut whole, mut per_partition) =
        (Cost::default(), Cost::default(), Cost::default());
    let interval = i64::from(bench.interval_seconds) * 1_000;
    let mut at = horizon_end;
    while at < end {
        at += interval;
        fold_until(&mut state, &mut parts, at, &bar);

        let wall0 = Instant::now();
        let snapshot = checkpointer.snapshot(&state);
        incremental.held += wall0.elapsed();
        let durable = snapshot.write()?;
        incremental.took += wall0.elapsed();
        incremental.bytes += durable.bytes;
        incremental.checkpoints += 1;
        checkpointer.written(&durable);

        let wall0 = Instant::now();
        let bytes = encode(&state);
        whole.held += wall0.elapsed();
        write(&whole_path, &bytes)?;
        whole.took += wall0.elapsed();
        whole.bytes += bytes.len() as u64;
        whole.checkpoints += 1;

        for ((id, checkpointer, version), part) in group.iter_mut().zip(&parts) {
            let wall0 = Instant::now();
            let snapshot = checkpointer.snapshot(part);
            per_partition.held += wall0.elapsed();
            *version += 1;
            let StoreWrite::Durable(durable) =
                snapshot.write_to_store(None, &store, id, *version, handle)?
            else {
                anyhow::bail!("nothing else writes {id}, yet it was fenced");
            };
            per_partition.took += wall0.elapsed();
            per_partition.bytes += durable.bytes;
            checkpointer.written(&durable);
        }
        // Counted per partition: the sum over them, divided by their number.
        per_partition.checkpoints += partitions;
    }
    bar.finish_and_clear();

    let mb = |c: &Cost| c.bytes as f64 / 1e6;
    let took_ms = |c: &Cost| c.took.as_secs_f64() * 1e3;
    let held_ms = |c: &Cost| c.held.as_secs_f64() * 1e3;
    println!(
        "lambda bench checkpoint: {} windows held ({} counted), a checkpoint every {} s of event time for {} min at {} events/s",
        state.windows().len(),
        state.counters().counted,
        bench.interval_seconds,
        bench.minutes,
        bench.rate
    );
    for (what, cost) in [
        ("incremental", &incremental),
        ("whole state", &whole),
        ("a partition", &per_partition),
    ] {
        println!(
            "  {what:<12} {:>8.3} MB, took {:>7.2} ms, fold held {:>7.2} ms per checkpoint ({} checkpoints)",
            cost.per_checkpoint(mb),
            cost.per_checkpoint(took_ms),
            cost.per_checkpoint(held_ms),
            cost.checkpoints
        );
    }
    let baseline = "the whole state in one file, same moments";
    Ok(vec![
        Figure::new(
            "checkpoint",
            "bytes written per checkpoint, horizon full",
            "MB",
            incremental.per_checkpoint(mb),
            baseline,
            whole.per_checkpoint(mb),
            Aim::AtMost(0.25),
        ),
        Figure::new(
            "checkpoint",
            "time per checkpoint (encode, write, fsync), horizon full",
            "ms",
            incremental.per_checkpoint(took_ms),
            baseline,
            whole.per_checkpoint(took_ms),
            Aim::AtMost(0.25),
        ),
        Figure::new(
            "checkpoint",
            "time the fold is held per checkpoint",
            "ms",
            incremental.per_checkpoint(held_ms),
            baseline,
            whole.per_checkpoint(held_ms),
            Aim::None,
        ),
        Figure::new(
            "checkpoint",
            &format!(
                "bytes per partition's checkpoint to the group's store ({partitions} partitions)"
            ),
            "MB",
            per_partition.per_checkpoint(mb),
            baseline,
            whole.per_checkpoint(mb),
            Aim::AtMost(0.25),
        ),
        Figure::new(
            "checkpoint",
            &format!(
                "time per partition's checkpoint to the group's store ({partitions} partitions)"
            ),
            "ms",
            per_partition.per_checkpoint(took_ms),
            baseline,
            whole.per_checkpoint(took_ms),
            Aim::AtMost(0.25),
        ),
    ])
}
