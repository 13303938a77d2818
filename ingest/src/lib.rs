//! Ingest: the HTTP collector in front of the log (`POST /api/v1/events`) and
//! the traffic generator that feeds it.
//!
//! Invariant: an event is never acknowledged before the log has made it
//! durable. Invalid lines are written to `dead-letter` with their reason and
//! original bytes before the response, so nothing accepted is lost.

pub mod collector;
pub mod generator;
pub mod sender;

use std::sync::Arc;

use lambda_events::Topic;
use lambda_log::{EventLog, LogError};

pub use collector::{IngestConfig, IngestState, router};

/// Partitions of each event topic when the pipeline creates them.
pub const DEFAULT_PARTITIONS: u32 = 4;

/// Creates `funnel-events`, `iot-events` (with `partitions` each) and `dead-letter` (1 partition).
pub async fn ensure_topics(log: &Arc<dyn EventLog>, partitions: u32) -> Result<(), LogError> {
    for topic in Topic::ALL {
        log.create_topic(topic.name(), partitions).await?;
    }
    log.create_topic(Topic::DEAD_LETTER, 1).await
}
