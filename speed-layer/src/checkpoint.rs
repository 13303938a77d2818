//! Checkpoints: the speed layer's windows, watermark, ledger and consumed
//! offsets written together, atomically, so a restart resumes from a state
//! and the offsets that produced it — nothing lost, nothing counted twice.
//!
//! A checkpoint is a small *manifest* (offsets, clocks, watermark, ledger,
//! counters, alert state, and the list of window files) plus one file per
//! window, in a directory beside it (`checkpoint.json` →
//! `checkpoint.windows/`). A window's file is named by the window's start,
//! the state's epoch and the window's version, so a file once written never
//! changes: a checkpoint writes only the windows that changed since the last
//! one ([`Checkpointer`]). A closed window stops changing, so it is written
//! once more when it closes (without its ids, which it drops) and then only
//! referred to. The cost of a checkpoint follows what changed, not the
//! whole state. Order on disk: window files (fsynced), then the manifest
//! (temporary file, fsync, rename, directory fsync), then the files no
//! manifest refers to any more are deleted; a crash at any point leaves the
//! previous manifest and every file it names.
//!
//! Nothing damaged loads silently (format 3): the manifest names each window
//! file with its length and CRC-32, and ends with a line holding the CRC-32
//! of the rest of it, so a cut, flipped or edited file — even one that still
//! parses — is an error naming it, never a state that counts wrong.
//!
//! [`encode`]/[`decode`] are the self-contained form of the same manifest,
//! windows inline (format 1 wrote only that; formats 1 and 2, which carried
//! no sums, still load).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts, SensorStats};
use lambda_events::limits::MAX_EVENT_ID_LEN;
use lambda_events::{BucketViews, DdSketch, Hll, Topic};
use serde::{Deserialize, Serialize};

use crate::alerts::AlertEngine;
use crate::seen::{SeenIds, WindowIds};
use crate::store::{CheckpointStore, Commit, PartitionId};
use crate::window::{PartitionClock, SpeedCounters, SpeedState, Window};

/// The checkpoint format this version writes: 3 (windows inline or in
/// window files; every file's length and CRC-32 in the manifest, and the
/// manifest's own in its last line). It also reads format 2 (the same
/// without sums) and 1 (windows inline only).
pub const FORMAT_VERSION: u32 = 3;

/// The formats [`load`] and [`decode`] read.
const READS: [u32; 3] = [1, 2, 3];

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    format_version: u32,
    max_event_ts: Option<i64>,
    offsets: Vec<(String, u32, u64)>,
    late_ledger: Vec<(Topic, i64, u64)>,
    counters: (u64, u64, u64, u64),
    evicted_before: i64,
    /// Windows written inline ([`encode`], and every format-1 file).
    #[serde(default)]
    windows: Vec<WindowFile>,
    /// Windows in files of their own (format 2).
    #[serde(default)]
    window_files: Vec<WindowEntry>,
    /// `(topic, partition, max event time)`.
    #[serde(default)]
    clocks: Vec<(String, u32, i64)>,
    #[serde(default)]
    watermark: Option<i64>,
    #[serde(default)]
    alerts: Option<AlertEngine>,
    /// `(topic, partition)` of the clocks idle (left out of the watermark
    /// until they send again): a restart must not let them hold it anew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    idle: Vec<(String, u32)>,
    /// `(topic, partition, newest append timestamp)` of the clocks that
    /// know it, and the log's clock (the newest append timestamp read):
    /// partitions go idle by them, after a restart as before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    appended: Vec<(String, u32, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_time: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WindowFile {
    start: i64,
    #[serde(flatten)]
    views: ViewsWire,
    /// Inline ids ([`encode`]; a window file's ids are in its id files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seen: Vec<String>,
}

/// One window of a format-2 manifest: the file of its views, and the files
/// of its ids (pieces of [`crate::seen::SeenIds`]'s encoded form, in order;
/// none once the window has closed and dropped them).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WindowEntry {
    start: i64,
    file: FileRef,
    #[serde(default)]
    ids: Vec<FileRef>,
}

/// A window file as a manifest names it: `[name, length, CRC-32]` (format
/// 3), or its name alone (format 2, and a file of a snapshot not written yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileRef {
    /// Written, with its length and CRC-32.
    Summed(String, u64, u32),
    /// A name only.
    Named(String),
}

impl FileRef {
    fn name(&self) -> &str {
        match self {
            FileRef::Summed(name, ..) | FileRef::Named(name) => name,
        }
    }

    /// `bytes` read from the file, if they are what the manifest says.
    fn check(&self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let FileRef::Summed(name, len, crc) = self else {
            return Ok(());
        };
        let problem = if bytes.len() as u64 != *len {
            format!(
                "{} bytes long, where the manifest says {len}: cut short or damaged",
                bytes.len()
            )
        } else if crc32fast::hash(bytes) != *crc {
            format!(
                "its CRC-32 is {:08x}, where the manifest says {crc:08x}: damaged",
                crc32fast::hash(bytes)
            )
        } else {
            return Ok(());
        };
        Err(CheckpointError::WindowFile {
            name: name.clone(),
            problem,
        })
    }
}

/// The last line of a format-3 manifest: the CRC-32 of everything before it.
const SEAL: &[u8] = b"\ncrc32 ";

/// `json` with its seal line.
fn seal(mut json: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&json);
    json.extend_from_slice(SEAL);
    json.extend_from_slice(format!("{crc:08x}\n").as_bytes());
    json
}

/// The manifest's JSON, and whether it was sealed (and the seal matched).
fn unseal(bytes: &[u8]) -> Result<(&[u8], bool), CheckpointError> {
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return Ok((bytes, false));
    };
    let Some(at) = body.windows(SEAL.len()).rposition(|w| w == SEAL) else {
        return Ok((bytes, false));
    };
    let (json, line) = (&body[..at], &body[at + SEAL.len()..]);
    let written = std::str::from_utf8(line)
        .ok()
        .filter(|hex| hex.len() == 8)
        .and_then(|hex| u32::from_str_radix(hex, 16).ok());
    let computed = crc32fast::hash(json);
    match written {
        Some(written) if written == computed => Ok((json, true)),
        _ => Err(CheckpointError::Sum {
            written: String::from_utf8_lossy(line).into_owned(),
            computed,
        }),
    }
}

/// One bucket's views as JSON: sorted lists, so the same views give the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewsWire {
    funnel: Vec<(String, FunnelCounts)>,
    pages: Vec<(String, String, PageCounts)>,
    sensors: Vec<(String, String, SensorStats)>,
    devices: Vec<(String, DeviceCounts)>,
    #[serde(default)]
    users: Vec<(String, Hll)>,
    #[serde(default)]
    render: Vec<(String, String, DdSketch)>,
}

impl ViewsWire {
    /// The sorted form of `v`.
    pub fn from_views(v: &BucketViews) -> ViewsWire {
        let mut funnel: Vec<_> = v.funnel.iter().map(|(k, c)| (k.clone(), *c)).collect();
        let mut pages: Vec<_> = v
            .pages
            .iter()
            .map(|((p, d), c)| (p.clone(), d.clone(), *c))
            .collect();
        let mut sensors: Vec<_> = v
            .sensors
            .iter()
            .map(|((d, s), c)| (d.clone(), s.clone(), c.clone()))
            .collect();
        let mut devices: Vec<_> = v.devices.iter().map(|(k, c)| (k.clone(), *c)).collect();
        funnel.sort_by(|a, b| a.0.cmp(&b.0));
        pages.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        sensors.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        let mut users: Vec<_> = v
            .users
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        let mut render: Vec<_> = v
            .render
            .iter()
            .map(|((p, d), s)| (p.clone(), d.clone(), s.clone()))
            .collect();
        render.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        ViewsWire {
            funnel,
            pages,
            sensors,
            devices,
            users,
            render,
        }
    }

    /// Back to the keyed form.
    pub fn into_views(self) -> BucketViews {
        BucketViews {
            funnel: self.funnel.into_iter().collect(),
            pages: self
                .pages
                .into_iter()
                .map(|(p, d, c)| ((p, d), c))
                .collect(),
            sensors: self
                .sensors
                .into_iter()
                .map(|(d, s, c)| ((d, s), c))
                .collect(),
            devices: self.devices.into_iter().collect(),
            users: self.users.into_iter().collect(),
            render: self
                .render
                .into_iter()
                .map(|(p, d, s)| ((p, d), s))
                .collect(),
        }
    }
}

/// The manifest of `state`: everything but the windows.
fn manifest(state: &SpeedState) -> CheckpointFile {
    CheckpointFile {
        format_version: FORMAT_VERSION,
        max_event_ts: state.max_event_ts,
        offsets: state.offsets_list(),
        late_ledger: state.ledger_list(),
        counters: state.counters.as_tuple(),
        evicted_before: state.evicted_before,
        windows: Vec::new(),
        window_files: Vec::new(),
        clocks: state
            .clocks
            .iter()
            .map(|c| (c.topic.clone(), c.partition, c.max_ts))
            .collect(),
        watermark: state.watermark(),
        alerts: Some(state.alerts.clone()),
        idle: state
            .clocks
            .iter()
            .filter(|c| c.idle)
            .map(|c| (c.topic.clone(), c.partition))
            .collect(),
        appended: state
            .clocks
            .iter()
            .filter(|c| c.appended != i64::MIN)
            .map(|c| (c.topic.clone(), c.partition, c.appended))
            .collect(),
        log_time: state.log_time(),
    }
}

impl WindowFile {
    /// One window as written (ids sorted, so the same window gives the same bytes).
    fn of(start: i64, window: &Window, ids: Option<&WindowIds>) -> WindowFile {
        let mut seen: Vec<String> = ids
            .into_iter()
            .flat_map(WindowIds::iter)
            .map(str::to_owned)
            .collect();
        seen.sort_unstable();
        WindowFile {
            start,
            views: ViewsWire::from_views(&window.views),
            seen,
        }
    }

    /// The window, and the ids written inline (older checkpoints).
    fn into_window(self) -> (i64, Window, Vec<String>) {
        let window = Window {
            views: self.views.into_views(),
            version: 0,
        };
        (self.start, window, self.seen)
    }
}

/// Serializes the whole state in one self-contained file, windows inline
/// (sorted, so the same state gives the same bytes).
pub fn encode(state: &SpeedState) -> Vec<u8> {
    let mut file = manifest(state);
    file.windows = state
        .windows
        .iter()
        .map(|(start, window)| WindowFile::of(*start, window, state.seen.window(*start)))
        .collect();
    seal(serde_json::to_vec(&file).expect("checkpoint serializes"))
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file operation failed (a full disk, a missing permission).
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A call to the partition checkpoint store failed.
    #[error("checkpoint store: {0:#}")]
    Store(anyhow::Error),
    /// The bytes are not a checkpoint this version reads.
    #[error("the checkpoint does not parse")]
    Parse(#[source] serde_json::Error),
    /// A checkpoint of another format version.
    #[error("checkpoint format {found} is not one this version reads (1 or {FORMAT_VERSION})")]
    Format {
        /// The file's format version.
        found: u32,
    },
    /// The manifest names a window file that is not a plain file name, or
    /// whose window is not the one named.
    #[error("window file {name:?}: {problem}")]
    WindowFile {
        /// The name in the manifest.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The manifest's last line does not hold the CRC-32 of the rest: it was
    /// damaged or edited after it was written.
    #[error(
        "the checkpoint's checksum line says {written:?}, its bytes give {computed:08x}: damaged or edited after it was written"
    )]
    Sum {
        /// What the last line holds.
        written: String,
        /// The CRC-32 of the rest.
        computed: u32,
    },
    /// A format-3 manifest without its checksum line, or naming a window
    /// file without its length and checksum.
    #[error("a format-3 checkpoint without {0}: cut short or edited")]
    Unsummed(&'static str),
    /// A checkpoint holding what no speed state holds (a time past the
    /// bounds of event time, an alert seq past 2^53 − 1): hand-made or
    /// damaged in a way its checksum did not catch.
    #[error("the checkpoint holds {0}")]
    Implausible(String),
    /// A checkpoint file that could not be read back ([`load`]).
    #[error("checkpoint {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<CheckpointError>,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        action,
        path,
        source,
    }
}

impl CheckpointFile {
    /// What a restore computes with is within what a speed state holds
    /// (a store is shared: a hand-made manifest, sealed with its sum, with
    /// an alert seq of 2^64 − 1 killed every member of a group at its next
    /// alert, one after another; `max_event_ts` of i64::MIN panicked every
    /// claim; times near i64::MAX were restored and every snapshot of the
    /// partition refused after: a hostile run). `i64::MIN` stands for
    /// "none" in the clocks and the log's time.
    fn check(&self) -> Result<(), String> {
        use crate::export::plausible_time as time;
        let or_none = |name: &str, t: i64| if t == i64::MIN { Ok(()) } else { time(name, t) };
        if let Some(t) = self.max_event_ts {
            time("max_event_ts", t)?;
        }
        if let Some(t) = self.watermark {
            time("a watermark", t)?;
        }
        // Only compared with: far back is fine (kappa's horizon), ahead of
        // every event time would have every event counted late.
        if self.evicted_before > crate::export::plausible_time_bound() {
            return Err(format!(
                "evicted_before {} is ahead of every event time",
                self.evicted_before
            ));
        }
        if let Some(t) = self.log_time {
            or_none("the log's time", t)?;
        }
        for (_, start, _) in &self.late_ledger {
            time("a late ledger minute", *start)?;
        }
        for (_, _, t) in self.clocks.iter().chain(&self.appended) {
            or_none("a partition's time", *t)?;
        }
        for start in self
            .windows
            .iter()
            .map(|w| w.start)
            .chain(self.window_files.iter().map(|w| w.start))
        {
            time("a window start", start)?;
        }
        if let Some(alerts) = &self.alerts {
            alerts.check()?;
        }
        Ok(())
    }
}

/// Restores a state from [`encode`]'s bytes (windows inline).
pub fn decode(
    bytes: &[u8],
    allowed_lateness_ms: i64,
    horizon_ms: i64,
) -> Result<SpeedState, CheckpointError> {
    decode_with(bytes, allowed_lateness_ms, horizon_ms, &mut |name| {
        Err(CheckpointError::WindowFile {
            name: name.to_string(),
            problem: "a self-contained checkpoint names no window files".into(),
        })
    })
}

/// Restores a state from a manifest, reading its window files with `read`.
fn decode_with(
    bytes: &[u8],
    allowed_lateness_ms: i64,
    horizon_ms: i64,
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, CheckpointError>,
) -> Result<SpeedState, CheckpointError> {
    let (bytes, sealed) = unseal(bytes)?;
    let file: CheckpointFile = serde_json::from_slice(bytes).map_err(CheckpointError::Parse)?;
    if !READS.contains(&file.format_version) {
        return Err(CheckpointError::Format {
            found: file.format_version,
        });
    }
    let summed = file.format_version >= 3;
    if summed && !sealed {
        return Err(CheckpointError::Unsummed("its checksum line"));
    }
    file.check().map_err(CheckpointError::Implausible)?;
    let mut state = SpeedState::new(allowed_lateness_ms, horizon_ms);
    state.max_event_ts = file.max_event_ts;
    state.offsets = file
        .offsets
        .into_iter()
        .map(|(t, p, o)| ((t, p), o))
        .collect();
    state.set_ledger(file.late_ledger);
    let (counted, duplicates, late, invalid) = file.counters;
    state.counters = SpeedCounters {
        counted,
        duplicates,
        late,
        invalid,
    };
    state.evicted_before = file.evicted_before;
    state.clocks = file
        .clocks
        .into_iter()
        .map(|(topic, partition, max_ts)| PartitionClock {
            idle: file
                .idle
                .iter()
                .any(|(t, p)| *t == topic && *p == partition),
            appended: file
                .appended
                .iter()
                .find(|(t, p, _)| *t == topic && *p == partition)
                .map_or(i64::MIN, |(.., ts)| *ts),
            topic,
            partition,
            max_ts,
        })
        .collect();
    state.log_now = file.log_time.unwrap_or(i64::MIN);
    state.newest = state
        .clocks
        .iter()
        .map(|c| c.max_ts)
        .max()
        .unwrap_or(i64::MIN);
    if let Some(alerts) = file.alerts {
        state.alerts = alerts;
    }
    // Checkpoints from before per-partition clocks: the watermark they implied.
    state.watermark = crate::window::Watermark::restored(
        file.watermark
            .or_else(|| file.max_event_ts.map(|ts| ts - allowed_lateness_ms)),
    );
    for (start, window, ids) in file.windows.into_iter().map(WindowFile::into_window) {
        state.seen.extend(start, ids.iter().map(String::as_str));
        state.windows.insert(start, window);
    }
    for entry in file.window_files {
        let refs = || std::iter::once(&entry.file).chain(&entry.ids);
        let all_summed = refs().all(|r| matches!(r, FileRef::Summed(..)));
        if summed && !all_summed {
            return Err(CheckpointError::Unsummed(
                "the length and checksum of a window file",
            ));
        }
        if state.windows.contains_key(&entry.start) {
            return Err(CheckpointError::WindowFile {
                name: entry.file.name().to_string(),
                problem: format!("a second window at {}", entry.start),
            });
        }
        let (start, window) = read_window(&entry, read, &mut state.seen)?;
        // Files without sums (format 2) are not named again: the window is
        // written anew, with them, by the next checkpoint.
        if all_summed {
            state.restored_files.insert(
                start,
                Written {
                    version: window.version,
                    name: entry.file,
                    ids_mark: state.seen.window(start).map_or(0, WindowIds::mark),
                    ids: entry.ids,
                },
            );
        }
        state.windows.insert(start, window);
    }
    Ok(state)
}

/// Reads one window of a manifest: its views file, then its id files
/// (into `seen`).
fn read_window(
    entry: &WindowEntry,
    read: &mut dyn FnMut(&str) -> Result<Vec<u8>, CheckpointError>,
    seen: &mut SeenIds,
) -> Result<(i64, Window), CheckpointError> {
    let bad = |name: &str, problem: String| CheckpointError::WindowFile {
        name: name.to_string(),
        problem,
    };
    for name in std::iter::once(&entry.file).chain(&entry.ids) {
        if !is_plain_name(name.name()) {
            return Err(bad(name.name(), "not a plain file name".into()));
        }
    }
    let views = entry.file.name();
    let bytes = read(views)?;
    entry.file.check(&bytes)?;
    let file: WindowFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(views, format!("does not parse: {e}")))?;
    if file.start != entry.start {
        return Err(bad(
            views,
            format!(
                "holds the window at {}, not the one at {}",
                file.start, entry.start
            ),
        ));
    }
    let (start, window, inline) = file.into_window();
    seen.extend(start, inline.iter().map(String::as_str));
    for ids in &entry.ids {
        let bytes = read(ids.name())?;
        ids.check(&bytes)?;
        seen.extend_encoded(start, &bytes, MAX_EVENT_ID_LEN)
            .map_err(|e| bad(ids.name(), e.to_string()))?;
    }
    Ok((start, window))
}

/// A window file's name as this module makes them: ASCII letters, digits,
/// `-` and `.`, not starting with `.` (nothing that leaves the directory).
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// The directory of the window files of the checkpoint at `path`.
pub fn windows_dir(path: &Path) -> PathBuf {
    path.with_extension("windows")
}

/// Reads the checkpoint at `path` (and its window files), if there is one.
pub fn load(
    path: &Path,
    allowed_lateness_ms: i64,
    horizon_ms: i64,
) -> Result<Option<SpeedState>, CheckpointError> {
    let dir = windows_dir(path);
    let mut read = |name: &str| {
        let file = dir.join(name);
        fs::read(&file).map_err(io("reading", &file))
    };
    match fs::read(path) {
        Ok(bytes) => decode_with(&bytes, allowed_lateness_ms, horizon_ms, &mut read)
            .map_err(|source| CheckpointError::File {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

/// A window's files that a durable manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    /// The window's version when its views were written (in the state's epoch).
    version: u64,
    /// The file of its views.
    name: FileRef,
    /// The files of its ids, in order.
    ids: Vec<FileRef>,
    /// How far into the ids' encoded form those files go.
    ids_mark: usize,
}

/// Writes checkpoints of one state to one place, each writing only the
/// windows that changed since the last durable one (see the module's
/// documentation). Take a [`Checkpointer::snapshot`] under the state's lock
/// (it copies only what changed), write it without the lock
/// ([`Snapshot::write`]), then hand the result back
/// ([`Checkpointer::written`]).
#[derive(Debug)]
pub struct Checkpointer {
    path: PathBuf,
    /// The state epoch `written` belongs to: versions mean nothing in another.
    epoch: u64,
    /// In the name of every file this checkpointer writes, with the epoch:
    /// new for each checkpointer and after each failed write, so that a
    /// name it writes was never written before — by another checkpointer
    /// of the same state (a kappa switch hands a state to a new job), by
    /// an earlier process, or by an attempt whose manifest may or may not
    /// have become visible. A file is never overwritten.
    nonce: u64,
    /// Window start → its file in the last durable manifest.
    written: BTreeMap<i64, Written>,
}

/// What one checkpoint writes: the manifest, and copies of the windows
/// whose files do not exist yet.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    epoch: u64,
    manifest: CheckpointFile,
    /// `(start, file name, views)` to write.
    fresh: Vec<(i64, String, BucketViews)>,
    /// `(file name, encoded ids)` to write: the ids added since the last one.
    fresh_ids: Vec<(String, Ids)>,
    /// Every window's file once this checkpoint is durable.
    written: BTreeMap<i64, Written>,
    offsets: BTreeMap<(String, u32), u64>,
    /// The files of the last durable checkpoint (what this one may
    /// supersede).
    previous: Vec<String>,
}

/// The new ids of one window for a checkpoint.
#[derive(Debug)]
enum Ids {
    /// Copied when the snapshot was taken.
    Copied(Vec<u8>),
    /// To be copied while writing, from the live state, a piece at a time
    /// ([`Snapshot::write_from`]): bytes `from..to` of the window's encoded
    /// ids, which never change once written (the buffer only grows).
    Later { window: i64, from: usize, to: usize },
}

/// Bytes of ids copied per hold of the state's read lock.
const IDS_PIECE: usize = 1 << 20;

/// A checkpoint made durable by [`Snapshot::write`].
#[derive(Debug)]
pub struct Durable {
    epoch: u64,
    written: BTreeMap<i64, Written>,
    /// The consumed offsets it holds (safe to commit to the log now).
    pub offsets: BTreeMap<(String, u32), u64>,
    /// Bytes written: the manifest and the window files.
    pub bytes: u64,
    /// Files written besides the manifest (views and ids).
    pub files: usize,
}

impl Checkpointer {
    /// A checkpointer for `state` at `path`, knowing the window files the
    /// state was restored from (if it was restored from this path).
    pub fn new(path: &Path, state: &mut SpeedState) -> Checkpointer {
        Checkpointer {
            path: path.to_path_buf(),
            epoch: state.epoch,
            nonce: crate::window::new_epoch(),
            written: std::mem::take(&mut state.restored_files),
        }
    }

    /// What to write to checkpoint `state` now. Only windows without a
    /// current file are copied, with the ids they added since.
    pub fn snapshot(&self, state: &SpeedState) -> Snapshot {
        self.snapshot_with(state, true)
    }

    /// Like [`Checkpointer::snapshot`], but the new ids are left in the state,
    /// to be copied by [`Snapshot::write_from`] a piece at a time while the
    /// fold goes on: at 100 000 new events/s a checkpoint's ids are 10 MB,
    /// and copying them at the snapshot held the fetch loop for up to 40 ms.
    pub fn snapshot_lazily(&self, state: &SpeedState) -> Snapshot {
        self.snapshot_with(state, false)
    }

    fn snapshot_with(&self, state: &SpeedState, copy_ids: bool) -> Snapshot {
        let same_epoch = state.epoch == self.epoch;
        let mut manifest = manifest(state);
        let mut fresh = Vec::new();
        let mut fresh_ids = Vec::new();
        let mut written = BTreeMap::new();
        for (start, window) in &state.windows {
            let before = self.written.get(start).filter(|_| same_epoch);
            let name = match before.filter(|w| w.version == window.version) {
                Some(before) => before.name.clone(),
                None => {
                    let name = format!(
                        "{start}-{:016x}-{:016x}-{}.json",
                        state.epoch, self.nonce, window.version
                    );
                    fresh.push((*start, name.clone(), window.views.clone()));
                    FileRef::Named(name)
                }
            };
            // Ids: none once closed; else the files so far and one more for
            // the ids added since (all of them if the files do not fit).
            let seen = state.seen.window(*start).filter(|ids| !ids.is_empty());
            let mark = seen.map_or(0, WindowIds::mark);
            let (mut ids, from) = match before {
                Some(w) if seen.is_some() && w.ids_mark <= mark => (w.ids.clone(), w.ids_mark),
                _ => (Vec::new(), 0),
            };
            if mark > from
                && let Some(added) = seen.and_then(|ids| ids.encoded_since(from))
            {
                let name = format!(
                    "{start}-{:016x}-{:016x}-{from}.ids",
                    state.epoch, self.nonce
                );
                let added = if copy_ids {
                    Ids::Copied(added.to_vec())
                } else {
                    Ids::Later {
                        window: *start,
                        from,
                        to: mark,
                    }
                };
                fresh_ids.push((name.clone(), added));
                ids.push(FileRef::Named(name));
            }
            manifest.window_files.push(WindowEntry {
                start: *start,
                file: name.clone(),
                ids: ids.clone(),
            });
            written.insert(
                *start,
                Written {
                    version: window.version,
                    name,
                    ids,
                    ids_mark: mark,
                },
            );
        }
        Snapshot {
            path: self.path.clone(),
            epoch: state.epoch,
            manifest,
            fresh,
            fresh_ids,
            written,
            offsets: state.offsets.clone(),
            previous: self
                .written
                .values()
                .flat_map(|w| std::iter::once(&w.name).chain(&w.ids))
                .map(|f| f.name().to_string())
                .collect(),
        }
    }

    /// Notes that `durable` is on disk: its window files are the ones the
    /// next snapshot need not write again.
    pub fn written(&mut self, durable: &Durable) {
        self.epoch = durable.epoch;
        self.written = durable.written.clone();
    }

    /// Notes that a snapshot's write failed. Its manifest may still have
    /// become visible (a failure after the rename), naming files the next
    /// snapshot would otherwise write again under the same names: it gets
    /// names of its own instead.
    pub fn failed(&mut self) {
        self.nonce = crate::window::new_epoch();
    }
}

impl Snapshot {
    /// Files this checkpoint writes, views and ids (the rest exist already).
    pub fn fresh_files(&self) -> usize {
        self.fresh.len() + self.fresh_ids.len()
    }

    /// Writes the new window files, then the manifest naming them, then
    /// deletes the window files no manifest names any more.
    pub fn write(self) -> Result<Durable, CheckpointError> {
        self.write_from(None)
    }

    /// [`Snapshot::write`], copying the ids a [`Checkpointer::snapshot_lazily`]
    /// left in the state from `live` (that state, still being folded into).
    /// A window whose ids went in the meantime (it closed, or the state was
    /// replaced) fails this checkpoint; the next one no longer needs them.
    pub fn write_from(
        mut self,
        live: Option<&crate::SpeedViews>,
    ) -> Result<Durable, CheckpointError> {
        let dir = windows_dir(&self.path);
        fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let mut bytes = 0u64;
        // Name → (length, CRC-32) of each file written, for the manifest.
        let mut sums = std::collections::HashMap::new();
        let views = self
            .fresh
            .iter()
            .map(|(start, name, views)| (name, window_file_bytes(*start, views)));
        // A new name each time (see `Checkpointer::nonce`): an existing
        // file is an error, never overwritten.
        let create = |path: &Path| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io("creating", path))
        };
        for (name, encoded) in views {
            let path = dir.join(name);
            let mut file = create(&path)?;
            file.write_all(&encoded).map_err(io("writing", &path))?;
            file.sync_all().map_err(io("syncing", &path))?;
            bytes += encoded.len() as u64;
            sums.insert(
                name.clone(),
                (encoded.len() as u64, crc32fast::hash(&encoded)),
            );
        }
        for (name, ids) in &self.fresh_ids {
            let path = dir.join(name);
            let mut file = create(&path)?;
            let mut crc = crc32fast::Hasher::new();
            let len = match ids {
                Ids::Copied(encoded) => {
                    file.write_all(encoded).map_err(io("writing", &path))?;
                    crc.update(encoded);
                    encoded.len()
                }
                Ids::Later { window, from, to } => {
                    self.copy_ids(live, name, *window, *from, *to, &mut |piece| {
                        file.write_all(piece).map_err(io("writing", &path))?;
                        crc.update(piece);
                        Ok(())
                    })?;
                    to - from
                }
            };
            file.sync_all().map_err(io("syncing", &path))?;
            bytes += len as u64;
            sums.insert(name.clone(), (len as u64, crc.finalize()));
        }
        self.name_sums(&sums);
        if self.fresh_files() > 0 {
            sync_dir(&dir)?;
        }
        let manifest = seal(serde_json::to_vec(&self.manifest).expect("checkpoint serializes"));
        write(&self.path, &manifest)?;
        bytes += manifest.len() as u64;
        // Files no manifest names: superseded or evicted windows, and any a
        // failed checkpoint left. Not deleting one costs only space.
        if let Ok(entries) = fs::read_dir(&dir) {
            let named = self.named();
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_str().is_none_or(|n| !named.contains(n))
                    && let Err(error) = fs::remove_file(entry.path())
                {
                    tracing::debug!(%error, file = %entry.path().display(), "removing an unused window file");
                }
            }
        }
        Ok(Durable {
            epoch: self.epoch,
            files: self.fresh_files(),
            written: self.written,
            offsets: self.offsets,
            bytes,
        })
    }

    /// [`Snapshot::write_from`] into `partition` of a checkpoint store,
    /// as its manifest `version` — one more than the version its state was
    /// restored from or last committed: the new files, then the manifest,
    /// committed only if no other owner committed that version first
    /// ([`StoreWrite::Fenced`]: the partition is no longer this writer's),
    /// then the files no manifest names. Blocking: `handle` runs the
    /// store's calls.
    pub fn write_to_store(
        mut self,
        live: Option<&crate::SpeedViews>,
        store: &CheckpointStore,
        partition: &PartitionId,
        version: u64,
        handle: &tokio::runtime::Handle,
    ) -> Result<StoreWrite, CheckpointError> {
        let put = |name: &str, bytes: Vec<u8>| {
            handle
                .block_on(store.put_file(partition, name, bytes::Bytes::from(bytes)))
                .map_err(CheckpointError::Store)
        };
        let mut bytes = 0u64;
        let mut sums = std::collections::HashMap::new();
        for (start, name, views) in &self.fresh {
            let encoded = window_file_bytes(*start, views);
            bytes += encoded.len() as u64;
            sums.insert(
                name.clone(),
                (encoded.len() as u64, crc32fast::hash(&encoded)),
            );
            put(name, encoded)?;
        }
        for (name, ids) in &self.fresh_ids {
            let encoded = match ids {
                Ids::Copied(encoded) => encoded.clone(),
                Ids::Later { window, from, to } => {
                    let mut encoded = Vec::with_capacity(to - from);
                    self.copy_ids(live, name, *window, *from, *to, &mut |piece| {
                        encoded.extend_from_slice(piece);
                        Ok(())
                    })?;
                    encoded
                }
            };
            bytes += encoded.len() as u64;
            sums.insert(
                name.clone(),
                (encoded.len() as u64, crc32fast::hash(&encoded)),
            );
            put(name, encoded)?;
        }
        self.name_sums(&sums);
        let manifest = seal(serde_json::to_vec(&self.manifest).expect("checkpoint serializes"));
        bytes += manifest.len() as u64;
        let committed = handle
            .block_on(store.commit(partition, version, bytes::Bytes::from(manifest)))
            .map_err(CheckpointError::Store)?;
        if let Commit::Fenced { newest } = committed {
            return Ok(StoreWrite::Fenced { newest });
        }
        // The last checkpoint's files this one no longer names. Never by
        // listing: a newer owner's files, written but not committed yet,
        // would go. (A failed or fenced attempt's files stay: space only.)
        let named = self.named();
        for name in self.previous.iter().filter(|n| !named.contains(n.as_str())) {
            if let Err(error) = handle.block_on(store.delete_file(partition, name)) {
                tracing::debug!(error = %format!("{error:#}"), file = %name, "removing a superseded checkpoint file");
            }
        }
        if let Err(error) = handle.block_on(store.vacuum(partition, crate::store::KEEP_MANIFESTS)) {
            tracing::debug!(error = %format!("{error:#}"), "removing old checkpoint manifests");
        }
        Ok(StoreWrite::Durable(Durable {
            epoch: self.epoch,
            files: self.fresh_files(),
            written: self.written,
            offsets: self.offsets,
            bytes,
        }))
    }

    /// Copies bytes `from..to` of the encoded ids of the window at
    /// `window` from `live` into `out`, a piece at a time under the read
    /// lock; an error if they went in the meantime.
    fn copy_ids(
        &self,
        live: Option<&crate::SpeedViews>,
        name: &str,
        window: i64,
        from: usize,
        to: usize,
        out: &mut dyn FnMut(&[u8]) -> Result<(), CheckpointError>,
    ) -> Result<(), CheckpointError> {
        let mut piece = Vec::with_capacity(IDS_PIECE.min(to - from));
        let mut at = from;
        while at < to {
            piece.clear();
            {
                let state = live.map(|views| views.read());
                let seen = state
                    .as_ref()
                    .filter(|s| s.epoch == self.epoch)
                    .and_then(|s| s.seen.window(window))
                    .filter(|seen| seen.mark() >= to)
                    .and_then(|seen| seen.encoded_since(at));
                let Some(bytes) = seen else {
                    return Err(CheckpointError::WindowFile {
                        name: name.to_string(),
                        problem: format!(
                            "the ids of the window at {window} are gone from the state (it closed, or the state was replaced) before they were written; the next checkpoint will not need them"
                        ),
                    });
                };
                let end = (to - at).min(IDS_PIECE);
                piece.extend_from_slice(&bytes[..end]);
            }
            out(&piece)?;
            at += piece.len();
        }
        Ok(())
    }

    /// Names the files just written with their `(length, CRC-32)`.
    fn name_sums(&mut self, sums: &std::collections::HashMap<String, (u64, u32)>) {
        let sum = |r: &mut FileRef| {
            if let FileRef::Named(name) = r
                && let Some((len, crc)) = sums.get(name.as_str())
            {
                *r = FileRef::Summed(std::mem::take(name), *len, *crc);
            }
        };
        for entry in &mut self.manifest.window_files {
            sum(&mut entry.file);
            entry.ids.iter_mut().for_each(sum);
        }
        for written in self.written.values_mut() {
            sum(&mut written.name);
            written.ids.iter_mut().for_each(sum);
        }
    }

    /// Every file the manifest names.
    fn named(&self) -> std::collections::HashSet<&str> {
        self.written
            .values()
            .flat_map(|w| std::iter::once(&w.name).chain(&w.ids))
            .map(FileRef::name)
            .collect()
    }
}

/// What [`Snapshot::write_to_store`] did.
#[derive(Debug)]
pub enum StoreWrite {
    /// The checkpoint is durable.
    Durable(Durable),
    /// Another owner committed that version first: the partition is no
    /// longer this writer's (nothing of this checkpoint is named).
    Fenced {
        /// The newest version in the store.
        newest: u64,
    },
}

/// A window's file: its views.
fn window_file_bytes(start: i64, views: &BucketViews) -> Vec<u8> {
    let file = WindowFile {
        start,
        views: ViewsWire::from_views(views),
        seen: Vec::new(),
    };
    serde_json::to_vec(&file).expect("a window serializes")
}

/// The newest checkpoint of `partition` in `store`, with its version
/// (see [`load`]). Blocking: `handle` runs the store's calls.
pub fn load_from_store(
    store: &CheckpointStore,
    partition: &PartitionId,
    allowed_lateness_ms: i64,
    horizon_ms: i64,
    handle: &tokio::runtime::Handle,
) -> Result<Option<(u64, SpeedState)>, CheckpointError> {
    let Some((version, bytes)) = handle
        .block_on(store.latest(partition))
        .map_err(CheckpointError::Store)?
    else {
        return Ok(None);
    };
    let mut read = |name: &str| {
        handle
            .block_on(store.get_file(partition, name))
            .map(|b| b.to_vec())
            .map_err(CheckpointError::Store)
    };
    let state = decode_with(&bytes, allowed_lateness_ms, horizon_ms, &mut read)?;
    Ok(Some((version, state)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_events::bucket::MINUTE_MS;
    use lambda_events::{Event, floor_to};

    /// A sealed checkpoint holding what no state holds is refused, naming
    /// it, at one past each bound and taken at it (a hand-made manifest
    /// with an alert seq of 2^64 − 1 killed every member of a group; a
    /// `max_event_ts` of i64::MIN panicked every claim: a hostile run).
    #[test]
    fn checkpoints_holding_implausible_times_or_seqs_are_refused() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let click = Event::from_json(
            br#"{"event_id":"a","ts":1700000000000,"event_type":"click","user_id":"u"}"#,
        )
        .unwrap();
        state.apply(&click);
        let good = encode(&state);
        let (json, _) = unseal(&good).unwrap();
        let value: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert!(value["alerts"]["seq"].is_u64(), "{}", value["alerts"]);
        assert!(value["windows"][0]["start"].is_i64());
        let bound = crate::export::plausible_time_bound();
        let most = lambda_events::limits::MAX_ALERT_ID;
        let with = |change: &dyn Fn(&mut serde_json::Value)| {
            let mut edited = value.clone();
            change(&mut edited);
            decode(
                &seal(serde_json::to_vec(&edited).unwrap()),
                60_000,
                3_600_000,
            )
        };
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Change, Change)> = vec![
            (
                "max_event_ts",
                Box::new(move |v| v["max_event_ts"] = (-bound).into()),
                Box::new(|v| {
                    v["max_event_ts"] = i64::MIN.into();
                    v["watermark"] = serde_json::Value::Null;
                }),
            ),
            (
                "a watermark",
                Box::new(move |v| v["watermark"] = (-bound).into()),
                Box::new(|v| v["watermark"] = i64::MIN.into()),
            ),
            (
                "evicted_before",
                Box::new(move |v| v["evicted_before"] = bound.into()),
                Box::new(move |v| v["evicted_before"] = (bound + 1).into()),
            ),
            (
                "an alert's time",
                Box::new(|_| {}),
                Box::new(|v| {
                    let alert = serde_json::json!({"seq": 1, "rule": "alarm", "key": "k",
                        "state": "raised", "ts": i64::MAX, "message": "m", "value": null});
                    v["alerts"]["seq"] = 1.into();
                    v["alerts"]["recent"] = serde_json::json!([alert]);
                }),
            ),
            (
                "a window start",
                Box::new(|_| {}),
                Box::new(|v| v["windows"][0]["start"] = (i64::MAX - 1000).into()),
            ),
            (
                "an alert seq",
                Box::new(move |v| v["alerts"]["seq"] = most.into()),
                Box::new(move |v| v["alerts"]["seq"] = (most + 1).into()),
            ),
        ];
        for (name, at, past) in cases {
            assert!(with(&*at).is_ok(), "{name} at its bound");
            match with(&*past) {
                Err(CheckpointError::Implausible(problem)) => {
                    assert!(problem.contains(name), "{name}: {problem}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// A partition's state checkpointed to a checkpoint store: it loads
    /// back whole; the next checkpoint writes only what changed; a writer
    /// fenced by another owner's commit of the same version is told so and
    /// its manifest is not the one that stands.
    #[test]
    fn checkpoints_to_a_store_load_back_and_are_fenced() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let handle = runtime.handle().clone();
        let dir = tempfile::tempdir().unwrap();
        let store =
            CheckpointStore::open(&format!("file://{}", dir.path().display()), Vec::new()).unwrap();
        let partition = PartitionId::new("iot-events", 1);
        let reading = |id: u32, ts: i64| {
            Event::from_json(
                format!(
                    r#"{{"event_id":"{id}","ts":{ts},"event_type":"sensor_reading","device_id":"d","sensor":"t","value":{id}}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        let mut state = SpeedState::new(60_000, 3_600_000);
        for i in 0..30 {
            state.apply(&reading(i, 1_700_000_000_000 + i64::from(i) * 20_000));
        }
        state.offsets.insert(("iot-events".into(), 1), 30);
        let mut checkpointer = Checkpointer::new(dir.path(), &mut state);
        let write = |checkpointer: &Checkpointer, state: &SpeedState, version: u64| {
            checkpointer
                .snapshot(state)
                .write_to_store(None, &store, &partition, version, &handle)
        };
        let StoreWrite::Durable(first) = write(&checkpointer, &state, 1).unwrap() else {
            panic!("fenced with nobody else writing");
        };
        checkpointer.written(&first);
        let (version, restored) = load_from_store(&store, &partition, 60_000, 3_600_000, &handle)
            .unwrap()
            .unwrap();
        assert_eq!(version, 1);
        assert_eq!(encode(&restored), encode(&state));

        // A file another owner wrote and has not committed yet (a
        // rebalance overlap): this writer's clean-up must leave it.
        handle
            .block_on(store.put_file(
                &partition,
                "other-owner.json",
                bytes::Bytes::from_static(b"{}"),
            ))
            .unwrap();
        // One more event in the newest window: one views file and one ids
        // piece are written, not every window again.
        state.apply(&reading(30, 1_700_000_000_000 + 29 * 20_000));
        let StoreWrite::Durable(second) = write(&checkpointer, &state, 2).unwrap() else {
            panic!("fenced with nobody else writing");
        };
        assert!(first.files >= 10, "{}", first.files);
        assert_eq!(second.files, 2);
        checkpointer.written(&second);
        let (_, restored) = load_from_store(&store, &partition, 60_000, 3_600_000, &handle)
            .unwrap()
            .unwrap();
        assert_eq!(encode(&restored), encode(&state));
        // The files the manifest names are kept, the superseded ones
        // deleted, and the other owner's file left alone.
        let kept = handle.block_on(store.files(&partition)).unwrap();
        assert!(kept.contains(&"other-owner.json".to_string()), "{kept:?}");
        assert_eq!(
            kept.len(),
            1 + checkpointer
                .written
                .values()
                .map(|w| 1 + w.ids.len())
                .sum::<usize>()
        );

        // Another owner took the partition over and committed version 3.
        handle
            .block_on(store.commit(&partition, 3, bytes::Bytes::from(encode(&restored))))
            .unwrap();
        state.apply(&reading(31, 1_700_000_000_000 + 29 * 20_000));
        assert!(matches!(
            write(&checkpointer, &state, 3).unwrap(),
            StoreWrite::Fenced { newest: 3 }
        ));
        let (version, standing) = load_from_store(&store, &partition, 60_000, 3_600_000, &handle)
            .unwrap()
            .unwrap();
        assert_eq!(version, 3);
        assert_eq!(
            encode(&standing),
            encode(&restored),
            "the other owner's checkpoint stands"
        );
    }

    #[test]
    fn round_trips_every_part_of_the_state() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let events = [
            r#"{"event_id":"1","ts":1700000000000,"event_type":"purchase","user_id":"u","amount_cents":5,"campaign_id":"c"}"#,
            r#"{"event_id":"2","ts":1700000000000,"event_type":"page_view","user_id":"u","page":"/","device":"mobile"}"#,
            r#"{"event_id":"3","ts":1700000061000,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":2.5}"#,
            // Sums whose nearest f64 needs every digit to parse back exactly.
            r#"{"event_id":"6","ts":1700000061000,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1010.3}"#,
            r#"{"event_id":"7","ts":1700000061001,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1011.32}"#,
            r#"{"event_id":"8","ts":1700000061002,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1010.69}"#,
            r#"{"event_id":"4","ts":1700000400000,"event_type":"alarm","device_id":"d","alarm":"a","severity":"high"}"#,
            r#"{"event_id":"5","ts":1700000000000,"event_type":"click","user_id":"u"}"#,
        ];
        for json in events {
            state.apply(&Event::from_json(json.as_bytes()).unwrap());
        }
        state.offsets.insert(("funnel-events".into(), 3), 77);
        state.evicted_before = 1_699_999_920_000;
        // A partition gone idle stays out of the watermark after a restart.
        state.expect_partition("iot-events", 1);
        state.set_idle("iot-events", 1, true);
        // When partitions last sent, by the log's clock: a restart goes on
        // counting idleness from them.
        state.appended("iot-events", 1, 1_700_000_500_000);
        state.appended("funnel-events", 3, 1_700_000_600_000);
        let bytes = encode(&state);
        let restored = decode(&bytes, 60_000, 3_600_000).unwrap();
        assert_eq!(encode(&restored), bytes);
        assert_eq!(restored.clocks, state.clocks);
        assert_eq!(restored.log_time(), Some(1_700_000_600_000));
        assert!(
            restored
                .clocks
                .iter()
                .any(|c| c.appended == 1_700_000_500_000)
        );
        let idle: Vec<_> = restored.clocks.iter().filter(|c| c.idle).collect();
        assert_eq!(idle.len(), 1);
        assert_eq!(
            (idle[0].topic.as_str(), idle[0].partition),
            ("iot-events", 1)
        );
        assert_eq!(restored.newest, state.newest);
        let key = ("d".to_string(), "p".to_string());
        let window = floor_to(1700000061000, MINUTE_MS);
        assert_eq!(
            restored.windows[&window].views.sensors[&key].sum.to_bits(),
            state.windows[&window].views.sensors[&key].sum.to_bits(),
            "float sums survive the checkpoint bit for bit"
        );
        assert_eq!(restored.counters.late, 1);
        assert_eq!(restored.offsets[&("funnel-events".to_string(), 3)], 77);
        assert_eq!(restored.evicted_before, 1_699_999_920_000);
        let mut again = restored.clone();
        let dup = Event::from_json(events[0].as_bytes()).unwrap();
        assert_ne!(
            again.apply(&dup),
            crate::Applied::Counted,
            "seen ids survive the checkpoint"
        );
    }
}

#[cfg(test)]
mod float_tests {
    use super::*;
    use lambda_events::Event;
    use lambda_events::bucket::MINUTE_MS;
    use lambda_events::floor_to;

    /// Two readings at the largest bounded magnitude, pushed past it by hand
    /// to a sum no f64 holds: the checkpoint still encodes and restores it
    /// (it used to write `null` and fail the next start).
    #[test]
    fn non_finite_sums_survive_the_checkpoint() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        for id in ["a", "b"] {
            let json = format!(
                r#"{{"event_id":"{id}","ts":1700000061000,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1e15}}"#
            );
            state.apply(&Event::from_json(json.as_bytes()).unwrap());
        }
        let window = floor_to(1_700_000_061_000, MINUTE_MS);
        let key = ("d".to_string(), "p".to_string());
        let stats = state
            .windows
            .get_mut(&window)
            .unwrap()
            .views
            .sensors
            .get_mut(&key)
            .unwrap();
        assert_eq!(stats.sum, 2e15);
        stats.sum = f64::INFINITY;
        stats.min = f64::NEG_INFINITY;
        stats.last = f64::NAN;
        let bytes = encode(&state);
        let restored = decode(&bytes, 60_000, 3_600_000).expect("a non-finite sum restores");
        let back = &restored.windows[&window].views.sensors[&key];
        assert_eq!(back.sum, f64::INFINITY);
        assert_eq!(back.min, f64::NEG_INFINITY);
        assert!(back.last.is_nan());
        assert_eq!(encode(&restored), bytes);
    }
}

#[cfg(test)]
mod incremental_tests {
    use super::*;
    use lambda_events::Event;
    use lambda_events::bucket::MINUTE_MS;

    const T0: i64 = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE_MS;

    fn click(state: &mut SpeedState, id: &str, ts: i64) {
        let json = format!(
            r#"{{"event_id":"{id}","ts":{ts},"event_type":"click","user_id":"u-{id}","campaign_id":"c"}}"#
        );
        state.apply(&Event::from_json(json.as_bytes()).unwrap());
        state.evict();
    }

    fn files(path: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(windows_dir(path))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A directory for a checkpoint, its path, and an empty state (the
    /// tests' lateness, two minutes, and horizon, an hour).
    fn fixture() -> (tempfile::TempDir, PathBuf, SpeedState) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        (dir, path, SpeedState::new(2 * MINUTE_MS, 3_600_000))
    }

    /// One click per minute for `minutes` minutes from T0, ids `{prefix}{minute}`.
    fn clicks(state: &mut SpeedState, prefix: &str, minutes: i64) {
        for minute in 0..minutes {
            click(state, &format!("{prefix}{minute}"), T0 + minute * MINUTE_MS);
        }
    }

    fn checkpoint(checkpointer: &mut Checkpointer, state: &SpeedState) -> usize {
        let durable = checkpointer.snapshot(state).write().unwrap();
        checkpointer.written(&durable);
        durable.files
    }

    #[test]
    fn a_checkpoint_writes_only_the_windows_that_changed() {
        let (_dir, path, mut state) = fixture();
        clicks(&mut state, "a", 10);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        // The watermark is at minute 7: minutes 0-6 closed (and dropped
        // their ids), 7-9 open. Every window is new: ten views files, and
        // the ids of the three open ones.
        assert_eq!(checkpoint(&mut checkpointer, &state), 13);
        assert_eq!(checkpoint(&mut checkpointer, &state), 0, "nothing changed");
        // One event in an open window: its views, and one id.
        click(&mut state, "b", T0 + 8 * MINUTE_MS);
        let snapshot = checkpointer.snapshot(&state);
        assert_eq!(snapshot.fresh_ids.len(), 1);
        assert!(
            matches!(&snapshot.fresh_ids[0].1, Ids::Copied(b) if b == b"\x01b"),
            "only the id added since"
        );
        drop(snapshot);
        assert_eq!(checkpoint(&mut checkpointer, &state), 2);
        // The watermark moves two minutes: windows 7 and 8 close and drop
        // their ids (their views are not written again), 11 is new.
        click(&mut state, "c", T0 + 11 * MINUTE_MS + 1);
        assert_eq!(checkpoint(&mut checkpointer, &state), 2);
        assert_eq!(checkpoint(&mut checkpointer, &state), 0);
        // On disk: one views file per window, the ids of the open ones
        // (9: one file; 11: one), the superseded ones deleted.
        let names = files(&path);
        assert_eq!(names.iter().filter(|n| n.ends_with(".json")).count(), 11);
        assert_eq!(names.iter().filter(|n| n.ends_with(".ids")).count(), 2);

        // What loads is the state, and the checkpointer of the loaded state
        // writes nothing it already has.
        let mut loaded = load_back(&path);
        assert_eq!(encode(&loaded), encode(&state));
        let mut again = Checkpointer::new(&path, &mut loaded);
        assert_eq!(checkpoint(&mut again, &loaded), 0);
        click(&mut loaded, "d", T0 + 11 * MINUTE_MS + 2);
        assert_eq!(checkpoint(&mut again, &loaded), 2);
        let reloaded = load_back(&path);
        assert_eq!(encode(&reloaded), encode(&loaded));
        // Window 11's ids are now in two files, read back in order.
        assert_eq!(files(&path).len(), 11 + 3);
        let mut resent = reloaded.clone();
        for id in ["a9", "c", "d"] {
            let json = format!(
                r#"{{"event_id":"{id}","ts":{},"event_type":"click","user_id":"u"}}"#,
                T0 + 11 * MINUTE_MS
            );
            assert_eq!(
                resent.apply(&Event::from_json(json.as_bytes()).unwrap()),
                crate::Applied::Duplicate,
                "{id}"
            );
        }
    }

    #[test]
    fn a_restored_state_s_first_change_is_written() {
        let (_dir, path, mut state) = fixture();
        // Windows 0, 1 and 2 at versions 1, 2 and 3.
        clicks(&mut state, "a", 3);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        checkpoint(&mut checkpointer, &state);
        let mut loaded = load_back(&path);
        let mut again = Checkpointer::new(&path, &mut loaded);
        // Restored windows are at version 0 and the restored state counts
        // its changes from 1: its first change, to window 0, is written
        // (were it numbered as window 0 was before, 1, the checkpoint would
        // name the old file, without the change). Serving's speed buckets
        // lean on it too (`SpeedState::windows_stamp`).
        click(&mut loaded, "b", T0 + 1);
        assert_eq!(
            checkpoint(&mut again, &loaded),
            2,
            "window 0's views and ids"
        );
        assert_eq!(encode(&load_back(&path)), encode(&loaded));
    }

    #[test]
    fn a_state_of_another_epoch_is_written_whole() {
        let (_dir, path, mut state) = fixture();
        clicks(&mut state, "a", 3);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        assert_eq!(checkpoint(&mut checkpointer, &state), 6);
        // A replaced state (a kappa switch): versions start over, so its
        // windows may carry the same versions as different contents.
        let mut other = fixture().2;
        clicks(&mut other, "z", 3);
        assert_eq!(checkpoint(&mut checkpointer, &other), 6);
        let loaded = load_back(&path);
        assert_eq!(encode(&loaded), encode(&other));
        assert_eq!(files(&path).len(), 6);
    }

    #[test]
    fn a_checkpoint_that_fails_before_its_manifest_leaves_the_previous_one() {
        let (_dir, path, mut state) = fixture();
        click(&mut state, "a", T0);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        checkpoint(&mut checkpointer, &state);
        let first = encode(&state);
        click(&mut state, "b", T0 + 1);
        click(&mut state, "c", T0 + MINUTE_MS);
        // The manifest's temporary file cannot be created: the new window
        // files are written, the manifest is not.
        fs::create_dir(path.with_extension("tmp")).unwrap();
        let snapshot = checkpointer.snapshot(&state);
        assert_eq!(snapshot.fresh_files(), 4);
        assert!(snapshot.write().is_err());
        assert_eq!(files(&path).len(), 6, "the old files and four orphans");
        let loaded = load_back(&path);
        assert_eq!(encode(&loaded), first, "the previous checkpoint, whole");
        // The next checkpoint writes both again (the failed one was never
        // durable), under names of its own, and removes what no manifest names.
        fs::remove_dir(path.with_extension("tmp")).unwrap();
        checkpointer.failed();
        assert_eq!(checkpoint(&mut checkpointer, &state), 4);
        // Two windows' views; window 0's ids in two files ("a", then "b"),
        // window 1's in one.
        assert_eq!(files(&path).len(), 5);
        let loaded = load_back(&path);
        assert_eq!(encode(&loaded), encode(&state));
    }

    /// Every file in the windows directory and its bytes.
    /// The name of the first window file of `path` ending in `suffix`.
    fn first_file(path: &Path, suffix: &str) -> String {
        files(path)
            .into_iter()
            .find(|n| n.ends_with(suffix))
            .unwrap()
    }

    fn contents(path: &Path) -> BTreeMap<String, Vec<u8>> {
        files(path)
            .into_iter()
            .map(|n| {
                let bytes = fs::read(windows_dir(path).join(&n)).unwrap();
                (n, bytes)
            })
            .collect()
    }

    /// What loads from `path` (the tests' lateness and horizon).
    fn load_back(path: &Path) -> SpeedState {
        load(path, 2 * MINUTE_MS, 3_600_000).unwrap().unwrap()
    }

    /// A write of `state` that fails before its manifest (the temporary
    /// file cannot be made) changes no file and leaves `durable` loading;
    /// after `failed`, the next write succeeds and loads as `state`.
    fn a_failed_write_keeps(
        path: &Path,
        checkpointer: &mut Checkpointer,
        state: &SpeedState,
        durable: &[u8],
    ) {
        let before = contents(path);
        fs::create_dir(path.with_extension("tmp")).unwrap();
        assert!(checkpointer.snapshot(state).write().is_err());
        for (name, bytes) in &before {
            assert_eq!(&contents(path)[name], bytes, "{name} untouched");
        }
        assert_eq!(
            encode(&load_back(path)),
            durable,
            "the durable checkpoint, whole"
        );
        fs::remove_dir(path.with_extension("tmp")).unwrap();
        checkpointer.failed();
        checkpoint(checkpointer, state);
        assert_eq!(encode(&load_back(path)), encode(state));
    }

    /// A kappa switch hands a running state to a new job: a new
    /// checkpointer of the same state and path, knowing none of the files.
    /// It writes none of their names, so the last manifest stays whole
    /// until its own replaces it.
    #[test]
    fn a_new_checkpointer_of_the_same_state_leaves_the_last_ones_files_alone() {
        let (_dir, path, mut state) = fixture();
        click(&mut state, "a", T0);
        let mut first = Checkpointer::new(&path, &mut state);
        checkpoint(&mut first, &state);
        let durable = encode(&state);
        click(&mut state, "b", T0 + 1);
        let mut second = Checkpointer::new(&path, &mut state);
        a_failed_write_keeps(&path, &mut second, &state, &durable);
    }

    /// A write that fails after its manifest became visible (the directory
    /// fsync after the rename): the checkpointer does not know it is
    /// durable. The next snapshot must not write the files that manifest
    /// names again (a crash mid-way would leave it naming ids of records
    /// past its offsets).
    #[test]
    fn a_write_that_fails_after_its_manifest_is_visible_is_not_overwritten() {
        let (_dir, path, mut state) = fixture();
        click(&mut state, "a", T0);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        checkpoint(&mut checkpointer, &state);
        click(&mut state, "b", T0 + 1);
        // Durable, but reported as failed.
        let visible = checkpointer.snapshot(&state).write().unwrap();
        drop(visible);
        checkpointer.failed();
        let durable = encode(&state);
        click(&mut state, "c", T0 + 2);
        a_failed_write_keeps(&path, &mut checkpointer, &state, &durable);
    }

    /// A lazy snapshot's ids are copied from the live state while it is
    /// folded into: what is written is the state at the snapshot, not the
    /// ids added after it; and a window that closed meanwhile fails that
    /// checkpoint, not the next.
    #[test]
    fn a_lazy_snapshot_writes_the_ids_of_its_moment_from_the_live_state() {
        let (_dir, path, mut state) = fixture();
        clicks(&mut state, "a", 2);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        let live: crate::SpeedViews = std::sync::Arc::new(parking_lot::RwLock::new(state));
        let snapshot = checkpointer.snapshot_lazily(&live.read());
        let at_snapshot = encode(&live.read());
        // Folding goes on: more ids in the same open window, a new one.
        click(&mut live.write(), "b", T0 + 1);
        click(&mut live.write(), "c", T0 + MINUTE_MS + 1);
        let durable = snapshot.write_from(Some(&live)).unwrap();
        checkpointer.written(&durable);
        assert_eq!(encode(&load_back(&path)), at_snapshot);
        checkpoint(&mut checkpointer, &live.read());
        assert_eq!(encode(&load_back(&path)), encode(&live.read()));

        // The window closes (drops its ids) before its new ids are copied.
        click(&mut live.write(), "d", T0 + MINUTE_MS + 2);
        let snapshot = checkpointer.snapshot_lazily(&live.read());
        click(&mut live.write(), "e", T0 + 4 * MINUTE_MS);
        let error = snapshot.write_from(Some(&live)).unwrap_err();
        assert!(error.to_string().contains("window file"), "{error}");
        checkpointer.failed();
        checkpoint(&mut checkpointer, &live.read());
        assert_eq!(encode(&load_back(&path)), encode(&live.read()));
    }

    /// `manifest` (sealed or not) edited, and sealed again.
    fn edited(manifest: &[u8], edit: impl Fn(&str) -> String) -> Vec<u8> {
        let (json, _) = unseal(manifest).unwrap();
        seal(edit(std::str::from_utf8(json).unwrap()).into_bytes())
    }

    #[test]
    fn format_1_and_2_checkpoints_still_load() {
        let mut state = SpeedState::new(2 * MINUTE_MS, 3_600_000);
        click(&mut state, "a", T0);
        let bytes = encode(&state);
        let (json, sealed) = unseal(&bytes).unwrap();
        assert!(sealed);
        let json = std::str::from_utf8(json).unwrap();
        for old in [1, 2] {
            // Written before sums: no seal line.
            let old = json.replacen(
                r#""format_version":3"#,
                &format!(r#""format_version":{old}"#),
                1,
            );
            assert_ne!(old, json);
            let restored = decode(old.as_bytes(), 2 * MINUTE_MS, 3_600_000).unwrap();
            assert_eq!(encode(&restored), bytes);
        }
        let future = edited(&bytes, |j| {
            j.replacen(r#""format_version":3"#, r#""format_version":4"#, 1)
        });
        let error = decode(&future, 2 * MINUTE_MS, 3_600_000).unwrap_err();
        assert!(error.to_string().contains("format 4"), "{error}");
    }

    /// The damage a hostile test found loading silently before sums (each
    /// file still parsed, and the state counted wrong): now each is an
    /// error naming what is wrong.
    #[test]
    fn damage_that_still_parses_is_an_error() {
        let (_dir, path, mut state) = fixture();
        clicks(&mut state, "a", 3);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        checkpoint(&mut checkpointer, &state);
        let dir = windows_dir(&path);
        let manifest = fs::read(&path).unwrap();
        let pristine = contents(&path);
        let ids = first_file(&path, ".ids");
        let views = first_file(&path, ".json");
        let ids_bytes = fs::read(dir.join(&ids)).unwrap();
        let views_text = fs::read_to_string(dir.join(&views)).unwrap();
        assert!(views_text.contains(r#""clicks":1"#), "{views_text}");
        let mut flipped = ids_bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let cases: Vec<(&str, Box<dyn Fn()>, &str)> = vec![
            (
                "ids emptied",
                Box::new(|| fs::write(dir.join(&ids), b"").unwrap()),
                "0 bytes long",
            ),
            (
                "ids cut at an id's end",
                Box::new(|| fs::write(dir.join(&ids), &ids_bytes[..2]).unwrap()),
                "cut short",
            ),
            (
                "a byte of an id flipped",
                Box::new(|| fs::write(dir.join(&ids), &flipped).unwrap()),
                "damaged",
            ),
            (
                "a count edited",
                Box::new(|| {
                    let edited = views_text.replace(r#""clicks":1"#, r#""clicks":9"#);
                    fs::write(dir.join(&views), edited).unwrap()
                }),
                "damaged",
            ),
            (
                "the manifest edited",
                Box::new(|| {
                    let (json, _) = unseal(&manifest).unwrap();
                    let mut edited = std::str::from_utf8(json).unwrap().replacen(&ids, "", 1);
                    edited.push_str("\ncrc32 00000000\n");
                    fs::write(&path, edited).unwrap()
                }),
                "damaged or edited",
            ),
            (
                "the manifest's seal line cut off",
                Box::new(|| {
                    let (json, _) = unseal(&manifest).unwrap();
                    fs::write(&path, json).unwrap()
                }),
                "without its checksum line",
            ),
        ];
        for (what, damage, problem) in cases {
            for (name, bytes) in &pristine {
                fs::write(dir.join(name), bytes).unwrap();
            }
            fs::write(&path, &manifest).unwrap();
            assert!(
                load(&path, 2 * MINUTE_MS, 3_600_000).is_ok(),
                "{what}: pristine"
            );
            damage();
            let error = load(&path, 2 * MINUTE_MS, 3_600_000).unwrap_err();
            let chain = format!("{:?}", anyhow::Error::from(error));
            assert!(chain.contains(problem), "{what}: {chain}");
        }
    }

    #[test]
    fn a_window_file_name_is_plain_and_at_most_128_bytes() {
        let longest = "w".repeat(128);
        assert!(is_plain_name(&longest));
        assert!(!is_plain_name(&format!("{longest}w")));
        assert!(is_plain_name("1700000040000-00ab-00cd-7.json"));
        for bad in ["", ".hidden", "a/b", "..", "a\\b", "é.json", "a b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_manifest_naming_a_bad_window_file_is_refused() {
        let (_dir, path, mut state) = fixture();
        click(&mut state, "a", T0);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        checkpoint(&mut checkpointer, &state);
        let manifest = fs::read_to_string(&path).unwrap();
        let name = first_file(&path, ".json");
        let ids = first_file(&path, ".ids");
        fs::write(windows_dir(&path).join("damaged.ids"), [5, b'a']).unwrap();
        let manifest = edited(manifest.as_bytes(), str::to_string);
        for (from, to, problem) in [
            (
                name.clone(),
                "../../etc/passwd".to_string(),
                "not a plain file name",
            ),
            (name.clone(), "missing.json".to_string(), "reading"),
            (
                format!(r#""start":{T0}"#),
                format!(r#""start":{}"#, T0 + MINUTE_MS),
                "not the one at",
            ),
            (ids.clone(), "damaged.ids".to_string(), "damaged"),
            (ids, "../x.ids".to_string(), "not a plain file name"),
        ] {
            fs::write(&path, edited(&manifest, |j| j.replace(&from, &to))).unwrap();
            let error = load(&path, 2 * MINUTE_MS, 3_600_000).unwrap_err();
            let chain = format!("{:?}", anyhow::Error::from(error));
            assert!(chain.contains(problem), "{to}: {chain}");
        }
    }
}
