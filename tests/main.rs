//! Every integration test of the pipeline, as one test binary: each file
//! next to this one is a module (`e2e`, `kappa`, …), and `common` is what
//! they share. One binary links DuckDB and librdkafka once instead of once
//! per file. Run one file's tests with `cargo test --workspace --test
//! pipeline e2e::`.

mod alert_rules;
mod alerts;
mod batch_ops;
mod common;
mod compare;
mod compose;
mod dashboard;
mod e2e;
mod guide;
mod kafka_outage;
mod kappa;
mod openapi;
mod roles;
mod speed_kill;
