//! What every benchmark measures with: CPU and wall time of a step, the
//! process's memory, a spinner while a step runs.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// CPU time of this process so far (user + system), to the nanosecond
/// (`CLOCK_PROCESS_CPUTIME_ID`, every thread's, ended ones' included);
/// `/proc/self/stat`'s 10 ms ticks if that clock cannot be read. The ticks
/// were 3 % of a 0.34 s round: ratios of two such rounds moved in steps of
/// 0.03.
pub(crate) fn cpu_time() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID) {
        Ok(spec) => Duration::from(spec),
        Err(_) => cpu_ticks(),
    }
}

/// CPU time of this process so far in `/proc/self/stat`'s clock ticks.
fn cpu_ticks() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
pub(crate) fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Measured {
    pub(crate) cpu: Duration,
    pub(crate) wall: Duration,
}

pub(crate) fn measure<T>(f: impl FnOnce() -> T) -> (T, Measured) {
    let (cpu0, wall0) = (cpu_time(), Instant::now());
    let out = f();
    let measured = Measured {
        cpu: cpu_time().saturating_sub(cpu0),
        wall: wall0.elapsed(),
    };
    (out, measured)
}

/// The measurement with the median CPU time (of an odd count; the upper
/// middle one of an even count).
pub(crate) fn median(mut rounds: Vec<Measured>) -> Measured {
    rounds.sort_by_key(|m| m.cpu);
    rounds[rounds.len() / 2]
}

pub(crate) fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a template"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// An HTTP client that keeps one pooled connection: a load generator's
/// "connection" (one client per task, as `wrk -c N` opens N).
pub(crate) fn one_connection_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?)
}

/// The `q` quantile (0 to 1) of `sorted` latencies, nearest rank; zero when empty.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}
