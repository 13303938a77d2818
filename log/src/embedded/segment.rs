//! Segment files: how records are framed on disk and how a segment is scanned
//! (and its torn tail found) when the log is opened.
//!
//! Frame: `len: u32 LE | crc32(payload): u32 LE | payload`, where payload is
//! `offset: u64 | timestamp: i64 | key_len: i32 (-1 = none) | key |
//! n_headers: u16 | (name_len: u16 | name | value_len: u32 | value)* |
//! value_len: u32 | value`. A frame whose length runs past the end of the file
//! or whose checksum does not match is torn: it and everything after it is
//! discarded on recovery.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::Record;

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

/// Decodes the frame at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Result<Frame, FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Incomplete);
    }
    let payload_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if payload_len < 8 + 8 + 4 + 2 + 4 {
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
    let offset = cursor.u64().ok_or_else(|| bad("offset"))?;
    let timestamp_ms = cursor.u64().ok_or_else(|| bad("timestamp"))? as i64;
    let key_len = cursor.u32().ok_or_else(|| bad("key length"))? as i32;
    let key = if key_len < 0 {
        None
    } else {
        Some(
            cursor
                .bytes(key_len as usize)
                .ok_or_else(|| bad("key"))?
                .to_vec(),
        )
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
    let value = cursor
        .bytes(value_len as usize)
        .ok_or_else(|| bad("value"))?
        .to_vec();
    if cursor.pos != payload.len() {
        return Err(FrameError::Invalid("trailing bytes in frame".into()));
    }
    Ok(Frame {
        offset,
        record: Record {
            key,
            value,
            timestamp_ms,
            headers,
        },
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
    pub(crate) torn: Option<(u64, String)>,
}

/// Scans a segment, stopping at the first frame that is torn, corrupt or out of sequence.
pub(crate) fn scan(path: &Path, base_offset: u64) -> io::Result<ScanResult> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut result = ScanResult {
        valid_len: 0,
        next_offset: base_offset,
        max_timestamp: None,
        index: Vec::new(),
        torn: None,
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        match decode(&bytes[pos..]) {
            Ok(frame) if frame.offset == result.next_offset => {
                if (frame.offset - base_offset).is_multiple_of(INDEX_INTERVAL) {
                    result.index.push((frame.offset, pos as u64));
                }
                result.max_timestamp =
                    Some(result.max_timestamp.map_or(frame.record.timestamp_ms, |m| {
                        m.max(frame.record.timestamp_ms)
                    }));
                result.next_offset += 1;
                pos += frame.len;
            }
            Ok(frame) => {
                result.torn = Some((
                    pos as u64,
                    format!(
                        "offset {} where {} was expected",
                        frame.offset, result.next_offset
                    ),
                ));
                break;
            }
            Err(FrameError::Incomplete) => {
                result.torn = Some((pos as u64, "incomplete frame".into()));
                break;
            }
            Err(FrameError::Invalid(reason)) => {
                result.torn = Some((pos as u64, reason));
                break;
            }
        }
    }
    result.valid_len = pos as u64;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Record {
        Record {
            key: i.is_multiple_of(2).then(|| format!("k{i}").into_bytes()),
            value: format!("value-{i}").into_bytes(),
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
}
