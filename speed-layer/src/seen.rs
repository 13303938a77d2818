//! The `event_id`s the open windows have counted, kept so that a resend is
//! recognised as a duplicate in whichever open window it is stamped.
//!
//! Each window's ids sit back to back in one buffer ([`WindowIds`]), each
//! after its length, so the buffer is also the window's serialized form and
//! grows only at its end. One index over every open window ([`SeenIds`])
//! holds each id's hash, window and place: an event is checked with one
//! probe however many windows are open, and remembering an id costs no
//! allocation of its own (buffers and tables grow by doubling). (There used
//! to be a table per window, each probed for every event: a quarter of the
//! fold's time in `lambda bench speed`.)
//!
//! The index is [`SHARDS`] tables picked by bits of the hash, each entry
//! keeping its hash: a table that grows moves its entries without reading
//! an id again, and only one shard's worth at a time (one table of 500 000
//! ids used to hold the fold for tens of milliseconds while it rehashed,
//! the freshness tail of `lambda bench ingest`).
//!
//! A window that closes drops its buffer at once ([`SeenIds::drop_before`]).
//! Its entries stay in the tables, stale (an entry for a window before
//! [`SeenIds::dropped_before`] is never a match), until they are swept: from
//! a table about to grow, and a table at a time ([`SeenIds::tidy`]) once the
//! stale entries outnumber the live ones. So the tables hold at most about
//! twice the open windows' ids, and no sweep walks more than one table.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::LazyLock;

use hashbrown::{DefaultHashBuilder, HashTable, hash_table::Entry as Slot};

/// One seed for the whole process (foldhash, seeded at random at start),
/// so one [`IdHash`] serves every table.
static HASHER: LazyLock<DefaultHashBuilder> = LazyLock::new(DefaultHashBuilder::default);

/// The hash of an id's bytes (the one hash every table entry is made with).
fn hash_bytes(id: &[u8]) -> u64 {
    HASHER.hash_one(id)
}

/// The hash of one `event_id` under this process's seed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdHash(u64);

impl IdHash {
    /// Hashes `id`.
    pub fn of(id: &str) -> IdHash {
        IdHash(hash_bytes(id.as_bytes()))
    }
}

/// How many tables the index spreads its entries over.
pub const SHARDS: usize = 32;

/// Below this many stale entries, [`SeenIds::tidy`] leaves them to be swept
/// when their table grows.
const TIDY_AT: usize = 4096;

/// The least room a table is rebuilt with ([`SeenIds::sweep`]).
const MIN_ROOM: usize = 64;

/// The shard of a hash: bits the tables use for neither the slot (the low
/// bits, for tables under 2^32 slots) nor the tag (the top 7 bits).
fn shard(hash: u64) -> usize {
    (hash >> 32) as usize % SHARDS
}

/// One window's ids, in the order they were added: each after its length
/// (LEB128: one byte for any id up to 127 bytes). The buffer is also the
/// window's serialized form and grows only at its end, so the ids added
/// since a [`WindowIds::mark`] are one slice ([`WindowIds::encoded_since`]),
/// which is what an incremental checkpoint writes.
#[derive(Debug, Clone, Default)]
pub struct WindowIds {
    bytes: Vec<u8>,
    len: usize,
}

impl WindowIds {
    /// Appends `id`; where its length starts.
    fn push(&mut self, id: &[u8]) -> usize {
        let at = self.bytes.len();
        let mut len = id.len();
        while len >= 0x80 {
            self.bytes.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        self.bytes.push(len as u8);
        self.bytes.extend_from_slice(id);
        self.len += 1;
        at
    }

    /// The id whose length starts at `at` (a place [`WindowIds::push`] gave).
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

    /// How many ids the window holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window holds no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the encoded form ends now: what [`WindowIds::encoded_since`]
    /// counts from.
    pub fn mark(&self) -> usize {
        self.bytes.len()
    }

    /// The encoded form of the ids added since `mark` (all of them from 0);
    /// `None` if `mark` is not one this window has passed.
    pub fn encoded_since(&self, mark: usize) -> Option<&[u8]> {
        self.bytes.get(mark..)
    }
}

/// Where one id is: its hash, its window, where its length starts in that
/// window's buffer.
#[derive(Debug, Clone, Copy)]
struct Place {
    hash: u64,
    window: i64,
    at: usize,
}

/// The ids of every open window, and one index over all of them (see the
/// module's documentation).
#[derive(Debug, Clone)]
pub struct SeenIds {
    windows: BTreeMap<i64, WindowIds>,
    shards: Vec<HashTable<Place>>,
    /// Entries whose window is still held.
    live: usize,
    /// Entries of dropped windows not swept yet.
    stale: usize,
    /// Windows before this have been dropped.
    dropped_before: i64,
    /// The table [`SeenIds::tidy`] sweeps next.
    tidy_next: usize,
    /// An empty table, the last one [`SeenIds::sweep`] rebuilt from.
    spare: HashTable<Place>,
}

impl Default for SeenIds {
    fn default() -> SeenIds {
        SeenIds {
            windows: BTreeMap::new(),
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            live: 0,
            stale: 0,
            dropped_before: i64::MIN,
            tidy_next: 0,
            spare: HashTable::new(),
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
    /// Whether an open window holds `id` (whose hash is `hash`).
    pub fn contains(&self, id: &str, hash: IdHash) -> bool {
        let (id, hash) = (id.as_bytes(), hash.0);
        self.shards[shard(hash)]
            .find(hash, |place| {
                holds(&self.windows, self.dropped_before, place, hash, id)
            })
            .is_some()
    }

    /// Adds `id` to the window starting at `window`; `false` if an open
    /// window (that one or another) already holds it. A window before
    /// [`SeenIds::dropped_before`] keeps no ids (its events are late before
    /// their ids are looked at): `true`, and nothing is kept.
    pub fn insert(&mut self, window: i64, id: &str, hash: IdHash) -> bool {
        self.insert_bytes(window, id.as_bytes(), hash.0)
    }

    /// Reads the index where an id of `hash` would be, and changes nothing:
    /// the fold touches a chunk's ids before it inserts them, so that the
    /// memory loads of their probes (the index is larger than the cache; one
    /// probe's miss was most of an insert's time) overlap instead of coming
    /// one after another. How many entries of that hash it read.
    pub fn touch(&self, hash: IdHash) -> usize {
        let mut read = 0;
        let _ = self.shards[shard(hash.0)].find(hash.0, |place| {
            read += usize::from(place.hash == hash.0);
            false
        });
        read
    }

    fn insert_bytes(&mut self, window: i64, id: &[u8], hash: u64) -> bool {
        if window < self.dropped_before {
            return true;
        }
        let i = shard(hash);
        // About to grow: rebuilt, without its stale entries.
        if self.shards[i].len() == self.shards[i].capacity() {
            self.sweep(i);
        }
        let SeenIds {
            windows,
            shards,
            live,
            dropped_before,
            ..
        } = self;
        match shards[i].entry(
            hash,
            |place| holds(windows, *dropped_before, place, hash, id),
            |place| place.hash,
        ) {
            Slot::Occupied(_) => false,
            Slot::Vacant(vacant) => {
                // Most ids are of the newest window: its entry is the last.
                let ids = match windows.last_entry() {
                    Some(newest) if *newest.key() == window => newest.into_mut(),
                    _ => {
                        if !windows.contains_key(&window) {
                            // Room for as many ids as the fullest window
                            // open: a buffer grown from nothing was copied
                            // at each doubling (0.6 % of the fold's
                            // instructions, callgrind).
                            let room = windows.values().map(|w| w.bytes.len()).max();
                            let ids = WindowIds {
                                bytes: Vec::with_capacity(room.unwrap_or(0)),
                                len: 0,
                            };
                            windows.insert(window, ids);
                        }
                        windows.entry(window).or_default()
                    }
                };
                let at = ids.push(id);
                vacant.insert(Place { hash, window, at });
                *live += 1;
                true
            }
        }
    }

    /// Adds each of `ids` to the window at `window`, as [`SeenIds::insert`].
    pub fn extend<'a>(&mut self, window: i64, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            self.insert(window, id, IdHash::of(id));
        }
    }

    /// Drops the ids of the windows before `before` (they have closed, or
    /// left the state). Their entries in the index go stale at once; they
    /// are swept later.
    pub fn drop_before(&mut self, before: i64) {
        if before <= self.dropped_before {
            return;
        }
        let kept = self.windows.split_off(&before);
        let dropped: usize = std::mem::replace(&mut self.windows, kept)
            .values()
            .map(WindowIds::len)
            .sum();
        self.live = self.live.saturating_sub(dropped);
        self.stale = self.stale.saturating_add(dropped);
        self.dropped_before = before;
    }

    /// Sweeps one table if stale entries outnumber the live ones and are
    /// at least [`TIDY_AT`], or if no window holds ids any more (then
    /// until none is stale: stopping below [`TIDY_AT`] left the tables not
    /// reached yet with all their room, thousands of slots each). Called
    /// after every fetch, it keeps the tables to about twice the open
    /// windows' ids after traffic slows, a table's worth of work at a time.
    pub fn tidy(&mut self) {
        if self.stale > self.live && (self.stale >= TIDY_AT || self.live == 0) {
            self.sweep(self.tidy_next);
            self.tidy_next = (self.tidy_next + 1) % SHARDS;
        }
    }

    /// Rebuilds table `i` from its live entries, with room for about as
    /// many again: a table about to grow is rebuilt instead (twice its live
    /// entries is a doubling when none is stale), and a table mostly stale
    /// gives back its room. A rebuild, not an erase in place: an erased
    /// entry of a full table leaves a tombstone that keeps its slot taken,
    /// so the table stayed full and the next insert rehashed all of it in
    /// place (that rehash was 7 % of `lambda bench speed`'s live loop).
    fn sweep(&mut self, i: usize) {
        let dropped_before = self.dropped_before;
        let old = std::mem::take(&mut self.shards[i]);
        let before = old.len();
        let live = old
            .iter()
            .filter(|place| place.window >= dropped_before)
            .count();
        let room = (2 * live).max(MIN_ROOM);
        // The last table rebuilt from is used again if its size fits (the
        // shards are of like sizes): a fresh allocation each time would
        // have its pages faulted in and zeroed each time.
        let mut table = std::mem::take(&mut self.spare);
        if !(room..=4 * room).contains(&table.capacity()) {
            table = HashTable::with_capacity(room);
        }
        for place in old.iter().filter(|place| place.window >= dropped_before) {
            table.insert_unique(place.hash, *place, |place| place.hash);
        }
        self.stale = self.stale.saturating_sub(before - live);
        self.shards[i] = table;
        // Kept for the next rebuild unless it was far larger than needed
        // (a mostly stale table gives its room back).
        if old.capacity() <= 4 * room {
            let mut old = old;
            old.clear();
            self.spare = old;
        }
    }

    /// Windows before this have dropped their ids.
    pub fn dropped_before(&self) -> i64 {
        self.dropped_before
    }

    /// The ids of the window starting at `start`, if it holds any.
    pub fn window(&self, start: i64) -> Option<&WindowIds> {
        self.windows.get(&start)
    }

    /// The windows holding ids, by start.
    pub fn windows(&self) -> impl Iterator<Item = (i64, &WindowIds)> {
        self.windows.iter().map(|(start, ids)| (*start, ids))
    }

    /// How many ids the open windows hold.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no open window holds an id.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds to the window at `window` the ids of an encoded form (pieces of
    /// [`WindowIds::encoded_since`], in order), each at most `max_id_len`
    /// bytes of UTF-8. An id an open window already holds is skipped.
    pub fn extend_encoded(
        &mut self,
        window: i64,
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
            self.insert_bytes(window, id, hash_bytes(id));
        }
        Ok(())
    }
}

#[inline]
/// Whether `place` holds `id`: the same hash (a different hash is a
/// different id), a window still held, then the same bytes.
fn holds(
    windows: &BTreeMap<i64, WindowIds>,
    dropped_before: i64,
    place: &Place,
    hash: u64,
    id: &[u8],
) -> bool {
    place.hash == hash
        && place.window >= dropped_before
        && windows
            .get(&place.window)
            .is_some_and(|ids| ids.id_at(place.at) == id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(seen: &SeenIds) -> usize {
        seen.shards.iter().map(HashTable::len).sum()
    }

    fn room(seen: &SeenIds) -> usize {
        seen.shards.iter().map(HashTable::capacity).sum()
    }

    #[test]
    fn an_id_held_by_any_open_window_is_found_and_only_then() {
        let mut seen = SeenIds::default();
        let ids: Vec<String> = (0..10_000).map(|i| format!("event-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let window = (i % 3) as i64 * 60_000;
            assert!(!seen.contains(id, IdHash::of(id)));
            assert!(seen.insert(window, id, IdHash::of(id)));
        }
        for (i, id) in ids.iter().enumerate() {
            assert!(
                seen.contains(id, IdHash::of(id)),
                "{id} after the tables grew"
            );
            // In its own window and in every other one.
            for window in [0, 60_000, 120_000, 180_000] {
                assert!(!seen.insert(window, id, IdHash::of(id)), "{id} twice ({i})");
            }
        }
        // A prefix or an extension of a stored id is another id.
        for other in ["event-1x", "event-", "vent-1", ""] {
            assert!(!seen.contains(other, IdHash::of(other)), "{other:?}");
        }
        assert_eq!(seen.len(), ids.len());
        assert_eq!(entries(&seen), ids.len());
        let mut back: Vec<&str> = seen.windows().flat_map(|(_, w)| w.iter()).collect();
        back.sort_unstable();
        let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(back, expected);
        assert_eq!(
            seen.window(60_000).map(|w| w.iter().next()),
            Some(Some("event-1")),
            "each window holds its own ids, in the order added"
        );
        assert!(
            seen.window(180_000).is_none(),
            "a refused id makes no window"
        );
    }

    #[test]
    fn a_dropped_window_forgets_its_ids_and_the_rest_remember_theirs() {
        let mut seen = SeenIds::default();
        for (window, id) in [(0, "a"), (60_000, "b"), (120_000, "c")] {
            assert!(seen.insert(window, id, IdHash::of(id)));
        }
        seen.drop_before(120_000);
        assert_eq!(seen.dropped_before(), 120_000);
        assert_eq!((seen.len(), entries(&seen)), (1, 3), "two stale entries");
        assert!(!seen.contains("a", IdHash::of("a")));
        assert!(!seen.contains("b", IdHash::of("b")));
        assert!(seen.contains("c", IdHash::of("c")));
        // A dropped id may be counted again in an open window (the caller
        // has found its own window closed, or not).
        assert!(seen.insert(180_000, "a", IdHash::of("a")));
        assert!(!seen.insert(120_000, "a", IdHash::of("a")));
        // A window before the drop keeps nothing.
        assert!(seen.insert(60_000, "z", IdHash::of("z")));
        assert!(seen.window(60_000).is_none());
        assert!(!seen.contains("z", IdHash::of("z")));
        // Dropping again, or not as far, changes nothing.
        seen.drop_before(60_000);
        assert_eq!((seen.dropped_before(), seen.len()), (120_000, 2));
    }

    #[test]
    fn stale_entries_are_swept_and_the_tables_stay_near_the_open_windows_ids() {
        // A minute's ids per window, two windows open at a time, for an
        // hour: without sweeping, the tables would hold every id ever seen.
        let per_window = 20_000;
        let mut seen = SeenIds::default();
        let mut most_live = 0;
        for minute in 0..60i64 {
            let window = minute * 60_000;
            for i in 0..per_window {
                let id = format!("{minute}-{i}");
                assert!(seen.insert(window, &id, IdHash::of(&id)));
                if i % 1000 == 0 {
                    seen.tidy();
                }
            }
            seen.drop_before(window - 60_000);
            most_live = most_live.max(seen.len());
            assert_eq!(
                seen.len(),
                seen.windows().map(|(_, w)| w.len()).sum::<usize>()
            );
            assert!(
                entries(&seen) <= 3 * most_live,
                "minute {minute}: {} entries for {} live ids",
                entries(&seen),
                seen.len()
            );
        }
        assert_eq!(most_live, 2 * per_window);
        assert!(
            room(&seen) <= 8 * most_live,
            "{} slots for {most_live} ids",
            room(&seen)
        );
        // Traffic stops: the windows close, and a round of tidying empties
        // every table and gives back the room.
        seen.drop_before(i64::MAX);
        assert_eq!(seen.len(), 0);
        for _ in 0..SHARDS {
            seen.tidy();
        }
        assert_eq!(entries(&seen), 0);
        assert!(
            room(&seen) <= SHARDS * 4 * MIN_ROOM,
            "{} slots left",
            room(&seen)
        );
        // And still every id of an open window is found.
        for i in 0..100 {
            let id = format!("again-{i}");
            assert!(seen.insert(i64::MAX, &id, IdHash::of(&id)));
            assert!(!seen.insert(i64::MAX, &id, IdHash::of(&id)));
        }
    }

    #[test]
    fn the_encoded_form_grows_at_its_end_and_reads_back_in_pieces() {
        let mut seen = SeenIds::default();
        let long = "x".repeat(200);
        let ids = ["a", "", "ü-€", long.as_str(), "b"];
        let ids_of = |seen: &SeenIds| seen.window(0).cloned().unwrap_or_default();
        let mut marks = vec![ids_of(&seen).mark()];
        for id in ids {
            seen.insert(0, id, IdHash::of(id));
            marks.push(ids_of(&seen).mark());
        }
        let window = ids_of(&seen);
        assert_eq!(window.iter().collect::<Vec<_>>(), ids, "in the order added");
        // Read back piece by piece: the same set, the same bytes.
        let mut back = SeenIds::default();
        for pair in marks.windows(2) {
            let piece = &window.encoded_since(pair[0]).unwrap()[..pair[1] - pair[0]];
            back.extend_encoded(0, piece, 200).unwrap();
        }
        assert_eq!(ids_of(&back).encoded_since(0), window.encoded_since(0));
        assert!(ids.iter().all(|id| back.contains(id, IdHash::of(id))));
        assert_eq!(window.encoded_since(window.mark()), Some(&[][..]));
        assert_eq!(window.encoded_since(window.mark() + 1), None);
        // A piece read twice adds nothing, in that window or another.
        back.extend_encoded(0, window.encoded_since(0).unwrap(), 200)
            .unwrap();
        back.extend_encoded(60_000, window.encoded_since(0).unwrap(), 200)
            .unwrap();
        assert_eq!(back.len(), ids.len());
        assert!(back.window(60_000).is_none());
    }

    #[test]
    fn damaged_encoded_ids_are_errors() {
        let mut seen = SeenIds::default();
        for id in ["abc", "def"] {
            seen.insert(0, id, IdHash::of(id));
        }
        let good = seen.window(0).unwrap().encoded_since(0).unwrap().to_vec();
        let read = |bytes: &[u8], max| SeenIds::default().extend_encoded(0, bytes, max);
        let too_long = read(&good, 2).unwrap_err();
        assert_eq!(too_long.problem, "an id longer than an event id may be");
        read(&good, 3).unwrap();
        let cut = read(&good[..good.len() - 1], 64).unwrap_err();
        assert_eq!((cut.at, cut.problem), (4, "an id cut short"));
        let not_utf8 = read(&[2, 0xff, 0xfe], 64).unwrap_err();
        assert_eq!(not_utf8.problem, "an id that is not UTF-8");
        let endless = read(&[0x80; 9], 64).unwrap_err();
        assert_eq!(endless.problem, "a length over 4 bytes");
        let unfinished = read(&[0x80], 64).unwrap_err();
        assert_eq!(unfinished.problem, "a length cut short");
    }
}
