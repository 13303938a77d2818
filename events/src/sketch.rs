//! Mergeable sketches shared by both layers: [`Hll`] for distinct counts and
//! [`DdSketch`] for quantiles. Both are order-independent — the same set of
//! inputs gives the same sketch whatever the arrival order or the split into
//! parts — so the speed layer's sketch of a bucket and the batch layer's are
//! byte-for-byte equal, and serving merges them across the boundary B.
//!
//! Both serialize to a compact binary form ([`Hll::to_bytes`],
//! [`DdSketch::to_bytes`]): the batch layer stores it in its Parquet views,
//! checkpoints and speed snapshots carry it base64-encoded in JSON.
//!
//! **Why DDSketch for quantiles**: its guarantee is a *relative* error on the
//! value (every quantile within ±1% here), which is what render times need —
//! a 40 ms and a 4 s page both come out within 1% — and its merge is exact
//! (bin counts add), so merging many minute buckets into an hour adds no
//! error, unlike t-digest whose merge depends on order. KLL's guarantee is on
//! the *rank*, which for a long-tailed latency says little about p99's value.
//! Size: one bin per 2% of value range — about 550 bins from 1 ms to 60 s,
//! stored sparsely.
//!
//! **HyperLogLog**: 2^12 registers, standard error 1.04/√4096 ≈ 1.6%, with
//! linear counting for small cardinalities (exact in practice below a few
//! hundred) and a sparse form while few registers are set.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A stable 64-bit hash of bytes: FNV-1a, then MurmurHash3's 64-bit finalizer
/// for avalanche. Stable across processes, platforms and versions (the batch
/// layer's stored sketches depend on it).
#[inline]
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Why bytes are not a sketch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} sketch: {reason}")]
pub struct SketchError {
    kind: &'static str,
    reason: String,
}

fn bad(kind: &'static str, reason: impl Into<String>) -> SketchError {
    SketchError {
        kind,
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------- HyperLogLog

/// Register index bits.
pub const HLL_PRECISION: u32 = 12;
const HLL_M: usize = 1 << HLL_PRECISION;
/// Beyond this many set registers the sparse form turns dense. A sparse
/// register takes about 8 bytes (a B-tree's nodes of 11, most part
/// full): 256 of them are about half the dense form's 4 KB. (At 1 024 the
/// sparse form was larger than the dense one, and each of a busy bucket's
/// events walked a B-tree a level deeper: 1.7 % of `lambda bench speed`'s
/// live loop. Only the memory form changes: [`Hll::to_bytes`] writes the
/// same bytes either way.)
const HLL_SPARSE_MAX: usize = HLL_M / 16;
const HLL_FORMAT: u8 = 1;

/// A HyperLogLog distinct-count sketch.
#[derive(Clone, Default)]
pub struct Hll {
    /// Sparse: set registers by index, while few are set.
    sparse: BTreeMap<u16, u8>,
    /// Dense: every register, once many are set.
    dense: Option<Box<[u8]>>,
}

impl Hll {
    /// An empty sketch.
    pub fn new() -> Hll {
        Hll::default()
    }

    /// Adds one item.
    #[inline]
    pub fn add(&mut self, item: &[u8]) {
        let h = hash64(item);
        let index = (h >> (64 - HLL_PRECISION)) as u16;
        // Rank of the first set bit in the remaining bits (1-based), capped.
        let rest = (h << HLL_PRECISION) | (1 << (HLL_PRECISION - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        self.set_max(index, rank);
    }

    fn set_max(&mut self, index: u16, rank: u8) {
        match &mut self.dense {
            Some(registers) => {
                let r = &mut registers[index as usize];
                *r = (*r).max(rank);
            }
            None => {
                let r = self.sparse.entry(index).or_insert(0);
                *r = (*r).max(rank);
                if self.sparse.len() > HLL_SPARSE_MAX {
                    self.densify();
                }
            }
        }
    }

    fn densify(&mut self) {
        let mut registers = vec![0u8; HLL_M].into_boxed_slice();
        for (i, r) in std::mem::take(&mut self.sparse) {
            registers[i as usize] = r;
        }
        self.dense = Some(registers);
    }

    /// Merges another sketch in (the union of the two sets).
    pub fn merge(&mut self, other: &Hll) {
        match &other.dense {
            Some(registers) => {
                if self.dense.is_none() {
                    self.densify();
                }
                let mine = self.dense.as_mut().expect("dense");
                for (a, b) in mine.iter_mut().zip(registers.iter()) {
                    *a = (*a).max(*b);
                }
            }
            None => {
                for (i, r) in &other.sparse {
                    self.set_max(*i, *r);
                }
            }
        }
    }

    fn registers(&self) -> Vec<u8> {
        match &self.dense {
            Some(registers) => registers.to_vec(),
            None => {
                let mut registers = vec![0u8; HLL_M];
                for (i, r) in &self.sparse {
                    registers[*i as usize] = *r;
                }
                registers
            }
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.sparse.is_empty()
            && self
                .dense
                .as_ref()
                .is_none_or(|d| d.iter().all(|r| *r == 0))
    }

    /// The estimated number of distinct items.
    pub fn estimate(&self) -> u64 {
        let m = HLL_M as f64;
        let (mut sum, mut zeros) = (0.0, 0usize);
        match &self.dense {
            Some(registers) => {
                for r in registers.iter() {
                    sum += inverse_power_of_two(*r);
                    zeros += usize::from(*r == 0);
                }
            }
            None => {
                zeros = HLL_M - self.sparse.len();
                sum = zeros as f64;
                for r in self.sparse.values() {
                    sum += inverse_power_of_two(*r);
                }
            }
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// The binary form: format, precision, then the set registers as
    /// `(index u16 LE, rank u8)` when sparse is smaller, else all registers.
    pub fn to_bytes(&self) -> Vec<u8> {
        let registers = self.registers();
        let set: Vec<(usize, u8)> = registers
            .iter()
            .enumerate()
            .filter(|(_, r)| **r > 0)
            .map(|(i, r)| (i, *r))
            .collect();
        let mut out = vec![HLL_FORMAT, HLL_PRECISION as u8];
        if set.len() * 3 < HLL_M {
            out.push(0);
            for (i, r) in set {
                out.extend_from_slice(&(i as u16).to_le_bytes());
                out.push(r);
            }
        } else {
            out.push(1);
            out.extend_from_slice(&registers);
        }
        out
    }

    /// Reads [`Hll::to_bytes`]'s form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Hll, SketchError> {
        let kind = "hll";
        match bytes {
            [HLL_FORMAT, p, form, rest @ ..] if u32::from(*p) == HLL_PRECISION => {
                let mut hll = Hll::new();
                match form {
                    0 if rest.len() % 3 == 0 => {
                        for chunk in rest.chunks(3) {
                            let index = u16::from_le_bytes([chunk[0], chunk[1]]);
                            if index as usize >= HLL_M || chunk[2] > 64 {
                                return Err(bad(kind, "register out of range"));
                            }
                            hll.set_max(index, chunk[2]);
                        }
                    }
                    1 if rest.len() == HLL_M => {
                        // As the sparse form's (a register of 255 made one
                        // click count u64::MAX users: a hostile run).
                        if rest.iter().any(|r| *r > 64) {
                            return Err(bad(kind, "register out of range"));
                        }
                        hll.dense = Some(rest.to_vec().into_boxed_slice());
                    }
                    _ => return Err(bad(kind, "bad length")),
                }
                Ok(hll)
            }
            _ => Err(bad(kind, "unknown format or precision")),
        }
    }
}

impl PartialEq for Hll {
    fn eq(&self, other: &Hll) -> bool {
        self.registers() == other.registers()
    }
}

impl fmt::Debug for Hll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hll(~{})", self.estimate())
    }
}

/// `2^-r`, exactly, by building the float's exponent (a register's rank is
/// at most 64, far inside the normal range): the estimate sums one per
/// register, and this is several times cheaper than `powi`.
fn inverse_power_of_two(r: u8) -> f64 {
    f64::from_bits((1023 - u64::from(r)) << 52)
}

// ---------------------------------------------------------------- DDSketch

/// The relative accuracy of [`DdSketch`]: every quantile within ±1% of a true value.
pub const DD_RELATIVE_ACCURACY: f64 = 0.01;
const DD_FORMAT: u8 = 1;
/// Values at or below this count as zero.
const DD_MIN_INDEXABLE: f64 = 1e-9;

fn dd_gamma() -> f64 {
    (1.0 + DD_RELATIVE_ACCURACY) / (1.0 - DD_RELATIVE_ACCURACY)
}

/// A DDSketch of non-negative values (relative accuracy [`DD_RELATIVE_ACCURACY`]).
#[derive(Clone, Default, PartialEq)]
pub struct DdSketch {
    bins: BTreeMap<i32, u64>,
    zeros: u64,
    count: u64,
    min: f64,
    max: f64,
}

impl DdSketch {
    /// An empty sketch.
    pub fn new() -> DdSketch {
        DdSketch::default()
    }

    fn index(value: f64) -> i32 {
        (value.ln() / dd_gamma().ln()).ceil() as i32
    }

    fn value_of(index: i32) -> f64 {
        let gamma = dd_gamma();
        2.0 * gamma.powi(index) / (gamma + 1.0)
    }

    /// Adds one value (negative values and NaN are ignored: render times are ≥ 0).
    #[inline]
    pub fn add(&mut self, value: f64) {
        if !(value >= 0.0) || !value.is_finite() {
            return;
        }
        // Saturating: a sketch restored from outside may stand at the top.
        if value <= DD_MIN_INDEXABLE {
            self.zeros = self.zeros.saturating_add(1);
        } else {
            let bin = self.bins.entry(Self::index(value)).or_default();
            *bin = bin.saturating_add(1);
        }
        if self.count == 0 {
            (self.min, self.max) = (value, value);
        } else {
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count = self.count.saturating_add(1);
    }

    /// Merges another sketch in (exactly: bin counts add).
    pub fn merge(&mut self, other: &DdSketch) {
        if other.count == 0 {
            return;
        }
        for (i, n) in &other.bins {
            let bin = self.bins.entry(*i).or_default();
            *bin = bin.saturating_add(*n);
        }
        if self.count == 0 {
            (self.min, self.max) = (other.min, other.max);
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.zeros = self.zeros.saturating_add(other.zeros);
        self.count = self.count.saturating_add(other.count);
    }

    /// Values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), within the relative accuracy; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return Some(0.0);
        }
        let mut seen = self.zeros;
        for (i, n) in &self.bins {
            seen = seen.saturating_add(*n);
            if seen > rank {
                // Not `clamp`: it panics where min > max or either is
                // NaN, which a sketch merged from outside may hold.
                return Some(Self::value_of(*i).max(self.min).min(self.max));
            }
        }
        Some(self.max)
    }

    /// The binary form: format, count, zeros, min, max, bins as (index i32 LE, count u64 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33 + self.bins.len() * 12);
        out.push(DD_FORMAT);
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.zeros.to_le_bytes());
        out.extend_from_slice(&self.min.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        for (i, n) in &self.bins {
            out.extend_from_slice(&i.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Reads [`DdSketch::to_bytes`]'s form.
    pub fn from_bytes(bytes: &[u8]) -> Result<DdSketch, SketchError> {
        let kind = "ddsketch";
        if bytes.len() < 33 || bytes[0] != DD_FORMAT || (bytes.len() - 33) % 12 != 0 {
            return Err(bad(kind, "unknown format or bad length"));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let f64_at = |at: usize| f64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let mut sketch = DdSketch {
            count: u64_at(1),
            zeros: u64_at(9),
            min: f64_at(17),
            max: f64_at(25),
            bins: BTreeMap::new(),
        };
        for chunk in bytes[33..].chunks(12) {
            let index = i32::from_le_bytes(chunk[..4].try_into().expect("4 bytes"));
            let n = u64::from_le_bytes(chunk[4..].try_into().expect("8 bytes"));
            sketch.bins.insert(index, n);
        }
        // Outside input (a checkpoint, a remote instance's snapshot): the
        // sum is checked (a bin of 2^64 - 1 overflowed it: a hostile run).
        let binned = sketch
            .bins
            .values()
            .try_fold(sketch.zeros, |sum, n| sum.checked_add(*n));
        if binned != Some(sketch.count) {
            return Err(bad(kind, "bin counts do not add up to the count"));
        }
        // Render times: finite, not negative, min at most max (min > max
        // or a NaN panicked every quantile read off it: a hostile run).
        let (min, max) = (sketch.min, sketch.max);
        if sketch.count > 0 && !(min >= 0.0 && min <= max && max.is_finite()) {
            return Err(bad(kind, "min and max are not 0 <= min <= max, finite"));
        }
        Ok(sketch)
    }
}

impl fmt::Debug for DdSketch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DdSketch(n={}, p50={:?}, p99={:?})",
            self.count,
            self.quantile(0.5),
            self.quantile(0.99)
        )
    }
}

// ---------------------------------------------------------------- JSON

macro_rules! base64_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&BASE64.encode(self.to_bytes()))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                let text = String::deserialize(d)?;
                let bytes = BASE64.decode(text).map_err(serde::de::Error::custom)?;
                <$ty>::from_bytes(&bytes).map_err(serde::de::Error::custom)
            }
        }
    };
}

base64_serde!(Hll);
base64_serde!(DdSketch);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_powers_of_two_are_exact() {
        for r in 0..=64u8 {
            assert_eq!(inverse_power_of_two(r), 2f64.powi(-i32::from(r)), "{r}");
        }
    }

    #[test]
    fn hll_is_exact_for_small_sets_and_within_its_bound_for_large_ones() {
        for n in [0u64, 1, 10, 100, 500] {
            let mut hll = Hll::new();
            for i in 0..n {
                hll.add(format!("user-{i}").as_bytes());
                hll.add(format!("user-{i}").as_bytes()); // repeats do not count
            }
            let e = hll.estimate();
            assert!(e.abs_diff(n) <= n / 100 + 1, "n={n} estimate={e}");
        }
        for n in [10_000u64, 100_000, 1_000_000] {
            let mut hll = Hll::new();
            for i in 0..n {
                hll.add(format!("user-{i}").as_bytes());
            }
            let e = hll.estimate() as f64;
            let error = (e - n as f64).abs() / n as f64;
            // 3 standard errors of 1.04/sqrt(4096).
            assert!(error < 0.049, "n={n} estimate={e} error={error}");
        }
    }

    #[test]
    fn hll_merge_is_the_union_whatever_the_split() {
        let mut whole = Hll::new();
        let mut parts = [Hll::new(), Hll::new(), Hll::new()];
        for i in 0..20_000 {
            let item = format!("u{i}");
            whole.add(item.as_bytes());
            parts[i % 3].add(item.as_bytes());
            parts[(i + 1) % 3].add(item.as_bytes()); // overlaps
        }
        let mut merged = Hll::new();
        for p in &parts {
            merged.merge(p);
        }
        assert_eq!(merged, whole);
        assert_eq!(merged.to_bytes(), whole.to_bytes());
        // A sparse and a dense sketch of one set are equal and round-trip.
        let mut small = Hll::new();
        small.add(b"a");
        let mut dense = small.clone();
        dense.densify();
        assert_eq!(small, dense);
        for hll in [&small, &whole] {
            assert_eq!(&Hll::from_bytes(&hll.to_bytes()).unwrap(), hll);
        }
        assert!(Hll::from_bytes(&[9, 9]).is_err());
        // Dense registers: 64 is the most one holds; 65 is refused.
        for (top, fine) in [(64u8, true), (65, false)] {
            let mut dense = vec![HLL_FORMAT, HLL_PRECISION as u8, 1];
            dense.extend(std::iter::repeat_n(0u8, HLL_M - 1));
            dense.push(top);
            assert_eq!(Hll::from_bytes(&dense).is_ok(), fine, "{top}");
        }
    }

    #[test]
    fn ddsketch_quantiles_are_within_the_relative_accuracy() {
        // A long-tailed set: log-normal-ish render times from 1 ms to 60 s.
        let values: Vec<f64> = (0..50_000)
            .map(|i| {
                let u = (i as f64 + 0.5) / 50_000.0;
                (u * 11.0).exp()
            })
            .collect();
        let mut sketch = DdSketch::new();
        for v in &values {
            sketch.add(*v);
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let got = sketch.quantile(q).unwrap();
            let error = (got - exact).abs() / exact;
            assert!(
                error <= DD_RELATIVE_ACCURACY + 1e-12,
                "q={q}: {got} vs {exact}"
            );
        }
        assert_eq!(sketch.count(), 50_000);
        assert_eq!(DdSketch::new().quantile(0.5), None);
    }

    #[test]
    fn ddsketch_merge_is_exact_and_round_trips() {
        let mut whole = DdSketch::new();
        let mut a = DdSketch::new();
        let mut b = DdSketch::new();
        for i in 0..10_000 {
            let v = (i % 977) as f64 * 3.7;
            whole.add(v);
            if i % 2 == 0 { a.add(v) } else { b.add(v) }
        }
        let mut merged = b.clone();
        merged.merge(&a);
        assert_eq!(merged, whole);
        let back = DdSketch::from_bytes(&whole.to_bytes()).unwrap();
        assert_eq!(back, whole);
        let json = serde_json::to_string(&whole).unwrap();
        assert_eq!(serde_json::from_str::<DdSketch>(&json).unwrap(), whole);
        assert!(DdSketch::from_bytes(&[1, 2, 3]).is_err());
    }

    /// A sketch from outside (a remote instance's snapshot, a damaged
    /// checkpoint) whose counts overflow, or whose min and max are not
    /// render times, is refused; merged ones at the top of u64 answer
    /// quantiles (each panicked: a hostile run).
    #[test]
    fn sketches_from_outside_are_checked_and_extreme_ones_answer() {
        let bytes = |count: u64, zeros: u64, min: f64, max: f64, bins: &[(i32, u64)]| {
            let mut out = vec![DD_FORMAT];
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&zeros.to_le_bytes());
            out.extend_from_slice(&min.to_le_bytes());
            out.extend_from_slice(&max.to_le_bytes());
            for (i, n) in bins {
                out.extend_from_slice(&i.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
            out
        };
        // Counts adding up to u64::MAX exactly: taken; one more: refused.
        let top = bytes(u64::MAX, 1, 0.0, 5.0, &[(1, u64::MAX - 1)]);
        let top = DdSketch::from_bytes(&top).unwrap();
        let over = bytes(5, 0, 0.0, 5.0, &[(1, u64::MAX), (2, 6)]);
        assert!(DdSketch::from_bytes(&over).is_err());
        for (min, max) in [
            (10.0, 1.0),
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
            (-1.0, 1.0),
        ] {
            let odd = bytes(1, 0, min, max, &[(100, 1)]);
            assert!(DdSketch::from_bytes(&odd).is_err(), "{min} {max}");
        }
        let fine = DdSketch::from_bytes(&bytes(1, 0, 1.0, 1.0, &[(0, 1)])).unwrap();
        assert_eq!(fine.quantile(0.5), Some(1.0));
        // Merged past u64::MAX: saturated, and every quantile answers.
        let mut sum = top.clone();
        sum.merge(&top);
        sum.add(3.0);
        assert_eq!(sum.count(), u64::MAX);
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert!(
                sum.quantile(q).is_some_and(|v| (0.0..=5.0).contains(&v)),
                "{q}"
            );
        }
    }

    #[test]
    fn the_hash_is_stable() {
        // Stored sketches depend on these values never changing.
        // Pinned values (computed independently of this code).
        assert_eq!(hash64(b""), 0xefd0_1f60_ba99_2926);
        let a = hash64(b"user-1");
        assert_eq!(a, 0x41a2_fca5_c684_01c5);
        assert_ne!(a, hash64(b"user-2"));
    }
}
