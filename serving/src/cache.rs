//! Rendered batch buckets. A bucket that ends at or before the boundary B is
//! answered by the batch views alone, and those do not change until the next
//! manifest: its JSON is rendered once per query shape and manifest version,
//! and later answers only copy it. Speed and mixed buckets are always
//! computed afresh, so the cache never makes an answer staler.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Entries kept at most; past it the cache starts over (a query shape
/// that many buckets long is not worth more memory).
pub const MAX_ENTRIES: usize = 200_000;

/// The cache, shared by the handlers.
#[derive(Debug, Default)]
pub struct BucketCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The manifest version the entries belong to.
    version: u64,
    /// Rendered bucket JSON by (query shape, bucket start).
    entries: HashMap<(Arc<str>, i64), Arc<str>>,
    hits: u64,
    misses: u64,
}

impl BucketCache {
    /// The rendered bucket of `query` at `start` under manifest `version`, if held.
    pub fn get(&self, version: u64, query: &Arc<str>, start: i64) -> Option<Arc<str>> {
        let mut inner = self.inner.lock();
        let hit = if inner.version == version {
            inner.entries.get(&(Arc::clone(query), start)).cloned()
        } else {
            None
        };
        match hit {
            Some(_) => inner.hits += 1,
            None => inner.misses += 1,
        }
        hit
    }

    /// Keeps a rendered bucket; entries of another version are dropped first.
    pub fn put(&self, version: u64, query: &Arc<str>, start: i64, rendered: Arc<str>) {
        let mut inner = self.inner.lock();
        if inner.version != version || inner.entries.len() >= MAX_ENTRIES {
            inner.entries.clear();
            inner.version = version;
        }
        inner.entries.insert((Arc::clone(query), start), rendered);
    }

    /// `(hits, misses)` so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.hits, inner.misses)
    }
}
