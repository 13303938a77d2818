//! Two caches of rendered answers.
//!
//! [`AnswerCache`]: whole encoded answers, each under the stamp of the views
//! it was computed from (see there).
//!
//! [`BucketCache`]: rendered buckets, each under a tag naming what it was
//! rendered from. A bucket that ends at or before the boundary B is
//! answered by the batch views alone, and those do not change until the next
//! manifest: its JSON is rendered once per query shape and manifest version,
//! and later answers only copy it. A speed or mixed bucket is kept under the
//! manifest version, B and the stamp of the speed windows it folds
//! ([`SpeedBucket`]): a dashboard's last hour, asked again after an event
//! lands in its newest minute, renders that minute again and copies the
//! other 59. A lookup under another tag misses, so the cache never makes an
//! answer staler.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use lambda_speed::ViewsStamp;
use parking_lot::Mutex;

use crate::encoding::{Encoding, MIN_COMPRESS_BYTES};

/// Entries kept at most; past it the cache starts over (a query shape
/// that many buckets long is not worth more memory).
pub const MAX_ENTRIES: usize = 200_000;
/// Bytes of rendered buckets kept at most (an IoT bucket with many sensors
/// renders long); past it the cache starts over, and a bucket alone past it
/// is not kept.
pub const MAX_BUCKET_BYTES: usize = 64 << 20;

/// The cache, shared by the handlers: rendered buckets by query shape and
/// bucket start, each under the tag `T` it was rendered from (the manifest
/// version for batch buckets, [`SpeedBucket`] for the others).
#[derive(Debug)]
pub struct BucketCache<T = u64> {
    inner: Mutex<Inner<T>>,
}

impl<T> Default for BucketCache<T> {
    fn default() -> Self {
        BucketCache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                bytes: 0,
                hits: 0,
                misses: 0,
            }),
        }
    }
}

#[derive(Debug)]
struct Inner<T> {
    /// Rendered bucket JSON and its tag by (query shape, bucket start).
    entries: HashMap<(Arc<str>, i64), (T, Arc<str>)>,
    /// Bytes of the rendered buckets held.
    bytes: usize,
    hits: u64,
    misses: u64,
}

/// What a speed or mixed bucket was rendered from: the manifest (its batch
/// part) and the speed windows it folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeedBucket {
    /// The loaded manifest's version.
    pub version: u64,
    /// Its boundary B (where the bucket's batch part ends).
    pub boundary: Option<i64>,
    /// The speed windows of the bucket's speed part.
    pub windows: lambda_speed::WindowsStamp,
}

impl<T: Copy + PartialEq> BucketCache<T> {
    /// The rendered bucket of `query` at `start` rendered under `tag`, if held.
    pub fn get(&self, tag: T, query: &Arc<str>, start: i64) -> Option<Arc<str>> {
        let mut inner = self.inner.lock();
        let hit = match inner.entries.get(&(Arc::clone(query), start)) {
            Some((held, rendered)) if *held == tag => Some(Arc::clone(rendered)),
            _ => None,
        };
        match hit {
            Some(_) => inner.hits += 1,
            None => inner.misses += 1,
        }
        hit
    }

    /// Keeps a rendered bucket under `tag`, replacing what the bucket held
    /// (rendered under another tag: never asked for again); one that would
    /// take the cache past either bound empties it first.
    pub fn put(&self, tag: T, query: &Arc<str>, start: i64, rendered: Arc<str>) {
        if rendered.len() > MAX_BUCKET_BYTES {
            return;
        }
        let mut inner = self.inner.lock();
        let key = (Arc::clone(query), start);
        if let Some((_, old)) = inner.entries.remove(&key) {
            inner.bytes -= old.len();
        }
        let size = rendered.len();
        if inner.entries.len() >= MAX_ENTRIES || inner.bytes + size > MAX_BUCKET_BYTES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.entries.insert(key, (tag, rendered));
        inner.bytes += size;
    }

    /// `(buckets, bytes)` held now.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.entries.len(), inner.bytes)
    }

    /// `(hits, misses)` so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.hits, inner.misses)
    }
}

/// Whole answers kept at most (distinct query shapes and ranges).
pub const MAX_ANSWERS: usize = 4096;
/// Bytes of answers kept at most, compressed forms included; past it the
/// answer cache starts over.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// What an answer was computed from: the batch views' manifest version and
/// boundary, and the speed state's [`ViewsStamp`]. The same stamp gives the
/// same answer, byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The loaded manifest's version.
    pub version: u64,
    /// Its boundary B.
    pub boundary: Option<i64>,
    /// The speed views'.
    pub speed: ViewsStamp,
}

/// One encoded answer and what its headers need.
#[derive(Debug)]
pub struct Answer {
    /// The JSON, as is.
    pub body: Bytes,
    /// Its boundary and watermark (headers).
    pub boundary: Option<i64>,
    /// The watermark.
    pub watermark: Option<i64>,
    /// The newest event time the speed layer had seen (the data-age header).
    pub newest: Option<i64>,
    gzip: OnceLock<Option<Bytes>>,
    zstd: OnceLock<Option<Bytes>>,
}

impl Answer {
    /// An answer of `body`.
    pub fn new(
        body: String,
        boundary: Option<i64>,
        watermark: Option<i64>,
        newest: Option<i64>,
    ) -> Answer {
        Answer {
            body: Bytes::from(body),
            boundary,
            watermark,
            newest,
            gzip: OnceLock::new(),
            zstd: OnceLock::new(),
        }
    }

    /// The body in `encoding`, compressed the first time it is asked for,
    /// and the coding it is really in (identity for a short body, or if
    /// compressing failed).
    pub fn encoded(&self, encoding: Encoding) -> (Encoding, Bytes) {
        let cell = match encoding {
            Encoding::Gzip => &self.gzip,
            Encoding::Zstd => &self.zstd,
            Encoding::Identity => return (Encoding::Identity, self.body.clone()),
        };
        if self.body.len() < MIN_COMPRESS_BYTES {
            return (Encoding::Identity, self.body.clone());
        }
        match cell.get_or_init(|| encoding.compress(&self.body).map(Bytes::from)) {
            Some(compressed) => (encoding, compressed.clone()),
            None => (Encoding::Identity, self.body.clone()),
        }
    }

    /// Bytes this answer may come to hold: its body and at most two
    /// compressed forms, each no longer than it (what the cache counts).
    fn weight(&self) -> usize {
        self.body.len().saturating_mul(3)
    }
}

/// A query apart from the views: its shape (endpoint, filters, step) and range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnswerKey {
    /// Endpoint, filters and step.
    pub shape: Arc<str>,
    /// Range start (floored to the step).
    pub from: i64,
    /// Range end.
    pub to: i64,
}

/// Whole encoded answers by query, each under the [`Stamp`] it was computed
/// from: a lookup under another stamp misses, so an answer is never staler
/// than the views. A dashboard polling the same query between two changes
/// of the views gets the same bytes (and the same compressed bytes) without
/// folding or rendering anything.
#[derive(Debug)]
pub struct AnswerCache {
    inner: Mutex<Answers>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Answers {
    entries: HashMap<AnswerKey, (Stamp, Arc<Answer>)>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl Default for AnswerCache {
    fn default() -> AnswerCache {
        AnswerCache::with_limits(MAX_ANSWERS, MAX_ANSWER_BYTES)
    }
}

impl AnswerCache {
    /// A cache holding at most `max_entries` answers and `max_bytes` bytes.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> AnswerCache {
        AnswerCache {
            inner: Mutex::default(),
            max_entries,
            max_bytes,
        }
    }

    /// The answer to `key` computed under `stamp`, if held.
    pub fn get(&self, key: &AnswerKey, stamp: &Stamp) -> Option<Arc<Answer>> {
        let mut inner = self.inner.lock();
        let hit = match inner.entries.get(key) {
            Some((held, answer)) if held == stamp => Some(Arc::clone(answer)),
            _ => None,
        };
        match hit {
            Some(_) => inner.hits += 1,
            None => inner.misses += 1,
        }
        hit
    }

    /// Keeps `answer` for `key` under `stamp`, replacing what the key held.
    /// An answer that alone passes the byte bound is not kept; one that
    /// would take the cache past either bound empties it first.
    pub fn put(&self, key: AnswerKey, stamp: Stamp, answer: Arc<Answer>) {
        let weight = answer.weight();
        if weight > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock();
        if let Some((_, old)) = inner.entries.remove(&key) {
            inner.bytes -= old.weight();
        }
        if inner.entries.len() >= self.max_entries || inner.bytes + weight > self.max_bytes {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += weight;
        inner.entries.insert(key, (stamp, answer));
    }

    /// `(hits, misses)` so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.hits, inner.misses)
    }

    /// `(answers, bytes)` held now.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.entries.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use lambda_speed::SpeedState;

    use super::*;

    fn key(from: i64) -> AnswerKey {
        AnswerKey {
            shape: Arc::from("funnel 1m None"),
            from,
            to: from + 60_000,
        }
    }

    fn answer(len: usize) -> Arc<Answer> {
        Arc::new(Answer::new("x".repeat(len), None, None, None))
    }

    fn stamp(state: &SpeedState, version: u64) -> Stamp {
        Stamp {
            version,
            boundary: None,
            speed: state.views_stamp(),
        }
    }

    #[test]
    fn an_answer_is_found_only_under_the_stamp_it_was_computed_from() {
        let cache = AnswerCache::default();
        let mut state = SpeedState::new(60_000, 3_600_000);
        let before = stamp(&state, 1);
        cache.put(key(0), before, answer(10));
        assert!(cache.get(&key(0), &before).is_some());
        assert!(cache.get(&key(60_000), &before).is_none(), "another range");
        assert!(
            cache.get(&key(0), &stamp(&state, 2)).is_none(),
            "a new manifest"
        );
        let click = lambda_events::Event::bare("e", lambda_events::EventType::Click, 1_000);
        state.apply(&click);
        assert_ne!(stamp(&state, 1), before, "a folded event changes the stamp");
        assert!(cache.get(&key(0), &stamp(&state, 1)).is_none());
        assert_eq!(cache.counts(), (1, 3));
    }

    #[test]
    fn the_bounds_hold_on_both_sides() {
        // Entries: the bound is reached, then the next one starts over.
        let cache = AnswerCache::with_limits(3, 1 << 20);
        let state = SpeedState::new(60_000, 3_600_000);
        let s = stamp(&state, 1);
        for i in 0..3 {
            cache.put(key(i), s, answer(10));
        }
        assert_eq!(cache.size(), (3, 90));
        cache.put(key(1), s, answer(20));
        assert_eq!(cache.size(), (3, 120), "replacing a key adds nothing");
        cache.put(key(3), s, answer(10));
        assert_eq!(cache.size(), (1, 30));
        // Bytes: exactly at the bound is kept; one byte over starts over.
        let cache = AnswerCache::with_limits(100, 300);
        cache.put(key(0), s, answer(50));
        cache.put(key(1), s, answer(50));
        assert_eq!(cache.size(), (2, 300));
        cache.put(key(2), s, answer(1));
        assert_eq!(cache.size(), (1, 3));
        // One answer past the bound alone is not kept at all.
        cache.put(key(3), s, answer(101));
        assert_eq!(cache.size(), (1, 3));
        assert!(cache.get(&key(3), &s).is_none());
        cache.put(key(3), s, answer(100));
        assert_eq!(
            cache.size(),
            (1, 300),
            "at the bound alone: kept, the rest let go"
        );
    }

    #[test]
    fn the_bucket_cache_is_bounded_by_bytes_as_well_as_entries() {
        let cache = BucketCache::default();
        let shape: Arc<str> = Arc::from("iot 1m None None");
        let big: Arc<str> = Arc::from("x".repeat(MAX_BUCKET_BYTES / 4));
        for start in 0..4 {
            cache.put(1, &shape, start, Arc::clone(&big));
        }
        assert_eq!(
            cache.size(),
            (4, MAX_BUCKET_BYTES),
            "exactly at the bound: kept"
        );
        cache.put(1, &shape, 2, Arc::clone(&big));
        assert_eq!(
            cache.size(),
            (4, MAX_BUCKET_BYTES),
            "the same bucket again adds nothing"
        );
        cache.put(1, &shape, 4, Arc::from("y"));
        assert_eq!(cache.size(), (1, 1), "one byte over: started over");
        assert!(cache.get(1, &shape, 4).is_some());
        assert!(cache.get(1, &shape, 0).is_none());
        // One bucket past the bound alone is not kept.
        cache.put(1, &shape, 5, Arc::from("z".repeat(MAX_BUCKET_BYTES + 1)));
        assert_eq!(cache.size(), (1, 1));
    }

    #[test]
    fn an_answer_is_compressed_once_per_coding_and_short_ones_not_at_all() {
        let long = Answer::new("{\"a\":1}".repeat(400), None, None, None);
        let (coding, first) = long.encoded(Encoding::Gzip);
        assert_eq!(coding, Encoding::Gzip);
        let (_, again) = long.encoded(Encoding::Gzip);
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "the same bytes, not compressed again"
        );
        assert_eq!(long.encoded(Encoding::Zstd).0, Encoding::Zstd);
        let short = Answer::new("x".repeat(MIN_COMPRESS_BYTES - 1), None, None, None);
        assert_eq!(short.encoded(Encoding::Zstd).0, Encoding::Identity);
        let edge = Answer::new("x".repeat(MIN_COMPRESS_BYTES), None, None, None);
        assert_eq!(edge.encoded(Encoding::Zstd).0, Encoding::Zstd);
    }
}
