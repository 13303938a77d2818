//! Segment files: how records are framed on disk and how a segment is scanned
//! (telling a torn tail from corruption) when the log is opened.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload`, where payload is
//! `offset: u64 | timestamp: i64 | key_len: i32 (-1 = none) | key |
//! n_headers: u16 | (name_len: u16 | name | value_len: u32 | value)* |
//! value_len: u32 | value`.
//!
//! Torn or corrupt: frames are written by group commit and fsynced before
//! they are acknowledged, so a crash can only damage bytes after the last
//! fsync, at the very end of the newest segment. A bad frame (one that runs
//! past the end of the file, fails its checksum or is malformed) is therefore
//! a torn tail only if no valid frame follows it. When one does, acknowledged
//! records would be lost by cutting there, so the scan reports
//! [`Damage::Corrupt`] and the log refuses to open. Finding out is cheap: the
//! byte-by-byte search for a following frame runs only after a bad frame, and
//! a candidate must pass a length, offset and checksum test before it counts.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::{Bytes, Record, ValueRecord};

/// Bytes before the payload: length and checksum.
pub(crate) const FRAME_HEADER: usize = 8;

/// One record every this many gets an entry in a segment's sparse index.
pub(crate) const INDEX_INTERVAL: u64 = 64;

/// The file name of the segment whose first offset is `base_offset`.
pub(crate) fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}

/// The base offset a segment file name encodes, if it is a segment file.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".log")
        .filter(|s| s.len() == 20)
        .and_then(|s| s.parse().ok())
}

/// Bytes the frame of `record` takes ([`encode`] appends exactly this many).
pub(crate) fn frame_len(record: &Record) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| 2 + name.len() + 4 + value.len())
        .sum();
    FRAME_HEADER
        + 8
        + 8
        + 4
        + record.key.as_ref().map_or(0, |key| key.len())
        + 2
        + headers
        + 4
        + record.value.len()
}

/// Appends the frame of `record` at `offset` to `out`.
pub(crate) fn encode(offset: u64, record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&record.timestamp_ms.to_le_bytes());
    match &record.key {
        Some(key) => {
            out.extend_from_slice(&(key.len() as i32).to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    out.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for (name, value) in &record.headers {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    out.extend_from_slice(&record.value);
    let payload_len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) offset: u64,
    pub(crate) record: Record,
    /// Bytes the frame takes on disk.
    pub(crate) len: usize,
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The buffer ends before the frame does (a torn write, or more to read).
    Incomplete,
    /// The bytes are there but wrong.
    Invalid(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Incomplete => f.write_str("incomplete frame"),
            FrameError::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// Smallest payload a frame can have: offset, timestamp, key length, header
/// count and value length, with no key, headers or value.
const MIN_PAYLOAD: usize = 8 + 8 + 4 + 2 + 4;

/// Decodes the frame at the start of `buf`, copying its key and value.
#[cfg(test)]
fn decode(buf: &[u8]) -> Result<Frame, FrameError> {
    let parts = parse(buf)?;
    let bytes = |range: Range<usize>| Bytes::copy_from_slice(&buf[range]);
    Ok(parts.into_frame(bytes))
}

/// Decodes the frame at `at` in `buf`: its key and value share `buf`.
pub(crate) fn decode_shared(buf: &Bytes, at: usize) -> Result<Frame, FrameError> {
    let parts = parse(buf.get(at..).ok_or(FrameError::Incomplete)?)?;
    Ok(parts.into_frame(|range| buf.slice(at + range.start..at + range.end)))
}

/// Decodes the frame at `at` in `buf` as a [`ValueRecord`] whose value
/// shares `buf` (its key and headers are checked, not kept), with its key's
/// and value's bytes (what [`crate::Record::size`] counts) and its length
/// on disk.
pub(crate) fn decode_value(
    buf: &Bytes,
    at: usize,
) -> Result<(ValueRecord, u64, usize), FrameError> {
    let parts = parse(buf.get(at..).ok_or(FrameError::Incomplete)?)?;
    let size = parts.key.as_ref().map_or(0, |key| key.len()) + parts.value.len();
    let record = ValueRecord {
        value: buf.slice(at + parts.value.start..at + parts.value.end),
        timestamp_ms: parts.timestamp_ms,
        offset: parts.offset,
    };
    Ok((record, size as u64, parts.len))
}

/// A frame as parsed: where its key and value are in the bytes it was
/// parsed from.
struct Parts {
    offset: u64,
    timestamp_ms: i64,
    key: Option<Range<usize>>,
    headers: Vec<(String, Vec<u8>)>,
    value: Range<usize>,
    len: usize,
}

impl Parts {
    fn into_frame(self, bytes: impl Fn(Range<usize>) -> Bytes) -> Frame {
        Frame {
            offset: self.offset,
            record: Record {
                key: self.key.map(&bytes),
                value: bytes(self.value),
                timestamp_ms: self.timestamp_ms,
                headers: self.headers,
            },
            len: self.len,
        }
    }
}

fn parse(buf: &[u8]) -> Result<Parts, FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Incomplete);
    }
    let payload_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if payload_len < MIN_PAYLOAD {
        return Err(FrameError::Invalid(format!(
            "frame length {payload_len} too short"
        )));
    }
    if buf.len() < FRAME_HEADER + payload_len {
        return Err(FrameError::Incomplete);
    }
    let payload = &buf[FRAME_HEADER..FRAME_HEADER + payload_len];
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Invalid("checksum mismatch".into()));
    }
    let mut cursor = Cursor {
        buf: payload,
        pos: 0,
    };
    let bad = |what: &str| FrameError::Invalid(format!("{what} runs past the frame"));
    // Where the next `n` bytes of the payload are in `buf`.
    let range = |cursor: &mut Cursor<'_>, n: usize, what: &str| {
        let from = cursor.pos;
        cursor.bytes(n).ok_or_else(|| bad(what))?;
        Ok::<_, FrameError>(FRAME_HEADER + from..FRAME_HEADER + cursor.pos)
    };
    let offset = cursor.u64().ok_or_else(|| bad("offset"))?;
    let timestamp_ms = cursor.u64().ok_or_else(|| bad("timestamp"))? as i64;
    let key_len = cursor.u32().ok_or_else(|| bad("key length"))? as i32;
    let key = match key_len < 0 {
        true => None,
        false => Some(range(&mut cursor, key_len as usize, "key")?),
    };
    let n_headers = cursor.u16().ok_or_else(|| bad("header count"))?;
    let mut headers = Vec::with_capacity(n_headers as usize);
    for _ in 0..n_headers {
        let name_len = cursor.u16().ok_or_else(|| bad("header name length"))?;
        let name = cursor
            .bytes(name_len as usize)
            .ok_or_else(|| bad("header name"))?;
        let name = String::from_utf8(name.to_vec())
            .map_err(|_| FrameError::Invalid("header name is not utf-8".into()))?;
        let value_len = cursor.u32().ok_or_else(|| bad("header value length"))?;
        let value = cursor
            .bytes(value_len as usize)
            .ok_or_else(|| bad("header value"))?;
        headers.push((name, value.to_vec()));
    }
    let value_len = cursor.u32().ok_or_else(|| bad("value length"))?;
    let value = range(&mut cursor, value_len as usize, "value")?;
    if cursor.pos != payload.len() {
        return Err(FrameError::Invalid("trailing bytes in frame".into()));
    }
    Ok(Parts {
        offset,
        timestamp_ms,
        key,
        headers,
        value,
        len: FRAME_HEADER + payload_len,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(out)
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// What a scan of a whole segment file found.
#[derive(Debug)]
pub(crate) struct ScanResult {
    /// Byte length of the valid prefix.
    pub(crate) valid_len: u64,
    /// One past the last valid offset (`base_offset` if the segment is empty).
    pub(crate) next_offset: u64,
    /// Largest record timestamp, if any record.
    pub(crate) max_timestamp: Option<i64>,
    /// Sparse index: (offset, byte position) every [`INDEX_INTERVAL`] records.
    pub(crate) index: Vec<(u64, u64)>,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) damage: Option<Damage>,
}

/// A bad frame the scan stopped at, and whether it can be a torn write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The frame at `position` is incomplete, fails its checksum or is
    /// malformed, and no valid frame follows it: what a crash during a write
    /// leaves. Cutting here loses nothing that was acknowledged, provided
    /// this is the partition's last segment.
    Torn {
        /// Where the bad frame starts.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Damage a crash cannot explain: valid frames follow the bad one, or a
    /// complete, checksummed frame carries an offset out of sequence.
    /// Cutting here would drop acknowledged records.
    Corrupt {
        /// Where the bad frame starts.
        position: u64,
        /// What is wrong, and where valid records resume.
        reason: String,
    },
}

/// Scans a segment file; see [`scan_bytes`].
pub(crate) fn scan(path: &Path, base_offset: u64) -> io::Result<ScanResult> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(scan_bytes(&bytes, base_offset))
}

/// Scans the bytes of a segment whose first offset is `base_offset`, stopping
/// at the first frame that is torn, corrupt or out of sequence, and says which.
pub(crate) fn scan_bytes(bytes: &[u8], base_offset: u64) -> ScanResult {
    let mut result = ScanResult {
        valid_len: 0,
        next_offset: base_offset,
        max_timestamp: None,
        index: Vec::new(),
        damage: None,
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        // Parsed, not decoded: recovery needs each frame's place and time,
        // not a copy of its key and value.
        let reason = match parse(&bytes[pos..]) {
            Ok(frame) if frame.offset == result.next_offset => {
                if (frame.offset - base_offset).is_multiple_of(INDEX_INTERVAL) {
                    result.index.push((frame.offset, pos as u64));
                }
                result.max_timestamp = Some(
                    result
                        .max_timestamp
                        .map_or(frame.timestamp_ms, |m| m.max(frame.timestamp_ms)),
                );
                result.next_offset += 1;
                pos += frame.len;
                continue;
            }
            Ok(frame) => {
                // A write cut short cannot produce a whole frame whose checksum matches.
                result.damage = Some(Damage::Corrupt {
                    position: pos as u64,
                    reason: format!(
                        "complete frame with offset {} where {} was expected",
                        frame.offset, result.next_offset
                    ),
                });
                break;
            }
            Err(error) => error.to_string(),
        };
        result.damage = Some(match find_next_frame(bytes, pos, result.next_offset) {
            None => Damage::Torn {
                position: pos as u64,
                reason,
            },
            Some((resume_pos, resume_offset)) => Damage::Corrupt {
                position: pos as u64,
                reason: format!(
                    "{reason}, yet valid records follow: offset {resume_offset} resumes at \
                     byte {resume_pos}, {} bytes on (not a torn tail)",
                    resume_pos - pos
                ),
            },
        });
        break;
    }
    result.valid_len = pos as u64;
    result
}

/// The first byte position after the bad frame at `bad_pos` where a valid
/// frame starts, with its offset; `next_offset` is the offset the bad frame
/// should have had.
///
/// A candidate must fit in the file and carry an offset from `next_offset`
/// up to as many frames past it as the file has room for (a frame takes at
/// least `FRAME_HEADER + MIN_PAYLOAD` bytes); only then is its checksum
/// computed and the frame decoded. Random, zeroed or text bytes almost never
/// pass the first two tests, so the search costs little more than reading
/// the bytes, and it runs only once a bad frame is found. The length is not
/// bounded by [`crate::MAX_RECORD_BYTES`]: headers do not count towards that
/// limit, and a tighter test would only risk missing a real frame.
fn find_next_frame(bytes: &[u8], bad_pos: usize, next_offset: u64) -> Option<(usize, u64)> {
    const MIN_FRAME: usize = FRAME_HEADER + MIN_PAYLOAD;
    let max_offset = next_offset.saturating_add((bytes.len() / MIN_FRAME) as u64);
    let mut pos = bad_pos + 1;
    while pos + MIN_FRAME <= bytes.len() {
        let rest = &bytes[pos..];
        let payload_len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let offset = u64::from_le_bytes(
            rest[FRAME_HEADER..FRAME_HEADER + 8]
                .try_into()
                .expect("8 bytes"),
        );
        let plausible = payload_len >= MIN_PAYLOAD
            && payload_len <= rest.len() - FRAME_HEADER
            && (next_offset..=max_offset).contains(&offset);
        if plausible && let Ok(frame) = parse(rest) {
            return Some((pos, frame.offset));
        }
        pos += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn record(i: usize) -> Record {
        Record {
            key: i.is_multiple_of(2).then(|| format!("k{i}").into()),
            value: format!("value-{i}").into(),
            timestamp_ms: 1000 + i as i64,
            headers: if i.is_multiple_of(3) {
                vec![("reason".into(), b"bad".to_vec())]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        for i in 0..5 {
            encode(10 + i as u64, &record(i), &mut buf);
        }
        let mut pos = 0;
        for i in 0..5 {
            let frame = decode(&buf[pos..]).unwrap();
            assert_eq!(frame.offset, 10 + i as u64);
            assert_eq!(frame.record, record(i));
            pos += frame.len;
        }
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_flip_is_caught() {
        let mut buf = Vec::new();
        encode(0, &record(0), &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]).err(),
                Some(FrameError::Incomplete),
                "cut at {cut}"
            );
        }
        for i in FRAME_HEADER..buf.len() {
            let mut flipped = buf.clone();
            flipped[i] ^= 0x40;
            assert!(
                matches!(decode(&flipped), Err(FrameError::Invalid(_))),
                "flip at {i}"
            );
        }
    }

    /// Frames of `n` records from offset `base`, and where each starts (plus the end).
    fn frames(base: u64, records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut boundaries = vec![0];
        for (i, record) in records.iter().enumerate() {
            encode(base + i as u64, record, &mut buf);
            boundaries.push(buf.len());
        }
        (buf, boundaries)
    }

    fn position(damage: &Damage) -> u64 {
        match damage {
            Damage::Torn { position, .. } | Damage::Corrupt { position, .. } => *position,
        }
    }

    fn check(bytes: &[u8], base: u64, kept: u64, damage: Option<&str>) {
        let scan = scan_bytes(bytes, base);
        assert_eq!(scan.next_offset - base, kept, "records kept");
        let found = scan.damage.as_ref().map(|d| match d {
            Damage::Torn { .. } => "torn",
            Damage::Corrupt { .. } => "corrupt",
        });
        assert_eq!(found, damage, "{:?}", scan.damage);
    }

    #[test]
    fn a_bad_frame_is_torn_only_when_nothing_valid_follows() {
        let records: Vec<Record> = (0..10).map(record).collect();
        let (buf, at) = frames(100, &records);
        check(&buf, 100, 10, None);
        // The last frame: cut short, flipped, or followed by garbage.
        check(&buf[..buf.len() - 3], 100, 9, Some("torn"));
        let mut flipped = buf.clone();
        flipped[at[9] + 12] ^= 1;
        check(&flipped, 100, 9, Some("torn"));
        let mut garbage = buf.clone();
        garbage.extend_from_slice(b"\xff\x00\x00\x00not a frame at all, just noise");
        check(&garbage, 100, 10, Some("torn"));
        check(
            &[buf.as_slice(), &[0u8; 4096]].concat(),
            100,
            10,
            Some("torn"),
        );
        // A frame in the middle: the frames after it give it away.
        for byte in [0, 3, 4, 9, 20] {
            let mut flipped = buf.clone();
            flipped[at[4] + byte] ^= 0x10;
            check(&flipped, 100, 4, Some("corrupt"));
        }
        let mut flipped = buf.clone();
        flipped[at[4] + 20] ^= 0x10;
        let scan = scan_bytes(&flipped, 100);
        assert_eq!(scan.valid_len, at[4] as u64);
        let Some(Damage::Corrupt { position, reason }) = scan.damage else {
            panic!("corrupt: {:?}", scan.damage);
        };
        assert_eq!(position, at[4] as u64);
        assert_eq!(
            reason,
            format!(
                "checksum mismatch, yet valid records follow: offset 105 resumes at byte {}, {} \
                 bytes on (not a torn tail)",
                at[5],
                at[5] - at[4]
            )
        );
        // Zeroed blocks in the middle (a lost page) are corruption too.
        let mut zeroed = buf.clone();
        zeroed[at[2]..at[6]].fill(0);
        check(&zeroed, 100, 2, Some("corrupt"));
    }

    #[test]
    fn a_complete_frame_out_of_sequence_is_corrupt() {
        let (buf, _) = frames(0, &[record(0), record(1)]);
        let mut skipped = buf.clone();
        encode(5, &record(2), &mut skipped);
        check(&skipped, 0, 2, Some("corrupt"));
        let mut repeated = buf.clone();
        encode(1, &record(2), &mut repeated);
        check(&repeated, 0, 2, Some("corrupt"));
    }

    /// A change to the encoded bytes of a segment.
    #[derive(Debug, Clone)]
    enum Change {
        Flip { at: usize, mask: u8 },
        Overwrite { at: usize, bytes: Vec<u8> },
        Truncate { at: usize },
        Append { bytes: Vec<u8> },
    }

    fn any_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<i64>(),
            proptest::collection::vec(
                ("[a-z]{0,6}", proptest::collection::vec(any::<u8>(), 0..8)),
                0..3,
            ),
        )
            .prop_map(|(key, value, timestamp_ms, headers)| Record {
                key: key.map(Bytes::from),
                value: value.into(),
                timestamp_ms,
                headers,
            })
    }

    fn any_change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(at, mask)| Change::Flip { at, mask }),
            (
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..64)
            )
                .prop_map(|(at, bytes)| Change::Overwrite { at, bytes }),
            any::<usize>().prop_map(|at| Change::Truncate { at }),
            proptest::collection::vec(any::<u8>(), 1..256)
                .prop_map(|bytes| Change::Append { bytes }),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, change: &Change) {
        let len = bytes.len().max(1);
        match change {
            Change::Flip { at, mask } => {
                if !bytes.is_empty() {
                    bytes[at % len] ^= mask;
                }
            }
            Change::Overwrite { at, bytes: new } => {
                let start = at % len;
                for (i, b) in new.iter().enumerate() {
                    if let Some(old) = bytes.get_mut(start + i) {
                        *old = *b;
                    }
                }
            }
            Change::Truncate { at } => bytes.truncate(at % len),
            Change::Append { bytes: new } => bytes.extend_from_slice(new),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Arbitrary bytes: the scanner neither panics nor finds a record.
        #[test]
        fn scanning_noise_finds_nothing(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            base in 0..1_000_000u64,
        ) {
            let scan = scan_bytes(&bytes, base);
            prop_assert_eq!(scan.next_offset, base);
            prop_assert_eq!(scan.valid_len, 0);
            prop_assert_eq!(scan.damage.is_some(), !bytes.is_empty());
            let _ = decode(&bytes);
        }

        /// Damaged segments: never a panic, never more records than were
        /// written, and what is kept is a prefix of the frames written.
        #[test]
        fn damaged_segments_keep_at_most_the_frames_written(
            records in proptest::collection::vec(any_record(), 0..24),
            changes in proptest::collection::vec(any_change(), 0..4),
            base in 0..1_000_000u64,
        ) {
            let (mut bytes, at) = frames(base, &records);
            // The writer checks a segment's size by `frame_len` before it
            // frames a record in place: the two must agree.
            for (i, record) in records.iter().enumerate() {
                prop_assert_eq!(frame_len(record), at[i + 1] - at[i]);
            }
            for change in &changes {
                apply(&mut bytes, change);
            }
            let scan = scan_bytes(&bytes, base);
            let kept = (scan.next_offset - base) as usize;
            prop_assert!(kept <= records.len(), "{} records from {} frames", kept, records.len());
            prop_assert_eq!(scan.valid_len, at[kept] as u64);
            prop_assert_eq!(scan.damage.is_some(), scan.valid_len < bytes.len() as u64);
            if let Some(damage) = &scan.damage {
                prop_assert_eq!(position(damage), scan.valid_len);
            }
        }

        /// One flipped byte: corruption when records follow it, a torn tail in the last frame.
        #[test]
        fn one_flip_is_corrupt_unless_in_the_last_frame(
            records in proptest::collection::vec(any_record(), 2..12),
            frame_pick in any::<usize>(),
            byte_pick in any::<usize>(),
            mask in 1..=255u8,
        ) {
            let (mut bytes, at) = frames(0, &records);
            let frame = frame_pick % records.len();
            let byte = at[frame] + byte_pick % (at[frame + 1] - at[frame]);
            bytes[byte] ^= mask;
            let scan = scan_bytes(&bytes, 0);
            prop_assert_eq!(scan.next_offset, frame as u64);
            let expected = if frame + 1 < records.len() { "corrupt" } else { "torn" };
            let found = match scan.damage {
                Some(Damage::Torn { .. }) => "torn",
                Some(Damage::Corrupt { .. }) => "corrupt",
                None => "none",
            };
            prop_assert_eq!(found, expected);
        }
    }
}
