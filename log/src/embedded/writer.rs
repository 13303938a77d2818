//! The writer thread: group commit. It drains every append request waiting in
//! the queue, writes their frames, `fsync`s each touched segment once, then
//! publishes the new end offsets to readers and acknowledges the requests.
//! One fsync thus covers many concurrent appends, which is what makes
//! "acknowledged only once durable" affordable.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::segment::{self, INDEX_INTERVAL};
use super::{Inner, Segment, TopicState, sync_dir};
use crate::{LogError, Position, Record};

/// Most requests folded into one group commit.
const MAX_GROUP_REQUESTS: usize = 512;

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

pub(crate) struct Writer {
    inner: Arc<Inner>,
    rx: mpsc::Receiver<AppendRequest>,
    files: HashMap<(String, u32), (u64, File)>,
}

impl Writer {
    pub(crate) fn new(inner: Arc<Inner>, rx: mpsc::Receiver<AppendRequest>) -> Writer {
        Writer {
            inner,
            rx,
            files: HashMap::new(),
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
            match self.commit_group(&group) {
                Ok(positions) => {
                    tracing::trace!(n_requests = group.len(), n_records, "group committed");
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

    fn commit_group(&mut self, group: &[AppendRequest]) -> Result<Vec<Vec<Position>>, LogError> {
        let mut pending: HashMap<(String, u32), Pending> = HashMap::new();
        let mut positions = Vec::with_capacity(group.len());
        let result = (|| {
            for request in group {
                let mut request_positions = Vec::with_capacity(request.records.len());
                for (partition, record) in &request.records {
                    let key = (request.topic.name.clone(), *partition);
                    let entry = match pending.entry(key) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(self.begin(&request.topic, *partition))
                        }
                    };
                    let mut frame = Vec::new();
                    segment::encode(entry.next_offset, record, &mut frame);
                    let written = entry.durable_len + entry.buf.len() as u64;
                    if written > 0 && written + frame.len() as u64 > self.inner.config.segment_bytes
                    {
                        self.flush(entry)?;
                        self.roll(entry)?;
                        frame.clear();
                        segment::encode(entry.next_offset, record, &mut frame);
                    }
                    let position_in_segment = entry.durable_len + entry.buf.len() as u64;
                    if (entry.next_offset - entry.base_offset).is_multiple_of(INDEX_INTERVAL) {
                        entry.index.push((entry.next_offset, position_in_segment));
                    }
                    entry.buf.extend_from_slice(&frame);
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
            for entry in pending.values_mut() {
                self.flush(entry)?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            // Cut whatever was written but not published, so the files match what readers know.
            for entry in pending.values() {
                self.discard_unpublished(entry);
            }
            return Err(error);
        }
        Ok(positions)
    }

    /// Starts pending state for a partition from its published active segment.
    fn begin(&self, topic: &Arc<TopicState>, partition: u32) -> Pending {
        let mut state = topic.partitions[partition as usize].lock();
        let active = state.active();
        Pending {
            topic: Arc::clone(topic),
            partition,
            base_offset: active.base_offset,
            durable_len: active.len,
            buf: Vec::new(),
            next_offset: active.next_offset,
            max_timestamp: None,
            index: Vec::new(),
        }
    }

    fn file(&mut self, entry: &Pending) -> Result<&mut File, LogError> {
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
            self.files.insert(key.clone(), (entry.base_offset, file));
        }
        Ok(&mut self.files.get_mut(&key).expect("inserted above").1)
    }

    /// Writes and fsyncs the pending frames, then publishes them to readers.
    fn flush(&mut self, entry: &mut Pending) -> Result<(), LogError> {
        if entry.buf.is_empty() {
            return Ok(());
        }
        let context = format!(
            "topic {} partition {}: writing segment",
            entry.topic.name, entry.partition
        );
        let file = self.file(entry)?;
        file.write_all(&entry.buf)
            .map_err(LogError::io(context.clone()))?;
        file.sync_data().map_err(LogError::io(context))?;
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
        Ok(())
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
        if let Some((_, file)) = self.files.get(&key)
            && let Err(error) = file.set_len(durable)
        {
            tracing::error!(%error, topic = %entry.topic.name, partition = entry.partition, "could not cut unpublished bytes");
        }
        self.files.remove(&key);
    }
}
