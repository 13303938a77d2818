//! The Kafka backend (`kafka://HOST:PORT[,HOST:PORT…]`) through rdkafka.
//!
//! Appends go through an idempotent producer with `acks=all`, to the
//! partition Kafka's murmur2 picks for the key (the same as the embedded
//! log), and return once every record is acknowledged. Fetches use one
//! consumer assigned to exactly the asked positions (no group membership, so
//! callers keep control of offsets, as with the embedded log); group offsets
//! are committed with a consumer per group, and read back checked against
//! each partition's end. Extra client settings (TLS, SASL, timeouts) are
//! passed through as librdkafka properties.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

mod membership;
pub use membership::{Change, GroupMember, MembershipConfig, Owned, Ownership};

use crate::partitioner::Partitioner;
use crate::{
    Bytes, EventLog, FetchPosition, LogError, MAX_RECORD_BYTES, PartitionRange, Position, Record,
    StoredRecord, TopicRetention,
};

/// Settings of the Kafka backend.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Replication factor of topics this backend creates.
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`, `sasl.mechanism`).
    pub client_options: Vec<(String, String)>,
    /// How long metadata, offset and commit requests may take.
    pub request_timeout: Duration,
    /// Check each reported high watermark by reading the partition's last
    /// batch. For brokers that report the base offset of the last batch plus
    /// one instead of its last offset plus one (tansu 0.6 does): without the
    /// check, the tail of the last batch is invisible to snapshots until the
    /// next append. Off for Apache Kafka, which needs no check.
    pub probe_end: bool,
    /// Topics created with a retention of their own (`retention.ms`,
    /// `retention.bytes`); others get the broker's defaults. A topic that
    /// exists already keeps what it has.
    pub topic_retention: BTreeMap<String, TopicRetention>,
}

impl KafkaConfig {
    /// Defaults for `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            replication_factor: 1,
            client_options: Vec::new(),
            request_timeout: Duration::from_secs(10),
            probe_end: false,
            topic_retention: BTreeMap::new(),
        }
    }

    /// Parses `HOST:PORT[,HOST:PORT…][?key=value&…]` (what follows `kafka://`).
    /// Query keys: `replication_factor`, `probe_end` (true/false),
    /// `request_timeout_ms`; any other key is a librdkafka property passed to
    /// every client, e.g. `security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512`
    /// or `debug=cgrp` (its logs go to the `rdkafka` tracing target).
    pub fn from_url_tail(tail: &str) -> Result<KafkaConfig, LogError> {
        let (servers, query) = tail.split_once('?').unwrap_or((tail, ""));
        if servers.is_empty() {
            return Err(LogError::UnsupportedUrl(format!(
                "kafka://{tail}: no bootstrap servers"
            )));
        }
        let mut config = KafkaConfig::new(servers);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                LogError::UnsupportedUrl(format!("kafka URL option {pair:?} is not key=value"))
            })?;
            config.set(key, value)?;
        }
        Ok(config)
    }

    /// Sets one option by name (see [`KafkaConfig::from_url_tail`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), LogError> {
        let bad =
            |what: &str| LogError::UnsupportedUrl(format!("kafka option {key}={value:?}: {what}"));
        match key {
            "replication_factor" => {
                self.replication_factor = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("expected a positive integer"))?;
            }
            "probe_end" => {
                self.probe_end = value.parse().map_err(|_| bad("expected true or false"))?;
            }
            "request_timeout_ms" => {
                let ms: u64 = value.parse().map_err(|_| bad("expected milliseconds"))?;
                self.request_timeout = Duration::from_millis(ms);
            }
            // librdkafka's debug contexts, e.g. `debug=cgrp,consumer`.
            _ if key.contains('.') || key == "debug" => self
                .client_options
                .push((key.to_string(), value.to_string())),
            _ => return Err(bad("unknown option (librdkafka properties contain a dot)")),
        }
        Ok(())
    }
}

/// Most fetch consumers kept at once (beyond it the cache starts over).
const MAX_READERS: usize = 32;
/// Farthest a reader seeks back for a batch a broker skipped (records).
const MAX_GAP_BACKOFF: u64 = 1 << 20;

/// A consumer fetches read through, and where it stands.
struct Reader {
    consumer: BaseConsumer,
    /// The positions it is assigned to, advanced as records are returned.
    assigned: Vec<FetchPosition>,
    /// Last known (low, high) watermark per (topic, partition).
    watermarks: HashMap<(String, u32), (u64, u64)>,
    /// Checks reported high watermarks, when [`KafkaConfig::probe_end`] is on.
    probe: Option<Arc<Mutex<BaseConsumer>>>,
    /// How far back the next seek goes, per partition that skipped ahead
    /// (see [`Reader::fetch`]).
    gap_backoff: HashMap<(String, u32), u64>,
}

/// The Kafka log.
pub struct KafkaLog {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    meta: Arc<BaseConsumer>,
    /// One consumer per distinct set of partitions fetched (the speed layer's,
    /// each batch read's), so callers do not keep re-assigning one consumer.
    readers: Mutex<HashMap<Vec<(String, u32)>, Arc<Mutex<Reader>>>>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    partitioner: Partitioner,
    probe: Option<Arc<Mutex<BaseConsumer>>>,
    /// Partition counts appends route by, refreshed after [`PARTITIONS_TTL`].
    partition_counts: Mutex<HashMap<String, (u32, Instant)>>,
}

/// How long an append trusts a cached partition count (librdkafka's own
/// metadata refresh is 5 minutes; partitions are only ever added).
const PARTITIONS_TTL: Duration = Duration::from_secs(30);

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .finish()
    }
}

fn unavailable(context: &str) -> impl Fn(KafkaError) -> LogError + '_ {
    move |e| LogError::Unavailable(format!("{context}: {e}"))
}

/// A client that cannot be created is a setting to fix (a bad
/// `security.protocol`, a feature this build lacks), not a broker that is
/// down: [`LogError::Config`], which no caller retries.
fn config_error(context: &str) -> impl Fn(KafkaError) -> LogError + '_ {
    move |e| LogError::Config(format!("{context}: {e}"))
}

/// Headroom over [`MAX_RECORD_BYTES`] (key and value) in the producer's
/// `message.max.bytes` and the `max.message.bytes` of the topics this backend
/// creates, for headers and framing: a record this backend accepts is never
/// refused for its size by librdkafka, nor by a broker for a topic we made.
const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

/// What a failed produce means: a record too large for the broker (its
/// `message.max.bytes`) is refused for good, [`LogError::Refused`] naming the
/// topic; anything else may pass, [`LogError::Unavailable`].
fn produce_error(topic: &str, e: KafkaError) -> LogError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => LogError::Refused(format!(
            "producing to {topic}: the broker refuses a record this large ({e}); \
             raise the topic's max.message.bytes or send smaller records"
        )),
        _ => LogError::Unavailable(format!("producing to {topic}: {e}")),
    }
}

impl KafkaLog {
    /// Connects the clients (connections are made lazily by librdkafka).
    pub fn open(config: KafkaConfig) -> Result<KafkaLog, LogError> {
        let base = |extra: &[(&str, &str)]| {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", &config.bootstrap_servers);
            c.set("allow.auto.create.topics", "false");
            set_reconnect_backoff(&mut c);
            for (k, v) in &config.client_options {
                c.set(k, v);
            }
            for (k, v) in extra {
                c.set(*k, *v);
            }
            c
        };
        let max_message_bytes = (MAX_RECORD_BYTES + MESSAGE_OVERHEAD_BYTES).to_string();
        let producer: FutureProducer = base(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
            ("message.max.bytes", &max_message_bytes),
        ])
        .create()
        .map_err(config_error("creating the kafka producer"))?;
        let admin = base(&[])
            .create()
            .map_err(config_error("creating the kafka admin client"))?;
        // No transactions are used, so the end of a partition is its high
        // watermark, not the last stable offset (some brokers lag on the
        // latter). A consumer's setting: the producer would warn about it.
        let meta = base(&[("isolation.level", "read_uncommitted")])
            .create()
            .map_err(config_error("creating the kafka metadata client"))?;
        let probe = if config.probe_end {
            let consumer: BaseConsumer = fetch_client(&config)
                .create()
                .map_err(config_error("creating the kafka probe consumer"))?;
            Some(Arc::new(Mutex::new(consumer)))
        } else {
            None
        };
        Ok(KafkaLog {
            config,
            producer,
            admin,
            meta: Arc::new(meta),
            readers: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            partitioner: Partitioner::default(),
            probe,
            partition_counts: Mutex::new(HashMap::new()),
        })
    }

    /// The partition count appends route by: cached, so an append does not
    /// wait for a metadata round trip.
    fn cached_partitions(&self, topic: &str) -> Result<u32, LogError> {
        if let Some((n, at)) = self.partition_counts.lock().get(topic)
            && at.elapsed() < PARTITIONS_TTL
        {
            return Ok(*n);
        }
        let n = self.topic_partitions(topic)?;
        self.partition_counts
            .lock()
            .insert(topic.to_string(), (n, Instant::now()));
        Ok(n)
    }

    /// `(low, high)` of a partition, the high one checked by a probe when configured.
    fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        self.metadata().watermarks(topic, partition)
    }

    fn topic_partitions(&self, topic: &str) -> Result<u32, LogError> {
        self.metadata().topic_partitions(topic)
    }

    /// What metadata and watermark requests need, to run off the async
    /// runtime (each waits on the broker; with `probe_end`, reads a batch).
    fn metadata(&self) -> Metadata {
        Metadata {
            meta: Arc::clone(&self.meta),
            probe: self.probe.clone(),
            timeout: self.config.request_timeout,
        }
    }

    /// The reader for exactly these partitions, created on first use.
    fn reader(&self, positions: &[FetchPosition]) -> Result<Arc<Mutex<Reader>>, LogError> {
        let mut key: Vec<(String, u32)> = positions
            .iter()
            .map(|p| (p.topic.clone(), p.partition))
            .collect();
        key.sort();
        let mut readers = self.readers.lock();
        if let Some(reader) = readers.get(&key) {
            return Ok(Arc::clone(reader));
        }
        if readers.len() >= MAX_READERS {
            readers.clear();
        }
        let consumer = fetch_client(&self.config)
            .create()
            .map_err(unavailable("creating a kafka consumer"))?;
        let reader = Reader {
            consumer,
            assigned: Vec::new(),
            watermarks: HashMap::new(),
            probe: self.probe.clone(),
            gap_backoff: HashMap::new(),
        };
        let reader = Arc::new(Mutex::new(reader));
        readers.insert(key, Arc::clone(&reader));
        Ok(reader)
    }

    fn group_consumer(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut groups = self.groups.lock();
        if let Some(consumer) = groups.get(group) {
            return Ok(Arc::clone(consumer));
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.bootstrap_servers);
        c.set("group.id", group);
        c.set("enable.auto.commit", "false");
        for (k, v) in &self.config.client_options {
            c.set(k, v);
        }
        let consumer: Arc<BaseConsumer> = Arc::new(
            c.create()
                .map_err(unavailable("creating a kafka group consumer"))?,
        );
        groups.insert(group.to_string(), Arc::clone(&consumer));
        Ok(consumer)
    }
}

/// What every consumer of ours sets: the brokers, `group`, no automatic
/// commits or offset stores (offsets are committed after checkpoints), no
/// topics created by reading, the reconnect backoff. Set what is the
/// consumer's own next, then [`with_client_options`].
pub(super) fn consumer_client(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    c.set("allow.auto.create.topics", "false");
    c.set("group.id", group);
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    set_reconnect_backoff(&mut c);
    c
}

/// The URL's librdkafka properties, set last: the user's word wins.
pub(super) fn with_client_options(mut c: ClientConfig, config: &KafkaConfig) -> ClientConfig {
    for (k, v) in &config.client_options {
        c.set(k, v);
    }
    c
}

/// Settings of a consumer that reads at positions it is given (no group membership).
fn fetch_client(config: &KafkaConfig) -> ClientConfig {
    let mut c = consumer_client(config, "lambda-pipeline-fetch");
    c.set("auto.offset.reset", "error");
    c.set("fetch.wait.max.ms", "100");
    c.set("isolation.level", "read_uncommitted");
    with_client_options(c, config)
}

/// Reconnect within a second of a broker coming back. librdkafka's default
/// backoff grows to 10 s, so a producer that kept retrying through an outage
/// would keep ingest answering 503 for up to 10 s after the brokers are back.
fn set_reconnect_backoff(c: &mut ClientConfig) {
    c.set("reconnect.backoff.ms", "100");
    c.set("reconnect.backoff.max.ms", "1000");
}

/// Reads from the last reported record (`high - 1`) and returns one past
/// the last offset that fetch delivered: the true end when the broker reported
/// the base offset of its last batch (the fetch returns the whole batch), and
/// `high` itself when the report was right.
fn probe_end(
    probe: &BaseConsumer,
    topic: &str,
    partition: u32,
    (low, high): (u64, u64),
    timeout: Duration,
) -> Result<u64, LogError> {
    if high <= low {
        return Ok(high);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, Offset::Offset(high as i64 - 1))
        .map_err(unavailable("building a probe assignment"))?;
    probe
        .assign(&tpl)
        .map_err(unavailable("assigning the probe"))?;
    let mut end = high;
    let deadline = Instant::now() + timeout;
    let mut first = true;
    loop {
        // Wait for the first record; after it, take only what that fetch already delivered.
        let wait = if first {
            deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        match probe.poll(wait) {
            None => break,
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition as i32 => {
                if m.offset() >= high as i64 - 1 {
                    end = end.max(m.offset() as u64 + 1);
                    first = false;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                if first && Instant::now() >= deadline {
                    break;
                }
                tracing::debug!(%error, "kafka probe reported an error");
            }
        }
    }
    probe
        .unassign()
        .map_err(unavailable("unassigning the probe"))?;
    Ok(end)
}

/// See [`KafkaLog::metadata`].
struct Metadata {
    meta: Arc<BaseConsumer>,
    probe: Option<Arc<Mutex<BaseConsumer>>>,
    timeout: Duration,
}

impl Metadata {
    fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        let (low, high) = self
            .meta
            .fetch_watermarks(topic, partition as i32, self.timeout)
            .map_err(unavailable("fetching watermarks"))?;
        let (low, high) = (low.max(0) as u64, high.max(0) as u64);
        let high = match &self.probe {
            Some(probe) => probe_end(&probe.lock(), topic, partition, (low, high), self.timeout)?,
            None => high,
        };
        Ok((low, high))
    }

    fn topic_partitions(&self, topic: &str) -> Result<u32, LogError> {
        let metadata = self
            .meta
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(unavailable("fetching metadata"))?;
        match metadata.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                Ok(t.partitions().len() as u32)
            }
            _ => Err(LogError::UnknownTopic(topic.to_string())),
        }
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, LogError>> {
    async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| LogError::Unavailable(format!("kafka task failed: {e}")))?
    }
}

impl Reader {
    fn watermarks(
        &mut self,
        topic: &str,
        partition: u32,
        refresh: bool,
        timeout: Duration,
    ) -> Result<(u64, u64), LogError> {
        let key = (topic.to_string(), partition);
        if !refresh && let Some(w) = self.watermarks.get(&key) {
            return Ok(*w);
        }
        let (low, high) = self
            .consumer
            .fetch_watermarks(topic, partition as i32, timeout)
            .map_err(unavailable("fetching watermarks"))?;
        let mut w = (low.max(0) as u64, high.max(0) as u64);
        if let Some(probe) = &self.probe {
            w.1 = probe_end(&probe.lock(), topic, partition, w, timeout)?;
        }
        // Records this reader has already returned are below the end, whatever the broker says.
        if let Some(known) = self.watermarks.get(&key) {
            w.1 = w.1.max(known.1);
        }
        self.watermarks.insert(key, w);
        Ok(w)
    }

    fn fetch(
        &mut self,
        positions: &[FetchPosition],
        max_records: usize,
        max_wait: Duration,
        timeout: Duration,
    ) -> Result<Vec<StoredRecord>, LogError> {
        for p in positions {
            let (_, high) = self.watermarks(&p.topic, p.partition, false, timeout)?;
            if p.offset > high {
                let (low, high) = self.watermarks(&p.topic, p.partition, true, timeout)?;
                if p.offset > high || p.offset < low {
                    return Err(LogError::OffsetOutOfRange {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: p.offset,
                        start: low,
                        end: high,
                    });
                }
            }
        }
        if self.assigned != positions {
            let mut tpl = TopicPartitionList::new();
            for p in positions {
                tpl.add_partition_offset(
                    &p.topic,
                    p.partition as i32,
                    Offset::Offset(p.offset as i64),
                )
                .map_err(unavailable("building an assignment"))?;
            }
            self.consumer
                .assign(&tpl)
                .map_err(unavailable("assigning partitions"))?;
            self.assigned = positions.to_vec();
        }
        let deadline = Instant::now() + max_wait;
        let mut out = Vec::new();
        while out.len() < max_records {
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            let Some(polled) = self.consumer.poll(wait) else {
                break;
            };
            let message = match polled {
                Ok(message) => message,
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)) => {
                    self.assigned.clear();
                    let p = &positions[0];
                    let (low, high) = self.watermarks(&p.topic, p.partition, true, timeout)?;
                    return Err(LogError::OffsetOutOfRange {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: p.offset,
                        start: low,
                        end: high,
                    });
                }
                // Transport errors are reports: librdkafka reconnects and refetches by itself.
                Err(error) => {
                    tracing::debug!(%error, "kafka consumer reported an error; polling on");
                    continue;
                }
            };
            let (topic, partition, offset) = (
                message.topic().to_string(),
                message.partition() as u32,
                message.offset() as u64,
            );
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            let record = Record {
                key: message.key().map(Bytes::copy_from_slice),
                value: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
                headers,
            };
            // Only records at the positions asked for count: anything else is
            // left over from an earlier assignment of this consumer.
            let probing = self.probe.is_some();
            let Some(a) = self
                .assigned
                .iter_mut()
                .find(|a| a.topic == topic && a.partition == partition)
            else {
                continue;
            };
            if offset < a.offset {
                continue;
            }
            if offset > a.offset && probing {
                // A broker that reports ends by batch (tansu 0.6) also answers
                // a fetch from the middle of a batch with the *next* batch:
                // taking it would skip the rest of the batch holding the
                // offset asked for.
                let expected = a.offset;
                tracing::debug!(%topic, partition, expected, got = offset, "fetch skipped ahead; seeking back");
                self.seek_back(&topic, partition, expected, timeout)?;
                continue;
            }
            a.offset = offset + 1;
            if probing {
                self.gap_backoff.remove(&(topic.clone(), partition));
            }
            let w = self
                .watermarks
                .entry((topic.clone(), partition))
                .or_insert((0, 0));
            w.1 = w.1.max(offset + 1);
            out.push(StoredRecord {
                topic: topic.into(),
                partition,
                offset,
                record,
            });
        }
        if self.probe.is_some() {
            // The same broker answers a fetch from inside the *last* batch
            // with nothing at all: a position below the (probed) end that
            // delivered nothing seeks back too.
            let starved: Vec<(String, u32, u64)> = self
                .assigned
                .iter()
                .filter(|a| {
                    !out.iter()
                        .any(|r| r.partition == a.partition && *r.topic == *a.topic)
                })
                .filter(|a| {
                    self.watermarks
                        .get(&(a.topic.clone(), a.partition))
                        .is_some_and(|w| a.offset < w.1)
                })
                .map(|a| (a.topic.clone(), a.partition, a.offset))
                .collect();
            for (topic, partition, expected) in starved {
                self.seek_back(&topic, partition, expected, timeout)?;
            }
        }
        Ok(out)
    }

    /// Seeks `topic`/`partition` back before `expected`, twice as far as the
    /// last time it had to for this partition, so that the batch holding
    /// `expected` comes next (records before it are dropped as left over).
    fn seek_back(
        &mut self,
        topic: &str,
        partition: u32,
        expected: u64,
        timeout: Duration,
    ) -> Result<(), LogError> {
        let back = self
            .gap_backoff
            .entry((topic.to_string(), partition))
            .or_insert(1);
        let seek = expected.saturating_sub(*back);
        *back = back.saturating_mul(2).min(MAX_GAP_BACKOFF);
        self.consumer
            .seek(
                topic,
                partition as i32,
                Offset::Offset(seek as i64),
                timeout,
            )
            .map_err(unavailable("seeking back to a skipped offset"))
    }
}

#[async_trait::async_trait]
impl EventLog for KafkaLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        match self.topic_partitions(topic) {
            Ok(existing) => return LogError::check_partitions(topic, existing, partitions),
            Err(LogError::UnknownTopic(_)) => {}
            Err(e) => return Err(e),
        }
        let retention = self.config.topic_retention.get(topic);
        let retention_ms = retention
            .and_then(|r| r.retention_ms)
            .map(|v| v.to_string());
        let retention_bytes = retention
            .and_then(|r| r.retention_bytes)
            .map(|v| v.to_string());
        // A broker's default (Apache Kafka: 1 048 588 bytes per batch) is
        // below a record at our limit with its headers and framing.
        let max_message_bytes = (MAX_RECORD_BYTES + MESSAGE_OVERHEAD_BYTES).to_string();
        let mut new_topic = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("max.message.bytes", &max_message_bytes);
        if let Some(ms) = &retention_ms {
            new_topic = new_topic.set("retention.ms", ms);
        }
        if let Some(bytes) = &retention_bytes {
            new_topic = new_topic.set("retention.bytes", bytes);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.config.request_timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(unavailable("creating a topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Unavailable(format!(
                        "creating topic {name}: {code}"
                    )));
                }
            }
        }
        // Metadata catches up with the creation shortly after.
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            match self.topic_partitions(topic) {
                Ok(existing) => return LogError::check_partitions(topic, existing, partitions),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.topic_partitions(topic)
    }

    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let n_partitions = self.cached_partitions(topic)?;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let partition = self.partitioner.partition(record, n_partitions)?;
            let mut future_record = FutureRecord::<[u8], [u8]>::to(topic)
                .partition(partition as i32)
                .payload(&record.value)
                .timestamp(record.timestamp_ms);
            // Events carry no headers (dead letters do): build none for them,
            // librdkafka's header list is an allocation of its own.
            if !record.headers.is_empty() {
                let mut headers = OwnedHeaders::new();
                for (name, value) in &record.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(value),
                    });
                }
                future_record = future_record.headers(headers);
            }
            if let Some(key) = &record.key {
                future_record = future_record.key(&key[..]);
            }
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(produce_error(topic, e)),
                }
            }
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => positions.push(Position {
                    partition: d.partition as u32,
                    offset: d.offset as u64,
                }),
                Ok(Err((e, _))) => return Err(produce_error(topic, e)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(positions)
    }

    async fn ranges(&self, topic: &str) -> Result<Vec<PartitionRange>, LogError> {
        // On a blocking thread: each partition's watermarks wait on the
        // broker (and with `probe_end` read its last batch), which held a
        // runtime worker for as long — and every caller behind it.
        let (metadata, topic) = (self.metadata(), topic.to_string());
        blocking(move || {
            let n = metadata.topic_partitions(&topic)?;
            let mut out = Vec::with_capacity(n as usize);
            for partition in 0..n {
                let (start, end) = metadata.watermarks(&topic, partition)?;
                out.push(PartitionRange { start, end });
            }
            Ok(out)
        })
        .await
    }

    async fn fetch(
        &self,
        positions: &[FetchPosition],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let (reader, positions, timeout) = (
            self.reader(positions)?,
            positions.to_vec(),
            self.config.request_timeout,
        );
        blocking(move || {
            reader
                .lock()
                .fetch(&positions, max_records, max_wait, timeout)
        })
        .await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError> {
        let consumer = self.group_consumer(group)?;
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in offsets {
            tpl.add_partition_offset(topic, *partition as i32, Offset::Offset(*offset as i64))
                .map_err(unavailable("building a commit"))?;
        }
        blocking(move || {
            consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(unavailable("committing offsets"))
        })
        .await
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        let consumer = self.group_consumer(group)?;
        let n = self.topic_partitions(topic)?;
        let mut tpl = TopicPartitionList::new();
        for partition in 0..n {
            tpl.add_partition(topic, partition as i32);
        }
        let timeout = self.config.request_timeout;
        let committed = blocking(move || {
            consumer
                .committed_offsets(tpl, timeout)
                .map_err(unavailable("reading committed offsets"))
        })
        .await?;
        let committed: BTreeMap<u32, u64> = committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some((e.partition() as u32, o as u64)),
                _ => None,
            })
            .collect();
        for (&partition, &offset) in &committed {
            let (_, end) = self.watermarks(topic, partition)?;
            LogError::check_committed(group, topic, partition, offset, end)?;
        }
        Ok(committed)
    }

    async fn enforce_retention(&self) -> Result<u64, LogError> {
        // The brokers apply retention.ms / retention.bytes themselves.
        Ok(0)
    }

    async fn close(&self) -> Result<(), LogError> {
        use rdkafka::producer::Producer;
        let timeout = self.config.request_timeout;
        self.producer
            .flush(timeout)
            .map_err(unavailable("flushing the producer"))
    }
}

/// librdkafka's in-process mock Kafka cluster, for fault-injection tests in
/// any crate without linking rdkafka there (this crate stays the only one).
pub struct MockKafka {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: i32,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka")
            .field("bootstrap", &self.cluster.bootstrap_servers())
            .finish()
    }
}

impl MockKafka {
    /// A mock cluster of `brokers` brokers.
    pub fn new(brokers: i32) -> Result<MockKafka, LogError> {
        let cluster = rdkafka::mocking::MockCluster::new(brokers)
            .map_err(unavailable("starting a mock cluster"))?;
        Ok(MockKafka { cluster, brokers })
    }

    /// Its `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock broker has no CreateTopics API).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        self.cluster
            .create_topic(topic, partitions as i32, 1)
            .map_err(unavailable("creating a mock topic"))
    }

    /// Takes every broker down (`true`) or brings them back up (`false`).
    pub fn set_down(&self, down: bool) -> Result<(), LogError> {
        for broker in 1..=self.brokers {
            let result = if down {
                self.cluster.broker_down(broker)
            } else {
                self.cluster.broker_up(broker)
            };
            result.map_err(unavailable("changing a mock broker"))?;
        }
        Ok(())
    }
}
