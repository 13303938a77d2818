//! The writer thread: group commit. It drains every append request waiting in
//! the queue, writes their frames, `fsync`s each touched segment once, then
//! publishes the new end offsets to readers and acknowledges the requests.
//! One fsync thus covers many concurrent appends, which is what makes
//! "acknowledged only once durable" affordable.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::segment::{self, INDEX_INTERVAL};
use super::{Inner, Segment, TopicState, sync_dir};
use crate::{LogError, Position, Record};

/// Most requests folded into one group commit.
const MAX_GROUP_REQUESTS: usize = 512;

/// Most threads fsyncing a group's files at once (more files wait their turn).
const MAX_SYNC_THREADS: usize = 16;

/// One file to fsync, and where its result goes.
type SyncJob = (Arc<File>, std::sync::mpsc::Sender<std::io::Result<()>>);

/// Threads that fsync a group's files concurrently, kept from group to
/// group: a thread started per file per group (16 per group, hundreds of
/// groups a second) cost a thread start, a stack and an allocator heap on
/// fresh pages each time — a tenth of the collector's CPU in a profile.
struct Syncers {
    jobs: std::sync::mpsc::Sender<SyncJob>,
    queue: Arc<Mutex<std::sync::mpsc::Receiver<SyncJob>>>,
    threads: usize,
}

impl Syncers {
    fn new() -> Syncers {
        let (jobs, queue) = std::sync::mpsc::channel();
        Syncers {
            jobs,
            queue: Arc::new(Mutex::new(queue)),
            threads: 0,
        }
    }

    /// fsyncs `files` concurrently; the first failure (by position) is the
    /// result, with its index.
    fn sync(&mut self, files: Vec<Arc<File>>) -> Result<(), (usize, std::io::Error)> {
        while self.threads < files.len().min(MAX_SYNC_THREADS) {
            let queue = Arc::clone(&self.queue);
            let started = std::thread::Builder::new()
                .name("log-fsync".into())
                .spawn(move || {
                    loop {
                        // The queue's lock is let go before the fsync.
                        let job = queue.lock().recv();
                        // Until the writer (and with it the sender) is gone.
                        let Ok((file, reply)) = job else { break };
                        let _ = reply.send(file.sync_data());
                    }
                });
            if started.is_err() {
                break;
            }
            self.threads += 1;
        }
        if self.threads == 0 {
            // No thread could be started: one file after the other, here.
            return files
                .iter()
                .enumerate()
                .try_for_each(|(i, file)| file.sync_data().map_err(|e| (i, e)));
        }
        // The queue's receiver is held here too: a send cannot fail.
        let replies: Vec<_> = files
            .into_iter()
            .map(|file| {
                let (reply, result) = std::sync::mpsc::channel();
                let _ = self.jobs.send((file, reply));
                result
            })
            .collect();
        let mut first_error = Ok(());
        for (i, result) in replies.into_iter().enumerate() {
            let result = result
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("an fsync thread stopped")));
            if let (Ok(()), Err(error)) = (&first_error, result) {
                first_error = Err((i, error));
            }
        }
        first_error
    }
}

/// One `append` call waiting for the writer.
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub(crate) topic: Arc<TopicState>,
    /// Records with the partition already chosen.
    pub(crate) records: Vec<(u32, Record)>,
    pub(crate) reply: oneshot::Sender<Result<Vec<Position>, LogError>>,
}

/// Frames written to a partition's active segment in this group, not yet published.
struct Pending {
    topic: Arc<TopicState>,
    partition: u32,
    base_offset: u64,
    /// Durable length of the active segment before this group.
    durable_len: u64,
    buf: Vec<u8>,
    next_offset: u64,
    max_timestamp: Option<i64>,
    index: Vec<(u64, u64)>,
}

impl Pending {
    fn context(&self) -> String {
        format!(
            "topic {} partition {}: writing segment",
            self.topic.name, self.partition
        )
    }
}

/// Publishes `entry`'s written and synced frames to readers.
fn publish(entry: &mut Pending) {
    if entry.buf.is_empty() {
        return;
    }
    let mut state = entry.topic.partitions[entry.partition as usize].lock();
    let active = state.active();
    debug_assert_eq!(active.base_offset, entry.base_offset);
    active.len += entry.buf.len() as u64;
    active.next_offset = entry.next_offset;
    active.index.append(&mut entry.index);
    if let Some(ts) = entry.max_timestamp.take() {
        active.max_timestamp = Some(active.max_timestamp.map_or(ts, |m| m.max(ts)));
    }
    entry.durable_len = active.len;
    entry.buf.clear();
}

pub(crate) struct Writer {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<AppendRequest>,
    files: HashMap<(String, u32), (u64, Arc<File>)>,
    syncers: Syncers,
    /// Frame buffers of earlier groups, emptied, for the next: a group's
    /// buffer grown from nothing again each time was copied over and over
    /// as it grew (1.3 % of `lambda bench ingest`'s time).
    spare: Vec<Vec<u8>>,
}

/// Frame buffers kept for the next group at most, and the capacity past
/// which one is let go: at most 64 MiB stay held after a burst of large
/// records.
const SPARE_BUFFERS: usize = 16;
const SPARE_BUFFER_BYTES: usize = 4 << 20;

impl Writer {
    pub(crate) fn new(inner: Arc<Inner>, rx: mpsc::Receiver<AppendRequest>) -> Writer {
        Writer {
            inner,
            rx,
            files: HashMap::new(),
            syncers: Syncers::new(),
            spare: Vec::new(),
        }
    }

    /// Runs until every sender is gone and the queue is empty.
    pub(crate) fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP_REQUESTS {
                match self.rx.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let n_records: usize = group.iter().map(|r| r.records.len()).sum();
            let started = std::time::Instant::now();
            match self.commit_group(&mut group) {
                Ok(positions) => {
                    tracing::trace!(
                        n_requests = group.len(),
                        n_records,
                        took_us = started.elapsed().as_micros() as u64,
                        "group committed"
                    );
                    for (request, positions) in group.into_iter().zip(positions) {
                        let _ = request.reply.send(Ok(positions));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, n_requests = group.len(), "group commit failed");
                    for request in group {
                        let _ = request
                            .reply
                            .send(Err(LogError::Unavailable(error.to_string())));
                    }
                }
            }
            self.inner.appended.send_modify(|v| *v += 1);
        }
        tracing::debug!("log writer stopped");
    }

    fn commit_group(
        &mut self,
        group: &mut [AppendRequest],
    ) -> Result<Vec<Vec<Position>>, LogError> {
        // Stamped first: the stamps are written into the frames.
        let stamps = group
            .iter_mut()
            .flat_map(|request| request.records.iter_mut())
            .map(|(_, record)| &mut record.timestamp_ms);
        let mut stamping = self.inner.stamps.lock();
        let now = stamping.clock.now();
        stamping.stamp(now, stamps);
        drop(stamping);
        let result = self.write_group(group);
        // Readable now, or discarded.
        self.inner.stamps.lock().written();
        result
    }

    fn write_group(&mut self, group: &[AppendRequest]) -> Result<Vec<Vec<Position>>, LogError> {
        // The partitions this group touches; a handful, found by a scan
        // (no key allocated or hashed per record).
        let mut pending: Vec<Pending> = Vec::new();
        let mut positions = Vec::with_capacity(group.len());
        let result = (|| {
            for request in group {
                let mut request_positions = Vec::with_capacity(request.records.len());
                for (partition, record) in &request.records {
                    let found = pending.iter().position(|p| {
                        p.partition == *partition && Arc::ptr_eq(&p.topic, &request.topic)
                    });
                    let i = match found {
                        Some(i) => i,
                        None => {
                            pending.push(self.begin(&request.topic, *partition));
                            pending.len() - 1
                        }
                    };
                    let entry = &mut pending[i];
                    let frame_len = segment::frame_len(record) as u64;
                    let written = entry.durable_len + entry.buf.len() as u64;
                    if written > 0 && written + frame_len > self.inner.config.segment_bytes {
                        // This group's frames so far (none, when the segment
                        // was already full before it: then it only rolls, and
                        // the file may not even be open yet after a restart).
                        if !entry.buf.is_empty() {
                            self.write(entry)?;
                            self.sync(entry)?;
                            publish(entry);
                        }
                        self.roll(entry)?;
                    }
                    let position_in_segment = entry.durable_len + entry.buf.len() as u64;
                    if (entry.next_offset - entry.base_offset).is_multiple_of(INDEX_INTERVAL) {
                        entry.index.push((entry.next_offset, position_in_segment));
                    }
                    // Framed straight into the group's buffer: no copy per record.
                    segment::encode(entry.next_offset, record, &mut entry.buf);
                    entry.max_timestamp = Some(
                        entry
                            .max_timestamp
                            .map_or(record.timestamp_ms, |m| m.max(record.timestamp_ms)),
                    );
                    request_positions.push(Position {
                        partition: *partition,
                        offset: entry.next_offset,
                    });
                    entry.next_offset += 1;
                }
                positions.push(request_positions);
            }
            // Write every partition's frames, then fsync the files all at
            // once (the file system folds concurrent syncs into one journal
            // commit: one after the other, a group touching 16 partitions
            // waited for 16), then publish.
            for entry in &pending {
                self.write(entry)?;
            }
            let syncing = std::time::Instant::now();
            self.sync_all(&pending)?;
            tracing::trace!(
                partitions = pending.len(),
                sync_us = syncing.elapsed().as_micros() as u64,
                "group synced"
            );
            for entry in &mut pending {
                publish(entry);
            }
            Ok(())
        })();
        if result.is_err() {
            // Cut whatever was written but not published, so the files match what readers know.
            for entry in &pending {
                self.discard_unpublished(entry);
            }
        }
        for entry in pending {
            let mut buf = entry.buf;
            if self.spare.len() < SPARE_BUFFERS && buf.capacity() <= SPARE_BUFFER_BYTES {
                buf.clear();
                self.spare.push(buf);
            }
        }
        result.map(|()| positions)
    }

    /// `fsync`s the active segment of every entry with frames to publish,
    /// concurrently; the first failure is the result.
    fn sync_all(&mut self, pending: &[Pending]) -> Result<(), LogError> {
        let touched: Vec<&Pending> = pending.iter().filter(|e| !e.buf.is_empty()).collect();
        match touched.as_slice() {
            [] => Ok(()),
            [one] => self.sync(one),
            many => {
                let files = many
                    .iter()
                    .map(|entry| self.open(entry).map(Arc::clone))
                    .collect::<Result<Vec<_>, _>>()?;
                self.syncers
                    .sync(files)
                    .map_err(|(i, error)| LogError::io(many[i].context())(error))
            }
        }
    }

    /// Starts pending state for a partition from its published active segment.
    fn begin(&mut self, topic: &Arc<TopicState>, partition: u32) -> Pending {
        let buf = self.spare.pop().unwrap_or_default();
        let mut state = topic.partitions[partition as usize].lock();
        let active = state.active();
        Pending {
            topic: Arc::clone(topic),
            partition,
            base_offset: active.base_offset,
            durable_len: active.len,
            buf,
            next_offset: active.next_offset,
            max_timestamp: None,
            index: Vec::new(),
        }
    }

    fn file(&mut self, entry: &Pending) -> Result<&File, LogError> {
        let key = (entry.topic.name.clone(), entry.partition);
        let stale = self
            .files
            .get(&key)
            .is_none_or(|(base, _)| *base != entry.base_offset);
        if stale {
            let path = entry.topic.partitions[entry.partition as usize]
                .lock()
                .active()
                .path
                .clone();
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(LogError::io(format!("opening {}", path.display())))?;
            self.files
                .insert(key.clone(), (entry.base_offset, Arc::new(file)));
        }
        Ok(&self.files.get(&key).expect("inserted above").1)
    }

    /// `fsync`s `entry`'s active segment, which [`Writer::write`] opened:
    /// a file not open is an error of the group, never a panic of the writer
    /// thread (that would close the log for every later append).
    fn sync(&self, entry: &Pending) -> Result<(), LogError> {
        self.open(entry)?
            .sync_data()
            .map_err(LogError::io(entry.context()))
    }

    /// `entry`'s active segment, which [`Writer::write`] opened.
    fn open(&self, entry: &Pending) -> Result<&Arc<File>, LogError> {
        match self.files.get(&(entry.topic.name.clone(), entry.partition)) {
            Some((base, file)) if *base == entry.base_offset => Ok(file),
            _ => Err(LogError::Unavailable(format!(
                "{}: the active segment is not open",
                entry.context()
            ))),
        }
    }

    /// Writes the pending frames (not yet durable, not yet published).
    fn write(&mut self, entry: &Pending) -> Result<(), LogError> {
        if entry.buf.is_empty() {
            return Ok(());
        }
        let mut file = self.file(entry)?;
        file.write_all(&entry.buf)
            .map_err(LogError::io(entry.context()))
    }

    /// Closes the active segment and starts a new one at the next offset.
    fn roll(&mut self, entry: &mut Pending) -> Result<(), LogError> {
        let mut state = entry.topic.partitions[entry.partition as usize].lock();
        let path = segment::segment_path(&state.dir, entry.next_offset);
        File::create(&path).map_err(LogError::io(format!("creating {}", path.display())))?;
        sync_dir(&state.dir).map_err(LogError::io(format!("syncing {}", state.dir.display())))?;
        state.segments.push(Segment {
            base_offset: entry.next_offset,
            path,
            len: 0,
            next_offset: entry.next_offset,
            max_timestamp: None,
            index: Vec::new(),
            read_to: (0, 0),
        });
        entry.base_offset = entry.next_offset;
        entry.durable_len = 0;
        tracing::debug!(topic = %entry.topic.name, partition = entry.partition, base_offset = entry.base_offset, "rolled segment");
        Ok(())
    }

    fn discard_unpublished(&mut self, entry: &Pending) {
        let key = (entry.topic.name.clone(), entry.partition);
        let durable = entry.topic.partitions[entry.partition as usize]
            .lock()
            .active()
            .len;
        // Only the active segment's file holds unpublished bytes: one held
        // for an older segment (the partition rolled in this group) is
        // published whole and must not be cut to the new segment's length.
        if let Some((base, file)) = self.files.get(&key)
            && *base == entry.base_offset
            && let Err(error) = file.set_len(durable)
        {
            tracing::error!(%error, topic = %entry.topic.name, partition = entry.partition, "could not cut unpublished bytes");
        }
        self.files.remove(&key);
    }
}
