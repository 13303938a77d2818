//! The `event_id`s one window has counted, kept so that a resend is
//! recognised as a duplicate. The ids sit back to back in one buffer, each
//! after its length (so the buffer is also the set's serialized form, and
//! grows only at its end), and hash tables hold their hashes and places:
//! remembering an id costs no allocation of its own (the buffer grows by
//! doubling), and an id is hashed once per event however many open windows
//! are asked about it ([`IdHash`]).
//!
//! The tables are [`SHARDS`] small ones picked by bits of the hash, each
//! entry keeping its hash: a table that grows moves its entries without
//! reading an id again, and only one shard's worth at a time. A set starts
//! with one table and spreads over the shards once it holds
//! [`SPREAD_AT`] ids (most windows of a quiet stream never do, and an empty
//! table per shard would cost them memory). One table of
//! a window's 500 000 ids used to hold the fold for tens of milliseconds
//! while it rehashed every id (the freshness tail of `lambda bench ingest`).

use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::{DefaultHashBuilder, HashTable};

/// One seed for every window's table in this process (foldhash, seeded at
/// random at start), so one [`IdHash`] serves all of them.
static HASHER: LazyLock<DefaultHashBuilder> = LazyLock::new(DefaultHashBuilder::default);

/// The hash of an id's bytes (the one hash every table entry is made with).
fn hash_bytes(id: &[u8]) -> u64 {
    HASHER.hash_one(id)
}

/// The hash of one `event_id` under this process's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdHash(u64);

impl IdHash {
    /// Hashes `id`.
    pub fn of(id: &str) -> IdHash {
        IdHash(hash_bytes(id.as_bytes()))
    }
}

/// A set of ids (see the module's documentation).
///
/// The buffer holds each id after its length (LEB128: one byte for any id
/// up to 127 bytes), in the order they were added, so it is also the set's
/// own serialized form and grows only at its end: the ids added since a
/// [`SeenIds::mark`] are one slice ([`SeenIds::encoded_since`]), which is
/// what an incremental checkpoint writes.
#[derive(Debug, Clone)]
pub struct SeenIds {
    bytes: Vec<u8>,
    /// `(hash, where its length starts in bytes)` of each id: one table,
    /// or [`SHARDS`] of them picked by [`shard`].
    shards: Vec<HashTable<(u64, usize)>>,
    len: usize,
}

/// How many tables a set's ids are spread over, once it has many.
pub const SHARDS: usize = 32;

/// How many ids a set holds in one table before it spreads them over [`SHARDS`].
pub const SPREAD_AT: usize = 4096;

/// The shard of a hash: bits the tables use for neither the slot (the low
/// bits, for tables under 2^32 slots) nor the tag (the top 7 bits).
fn shard(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

impl Default for SeenIds {
    fn default() -> SeenIds {
        SeenIds {
            bytes: Vec::new(),
            shards: vec![HashTable::new()],
            len: 0,
        }
    }
}

/// Why encoded ids could not be read back ([`SeenIds::extend_encoded`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("encoded ids, at byte {at}: {problem}")]
pub struct EncodedIdsError {
    /// Where in the bytes.
    pub at: usize,
    /// What is wrong.
    pub problem: &'static str,
}

impl SeenIds {
    /// Whether `id` (whose hash is `hash`) is in the set.
    pub fn contains(&self, id: &str, hash: IdHash) -> bool {
        self.find(id.as_bytes(), hash.0)
    }

    fn find(&self, id: &[u8], hash: u64) -> bool {
        self.shards[self.shard_of(hash)]
            .find(hash, |&(h, at)| h == hash && self.id_at(at) == id)
            .is_some()
    }

    /// The table `hash` belongs in.
    fn shard_of(&self, hash: u64) -> usize {
        if self.shards.len() == 1 {
            0
        } else {
            shard(hash)
        }
    }

    /// The id whose length starts at `at` (a place this set recorded).
    fn id_at(&self, at: usize) -> &[u8] {
        let mut decoded = Decoded {
            bytes: &self.bytes,
            at,
        };
        match decoded.next() {
            Some(Ok((_, id))) => id,
            _ => &[],
        }
    }

    /// Adds `id`; `false` if it was already there.
    pub fn insert(&mut self, id: &str, hash: IdHash) -> bool {
        self.insert_bytes(id.as_bytes(), hash.0)
    }

    fn insert_bytes(&mut self, id: &[u8], hash: u64) -> bool {
        if self.find(id, hash) {
            return false;
        }
        let at = self.bytes.len();
        let mut len = id.len();
        while len >= 0x80 {
            self.bytes.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        self.bytes.push(len as u8);
        self.bytes.extend_from_slice(id);
        if self.len == SPREAD_AT && self.shards.len() == 1 {
            let one = std::mem::take(&mut self.shards);
            self.shards = (0..SHARDS).map(|_| HashTable::new()).collect();
            for &(h, at) in one.iter().flatten() {
                self.shards[shard(h)].insert_unique(h, (h, at), |&(h, _)| h);
            }
        }
        let i = self.shard_of(hash);
        self.shards[i].insert_unique(hash, (hash, at), |&(h, _)| h);
        self.len += 1;
        true
    }

    /// The ids, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        // Every id went in as a `&str` or was checked to be UTF-8.
        Decoded {
            bytes: &self.bytes,
            at: 0,
        }
        .map_while(Result::ok)
        .map(|(_, id)| std::str::from_utf8(id).unwrap_or_default())
    }

    /// How many ids the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the set's encoded form ends now: what [`SeenIds::encoded_since`]
    /// counts from.
    pub fn mark(&self) -> usize {
        self.bytes.len()
    }

    /// The encoded form of the ids added since `mark` (all of them from 0);
    /// `None` if `mark` is not one this set has passed.
    pub fn encoded_since(&self, mark: usize) -> Option<&[u8]> {
        self.bytes.get(mark..)
    }

    /// Adds the ids of an encoded form (pieces of [`SeenIds::encoded_since`],
    /// in order), each at most `max_id_len` bytes of UTF-8. An id already in
    /// the set is skipped.
    pub fn extend_encoded(
        &mut self,
        encoded: &[u8],
        max_id_len: usize,
    ) -> Result<(), EncodedIdsError> {
        for item in (Decoded {
            bytes: encoded,
            at: 0,
        }) {
            let (at, id) = item?;
            let problem = if id.len() > max_id_len {
                Some("an id longer than an event id may be")
            } else if std::str::from_utf8(id).is_err() {
                Some("an id that is not UTF-8")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(EncodedIdsError { at, problem });
            }
            self.insert_bytes(id, hash_bytes(id));
        }
        Ok(())
    }
}

/// Walks an encoded form: `(offset, id bytes)` of each id.
struct Decoded<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Decoded<'a> {
    type Item = Result<(usize, &'a [u8]), EncodedIdsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let item_at = self.at;
        let fail = |problem| {
            Some(Err(EncodedIdsError {
                at: item_at,
                problem,
            }))
        };
        let mut len = 0usize;
        let mut shift = 0u32;
        loop {
            let Some(&byte) = self.bytes.get(self.at) else {
                self.at = self.bytes.len();
                return fail("a length cut short");
            };
            self.at += 1;
            if shift > 21 {
                self.at = self.bytes.len();
                return fail("a length over 4 bytes");
            }
            len |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let Some(id) = self
            .at
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.at..end))
        else {
            self.at = self.bytes.len();
            return fail("an id cut short");
        };
        self.at += len;
        Some(Ok((item_at, id)))
    }
}

impl<S: AsRef<str>> FromIterator<S> for SeenIds {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> SeenIds {
        let mut seen = SeenIds::default();
        for id in ids {
            let id = id.as_ref();
            seen.insert(id, IdHash::of(id));
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_found_once_inserted_and_only_then() {
        let mut seen = SeenIds::default();
        let ids: Vec<String> = (0..10_000).map(|i| format!("event-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(!seen.contains(id, IdHash::of(id)));
            assert!(seen.insert(id, IdHash::of(id)));
            // One table up to SPREAD_AT ids, the shards from the next one on.
            let tables = if i < SPREAD_AT { 1 } else { SHARDS };
            assert_eq!(seen.shards.len(), tables, "after {} ids", i + 1);
        }
        for id in &ids {
            assert!(
                seen.contains(id, IdHash::of(id)),
                "{id} after the table grew"
            );
            assert!(!seen.insert(id, IdHash::of(id)), "{id} twice");
        }
        // A prefix or an extension of a stored id is another id.
        for other in ["event-1x", "event-", "vent-1", ""] {
            assert!(!seen.contains(other, IdHash::of(other)), "{other:?}");
        }
        assert_eq!(seen.len(), ids.len());
        let mut back: Vec<&str> = seen.iter().collect();
        back.sort_unstable();
        let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(back, expected);
        let rebuilt: SeenIds = back.iter().collect();
        assert!(ids.iter().all(|id| rebuilt.contains(id, IdHash::of(id))));
    }

    #[test]
    fn the_encoded_form_grows_at_its_end_and_reads_back_in_pieces() {
        let mut seen = SeenIds::default();
        let long = "x".repeat(200);
        let ids = ["a", "", "ü-€", long.as_str(), "b"];
        let mut marks = vec![seen.mark()];
        for id in ids {
            seen.insert(id, IdHash::of(id));
            marks.push(seen.mark());
        }
        assert_eq!(seen.iter().collect::<Vec<_>>(), ids, "in the order added");
        // Read back piece by piece: the same set, the same bytes.
        let mut back = SeenIds::default();
        for pair in marks.windows(2) {
            let piece = &seen.encoded_since(pair[0]).unwrap()[..pair[1] - pair[0]];
            back.extend_encoded(piece, 200).unwrap();
        }
        assert_eq!(back.encoded_since(0), seen.encoded_since(0));
        assert!(ids.iter().all(|id| back.contains(id, IdHash::of(id))));
        assert_eq!(seen.encoded_since(seen.mark()), Some(&[][..]));
        assert_eq!(seen.encoded_since(seen.mark() + 1), None);
        // A piece read twice adds nothing.
        back.extend_encoded(seen.encoded_since(0).unwrap(), 200)
            .unwrap();
        assert_eq!(back.len(), ids.len());
    }

    #[test]
    fn damaged_encoded_ids_are_errors() {
        let mut seen = SeenIds::default();
        for id in ["abc", "def"] {
            seen.insert(id, IdHash::of(id));
        }
        let good = seen.encoded_since(0).unwrap().to_vec();
        let too_long = SeenIds::default().extend_encoded(&good, 2).unwrap_err();
        assert_eq!(too_long.problem, "an id longer than an event id may be");
        SeenIds::default().extend_encoded(&good, 3).unwrap();
        let cut = SeenIds::default()
            .extend_encoded(&good[..good.len() - 1], 64)
            .unwrap_err();
        assert_eq!((cut.at, cut.problem), (4, "an id cut short"));
        let not_utf8 = SeenIds::default()
            .extend_encoded(&[2, 0xff, 0xfe], 64)
            .unwrap_err();
        assert_eq!(not_utf8.problem, "an id that is not UTF-8");
        let endless = SeenIds::default()
            .extend_encoded(&[0x80; 9], 64)
            .unwrap_err();
        assert_eq!(endless.problem, "a length over 4 bytes");
        let unfinished = SeenIds::default().extend_encoded(&[0x80], 64).unwrap_err();
        assert_eq!(unfinished.problem, "a length cut short");
    }
}
