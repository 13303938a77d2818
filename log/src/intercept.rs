//! [`Intercepted`]: a log that forwards every call to another and lets an
//! [`Interceptor`] change what a few of them do — a fetch that fails, a
//! clock that reads behind, a log that promises nothing. What tests put
//! in front of a real log to see how its callers take a fault, without
//! writing out every method of [`EventLog`] again for each fault (two
//! tests did, and each new method had to be added to both). A method the
//! trait gains must be forwarded here too: a default method left out would
//! run the default, not the inner log's.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    EventLog, FetchPosition, LogError, PartitionRange, Position, Record, StoredRecord, ValueSpan,
    ValuesRead,
};

/// What an [`Intercepted`] log does differently from the log behind it.
/// Each hook's default is the inner log's own behaviour.
pub trait Interceptor: Send + Sync + fmt::Debug + 'static {
    /// Runs before each read ([`EventLog::fetch`] and
    /// [`EventLog::fetch_values`]); an error is returned instead of
    /// reading.
    fn before_read(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// The promise callers see ([`EventLog::complete_before`]), given the
    /// log behind (asked only if the hook asks it: reading a promise moves
    /// it).
    fn complete_before(&self, inner: &dyn EventLog) -> Option<i64> {
        inner.complete_before()
    }

    /// The clock callers see ([`EventLog::clock_ms`]), given the inner
    /// log's.
    fn clock_ms(&self, inner: Option<i64>) -> Option<i64> {
        inner
    }

    /// Whether [`EventLog::fetch_values`] goes to the inner log's own, or
    /// reads through [`EventLog::fetch`] as the trait's default does (as
    /// Kafka's log does).
    fn forward_fetch_values(&self) -> bool {
        true
    }
}

/// `inner`, with `interceptor`'s hooks in front of it.
#[derive(Debug)]
pub struct Intercepted<I> {
    inner: Arc<dyn EventLog>,
    interceptor: I,
}

impl<I: Interceptor> Intercepted<I> {
    /// `inner` with `interceptor`'s hooks.
    pub fn new(inner: Arc<dyn EventLog>, interceptor: I) -> Intercepted<I> {
        Intercepted { inner, interceptor }
    }
}

#[async_trait::async_trait]
impl<I: Interceptor> EventLog for Intercepted<I> {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.inner.create_topic(topic, partitions).await
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.inner.partition_count(topic).await
    }

    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        self.inner.append(topic, records).await
    }

    async fn ranges(&self, topic: &str) -> Result<Vec<PartitionRange>, LogError> {
        self.inner.ranges(topic).await
    }

    async fn fetch(
        &self,
        positions: &[FetchPosition],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError> {
        self.interceptor.before_read()?;
        self.inner.fetch(positions, max_records, max_wait).await
    }

    async fn fetch_values(
        &self,
        spans: &mut [&mut ValueSpan],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<ValuesRead, LogError> {
        let positions = ValueSpan::due(spans);
        // Nothing due: answered at once, as both logs do, no read made.
        if positions.is_empty() {
            return Ok(ValuesRead::default());
        }
        if self.interceptor.forward_fetch_values() {
            self.interceptor.before_read()?;
            return self.inner.fetch_values(spans, max_records, max_wait).await;
        }
        let records = self.fetch(&positions, max_records, max_wait).await?;
        Ok(crate::append_values(spans, records))
    }

    fn complete_before(&self) -> Option<i64> {
        self.interceptor.complete_before(self.inner.as_ref())
    }

    fn clock_ms(&self) -> Option<i64> {
        self.interceptor.clock_ms(self.inner.clock_ms())
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError> {
        self.inner.commit(group, topic, offsets).await
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        self.inner.committed(group, topic).await
    }

    async fn enforce_retention(&self) -> Result<u64, LogError> {
        self.inner.enforce_retention().await
    }

    async fn close(&self) -> Result<(), LogError> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::{EmbeddedConfig, EmbeddedLog};

    /// Fails the first read, reads an hour behind, promises nothing.
    #[derive(Debug, Default)]
    struct Faults {
        reads: AtomicU32,
    }

    impl Interceptor for Faults {
        fn before_read(&self) -> Result<(), LogError> {
            match self.reads.fetch_add(1, Ordering::SeqCst) {
                0 => Err(LogError::Unavailable("down".into())),
                _ => Ok(()),
            }
        }
        fn complete_before(&self, _: &dyn EventLog) -> Option<i64> {
            None
        }
        fn clock_ms(&self, inner: Option<i64>) -> Option<i64> {
            inner.map(|now| now - 3_600_000)
        }
    }

    /// The hooks change what they say, and nothing else: what is written
    /// through the interceptor is read back through it, and from the log
    /// behind it.
    #[tokio::test]
    async fn hooks_change_their_calls_and_the_rest_is_forwarded() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let embedded = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .expect("the log");
        let inner: Arc<dyn EventLog> = Arc::new(embedded);
        let log = Intercepted::new(Arc::clone(&inner), Faults::default());
        log.create_topic("t", 1).await.expect("a topic");
        assert_eq!(log.partition_count("t").await.expect("a count"), 1);
        log.append("t", vec![Record::keyed("k", b"v".to_vec(), 1)])
            .await
            .expect("appended");
        // Read first: the clock only moves on.
        let behind = log.clock_ms().expect("a clock");
        let wall = inner.clock_ms().expect("the embedded log's clock");
        assert!(wall - behind >= 3_600_000, "{wall} - {behind}");
        assert!(inner.complete_before().is_some());
        assert_eq!(log.complete_before(), None);
        let at = [FetchPosition {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        }];
        let first = log.fetch(&at, 10, Duration::ZERO).await;
        assert!(matches!(first, Err(LogError::Unavailable(_))), "{first:?}");
        let read = log.fetch(&at, 10, Duration::ZERO).await.expect("read");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].record.value.as_ref(), b"v");
        log.commit("g", "t", &[(0, 1)]).await.expect("committed");
        let committed = inner.committed("g", "t").await.expect("committed offsets");
        assert_eq!(committed.get(&0), Some(&1));
        log.close().await.expect("closed");
    }
}
