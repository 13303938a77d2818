//! `lambda bench …`: how fast each layer is, always beside a baseline
//! measured in the same run, so that figures are ratios that hold on noisy
//! machines. The CLI (`lambda bench`, `lambda bench speed|batch|ingest|serve|memory|checkpoint|failover`;
//! `lambda bench backfill`, which needs a Spark cluster, runs only on its own)
//! only parses flags and calls [`all`] or one of these; each hands back its
//! figures ([`report::Figure`]) and prints its own details.

mod client;
mod measure;

pub mod backfill;
pub mod batch;
pub mod checkpoint;
pub mod failover;
pub mod ingest;
pub mod memory;
pub mod report;
pub mod serve;
pub mod speed;

use std::path::Path;

pub use report::{Figure, Report};

/// `lambda bench`: every benchmark with its default settings, one after
/// the other; prints one table of every figure and writes it as JSON to `json`.
pub async fn all(json: &Path) -> anyhow::Result<Report> {
    let mut figures = speed::run(SpeedBench::default()).await?;
    figures.extend(batch::run(BatchBench::default()).await?);
    figures.extend(ingest::run(IngestBench::default()).await?);
    figures.extend(serve::run(ServeBench::default()).await?);
    figures.extend(memory::run(MemoryBench::default()).await?);
    figures.extend(checkpoint::run(CheckpointBench::default()).await?);
    figures.extend(failover::run(FailoverBench::default()).await?);
    let report = Report::new(figures);
    println!("\n{}\n{}", report.machine, report.table());
    report.write_json(json)?;
    println!("written to {}", json.display());
    Ok(report)
}

pub use backfill::BackfillBench;
pub use batch::BatchBench;
pub use checkpoint::CheckpointBench;
pub use failover::FailoverBench;
pub use ingest::IngestBench;
pub use memory::MemoryBench;
pub use serve::ServeBench;
pub use speed::SpeedBench;
