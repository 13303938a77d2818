//! Every integration test of the pipeline, as one test binary: each file
//! next to this one is a module (`e2e`, `kappa`, …), and `common` is what
//! they share. One binary links DuckDB and librdkafka once instead of once
//! per file. Run one file's tests with `cargo test --workspace --test
//! pipeline e2e::`. The fault-injection tests that time outages and kills
//! are a binary of their own, `tests/faults.rs`, where they run alone.

mod alert_rules;
mod alerts;
mod answers;
mod batch_ops;
mod common;
mod compare;
mod compose;
mod dashboard;
mod e2e;
mod guide;
mod kappa;
mod openapi;
mod roles;
