//! The embedded durable log (`embedded://DIR`), the default backend on one machine.
//!
//! Layout: `DIR/<topic>/topic.json` (partition count), `DIR/<topic>/<partition>/<base offset>.log`
//! segments (see [`segment`] for the frame format) and `DIR/__consumer_offsets/<group>.json`.
//!
//! Writes go through one writer thread ([`writer`]) that group-commits: it
//! takes every append request waiting in its bounded queue, writes them all,
//! issues one `fsync` per touched segment and only then acknowledges them and
//! makes the records visible to readers. Readers never see a record that is
//! not durable, and they wait for appends on a watch channel, not a poll loop.

mod groups;
mod segment;
mod writer;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::partitioner::Partitioner;
use crate::{
    Bytes, EventLog, FetchPosition, LogError, PartitionRange, Position, Record, StoredRecord,
    TopicRetention, ValueSpan, ValuesRead,
};
use segment::{Damage, FRAME_HEADER, FrameError};
use writer::{AppendRequest, Writer};

/// Append requests the writer queue holds before `append` waits (backpressure).
pub const WRITER_QUEUE_CAPACITY: usize = 1024;

/// The most records a fetch's buffer is sized for up front (a caller may
/// ask for more; the buffer then grows).
const MAX_FETCH_CAPACITY: usize = 16 * 1024;

/// The most bytes of a segment one read takes (unless one frame is longer).
const READ_CHUNK: usize = 64 * 1024;

/// Read buffers kept for reuse, each [`READ_CHUNK`] bytes: 8 MiB at most.
/// A replay's lanes keep ~75 chunks' records alive at once (a share and a
/// half of 16 384 records); with 32 kept, each refill took fresh buffers,
/// zeroed (kappa round, callgrind: `memset` 26.8 M → 5.5 M instructions).
const POOLED_READ_BUFFERS: usize = 128;

/// Settings of the embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// A segment is rolled once it would grow past this many bytes.
    pub segment_bytes: u64,
    /// Closed segments whose newest record is older than this are deleted.
    pub retention_ms: Option<i64>,
    /// Oldest closed segments are deleted while a partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// Consumer groups retention waits for: a segment is deleted only once
    /// every one of them has committed past its last record, whatever its
    /// age or size (the batch layer's group: nothing leaves the log before
    /// the lake has it). A group that never committed holds everything.
    pub retention_guards: Vec<String>,
    /// Topics with a retention of their own, instead of `retention_ms`,
    /// `retention_bytes` and the guards: records no consumer group gates
    /// (`dead-letter`: nothing reads it on a schedule, so a guard would keep
    /// it forever).
    pub topic_retention: BTreeMap<String, TopicRetention>,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            segment_bytes: 64 * 1024 * 1024,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_guards: Vec::new(),
            topic_retention: BTreeMap::new(),
        }
    }
}

/// The embedded log. Cheap to share behind an `Arc`; see the module docs.
#[derive(Debug)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
    writer: Mutex<Option<(mpsc::Sender<AppendRequest>, std::thread::JoinHandle<()>)>>,
    appended: watch::Receiver<u64>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: EmbeddedConfig,
    topics: RwLock<BTreeMap<String, Arc<TopicState>>>,
    groups: Mutex<()>,
    partitioner: Partitioner,
    /// Bumped after every group commit; readers wait on it.
    appended: watch::Sender<u64>,
    /// Buffers reads go into, reused once the records of their last read
    /// are dropped (see [`ReadBuffers`]).
    read_buffers: ReadBuffers,
    /// The records' timestamps the writer gives and the time before which
    /// every record is readable ([`EventLog::complete_before`]).
    stamps: Mutex<Stamps>,
}

/// Record timestamps as the writer gives them, and what the log promises
/// readers about them ([`EventLog::complete_before`]). A record keeps its
/// producer's timestamp (the collector's: when it took the request),
/// except that it is never ahead of the log's clock ([`LogClock`]) when it is written,
/// nor before a time already promised to a reader: then it is stamped
/// with that time. Two requests stamped in one order and written in the
/// other (the collector stamps a request before it writes it) are then
/// read in one order by everyone: the live speed layer, which folds only
/// what is stamped before the promise, and a replay of the log long
/// after, which folds by timestamp. The promise never runs ahead of the
/// log's clock, so neither do the stamps.
#[derive(Debug)]
pub(crate) struct Stamps {
    /// The clock stamps and promises go by.
    pub(crate) clock: LogClock,
    /// No record is stamped before this: the last time promised.
    promised: i64,
    /// The latest stamp given (or read from the segments at open).
    last: i64,
    /// The earliest stamp of the group being written (not yet readable).
    writing: Option<i64>,
}

impl Stamps {
    /// Stamps after the records the log holds, the latest stamped `last`
    /// (`i64::MIN`: none), by `clock`: as if everything up to `last` had
    /// been promised (a process before may have promised as much, and
    /// folded what it had on the strength of it).
    pub(crate) fn after(last: i64, clock: LogClock) -> Stamps {
        Stamps {
            clock,
            promised: match last {
                i64::MIN => i64::MIN,
                last => last.saturating_add(1),
            },
            last,
            writing: None,
        }
    }

    /// Stamps the timestamps `stamps` of a group about to be written, at
    /// the log's time `now` (ms): each at most `now`, at least the time
    /// promised.
    pub(crate) fn stamp<'r>(&mut self, now: i64, stamps: impl Iterator<Item = &'r mut i64>) {
        let mut earliest = None::<i64>;
        for ts in stamps {
            *ts = (*ts).min(now).max(self.promised);
            earliest = Some(earliest.map_or(*ts, |e| e.min(*ts)));
            self.last = self.last.max(*ts);
        }
        self.writing = earliest;
    }

    /// The group being written is readable now (or was discarded).
    pub(crate) fn written(&mut self) {
        self.writing = None;
    }

    /// A time before which every record is readable now and none will be
    /// written later, at the log's time `now` (ms), promised from here
    /// on: just past the latest stamp (all of them readable), but not past
    /// the earliest stamp of a group being written, nor past `now` — the
    /// records of the current millisecond wait for the next, and a record
    /// stamped later than what is promised keeps its stamp. Never less than
    /// promised before (a clock may step back: a promise is kept).
    fn complete_before(&mut self, now: i64) -> i64 {
        let next = self.last.saturating_add(1).min(now);
        let bound = self.writing.map_or(next, |earliest| earliest.min(next));
        self.promised = self.promised.max(bound);
        self.promised
    }
}

/// The clock the writer stamps records by and promises readers by: a
/// monotonic clock that follows the wall clock forward, never back, and
/// starts past the latest stamp the log holds. A wall clock stepped back
/// an hour would otherwise have stamped every record with the last time
/// promised for that hour — the log's time standing still, and each record
/// waiting for the clock to pass it; one stepped forward is followed at
/// once (a clock behind it would have held every partition's clock, and
/// the watermark, back).
#[derive(Debug)]
pub(crate) struct LogClock {
    started: std::time::Instant,
    /// The clock's time at `started` (ms since the epoch).
    at: i64,
}

impl LogClock {
    /// A clock at the wall clock's time, or past `latest` if that is later.
    pub(crate) fn start(latest: i64) -> LogClock {
        LogClock {
            started: std::time::Instant::now(),
            at: chrono::Utc::now()
                .timestamp_millis()
                .max(latest.saturating_add(1)),
        }
    }

    /// Now, in ms since the epoch.
    pub(crate) fn now(&mut self) -> i64 {
        let since = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let wall = chrono::Utc::now().timestamp_millis();
        // Stepped forward: followed.
        self.at = self.at.max(wall.saturating_sub(since));
        self.at.saturating_add(since)
    }
}

/// Read buffers handed out again once every record that shared one is
/// gone: a read took a fresh zeroed allocation each time, and the records
/// it held were freed on another thread (the fold's), so the allocator
/// kept taking new pages from the kernel — page faults and the kernel's
/// zeroing were ~5 % of the kappa replay's time. A buffer keeps its bytes
/// (initialized, a `Vec`'s length) from read to read, so it is zeroed only
/// where it grows: zeroing each chunk before reading into it was 4–5 % of
/// the live loop's instructions.
#[derive(Debug, Default)]
struct ReadBuffers {
    pool: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ReadBuffers {
    /// A buffer of `len` bytes to read into, one of the pool's if there is
    /// one (its old bytes are read over).
    fn take(&self, len: usize) -> ReadBuffer {
        let mut bytes = self.pool.lock().pop().unwrap_or_default();
        if bytes.len() < len {
            bytes.resize(len.max(READ_CHUNK), 0);
        }
        ReadBuffer {
            bytes,
            len,
            pool: Arc::downgrade(&self.pool),
        }
    }
}

/// A read's bytes: the first `len` of a pooled buffer, given back to the
/// pool when dropped — as the owner of the [`Bytes`] the records of a read
/// share ([`Bytes::from_owner`]), once the last of them is gone.
#[derive(Debug)]
struct ReadBuffer {
    bytes: Vec<u8>,
    len: usize,
    pool: std::sync::Weak<Mutex<Vec<Vec<u8>>>>,
}

impl ReadBuffer {
    /// The bytes a read fills.
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }

    /// Grows the read to `len` bytes (a frame longer than the chunk).
    fn grow(&mut self, len: usize) {
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
        self.len = len;
    }
}

impl AsRef<[u8]> for ReadBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        // A buffer grown for a frame longer than READ_CHUNK is not kept.
        if self.bytes.len() > READ_CHUNK {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            let mut pool = pool.lock();
            if pool.len() < POOLED_READ_BUFFERS {
                pool.push(std::mem::take(&mut self.bytes));
            }
        }
    }
}

#[derive(Debug)]
struct TopicState {
    name: String,
    partitions: Vec<Mutex<PartitionState>>,
}

#[derive(Debug)]
struct PartitionState {
    dir: PathBuf,
    /// Oldest first; the last one is the active segment the writer appends to.
    segments: Vec<Segment>,
}

#[derive(Debug, Clone)]
struct Segment {
    base_offset: u64,
    path: PathBuf,
    /// Durable length in bytes.
    len: u64,
    /// One past the last durable offset in this segment.
    next_offset: u64,
    max_timestamp: Option<i64>,
    /// (offset, byte position) every `segment::INDEX_INTERVAL` records.
    index: Vec<(u64, u64)>,
    /// (offset, byte position) where the last read of this segment ended:
    /// a consumer reading on from there (the speed layer, every fetch)
    /// starts at its record instead of scanning from an index entry.
    read_to: (u64, u64),
}

impl Segment {
    /// The byte position to start reading `offset` from: the nearest
    /// known record at or before it.
    fn start_of(&self, offset: u64) -> u64 {
        let idx = self.index.partition_point(|(o, _)| *o <= offset);
        let (indexed, pos) = if idx == 0 {
            (self.base_offset, 0)
        } else {
            self.index[idx - 1]
        };
        let (hint, hint_pos) = self.read_to;
        if hint <= offset && hint > indexed && hint_pos <= self.len {
            hint_pos
        } else {
            pos
        }
    }
}

impl PartitionState {
    fn range(&self) -> PartitionRange {
        let first = self
            .segments
            .first()
            .expect("a partition always has a segment");
        let last = self
            .segments
            .last()
            .expect("a partition always has a segment");
        PartitionRange {
            start: first.base_offset,
            end: last.next_offset,
        }
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a partition always has a segment")
    }
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
}

fn check_name(kind: &str, name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.starts_with("__")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::Io {
            context: format!("{kind} name {name:?}"),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "use letters, digits, '.', '_' and '-', not starting with '.' or '__'",
            ),
        })
    }
}

/// Fsyncs a directory so that a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`, recovering every partition: a torn
    /// tail left by a crash (bad frames at the end of a partition's last
    /// segment, with no valid frame after them) is cut off at the last
    /// complete record, with a warning. Any other damage is
    /// [`LogError::Corrupt`], naming the file and byte: the log refuses to
    /// open rather than drop acknowledged records.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: EmbeddedConfig,
    ) -> Result<EmbeddedLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let recovered = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || recover(&dir))
                .await
                .map_err(|e| LogError::Unavailable(format!("recovery task failed: {e}")))??
        };
        // The latest stamp held, however far ahead of the wall clock (a
        // clock that ran fast, or was stepped back since): the log's clock
        // starts past it, and no record is stamped before one already held
        // (a reader may have folded it; a hostile run's finding: with the
        // log's clock started at the wall clock, records written after a
        // step back of 90 s were folded after the older ones live and
        // before them by a replay).
        let last_stamp = recovered
            .values()
            .flat_map(|topic| topic.partitions.iter())
            .filter_map(|partition| {
                let partition = partition.lock();
                partition
                    .segments
                    .iter()
                    .filter_map(|s| s.max_timestamp)
                    .max()
            })
            .max()
            .unwrap_or(i64::MIN);
        let (appended, appended_rx) = watch::channel(0);
        let inner = Arc::new(Inner {
            dir,
            config,
            topics: RwLock::new(recovered),
            groups: Mutex::new(()),
            partitioner: Partitioner::default(),
            appended,
            read_buffers: ReadBuffers::default(),
            stamps: Mutex::new(Stamps::after(last_stamp, LogClock::start(last_stamp))),
        });
        let (tx, rx) = mpsc::channel(WRITER_QUEUE_CAPACITY);
        let writer = Writer::new(Arc::clone(&inner), rx);
        let handle = std::thread::Builder::new()
            .name("embedded-log-writer".into())
            .spawn(move || writer.run())
            .map_err(LogError::io("spawning the log writer thread"))?;
        Ok(EmbeddedLog {
            inner,
            writer: Mutex::new(Some((tx, handle))),
            appended: appended_rx,
        })
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn topic(&self, name: &str) -> Result<Arc<TopicState>, LogError> {
        self.inner.topic(name)
    }

    fn sender(&self) -> Result<mpsc::Sender<AppendRequest>, LogError> {
        self.writer
            .lock()
            .as_ref()
            .map(|(tx, _)| tx.clone())
            .ok_or(LogError::Closed)
    }
}

impl Inner {
    fn topic(&self, name: &str) -> Result<Arc<TopicState>, LogError> {
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    fn partition(topic: &TopicState, partition: u32) -> Result<&Mutex<PartitionState>, LogError> {
        topic
            .partitions
            .get(partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.name.clone(),
                partition,
            })
    }

    /// `Ok` if none of `group`'s committed offsets for `topic` is past its
    /// partition's end; see [`LogError::GroupOffsetPastEnd`].
    fn check_committed(
        &self,
        group: &str,
        topic: &str,
        committed: &BTreeMap<u32, u64>,
    ) -> Result<(), LogError> {
        if committed.is_empty() {
            return Ok(());
        }
        let topic_state = self.topic(topic)?;
        for (&partition, &offset) in committed {
            let end = Inner::partition(&topic_state, partition)?
                .lock()
                .range()
                .end;
            LogError::check_committed(group, topic, partition, offset, end)?;
        }
        Ok(())
    }

    /// Reads up to `limit` durable records of one partition starting at `offset`.
    fn read_partition(
        &self,
        topic: &TopicState,
        partition: u32,
        offset: u64,
        limit: usize,
        records: &mut impl Collect,
    ) -> Result<(), LogError> {
        let out_of_range = |range: PartitionRange| LogError::OffsetOutOfRange {
            topic: topic.name.clone(),
            partition,
            offset,
            start: range.start,
            end: range.end,
        };
        // Snapshot what to read under the lock, read without it.
        let plan: Vec<(u64, PathBuf, u64, u64)> = {
            let state = Inner::partition(topic, partition)?.lock();
            let range = state.range();
            if offset < range.start || offset > range.end {
                return Err(out_of_range(range));
            }
            if offset == range.end {
                return Ok(());
            }
            let first = state.segments.partition_point(|s| s.base_offset <= offset) - 1;
            state.segments[first..]
                .iter()
                .enumerate()
                .filter(|(_, s)| s.next_offset > s.base_offset)
                .map(|(i, s)| {
                    let start_pos = if i == 0 { s.start_of(offset) } else { 0 };
                    (s.base_offset, s.path.clone(), start_pos, s.len)
                })
                .collect()
        };
        let limit = records.kept().saturating_add(limit);
        // (segment base, next offset, its byte position) where reading stopped.
        let mut stopped = None;
        for (base, path, start_pos, len) in plan {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Retention removed the segment after the snapshot.
                    let range = Inner::partition(topic, partition)?.lock().range();
                    return Err(out_of_range(range));
                }
                Err(e) => return Err(LogError::io(format!("opening {}", path.display()))(e)),
            };
            let context = || format!("reading {}", path.display());
            let corrupt = |position: u64, e: FrameError| LogError::Corrupt {
                path: path.display().to_string(),
                position,
                reason: e.to_string(),
            };
            let mut pos = start_pos;
            while pos < len && records.kept() < limit {
                // One read of what is left of the segment, as much as the
                // records still wanted take (guessed generously), at most
                // READ_CHUNK bytes, or the next frame whole if it is longer.
                let wanted = (limit - records.kept()).saturating_mul(512).max(4096);
                let mut buffer = self
                    .read_buffers
                    .take((len - pos).min(READ_CHUNK.min(wanted) as u64) as usize);
                file.read_exact_at(buffer.as_mut_slice(), pos)
                    .map_err(|e| LogError::io(context())(e))?;
                if let Some(header) = buffer.as_ref().first_chunk::<4>() {
                    let frame_len = FRAME_HEADER as u64 + u64::from(u32::from_le_bytes(*header));
                    let read = buffer.len;
                    if frame_len > read as u64 && frame_len <= len - pos {
                        // Exactly the frame: records keep their chunk alive.
                        buffer.grow(frame_len as usize);
                        file.read_exact_at(&mut buffer.as_mut_slice()[read..], pos + read as u64)
                            .map_err(|e| LogError::io(context())(e))?;
                    }
                }
                // Records read share the chunk: no allocation per record;
                // the buffer goes back to the pool after the last of them.
                let chunk = Bytes::from_owner(buffer);
                let mut at = 0;
                while at < chunk.len() && records.kept() < limit {
                    let (frame_offset, frame_len) = match records.take(&chunk, at, offset) {
                        Ok(frame) => frame,
                        // The frame goes on past the chunk: the next read starts at it.
                        Err(FrameError::Incomplete) if at > 0 => break,
                        Err(e) => return Err(corrupt(pos + at as u64, e)),
                    };
                    at += frame_len;
                    stopped = Some((base, frame_offset + 1, pos + at as u64));
                }
                pos += at as u64;
            }
            if records.kept() >= limit {
                break;
            }
        }
        if let Some((base, next, pos)) = stopped {
            let mut state = Inner::partition(topic, partition)?.lock();
            if let Some(segment) = state.segments.iter_mut().find(|s| s.base_offset == base) {
                segment.read_to = (next, pos);
            }
        }
        Ok(())
    }

    /// Reads what is available at `positions`, up to `max_records`.
    fn read_available(
        &self,
        positions: &[FetchPosition],
        max_records: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let per_position = (max_records / positions.len().max(1)).max(1);
        // Sized once: records are pushed straight in, never copied to grow.
        let mut out = Vec::with_capacity(max_records.min(MAX_FETCH_CAPACITY));
        for position in positions {
            let budget = per_position.min(max_records - out.len());
            if budget == 0 {
                break;
            }
            let topic = self.topic(&position.topic)?;
            let mut into = Stored {
                topic: Arc::from(topic.name.as_str()),
                partition: position.partition,
                out: &mut out,
            };
            self.read_partition(
                &topic,
                position.partition,
                position.offset,
                budget,
                &mut into,
            )?;
        }
        Ok(out)
    }

    /// Reads what is available in `spans`, up to `max_records` and none at
    /// or past a span's end, appending to each span's records (see
    /// [`EventLog::fetch_values`]); on an error what it appended stays (the
    /// caller undoes it: [`undo`]).
    fn read_values(
        &self,
        spans: &mut [&mut ValueSpan],
        max_records: usize,
    ) -> Result<ValuesRead, LogError> {
        let reading = spans.iter().filter(|s| s.position.offset < s.end).count();
        let per_span = (max_records / reading.max(1)).max(1);
        let mut read = ValuesRead::default();
        for span in spans.iter_mut() {
            let due = span.end.saturating_sub(span.position.offset);
            let budget = per_span
                .min(max_records - read.records)
                .min(usize::try_from(due).unwrap_or(usize::MAX));
            if budget == 0 {
                continue;
            }
            let topic = self.topic(&span.position.topic)?;
            let (partition, offset) = (span.position.partition, span.position.offset);
            let mut into = Values {
                span,
                read: ValuesRead::default(),
            };
            self.read_partition(&topic, partition, offset, budget, &mut into)?;
            read.records += into.read.records;
            read.bytes += into.read.bytes;
        }
        Ok(read)
    }
}

/// Where [`Inner::read_partition`] keeps the frames it reads: whole records
/// ([`Stored`]) or values ([`Values`]).
trait Collect {
    /// Frames kept so far.
    fn kept(&self) -> usize;
    /// Decodes the frame at `at` in `chunk` and keeps it if its offset is
    /// `from` or past it (a read starts at the indexed frame before the
    /// offset asked for); returns its offset and its length on disk.
    fn take(&mut self, chunk: &Bytes, at: usize, from: u64) -> Result<(u64, usize), FrameError>;
}

/// Whole records of one partition ([`EventLog::fetch`]).
struct Stored<'a> {
    /// The topic's name, shared by the records read (no allocation per record).
    topic: Arc<str>,
    partition: u32,
    out: &'a mut Vec<StoredRecord>,
}

impl Collect for Stored<'_> {
    fn kept(&self) -> usize {
        self.out.len()
    }

    fn take(&mut self, chunk: &Bytes, at: usize, from: u64) -> Result<(u64, usize), FrameError> {
        // Records read share the chunk: no allocation per record.
        let frame = segment::decode_shared(chunk, at)?;
        let taken = (frame.offset, frame.len);
        if frame.offset >= from {
            self.out.push(StoredRecord {
                topic: Arc::clone(&self.topic),
                partition: self.partition,
                offset: frame.offset,
                record: frame.record,
            });
        }
        Ok(taken)
    }
}

/// Values appended to a span ([`EventLog::fetch_values`]), none at or past
/// its end; the span's position moves past each.
struct Values<'a> {
    span: &'a mut ValueSpan,
    read: ValuesRead,
}

impl Collect for Values<'_> {
    fn kept(&self) -> usize {
        self.read.records
    }

    fn take(&mut self, chunk: &Bytes, at: usize, _: u64) -> Result<(u64, usize), FrameError> {
        let (record, size, len) = segment::decode_value(chunk, at)?;
        let offset = record.offset;
        // (The read started at the span's position, which only moves on.)
        if offset >= self.span.position.offset && offset < self.span.end {
            self.span.position.offset = offset + 1;
            self.read.records += 1;
            self.read.bytes += size;
            self.span.records.push(record);
        }
        Ok((offset, len))
    }
}

/// Each span's records and position, as [`undo`] puts them back.
fn marks_of(spans: &[&mut ValueSpan]) -> Vec<(usize, u64)> {
    spans
        .iter()
        .map(|s| (s.records.len(), s.position.offset))
        .collect()
}

/// Puts `spans` back as [`marks_of`] found them.
fn undo(spans: &mut [&mut ValueSpan], marks: &[(usize, u64)]) {
    for (span, &(len, offset)) in spans.iter_mut().zip(marks) {
        span.records.truncate(len);
        span.position.offset = offset;
    }
}

fn read_failed(error: String) -> LogError {
    LogError::Unavailable(format!("read task failed: {error}"))
}

/// Waits until something is appended (`true`) or `deadline` passes.
async fn appended_before(
    appended: &mut watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, appended.changed()).await,
        Ok(Ok(()))
    )
}

/// Opens every topic and partition under `dir`, cutting torn tails and
/// refusing corrupt segments (see [`segment`] for which is which).
fn recover(dir: &Path) -> Result<BTreeMap<String, Arc<TopicState>>, LogError> {
    fs::create_dir_all(dir).map_err(LogError::io(format!("creating {}", dir.display())))?;
    let mut topics = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(LogError::io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io(format!("listing {}", dir.display())))?;
        let meta_path = entry.path().join("topic.json");
        if !meta_path.exists() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta: TopicMeta = serde_json::from_slice(
            &fs::read(&meta_path)
                .map_err(LogError::io(format!("reading {}", meta_path.display())))?,
        )
        .map_err(|e| LogError::Corrupt {
            path: meta_path.display().to_string(),
            position: 0,
            reason: e.to_string(),
        })?;
        let mut partitions = Vec::new();
        for partition in 0..meta.partitions {
            partitions.push(Mutex::new(recover_partition(
                &entry.path().join(partition.to_string()),
            )?));
        }
        topics.insert(name.clone(), Arc::new(TopicState { name, partitions }));
    }
    Ok(topics)
}

fn recover_partition(dir: &Path) -> Result<PartitionState, LogError> {
    fs::create_dir_all(dir).map_err(LogError::io(format!("creating {}", dir.display())))?;
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(LogError::io(format!("listing {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| segment::parse_segment_name(&e.file_name().to_string_lossy()))
        .collect();
    bases.sort_unstable();
    let mut segments: Vec<Segment> = Vec::new();
    let n_segments = bases.len();
    for (i, base_offset) in bases.into_iter().enumerate() {
        let path = segment::segment_path(dir, base_offset);
        let scan = segment::scan(&path, base_offset)
            .map_err(LogError::io(format!("scanning {}", path.display())))?;
        let is_last = i + 1 == n_segments;
        match &scan.damage {
            None => {}
            Some(Damage::Corrupt { position, reason }) => {
                return Err(LogError::Corrupt {
                    path: path.display().to_string(),
                    position: *position,
                    reason: reason.clone(),
                });
            }
            Some(Damage::Torn { position, reason }) if !is_last => {
                // Segments are fsynced before the next one is created: only
                // the last can have been cut short by a crash.
                return Err(LogError::Corrupt {
                    path: path.display().to_string(),
                    position: *position,
                    reason: format!(
                        "{reason} in a segment that is not the partition's last (a crash \
                         only tears the last one), so records after it would be lost"
                    ),
                });
            }
            Some(Damage::Torn { position, reason }) => {
                let file_len = fs::metadata(&path)
                    .map_err(LogError::io(format!("reading {}", path.display())))?
                    .len();
                tracing::warn!(
                    path = %path.display(),
                    position,
                    reason = %reason,
                    dropped_bytes = file_len - scan.valid_len,
                    kept_records = scan.next_offset - base_offset,
                    "cutting torn tail of segment"
                );
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(LogError::io(format!("opening {}", path.display())))?;
                file.set_len(scan.valid_len)
                    .map_err(LogError::io(format!("truncating {}", path.display())))?;
                file.sync_all()
                    .map_err(LogError::io(format!("syncing {}", path.display())))?;
            }
        }
        if let Some(previous) = segments.last()
            && scan.next_offset > base_offset
            && base_offset != previous.next_offset
        {
            return Err(LogError::Corrupt {
                path: path.display().to_string(),
                position: 0,
                reason: format!(
                    "segment starts at {base_offset} but the previous one ends at {}",
                    previous.next_offset
                ),
            });
        }
        segments.push(Segment {
            base_offset,
            path,
            len: scan.valid_len,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            index: scan.index,
            read_to: (0, 0),
        });
    }
    if segments.is_empty() {
        let path = segment::segment_path(dir, 0);
        File::create(&path).map_err(LogError::io(format!("creating {}", path.display())))?;
        sync_dir(dir).map_err(LogError::io(format!("syncing {}", dir.display())))?;
        segments.push(Segment {
            base_offset: 0,
            path,
            len: 0,
            next_offset: 0,
            max_timestamp: None,
            index: Vec::new(),
            read_to: (0, 0),
        });
    }
    Ok(PartitionState {
        dir: dir.to_path_buf(),
        segments,
    })
}

#[async_trait::async_trait]
impl EventLog for EmbeddedLog {
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        check_name("topic", topic)?;
        if partitions == 0 {
            return Err(LogError::PartitionMismatch {
                topic: topic.into(),
                existing: 0,
                requested: 0,
            });
        }
        if let Ok(existing) = self.topic(topic) {
            return LogError::check_partitions(topic, existing.partitions.len() as u32, partitions);
        }
        let inner = Arc::clone(&self.inner);
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            let mut topics = inner.topics.write();
            if topics.contains_key(&name) {
                return Ok(());
            }
            let topic_dir = inner.dir.join(&name);
            let mut states = Vec::new();
            for partition in 0..partitions {
                states.push(Mutex::new(recover_partition(
                    &topic_dir.join(partition.to_string()),
                )?));
            }
            let meta = serde_json::to_vec(&TopicMeta { partitions }).expect("meta serializes");
            groups::write_atomically(&topic_dir.join("topic.json"), &meta)?;
            sync_dir(&inner.dir)
                .map_err(LogError::io(format!("syncing {}", inner.dir.display())))?;
            topics.insert(
                name.clone(),
                Arc::new(TopicState {
                    name,
                    partitions: states,
                }),
            );
            Ok(())
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("create topic task failed: {e}")))?
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    async fn append(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        let topic = self.topic(topic)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let n_partitions = topic.partitions.len() as u32;
        let mut assigned = Vec::with_capacity(records.len());
        for record in records {
            let partition = self.inner.partitioner.partition(&record, n_partitions)?;
            assigned.push((partition, record));
        }
        let (reply, reply_rx) = oneshot::channel();
        self.sender()?
            .send(AppendRequest {
                topic,
                records: assigned,
                reply,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        reply_rx.await.map_err(|_| LogError::Closed)?
    }

    fn complete_before(&self) -> Option<i64> {
        let mut stamps = self.inner.stamps.lock();
        let now = stamps.clock.now();
        Some(stamps.complete_before(now))
    }

    fn clock_ms(&self) -> Option<i64> {
        Some(self.inner.stamps.lock().clock.now())
    }

    async fn ranges(&self, topic: &str) -> Result<Vec<PartitionRange>, LogError> {
        Ok(self
            .topic(topic)?
            .partitions
            .iter()
            .map(|p| p.lock().range())
            .collect())
    }

    async fn fetch(
        &self,
        positions: &[FetchPosition],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut appended = self.appended.clone();
        loop {
            // Mark the current version seen before reading, so an append that
            // lands during the read still wakes the wait below.
            appended.borrow_and_update();
            // The read runs in place (`on_this_thread`), so a fetch with
            // records waiting would never give the task up: a caller
            // fetching in a loop (a replay, the batch layer's read) would
            // not see its shutdown, nor let its other futures run, until
            // the log ran dry. A turn first, then the read and whatever the
            // caller does with it on one thread.
            tokio::task::yield_now().await;
            let (inner, wanted) = (Arc::clone(&self.inner), positions.to_vec());
            let records = crate::on_this_thread(move || inner.read_available(&wanted, max_records))
                .await
                .map_err(read_failed)??;
            if !records.is_empty() || !appended_before(&mut appended, deadline).await {
                return Ok(records);
            }
        }
    }

    async fn fetch_values(
        &self,
        spans: &mut [&mut ValueSpan],
        max_records: usize,
        max_wait: Duration,
    ) -> Result<ValuesRead, LogError> {
        if spans.iter().all(|s| s.position.offset >= s.end) {
            return Ok(ValuesRead::default());
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut appended = self.appended.clone();
        loop {
            // As `fetch`: the version marked seen, then a turn, then the read.
            appended.borrow_and_update();
            tokio::task::yield_now().await;
            let marks = marks_of(spans);
            let read = match crate::in_place(|| self.inner.read_values(spans, max_records)) {
                // A read that failed half way, or panicked, undoes what it
                // appended.
                Some(outcome) => match outcome.map_err(read_failed).and_then(|read| read) {
                    Ok(read) => read,
                    Err(error) => {
                        undo(spans, &marks);
                        return Err(error);
                    }
                },
                None => {
                    // A current-thread runtime: read on the pool into
                    // records of our own, appended here.
                    let wanted = ValueSpan::due(spans);
                    let inner = Arc::clone(&self.inner);
                    let records =
                        crate::on_this_thread(move || inner.read_available(&wanted, max_records))
                            .await
                            .map_err(read_failed)??;
                    crate::append_values(spans, records)
                }
            };
            if read.records > 0 || !appended_before(&mut appended, deadline).await {
                return Ok(read);
            }
        }
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError> {
        check_name("group", group)?;
        let topic_state = self.topic(topic)?;
        for (partition, _) in offsets {
            Inner::partition(&topic_state, *partition)?;
        }
        let inner = Arc::clone(&self.inner);
        let (group, topic, offsets) = (group.to_string(), topic.to_string(), offsets.to_vec());
        tokio::task::spawn_blocking(move || {
            let _guard = inner.groups.lock();
            groups::commit(&inner.dir, &group, &topic, &offsets)
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("commit task failed: {e}")))?
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        check_name("group", group)?;
        let inner = Arc::clone(&self.inner);
        let (group, topic) = (group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let committed = {
                let _guard = inner.groups.lock();
                groups::committed(&inner.dir, &group, &topic)?
            };
            inner.check_committed(&group, &topic, &committed)?;
            Ok(committed)
        })
        .await
        .map_err(|e| LogError::Unavailable(format!("committed task failed: {e}")))?
    }

    async fn enforce_retention(&self) -> Result<u64, LogError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || enforce_retention(&inner))
            .await
            .map_err(|e| LogError::Unavailable(format!("retention task failed: {e}")))?
    }

    async fn close(&self) -> Result<(), LogError> {
        let taken = self.writer.lock().take();
        if let Some((tx, handle)) = taken {
            drop(tx);
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| LogError::Unavailable(format!("close task failed: {e}")))?
                .map_err(|_| LogError::Unavailable("log writer thread panicked".into()))?;
        }
        Ok(())
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer thread finish what it holds and exit.
        self.writer.lock().take();
    }
}

/// Deletes closed segments past the time or size limit; returns the records dropped.
fn enforce_retention(inner: &Inner) -> Result<u64, LogError> {
    let now = chrono::Utc::now().timestamp_millis();
    let topics: Vec<Arc<TopicState>> = inner.topics.read().values().cloned().collect();
    let mut dropped = 0;
    for topic in topics {
        let own = inner.config.topic_retention.get(&topic.name);
        let (retention_ms, retention_bytes, guard_groups) = match own {
            Some(own) => (own.retention_ms, own.retention_bytes, &[][..]),
            None => (
                inner.config.retention_ms,
                inner.config.retention_bytes,
                &inner.config.retention_guards[..],
            ),
        };
        // A guard committed past the end no longer tells what the lake holds:
        // refuse (delete nothing more) rather than trust it.
        let guards = guard_groups
            .iter()
            .map(|group| {
                let committed = groups::committed(&inner.dir, group, &topic.name)?;
                inner.check_committed(group, &topic.name, &committed)?;
                Ok(committed)
            })
            .collect::<Result<Vec<_>, LogError>>()?;
        for (partition, state) in topic.partitions.iter().enumerate() {
            let mut state = state.lock();
            // Records below this every guard group has consumed.
            let consumed = guards
                .iter()
                .map(|committed| committed.get(&(partition as u32)).copied().unwrap_or(0))
                .min()
                .unwrap_or(u64::MAX);
            loop {
                if state.segments.len() < 2 || state.segments[0].next_offset > consumed {
                    break;
                }
                let total: u64 = state.segments.iter().map(|s| s.len).sum();
                let oldest = &state.segments[0];
                let expired = match (retention_ms, oldest.max_timestamp) {
                    (Some(limit), Some(max_ts)) => max_ts < now.saturating_sub(limit),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                let oversized = retention_bytes.is_some_and(|limit| total > limit);
                if !expired && !oversized {
                    break;
                }
                let removed = state.segments.remove(0);
                fs::remove_file(&removed.path)
                    .map_err(LogError::io(format!("deleting {}", removed.path.display())))?;
                dropped += removed.next_offset - removed.base_offset;
                tracing::info!(
                    topic = %topic.name,
                    partition,
                    base_offset = removed.base_offset,
                    records = removed.next_offset - removed.base_offset,
                    expired,
                    oversized,
                    "retention deleted segment"
                );
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record keeps its producer's timestamp unless it is ahead of the
    /// wall clock (then the clock's) or before a time promised to a reader
    /// (then that time); the promise is just past the latest stamp, never
    /// past the wall clock nor past a group being written, and never goes
    /// back, not even when the clock does.
    #[test]
    fn stamps_keep_what_was_promised() {
        let mut stamps = Stamps::after(i64::MIN, LogClock::start(i64::MIN));
        let now = 10_000;
        let mut group = [5_000, 4_000, 20_000];
        stamps.stamp(now, group.iter_mut());
        assert_eq!(
            group,
            [5_000, 4_000, 10_000],
            "ahead of the clock: the clock's"
        );
        // Being written: nothing stamped from its earliest on is readable.
        assert_eq!(stamps.complete_before(now), 4_000);
        stamps.written();
        // Written: just past the latest stamp, but not past the clock.
        assert_eq!(stamps.complete_before(now), 10_000);
        assert_eq!(stamps.complete_before(now + 5), 10_001);
        // Stamped before the promise: at it; after it: kept.
        let mut group = [9_000, 10_001, 10_003];
        stamps.stamp(now + 5, group.iter_mut());
        assert_eq!(group, [10_001, 10_001, 10_003]);
        stamps.written();
        // The clock stepped back: the promise stays.
        assert_eq!(stamps.complete_before(2_000), 10_001);
        // A record without a timestamp (0 or less) keeps it until a
        // reader is promised a time.
        let mut fresh = Stamps::after(i64::MIN, LogClock::start(i64::MIN));
        let mut group = [0, -1];
        fresh.stamp(now, group.iter_mut());
        assert_eq!(group, [0, -1]);
        // A log opened on records stamps none before them (a process
        // before may have promised that much), and promises past them.
        let mut reopened = Stamps::after(7_000, LogClock::start(7_000));
        let mut group = [6_000];
        reopened.stamp(now, group.iter_mut());
        assert_eq!(group, [7_001]);
        reopened.written();
        assert_eq!(reopened.complete_before(now), 7_002);
    }

    /// A log holding records stamped ahead of the wall clock (a clock that
    /// ran fast, or was stepped back since) starts its clock past them: a
    /// record written now is stamped after them, and the promise covers
    /// them at once. (A hostile run: the log's clock started at the wall
    /// clock, so a replay folded records written after a 90 s step back
    /// before the older ones, where the live loop had folded them after;
    /// and a partition's records waited for the next append.)
    #[test]
    fn a_clock_starts_past_the_records_the_log_holds() {
        let wall = chrono::Utc::now().timestamp_millis();
        let latest = wall + 90_000;
        let mut stamps = Stamps::after(latest, LogClock::start(latest));
        let now = stamps.clock.now();
        assert!(now > latest, "{now} > {latest}");
        assert_eq!(stamps.complete_before(now), latest + 1);
        let mut group = [wall];
        stamps.stamp(now, group.iter_mut());
        assert_eq!(group, [latest + 1]);
        // The clock moves on from there, and follows the wall clock forward.
        let mut clock = LogClock::start(i64::MIN);
        let first = clock.now();
        clock.at -= 3_600_000;
        assert!(clock.now() >= first, "followed forward");
    }

    /// The log keeps its promise: a record appended after a reader was
    /// promised a time is stamped no earlier, whatever its producer
    /// stamped, and the records stamped before it were all readable then;
    /// the promise is kept across a reopening: a record appended then is
    /// stamped after every record the log held.
    #[tokio::test]
    async fn a_record_appended_after_a_promise_is_stamped_after_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .expect("the log");
        log.create_topic("t", 2).await.expect("a topic");
        let a = 1_767_229_200_000_i64;
        let at = |key: &str, ts: i64| Record::keyed(key, b"v".to_vec(), ts);
        log.append("t", vec![at("k0", a), at("k1", a + 50)])
            .await
            .expect("appended");
        assert_eq!(log.complete_before(), Some(a + 51));
        log.append("t", vec![at("k0", a + 10), at("k1", a + 60)])
            .await
            .expect("appended");
        let positions: Vec<FetchPosition> = (0..2)
            .map(|partition| FetchPosition {
                topic: "t".into(),
                partition,
                offset: 0,
            })
            .collect();
        let read = log
            .fetch(&positions, 10, Duration::ZERO)
            .await
            .expect("fetched");
        let mut stamps: Vec<i64> = read.iter().map(|r| r.record.timestamp_ms).collect();
        stamps.sort();
        assert_eq!(stamps, [a, a + 50, a + 51, a + 60]);
        log.close().await.expect("closed");
        let reopened = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .expect("reopened");
        reopened
            .append("t", vec![at("k0", a + 10)])
            .await
            .expect("appended");
        let read = reopened
            .fetch(&positions, 10, Duration::ZERO)
            .await
            .expect("fetched");
        let latest = read.iter().map(|r| r.record.timestamp_ms).max();
        assert_eq!(latest, Some(a + 61));
        assert_eq!(reopened.complete_before(), Some(a + 62));
    }
}
