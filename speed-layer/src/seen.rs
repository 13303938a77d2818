//! The `event_id`s one window has counted, kept so that a resend is
//! recognised as a duplicate. The ids' bytes sit back to back in one buffer
//! and a hash table holds their spans: remembering an id costs no allocation
//! of its own (the buffer grows by doubling), and an id is hashed once per
//! event however many open windows are asked about it ([`IdHash`]).

use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::{DefaultHashBuilder, HashTable};

/// One seed for every window's table in this process (foldhash, seeded at
/// random at start), so one [`IdHash`] serves all of them.
static HASHER: LazyLock<DefaultHashBuilder> = LazyLock::new(DefaultHashBuilder::default);

/// The hash of one `event_id` under this process's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdHash(u64);

impl IdHash {
    /// Hashes `id`.
    pub fn of(id: &str) -> IdHash {
        IdHash(HASHER.hash_one(id))
    }
}

/// A set of ids (see the module's documentation).
#[derive(Debug, Clone, Default)]
pub struct SeenIds {
    bytes: String,
    /// `(start, end)` of each id in `bytes`.
    spans: HashTable<(usize, usize)>,
}

impl SeenIds {
    /// Whether `id` (whose hash is `hash`) is in the set.
    pub fn contains(&self, id: &str, hash: IdHash) -> bool {
        self.spans
            .find(hash.0, |&(start, end)| &self.bytes[start..end] == id)
            .is_some()
    }

    /// Adds `id`; `false` if it was already there.
    pub fn insert(&mut self, id: &str, hash: IdHash) -> bool {
        if self.contains(id, hash) {
            return false;
        }
        let start = self.bytes.len();
        self.bytes.push_str(id);
        let bytes = &self.bytes;
        self.spans
            .insert_unique(hash.0, (start, bytes.len()), |&(s, e)| {
                HASHER.hash_one(&bytes[s..e])
            });
        true
    }

    /// The ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.spans
            .iter()
            .map(|&(start, end)| &self.bytes[start..end])
    }

    /// How many ids the set holds.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
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
        for id in &ids {
            assert!(!seen.contains(id, IdHash::of(id)));
            assert!(seen.insert(id, IdHash::of(id)));
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
}
