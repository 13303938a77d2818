//! Short names read as numbers: what the decoder uses to tell an event's
//! keys and labels (`"event_type"`, `"page_view"`, `"mobile"`) apart without
//! making a string or comparing one byte by byte.
//!
//! A name of up to 16 bytes packs into one `u128` ([`packed`]); a
//! [`NameTable`] maps the packed names it was built from to their values
//! with one multiply, one load and one compare. Its multiplier is searched
//! for at compile time, from the names themselves: a table whose names
//! would share a slot does not compile.

/// A name's bytes little-endian, zero-padded to 16 bytes (no name a table
/// holds is longer). Two names of the same length differ exactly when
/// their numbers do (a name ending in zero bytes packs as a shorter one:
/// [`Packed`] keeps the length too).
const fn packed(name: &[u8]) -> u128 {
    let mut word = 0u128;
    let mut i = 0;
    while i < name.len() && i < 16 {
        word |= (name[i] as u128) << (8 * i);
        i += 1;
    }
    word
}

/// Slots of a [`NameTable`] (a power of two: the slot is the top bits of
/// a product). Three times the most names a table holds (21 keys), so a
/// multiplier that spreads them is found in a few tries.
const SLOTS: usize = 64;

/// The bits of the product that pick a slot.
const SLOT_BITS: u32 = SLOTS.trailing_zeros();

/// A packed name as the decoder reads it: its first eight bytes, the
/// next eight (zero-padded), and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packed {
    pub(crate) low: u64,
    pub(crate) high: u64,
    pub(crate) len: usize,
}

impl Packed {
    /// `name` packed (see [`packed`]).
    pub(crate) const fn of(name: &[u8]) -> Packed {
        let word = packed(name);
        Packed {
            low: word as u64,
            high: (word >> 64) as u64,
            len: name.len(),
        }
    }

    /// Its slot under `multiplier`: both halves hashed (no two names of a
    /// table need differ in their first eight bytes).
    #[inline(always)]
    const fn slot(&self, multiplier: u64) -> usize {
        let folded = self.low ^ self.high.rotate_left(31);
        (folded.wrapping_mul(multiplier) >> (64 - SLOT_BITS)) as usize
    }
}

/// Short names (at most 16 bytes) and their values, found by the number
/// their bytes pack to.
#[derive(Debug)]
pub(crate) struct NameTable<T: Copy + 'static> {
    multiplier: u64,
    /// Each name, packed, and its value, in the name's slot.
    slots: [Option<(Packed, T)>; SLOTS],
}

impl<T: Copy + 'static> NameTable<T> {
    /// The table of `names` (evaluated at compile time: a name over 16
    /// bytes, a name given twice or names no multiplier tried spreads fail
    /// the build).
    pub(crate) const fn new(names: &[(&str, T)]) -> NameTable<T> {
        assert!(names.len() <= SLOTS / 2, "too many names for one table");
        // Odd multipliers from a fixed sequence (splitmix64's): the first
        // that gives every name a slot of its own.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut tries = 0;
        while tries < 10_000 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut mixed = state;
            mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let multiplier = (mixed ^ (mixed >> 31)) | 1;
            if let Some(table) = NameTable::try_with(names, multiplier) {
                return table;
            }
            tries += 1;
        }
        panic!("no multiplier gives these names a slot each");
    }

    /// The table of `names` under `multiplier`, if no two share a slot.
    const fn try_with(names: &[(&str, T)], multiplier: u64) -> Option<NameTable<T>> {
        let mut slots: [Option<(Packed, T)>; SLOTS] = [None; SLOTS];
        let mut i = 0;
        while i < names.len() {
            let (name, value) = names[i];
            assert!(
                !name.is_empty() && name.len() <= 16,
                "a name of 1 to 16 bytes"
            );
            let name = Packed::of(name.as_bytes());
            let slot = name.slot(multiplier);
            if slots[slot].is_some() {
                // Taken (by another name, or by this one given twice: then
                // every multiplier fails, and the build with it).
                return None;
            }
            slots[slot] = Some((name, value));
            i += 1;
        }
        Some(NameTable { multiplier, slots })
    }

    /// The value of the name `name` (its length compared too).
    #[inline(always)]
    pub(crate) fn get(&self, name: Packed) -> Option<T> {
        match self.slots[name.slot(self.multiplier)] {
            Some((held, value)) if held == name => Some(value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name is found with its length; a name that packs the same but
    /// is longer (zero bytes at its end), a prefix, an extension, a name of
    /// another table and the empty name are not.
    #[test]
    fn a_table_finds_its_names_and_nothing_else() {
        const TABLE: NameTable<u8> = NameTable::new(&[
            ("ts", 1),
            ("event_id", 2),
            ("event_type", 3),
            ("signup_complete", 4),
            ("sixteen_bytes_ab", 5),
        ]);
        for (name, value) in [
            ("ts", 1),
            ("event_id", 2),
            ("event_type", 3),
            ("signup_complete", 4),
            ("sixteen_bytes_ab", 5),
        ] {
            assert_eq!(
                TABLE.get(Packed::of(name.as_bytes())),
                Some(value),
                "{name}"
            );
        }
        for name in [
            "t",
            "tss",
            "event_i",
            "event_idd",
            "event_typ",
            "signup_complet",
            "sixteen_bytes_a",
            "page_view",
            "",
        ] {
            assert_eq!(TABLE.get(Packed::of(name.as_bytes())), None, "{name}");
        }
        // "ts" followed by zero bytes packs as "ts" does: its length differs.
        let ts = Packed::of(b"ts");
        assert_eq!(TABLE.get(Packed { len: 3, ..ts }), None);
        assert_eq!(TABLE.get(Packed::of(b"ts\0\0")), None);
    }
}
