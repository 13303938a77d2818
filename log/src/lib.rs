//! The log: the `EventLog` trait every layer reads and writes through, and
//! its backends, picked by URL scheme (`embedded://./data/log` is the default).
//!
//! Promises (DESIGN.md §4): per-partition order; an append returns only once
//! the records are durable; consumer groups track offsets per partition;
//! retention by time and size. This is the only crate that may link rdkafka.

pub use bytes::Bytes;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub mod conformance;
pub mod embedded;
mod error;
pub mod intercept;
pub mod kafka;
pub mod partitioner;

pub use embedded::{EmbeddedConfig, EmbeddedLog};
pub use error::LogError;
pub use kafka::{KafkaConfig, KafkaLog};

/// Largest record value accepted by any backend (Kafka's default `message.max.bytes` is ~1 MB).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// A record to append: what a Kafka producer sends. Key and value are
/// [`Bytes`]: records read back share the buffer they were read into (no
/// allocation per record), and a clone shares the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Partitioning key; records with one key land in one partition, in order.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Producer time in milliseconds since the epoch; retention by time uses it.
    pub timestamp_ms: i64,
    /// Named metadata (the dead-letter topic carries its reason here).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// Its key's and value's bytes: what [`MAX_RECORD_BYTES`] bounds.
    pub fn size(&self) -> usize {
        self.value.len() + self.key.as_ref().map_or(0, |key| key.len())
    }

    /// A keyed record without headers (the key is copied: keys are short).
    pub fn keyed(key: impl AsRef<[u8]>, value: impl Into<Bytes>, timestamp_ms: i64) -> Record {
        Record {
            key: Some(Bytes::copy_from_slice(key.as_ref())),
            value: value.into(),
            timestamp_ms,
            headers: Vec::new(),
        }
    }

    /// A record for the `dead-letter` topic: the original bytes as the
    /// value, `reason` and `source` (where it came from) as headers.
    pub fn dead_letter(
        original: impl Into<Bytes>,
        reason: &str,
        source: &str,
        now_ms: i64,
    ) -> Record {
        Record {
            key: None,
            value: original.into(),
            timestamp_ms: now_ms,
            headers: vec![
                ("reason".into(), reason.as_bytes().to_vec()),
                ("source".into(), source.as_bytes().to_vec()),
            ],
        }
    }

    /// Notes, on a dead-letter record whose value holds only the first bytes
    /// of an original of `original_len` bytes, how long the original was
    /// (header `original_bytes`); a record holding all of it is unchanged.
    pub fn noting_original_len(mut self, original_len: usize) -> Record {
        if original_len > self.value.len() {
            self.headers.push((
                "original_bytes".into(),
                original_len.to_string().into_bytes(),
            ));
        }
        self
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key.as_deref().map(String::from_utf8_lossy))
            .field("value", &String::from_utf8_lossy(&self.value))
            .field("timestamp_ms", &self.timestamp_ms)
            .field("headers", &self.headers.len())
            .finish()
    }
}

/// A record as read back, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The topic it was read from (shared by every record of a fetch: no
    /// allocation per record).
    pub topic: std::sync::Arc<str>,
    /// Partition index.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The record itself.
    pub record: Record,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Partition index.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// A topic's own retention (Kafka's topic-level `retention.ms` and
/// `retention.bytes`), independent of what any consumer group has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicRetention {
    /// Records older than this (by timestamp) go, a closed segment at a time.
    pub retention_ms: Option<i64>,
    /// The oldest records go while a partition holds more bytes than this.
    pub retention_bytes: Option<u64>,
}

/// The retained range of one partition: `start..end` (end is the next offset to be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    /// Earliest retained offset.
    pub start: u64,
    /// One past the last durable offset (the high watermark).
    pub end: u64,
}

/// One partition to fetch from and the offset to start at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchPosition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
}

/// What a reader that knows a partition's topic keeps of a record read
/// from it: see [`EventLog::fetch_values`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRecord {
    /// The record's value.
    pub value: Bytes,
    /// Its timestamp (ms since the epoch).
    pub timestamp_ms: i64,
    /// Its offset in the partition.
    pub offset: u64,
}

/// One partition read for its values, up to an end: see
/// [`EventLog::fetch_values`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSpan {
    /// Where the next read starts: past the last record appended.
    pub position: FetchPosition,
    /// Records at or past this offset are not read.
    pub end: u64,
    /// Records read, in offset order; the reader takes them from here.
    pub records: Vec<ValueRecord>,
}

impl ValueSpan {
    /// A span from `position` with no end: whatever the partition holds
    /// when read (the speed layer's live fetch).
    pub fn open(position: FetchPosition) -> ValueSpan {
        ValueSpan {
            position,
            end: u64::MAX,
            records: Vec::new(),
        }
    }

    /// The positions of the spans not read to their end.
    pub fn due(spans: &[&mut ValueSpan]) -> Vec<FetchPosition> {
        spans
            .iter()
            .filter(|s| s.position.offset < s.end)
            .map(|s| s.position.clone())
            .collect()
    }
}

/// How much one [`EventLog::fetch_values`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValuesRead {
    /// Records appended to the spans.
    pub records: usize,
    /// Their keys' and values' bytes ([`Record::size`]).
    pub bytes: u64,
}

/// Appends each of `records` to the span of its topic and partition, if
/// its offset is past the span's position and before its end (others are
/// dropped): [`EventLog::fetch_values`] for a backend that fetches whole
/// records. A fetch brings each partition's records in a run: the span is
/// looked up once per run.
pub fn append_values(
    spans: &mut [&mut ValueSpan],
    records: impl IntoIterator<Item = StoredRecord>,
) -> ValuesRead {
    let mut read = ValuesRead::default();
    let mut at = None;
    for stored in records {
        let is = |s: &ValueSpan| {
            s.position.partition == stored.partition && *s.position.topic == *stored.topic
        };
        if !at.is_some_and(|i: usize| is(spans[i])) {
            at = spans.iter().position(|s| is(s));
        }
        let Some(i) = at else { continue };
        let span = &mut *spans[i];
        if stored.offset < span.position.offset || stored.offset >= span.end {
            continue;
        }
        span.position.offset = stored.offset + 1;
        read.records += 1;
        read.bytes += stored.record.size() as u64;
        span.records.push(ValueRecord {
            value: stored.record.value,
            timestamp_ms: stored.record.timestamp_ms,
            offset: stored.offset,
        });
    }
    read
}

/// A durable, partitioned, append-only log with consumer-group offsets.
///
/// Implementations: [`EmbeddedLog`] (`embedded://DIR`) and [`KafkaLog`]
/// (`kafka://HOST:PORT`); both pass [`conformance`].
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + fmt::Debug + 'static {
    /// Creates `topic` with `partitions` partitions; a no-op if it exists.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError>;

    /// Number of partitions of `topic`.
    async fn partition_count(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends `records` to `topic`, partitioned by key hash (round robin when
    /// unkeyed), and returns each record's position once all are durable.
    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError>;

    /// The retained offset range of every partition of `topic`, by partition index.
    async fn ranges(&self, topic: &str) -> Result<Vec<PartitionRange>, LogError>;

    /// Reads up to `max_records` records in total from the given positions. If
    /// none is available it waits up to `max_wait` for an append (without
    /// spinning) and returns what arrived, possibly nothing. Reading below a
    /// partition's start offset or past its end is an
    /// [`LogError::OffsetOutOfRange`] (at the end it waits).
    async fn fetch(
        &self,
        positions: &[FetchPosition],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError>;

    /// Reads like [`EventLog::fetch`] for readers that know each
    /// partition's topic and want each record's value, time and offset
    /// (the kappa replay): each record read for `spans[i]` is appended to
    /// its `records` (what they held is kept), none at or past its `end`,
    /// and its `position` moves past it. Spans read to their end are not
    /// asked for; when none is left it returns at once. The replay moved
    /// each record a fetch brought (128 bytes, its topic's name and key
    /// shared by counted references) into its partition's buffer, ~3 % of
    /// its samples in `perf`; the embedded log writes values straight into
    /// the spans (on a current-thread runtime it reads on the blocking pool
    /// and appends). The default fetches and appends. On an error the spans
    /// are as they were.
    async fn fetch_values(
        &self,
        spans: &mut [&mut ValueSpan],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<ValuesRead, LogError> {
        let positions = ValueSpan::due(spans);
        if positions.is_empty() {
            return Ok(ValuesRead::default());
        }
        let records = self.fetch(&positions, max_records, max_wait).await?;
        Ok(append_values(spans, records))
    }

    /// A time (ms, as record timestamps) before which every record this
    /// log will ever hold is readable now: none stamped before it is being
    /// written or will be. `None`: the log promises nothing of the kind
    /// (Kafka: producers stamp records with their own clocks). The live
    /// speed layer folds only records stamped before it, in timestamp
    /// order across partitions: the order a replay of the log folds them
    /// in, wherever its fetches cut the log.
    fn complete_before(&self) -> Option<i64> {
        None
    }

    /// The log's own clock (ms since the epoch), if it stamps records by
    /// one: the embedded log's, which follows the wall clock forward,
    /// never back, and starts past every stamp it holds. A producer in the
    /// same process (the collector) stamps its records by it: stamped by a
    /// wall clock stepped back a minute, they were all behind what the
    /// log had promised, raised to it, and the log's time crept a
    /// millisecond a write for that minute — no partition going idle, the
    /// watermark held back (a hostile run). `None` (Kafka): producers
    /// stamp by their own clocks.
    fn clock_ms(&self) -> Option<i64> {
        None
    }

    /// Stores `group`'s next offset to read for partitions of `topic`.
    async fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError>;

    /// `group`'s committed next offsets for `topic`, by partition index
    /// (absent: never committed). An offset past its partition's end is a
    /// [`LogError::GroupOffsetPastEnd`], never a position to resume from.
    async fn committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>, LogError>;

    /// Applies retention now and returns how many records it dropped.
    async fn enforce_retention(&self) -> Result<u64, LogError>;

    /// Stops accepting appends and waits for what is in flight to be durable.
    async fn close(&self) -> Result<(), LogError>;
}

/// Runs blocking work (a read, a fold) on the thread the task is on: on
/// tokio's multi-threaded runtime through `block_in_place`, the worker's
/// other tasks moving to another thread meanwhile; on a current-thread
/// runtime, which does not allow that, on the blocking pool. A fetch read
/// on a pool thread and folded on another crossed between cores, its
/// records in the other core's cache, and each hand-off woke a thread:
/// `lambda bench speed --only live|kappa` (which runs its rounds on the
/// runtime's `block_on` thread), read and fold on one thread, log -> views
/// 1.87–1.91 → 2.09–2.10 M events/s per core, the kappa replay 1.65–1.81 →
/// 1.91–1.94 M. On a worker, the first call hands the worker's other tasks
/// to another thread and the task goes on in place until it waits. A panic
/// in `work` comes back as an error naming it, as from the pool.
pub async fn on_this_thread<T, F>(work: F) -> Result<T, String>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if multi_threaded() {
        block_here(work)
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| e.to_string())
    }
}

/// [`on_this_thread`] for work that borrows from the task (it need not be
/// `Send` or `'static`): `None` on a current-thread runtime, where it does
/// not run (the caller reads into what it owns on the pool instead).
pub fn in_place<T>(work: impl FnOnce() -> T) -> Option<Result<T, String>> {
    multi_threaded().then(|| block_here(work))
}

fn multi_threaded() -> bool {
    use tokio::runtime::{Handle, RuntimeFlavor};
    Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread
}

/// Runs `work` through `block_in_place` (a multi-threaded runtime's
/// worker), a panic coming back as an error naming it.
fn block_here<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    let work = std::panic::AssertUnwindSafe(work);
    tokio::task::block_in_place(|| std::panic::catch_unwind(work)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("panicked: {message}")
    })
}

/// Opens the log a URL names: `embedded://PATH` (relative or absolute) or
/// `kafka://HOST:PORT[,HOST:PORT…][?option=value&…]` (see [`KafkaConfig::from_url_tail`]).
/// `embedded.topic_retention` applies to both: on Kafka it becomes the
/// topic's `retention.ms`/`retention.bytes` when the topic is created.
pub async fn open(url: &str, embedded: EmbeddedConfig) -> Result<Arc<dyn EventLog>, LogError> {
    if let Some(path) = url.strip_prefix("embedded://") {
        let log = EmbeddedLog::open(path, embedded).await?;
        return Ok(Arc::new(log));
    }
    if let Some(tail) = url.strip_prefix("kafka://") {
        let mut config = KafkaConfig::from_url_tail(tail)?;
        config.topic_retention = embedded.topic_retention;
        return Ok(Arc::new(KafkaLog::open(config)?));
    }
    Err(LogError::UnsupportedUrl(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::on_this_thread;

    /// On the multi-threaded runtime the work runs on the caller's thread
    /// (what keeps a fetch's records in its cache for the fold), and a
    /// panic in it comes back as an error naming it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_work_runs_on_the_task_s_thread_on_the_multi_threaded_runtime() {
        let caller = std::thread::current().id();
        let ran_on = on_this_thread(|| std::thread::current().id())
            .await
            .unwrap();
        assert_eq!(ran_on, caller);
        let failed = on_this_thread(|| -> u32 { panic!("a fold gone wrong") }).await;
        assert!(failed.unwrap_err().contains("a fold gone wrong"));
        // The worker goes on afterwards.
        assert_eq!(on_this_thread(|| 7).await, Ok(7));
    }

    /// A current-thread runtime does not allow blocking in place: the
    /// work goes to the blocking pool, a thread of its own.
    #[tokio::test(flavor = "current_thread")]
    async fn blocking_work_goes_to_the_pool_on_a_current_thread_runtime() {
        let caller = std::thread::current().id();
        let ran_on = on_this_thread(|| std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(ran_on, caller);
        let failed = on_this_thread(|| -> u32 { panic!("a fold gone wrong") }).await;
        assert!(failed.unwrap_err().contains("panic"));
    }
}
