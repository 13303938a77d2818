//! Key-hashed partitioning: Kafka's murmur2, so that a key lands in the same
//! partition index under the embedded log, the Java client's default
//! partitioner and librdkafka's `murmur2_random`.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{LogError, MAX_RECORD_BYTES, Record};

/// Picks a record's partition the same way in every backend: murmur2 of the
/// key, round robin without one; and refuses records over [`MAX_RECORD_BYTES`].
#[derive(Debug, Default)]
pub struct Partitioner {
    round_robin: AtomicU32,
}

impl Partitioner {
    /// The partition of `record` among `partitions`.
    pub fn partition(&self, record: &Record, partitions: u32) -> Result<u32, LogError> {
        let size = record.size();
        if size > MAX_RECORD_BYTES {
            return Err(LogError::RecordTooLarge {
                size,
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok(match &record.key {
            Some(key) => partition_for_key(key, partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        })
    }
}

/// Kafka's 32-bit murmur2 hash (seed `0x9747b28c`) of `data`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition for `key` among `partitions` (Kafka: `toPositive(murmur2(key)) % n`).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_murmur2() {
        // Reference values from Kafka's own `UtilsTest.testMurmur2`.
        let check = |input: &str, expected: i32| {
            assert_eq!(murmur2(input.as_bytes()) as i32, expected, "{input}")
        };
        check("21", -973932308);
        check("foobar", -790332482);
        check("a-little-bit-long-string", -985981536);
        check("a-little-bit-longer-string", -1486304829);
        check(
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58897971,
        );
        check("abc", 479470107);
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for key in ["u1", "u2", "device-77", ""] {
            let p = partition_for_key(key.as_bytes(), 4);
            assert!(p < 4);
            assert_eq!(p, partition_for_key(key.as_bytes(), 4));
        }
    }
}
