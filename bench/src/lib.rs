//! `lambda bench …`: how fast each layer is, always beside a baseline
//! measured in the same run, so that figures are ratios that hold on noisy
//! machines. The CLI (`lambda bench speed|batch|serve`) only parses flags
//! and calls one of these.

mod measure;

pub mod batch;
pub mod serve;
pub mod speed;

pub use batch::BatchBench;
pub use serve::ServeBench;
pub use speed::SpeedBench;
