//! Ingest: the HTTP collector in front of the log (`POST /api/v1/events`) and
//! the traffic generator that feeds it.
//!
//! Invariant: an event is never acknowledged before the log has made it
//! durable. Invalid lines are written to `dead-letter` with their reason and
//! original bytes before the response, so nothing accepted is lost.

pub mod collector;
pub mod generator;
pub mod sender;

use std::collections::BTreeMap;
use std::sync::Arc;

use lambda_events::{Topic, limits};
use lambda_log::{EventLog, LogError, TopicRetention};

pub use collector::{IngestConfig, IngestState, Started, router, start};

/// Partitions of each event topic when the pipeline creates them.
pub const DEFAULT_PARTITIONS: u32 = 4;

// The log's record limit is the one the contract's table states.
const _: () = assert!(lambda_log::MAX_RECORD_BYTES == limits::MAX_RECORD_BYTES);

/// The topics with a retention of their own: `dead-letter`, by the
/// contract's bounds ([`limits::DEAD_LETTER_RETENTION_MS`],
/// [`limits::DEAD_LETTER_RETENTION_BYTES`]). The event topics have none: they
/// keep what the batch layer has not read.
pub fn topic_retention() -> BTreeMap<String, TopicRetention> {
    BTreeMap::from([(
        Topic::DEAD_LETTER.to_string(),
        TopicRetention {
            retention_ms: Some(limits::DEAD_LETTER_RETENTION_MS),
            retention_bytes: Some(limits::DEAD_LETTER_RETENTION_BYTES),
        },
    )])
}

/// Creates `funnel-events`, `iot-events` (with `partitions` each) and `dead-letter` (1 partition).
pub async fn ensure_topics(log: &Arc<dyn EventLog>, partitions: u32) -> Result<(), LogError> {
    for topic in Topic::ALL {
        log.create_topic(topic.name(), partitions).await?;
    }
    log.create_topic(Topic::DEAD_LETTER, 1).await
}
