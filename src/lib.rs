//! lambda-pipeline: the wiring of the layers. `lambda demo` runs every layer
//! in one process on the embedded defaults, on one HTTP port; `lambda
//! ingest|speed|batch|serve` run one role each (see [`roles`]). The binary's
//! `main.rs` and `flags.rs` parse the CLI's flags and environment variables
//! (each benchmark's flags are a `clap::Args` struct in `lambda-bench`); the
//! layers take plain config structs.

pub mod demo;
pub mod roles;
pub mod telemetry;
