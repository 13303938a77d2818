//! The fault-injection tests that time what they do to the pipeline (a
//! broker outage of a few seconds, SIGKILLs of a running process), as a test
//! binary of their own: Cargo runs test binaries one after another, and
//! [`one_at_a_time`] keeps these two from overlapping, so no other test's
//! load stretches the windows they measure. (In the one `pipeline` binary
//! they ran beside other tests and the outage test's recovery window was
//! missed once.)

mod kafka_outage;
mod speed_group;
mod speed_kill;

/// Held for the whole of each test here.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
