//! Waiting for a condition, the one way every test does it: ask again every
//! [`POLL_INTERVAL`] until the check passes or `within` runs out, then fail
//! naming what was awaited and what was seen last. [`eventually`] is for
//! async tests; [`eventually_blocking`] for code that runs outside a task
//! (a process's start-up, the guide's shell steps) and cannot `.await`.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a check is repeated.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The deadline of one wait and its failure message.
struct Patience<'a> {
    what: &'a str,
    within: Duration,
    deadline: Instant,
}

impl<'a> Patience<'a> {
    fn new(what: &'a str, within: Duration) -> Patience<'a> {
        Patience {
            what,
            within,
            deadline: Instant::now() + within,
        }
    }

    /// Panics if the time is up, with what the last check saw.
    fn keep_waiting(&self, seen: &str) {
        if let Err(failure) = self.time_left(seen) {
            panic!("{failure}");
        }
    }

    /// An error if the time is up, naming what was awaited and what the
    /// last check saw.
    fn time_left(&self, seen: &str) -> Result<(), String> {
        if Instant::now() >= self.deadline {
            return Err(format!(
                "{}: not within {:?}; last seen: {seen}",
                self.what, self.within
            ));
        }
        Ok(())
    }
}

/// Runs `check` until it returns `Ok` (its value is returned) or `within`
/// has passed (a panic naming `what` and the last `Err`).
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_every(what, within, POLL_INTERVAL, check).await
}

/// [`eventually`], checking every `interval` (for a check that also
/// samples what it sees on the way).
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    within: Duration,
    interval: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let patience = Patience::new(what, within);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => patience.keep_waiting(&seen),
        }
        tokio::time::sleep(interval).await;
    }
}

/// [`eventually`] for code that cannot `.await`: the thread sleeps between checks.
pub fn eventually_blocking<T>(
    what: &str,
    within: Duration,
    check: impl FnMut() -> Result<T, String>,
) -> T {
    wait_blocking(what, within, check).unwrap_or_else(|failure| panic!("{failure}"))
}

/// [`eventually_blocking`] returning its failure (naming `what` and the
/// last `Err`) instead of panicking: for a tool (`lambda bench`) that
/// starts the tests' services and must report, not panic.
pub fn wait_blocking<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let patience = Patience::new(what, within);
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(seen) => patience.time_left(&seen)?,
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until something accepts connections on `address`.
pub fn wait_for_port(address: &str, within: Duration) {
    eventually_blocking(&format!("something listening on {address}"), within, || {
        std::net::TcpStream::connect(address)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}
