//! Shared by the integration tests, by purpose: [`oracle`] (the expected
//! views as a plain fold over generated lines — serde_json only, none of the
//! pipeline's code), [`checks`] (the API's answers against the oracle),
//! [`http`] (requests and waiting), and here the demo's test settings.

mod checks;
mod http;
mod oracle;

pub(crate) use checks::{Checked, check_answers, check_funnel, check_iot, check_pages};
pub(crate) use http::{eventually, get, post_lines, refused, speed_caught_up, text};
pub(crate) use oracle::fold;

pub(crate) const MINUTE: i64 = 60_000;
/// A batch schedule that never fires during a test: runs are triggered.
pub(crate) const NEVER: &str = "0 0 0 1 1 * 2099";

/// The demo on an ephemeral port with data under `dir`, batch runs only when triggered.
pub(crate) fn demo_config(dir: &std::path::Path) -> lambda_pipeline::demo::DemoConfig {
    lambda_pipeline::demo::DemoConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        batch_schedule: NEVER.into(),
        ..lambda_pipeline::demo::DemoConfig::new(dir)
    }
}
