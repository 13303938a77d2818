//! The batch layer: the source of truth. On a `cron` schedule it compacts the
//! log into a Parquet master dataset on object storage, recomputes exact
//! batch views with DuckDB, and commits each run with one manifest write that
//! also moves the time boundary B.
//!
//! Invariant: the only writer of the lake; a run is all-or-nothing.

pub mod backfill;
pub mod baseline;
pub mod dialect;
pub mod engine;
pub mod index;
pub mod lake;
pub mod manifest;
pub mod master;
pub mod recompute;
pub mod run;
pub mod schedule;
pub mod spark;
pub mod views;

pub use backfill::{BackfillReport, backfill};
pub use engine::{BatchEngine, ENGINE_NAMES};
pub use lake::{Lake, LakeWriter};
pub use run::{RunContext, RunReport, run_once};
pub use schedule::{BatchHandle, BatchStatus, Started, control, start};
pub use views::BatchViews;

/// The demo's default schedule: every minute, on the minute.
pub const DEFAULT_SCHEDULE: &str = "0 * * * * *";
