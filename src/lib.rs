//! lambda-pipeline: the wiring of the layers. `lambda demo` runs every layer
//! in one process on the embedded defaults, on one HTTP port; `lambda
//! ingest|speed|batch|serve` run one role each (see [`roles`]). This crate is
//! the only place that parses flags and environment variables (in `main.rs`);
//! the layers take plain config structs.

pub mod demo;
pub mod roles;
pub mod telemetry;

/// Kappa mode and the lambda-vs-kappa comparison live in `lambda-kappa`;
/// their old paths here still work.
pub use lambda_kappa::{self as kappa, compare};
