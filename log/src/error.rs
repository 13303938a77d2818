//! Errors of the log backends.

use std::io;

/// What can go wrong talking to the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The URL names no backend this build knows.
    #[error("unsupported log url {0:?}: expected embedded://PATH or kafka://HOST:PORT")]
    UnsupportedUrl(String),
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// The topic exists with another partition count.
    #[error("topic {topic} exists with {existing} partitions, not {requested}")]
    PartitionMismatch {
        /// Topic name.
        topic: String,
        /// Partitions it has.
        existing: u32,
        /// Partitions asked for.
        requested: u32,
    },
    /// The partition index is past the topic's partition count.
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// The offset is outside the retained range.
    #[error("topic {topic} partition {partition}: offset {offset} out of range {start}..{end}")]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Offset asked for.
        offset: u64,
        /// Earliest retained offset.
        start: u64,
        /// Next offset to be written.
        end: u64,
    },
    /// A consumer group's committed offset is past the partition's end: the
    /// log lost records the group had consumed, or was restored from an
    /// older copy. Resuming there would skip whatever is written until the
    /// end catches up, so it is an error, not a position.
    #[error(
        "group {group} topic {topic} partition {partition}: committed offset {committed} is past \
         the partition's end {end} (the log lost records, or was restored from an older copy)"
    )]
    GroupOffsetPastEnd {
        /// Consumer group.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// The group's committed next offset.
        committed: u64,
        /// The partition's end (next offset to be written).
        end: u64,
    },
    /// A record is larger than [`crate::MAX_RECORD_BYTES`].
    #[error("record of {size} bytes exceeds the {limit} byte limit")]
    RecordTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A file of the log is damaged in a way a crash cannot explain; for a
    /// segment: valid records follow the bad bytes, or it is not the
    /// partition's last. The log refuses to open rather than drop
    /// acknowledged records.
    #[error("segment {path}: corrupt record at byte {position}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Where the bad frame starts.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is wrong or unsupported (a client cannot be created with
    /// it); retrying will not help.
    #[error("log misconfigured: {0}")]
    Config(String),
    /// The backend refused records for good (a broker's size limit below
    /// ours); retrying will not help.
    #[error("log refused the records: {0}")]
    Refused(String),
    /// The log is closed (shutting down).
    #[error("log is closed")]
    Closed,
    /// The backend cannot make records durable right now; try again later.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

impl LogError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LogError {
        let context = context.into();
        move |source| LogError::Io { context, source }
    }

    /// `Ok` if an existing topic has the partition count asked for, else [`LogError::PartitionMismatch`].
    pub fn check_partitions(topic: &str, existing: u32, requested: u32) -> Result<(), LogError> {
        if existing == requested {
            Ok(())
        } else {
            Err(LogError::PartitionMismatch {
                topic: topic.into(),
                existing,
                requested,
            })
        }
    }

    /// `Ok` unless `group`'s committed offset for a partition is past its
    /// `end`, else [`LogError::GroupOffsetPastEnd`]. Every backend checks
    /// committed offsets with this before handing them out.
    pub(crate) fn check_committed(
        group: &str,
        topic: &str,
        partition: u32,
        committed: u64,
        end: u64,
    ) -> Result<(), LogError> {
        if committed <= end {
            Ok(())
        } else {
            Err(LogError::GroupOffsetPastEnd {
                group: group.into(),
                topic: topic.into(),
                partition,
                committed,
                end,
            })
        }
    }

    /// Whether retrying later may succeed (the backend is behind or down).
    pub fn is_transient(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}
