//! Event types, validation, codecs, time buckets and the shared KPI definitions.
//!
//! This crate is pure: no tokio, no I/O, no clock. Every other crate agrees on
//! what an event is, which bucket it falls in and how a KPI is folded by using
//! the definitions here.

pub mod bucket;
pub mod codec;
pub mod decode;
pub mod event;
pub mod event_ref;
pub mod float;
pub mod kpi;
pub mod limits;
mod packed;
pub mod prometheus;
pub mod sketch;
pub mod time;

pub use bucket::{Step, floor_to};
pub use codec::{BodyError, BodyLine, ParsedLine, parse_body, split_body};
pub use event::{Device, DeviceStatus, Event, EventError, EventType, Severity, Topic};
pub use event_ref::EventRef;
pub use kpi::BucketViews;
pub use sketch::{DdSketch, Hll};
