//! The lake as readers see it, without DuckDB: object storage picked by URL
//! ([`store::Lake`]), committed manifests ([`manifest`]), batch views read
//! back from their files ([`views::BatchViews`]), and the batch runner's
//! handle and status ([`control`]). Serving links this crate, not the batch
//! layer: DuckDB and the lake's write side stay in `lambda-batch`.

pub mod control;
pub mod error;
pub mod manifest;
pub mod store;
pub mod views;

pub use control::{BatchHandle, BatchStatus, RunNowError, RunReport};
pub use error::LakeError;
pub use store::Lake;
pub use views::{BatchViews, ViewName};
