//! The fast path of [`Event::from_json`](crate::Event::from_json): a
//! scanner made for one flat event object reads the bytes once, straight
//! into the [`EventRef`] they become — strings borrowed from the input, each
//! value checked against its bound as it is read, no `Value` tree, no map,
//! no allocation — and [`WireEvent::validate`] applies the rule of its type:
//! two bit masks.
//!
//! The fast path only ever says yes: on anything unusual — an escape in a
//! string, a `null`, a nested value, a syntax error, a key given twice, a
//! key it does not know, a value of another type, a bound crossed, a rule
//! broken — it gives up, and
//! [`Event::from_json_reference`](crate::Event::from_json_reference) (the
//! `Value`-based decoder, serde_json) decides and writes the error. So the
//! two cannot disagree on what is valid, and the error messages have one
//! source. `tests/decoder_properties.rs` checks that they agree on generated
//! events, near-events and arbitrary bytes; `fuzz/fuzz_targets/event_body.rs`
//! goes on from there.
//!
//! Numbers: an integer field (`ts`, `amount_cents`, an integer
//! `error_code`) takes JSON's integer form only, within `i64`; a number
//! field takes either form, read as serde_json reads it with
//! `float_roundtrip` (an integer converted, anything else correctly
//! rounded by `str::parse`, which is correctly rounded too). `-0` gives up
//! (serde_json reads it as the float `-0.0`, not an integer).
//!
//! [`TypedBaseline`] is the ceiling `lambda bench speed` measures our decoder
//! against: serde's derive into a borrowed struct, no rule applied.

use std::borrow::Cow;

use crate::event::{EventType, Field};
use crate::event_ref::EventRef;
use crate::limits::{
    MAX_ABS_VALUE, MAX_AMOUNT_CENTS, MAX_BATTERY_PCT, MAX_EVENT_ID_LEN, MAX_RENDER_MS,
    MAX_STRING_LEN, MAX_TS_MS,
};
use crate::packed::{NameTable, Packed};
use crate::{Device, DeviceStatus, Severity};

/// Why [`WireEvent::decode`] gave up (the reference decoder words the
/// error a client sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not UTF-8.
    #[error("not utf-8")]
    NotUtf8,
    /// Not one event object as the fast path reads it: what it met.
    #[error("the fast path does not read {0}")]
    Unread(&'static str),
}

type Step<T> = Result<T, DecodeError>;

fn give_up<T>(what: &'static str) -> Step<T> {
    Err(DecodeError::Unread(what))
}

/// A key of an event object.
#[derive(Clone, Copy)]
enum Key {
    EventId,
    EventType,
    Ts,
    Field(Field),
}

impl Key {
    /// The key's JSON name.
    const fn name(self) -> &'static str {
        match self {
            Key::EventId => "event_id",
            Key::EventType => "event_type",
            Key::Ts => "ts",
            Key::Field(field) => field.name(),
        }
    }
}

/// Every key, with the bit [`WireEvent::present`] marks it by, found by
/// the number its name packs to (see [`crate::packed`]).
const KEYS: NameTable<(Key, u32)> = {
    const COMMON: [(Key, u32); 3] = [
        (Key::EventId, EVENT_ID),
        (Key::EventType, EVENT_TYPE),
        (Key::Ts, TS),
    ];
    const N: usize = COMMON.len() + Field::ALL.len();
    let mut names = [("", (Key::Ts, TS)); N];
    let mut i = 0;
    while i < N {
        let entry = if i < COMMON.len() {
            COMMON[i]
        } else {
            let field = Field::ALL[i - COMMON.len()];
            (Key::Field(field), field.bit())
        };
        names[i] = (entry.0.name(), entry);
        i += 1;
    }
    NameTable::new(&names)
};

/// The labels of an enumerated field, found by the number their spelling
/// packs to.
macro_rules! labels_of {
    ($t:ty) => {{
        const N: usize = <$t>::ALL.len();
        let mut names = [("", <$t>::ALL[0]); N];
        let mut i = 0;
        while i < N {
            names[i] = (<$t>::ALL[i].as_str(), <$t>::ALL[i]);
            i += 1;
        }
        NameTable::new(&names)
    }};
}

const EVENT_TYPES: NameTable<EventType> = labels_of!(EventType);
const DEVICES: NameTable<Device> = labels_of!(Device);
const STATUSES: NameTable<DeviceStatus> = labels_of!(DeviceStatus);
const SEVERITIES: NameTable<Severity> = labels_of!(Severity);

/// Bits of `WireEvent::present` past the fields' own ([`Field::bit`]).
const EVENT_ID: u32 = 1 << 29;
const EVENT_TYPE: u32 = 1 << 30;
const TS: u32 = 1 << 31;

/// One event object as decoded: every value already checked on its own
/// (a string's length, a number's bound, a label's spelling), written
/// straight into the [`EventRef`] it becomes, and which keys were given.
/// [`WireEvent::validate`] then applies the rule of its type.
#[derive(Debug, Clone, PartialEq)]
pub struct WireEvent<'a> {
    event: EventRef<'a>,
    /// [`Field::bit`]s of the fields given, and `event_id`, `event_type`, `ts`.
    present: u32,
}

/// Where the scanner is in one object's text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON's whitespace and returns the byte after it.
    #[inline(always)]
    fn next_token(&mut self) -> Option<u8> {
        match self.peek() {
            // Every token's first byte is above a space, and no whitespace
            // is: one compare for the byte that is usually there.
            Some(byte) if byte > b' ' => Some(byte),
            _ => {
                while self
                    .peek()
                    .is_some_and(|b| crate::codec::is_json_whitespace(&b))
                {
                    self.at += 1;
                }
                self.peek()
            }
        }
    }

    /// Steps over `byte`, after whitespace.
    fn expect(&mut self, byte: u8, what: &'static str) -> Step<()> {
        if self.next_token() != Some(byte) {
            return give_up(what);
        }
        self.at += 1;
        Ok(())
    }

    /// A string (the cursor is on its opening quote): borrowed from the
    /// input, or unescaped into a `String` if it has an escape.
    #[inline(always)]
    fn string(&mut self) -> Step<Cow<'a, str>> {
        let start = self.at + 1;
        let end = self.plain_run(start);
        match self.text.as_bytes().get(end) {
            Some(b'"') => {
                self.at = end + 1;
                // Both ends are at ASCII bytes: on char boundaries.
                Ok(Cow::Borrowed(&self.text[start..end]))
            }
            Some(b'\\') => self.unescape(start, end).map(Cow::Owned),
            Some(_) => give_up("a control character in a string"),
            None => give_up("an unterminated string"),
        }
    }

    /// Where the run of bytes from `from` that are neither a quote, a
    /// backslash nor a control character ends (see [`plain_run`]).
    fn plain_run(&self, from: usize) -> usize {
        plain_run(self.text.as_bytes(), from)
    }

    /// The rest of a string from its first escape at `escape`, unescaped
    /// as JSON defines it (a lone surrogate gives up).
    fn unescape(&mut self, start: usize, mut escape: usize) -> Step<String> {
        let bytes = self.text.as_bytes();
        let mut out = String::with_capacity(escape - start + 16);
        out.push_str(&self.text[start..escape]);
        loop {
            let (c, len) = match bytes.get(escape + 1) {
                Some(b'"') => ('"', 2),
                Some(b'\\') => ('\\', 2),
                Some(b'/') => ('/', 2),
                Some(b'b') => ('\u{8}', 2),
                Some(b'f') => ('\u{c}', 2),
                Some(b'n') => ('\n', 2),
                Some(b'r') => ('\r', 2),
                Some(b't') => ('\t', 2),
                Some(b'u') => match self.hex4(escape + 2)? {
                    high @ 0xD800..=0xDBFF => {
                        if bytes.get(escape + 6..escape + 8) != Some(b"\\u") {
                            return give_up("a lone surrogate");
                        }
                        let low = self.hex4(escape + 8)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return give_up("a lone surrogate");
                        }
                        let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                        (
                            char::from_u32(code).map_or_else(|| give_up("a bad escape"), Ok)?,
                            12,
                        )
                    }
                    code => (
                        char::from_u32(code).map_or_else(|| give_up("a lone surrogate"), Ok)?,
                        6,
                    ),
                },
                _ => return give_up("a bad escape"),
            };
            out.push(c);
            let from = escape + len;
            let end = self.plain_run(from);
            out.push_str(&self.text[from..end]);
            match bytes.get(end) {
                Some(b'"') => {
                    self.at = end + 1;
                    return Ok(out);
                }
                Some(b'\\') => escape = end,
                Some(_) => return give_up("a control character in a string"),
                None => return give_up("an unterminated string"),
            }
        }
    }

    /// The four hex digits of a `\u` escape at `at`.
    fn hex4(&self, at: usize) -> Step<u32> {
        let digits = self
            .text
            .as_bytes()
            .get(at..at + 4)
            .map_or_else(|| give_up("a short \\u escape"), Ok)?;
        digits.iter().try_fold(0u32, |code, &digit| {
            let value = (digit as char)
                .to_digit(16)
                .map_or_else(|| give_up("a bad \\u escape"), Ok)?;
            Ok(code * 16 + value)
        })
    }

    /// A key, after whitespace, and its bit (see [`Cursor::packed_name`]).
    #[inline(always)]
    fn key(&mut self) -> Step<(Key, u32)> {
        self.packed_name()
            .and_then(|name| KEYS.get(name))
            .map_or_else(|| give_up("a key that is not a field"), Ok)
    }

    /// A string of at most 16 bytes with nothing escaped (a key, a label),
    /// after whitespace, read as the numbers its bytes pack to (see
    /// [`crate::packed`]): no string made, no name compared byte by byte.
    /// The sixteen bytes after the opening quote are read as two words and
    /// the first quote among them found at once; the bytes before it are
    /// the name. (A name holds no backslash or control character: a string
    /// with one matches none.) Near a line's end the bytes are scanned as a
    /// string's are. `None` if it is not such a string.
    #[inline(always)]
    fn packed_name(&mut self) -> Option<Packed> {
        if self.next_token() != Some(b'"') {
            return None;
        }
        let bytes = self.text.as_bytes();
        let start = self.at + 1;
        let name = match bytes.get(start..).and_then(<[u8]>::first_chunk::<16>) {
            Some(chunk) => {
                let (low, high) = chunk.split_at(8);
                let low = u64::from_le_bytes(low.try_into().ok()?);
                let high = u64::from_le_bytes(high.try_into().ok()?);
                let quotes = |half: u64| zero_bytes(half ^ (ONES * u64::from(b'"')));
                let (low_quotes, high_quotes) = (quotes(low), quotes(high));
                // The bytes of a word before its byte `at`.
                let before =
                    |word: u64, at: u32| word & u64::MAX.checked_shr(64 - 8 * at).unwrap_or(0);
                if low_quotes != 0 {
                    let at = low_quotes.trailing_zeros() / 8;
                    Packed {
                        low: before(low, at),
                        high: 0,
                        len: at as usize,
                    }
                } else if high_quotes != 0 {
                    let at = high_quotes.trailing_zeros() / 8;
                    Packed {
                        low,
                        high: before(high, at),
                        len: 8 + at as usize,
                    }
                } else {
                    return None;
                }
            }
            None => {
                let end = self.plain_run(start);
                if bytes.get(end) != Some(&b'"') || end - start > 16 {
                    return None;
                }
                Packed::of(&bytes[start..end])
            }
        };
        self.at = start + name.len + 1;
        Some(name)
    }

    /// A string value, after whitespace.
    #[inline(always)]
    fn text(&mut self) -> Step<Cow<'a, str>> {
        match self.next_token() {
            Some(b'"') => self.string(),
            _ => give_up("a value that is not a string"),
        }
    }

    /// A number as JSON writes it (its grammar checked, after whitespace):
    /// its text, and whether it is in integer form.
    fn number(&mut self) -> Step<(&'a str, bool)> {
        self.next_token();
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return give_up("a value that is not a number"),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Ok((&self.text[start..self.at], integer))
    }

    /// Steps over a run of digits: eight bytes at a time.
    fn digits(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(chunk) = bytes.get(self.at..).and_then(<[u8]>::first_chunk::<8>) {
            let others = non_digits(u64::from_le_bytes(*chunk));
            if others != 0 {
                self.at += (others.trailing_zeros() / 8) as usize;
                return;
            }
            self.at += 8;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Step<()> {
        let from = self.at;
        self.digits();
        if self.at == from {
            return give_up("a number without digits");
        }
        Ok(())
    }

    /// An integer in JSON's integer form within `i64`.
    fn integer(&mut self) -> Step<i64> {
        match self.short_number() {
            Some((Short::Integer(value), end)) => {
                self.at = end;
                return Ok(value);
            }
            Some((Short::Fraction(_), _)) => return give_up("a fraction where an integer goes"),
            None => {}
        }
        match self.number()? {
            (text, true) => integer(text),
            _ => give_up("a fraction where an integer goes"),
        }
    }

    /// A short number (after whitespace) read a word of digits at a time,
    /// and where it ends; `None` — the cursor not moved — for any other
    /// (see [`Short`]). What [`Cursor::number`] and then [`integer`] or
    /// [`exact_decimal`] make of it, without going over its bytes twice
    /// (`ts`, 13 digits, cost ~200 instructions that way).
    #[inline]
    fn short_number(&mut self) -> Option<(Short, usize)> {
        self.next_token();
        let bytes = self.text.as_bytes();
        let (negative, start) = match bytes.get(self.at) {
            Some(b'-') => (true, self.at + 1),
            _ => (false, self.at),
        };
        // JSON's grammar: a digit first, and no leading zero before another.
        let (whole_digits, whole) = digit_word(bytes, start)?;
        if whole_digits == 0 || (whole_digits > 1 && bytes[start] == b'0') {
            return None;
        }
        let (whole_digits, whole) = if whole_digits < 8 {
            (whole_digits, whole)
        } else {
            let (more, rest) = digit_word(bytes, start + 8)?;
            if more == 8 {
                return None;
            }
            (8 + more, whole * POWERS_OF_TEN[more] + rest)
        };
        let mut end = start + whole_digits;
        let short = match bytes.get(end) {
            Some(b'.') => {
                let (fraction_digits, fraction) = digit_word(bytes, end + 1)?;
                if fraction_digits == 0
                    || fraction_digits == 8
                    || whole_digits + fraction_digits > 15
                {
                    return None;
                }
                end += 1 + fraction_digits;
                let mantissa = whole * POWERS_OF_TEN[fraction_digits] + fraction;
                Short::Fraction(scaled(negative, mantissa, fraction_digits)?)
            }
            _ if negative && whole == 0 => return None,
            // At most 15 digits: within i64.
            _ => Short::Integer(if negative {
                -(whole as i64)
            } else {
                whole as i64
            }),
        };
        if let Some(b'e' | b'E') = bytes.get(end) {
            return None;
        }
        Some((short, end))
    }

    /// A number within `low..=high`.
    fn float(&mut self, low: f64, high: f64) -> Step<f64> {
        if let Some((short, end)) = self.short_number() {
            let value = match short {
                // As serde_json reads an integer into an f64: converted
                // (exactly, below 2^53).
                Short::Integer(value) => value as f64,
                Short::Fraction(value) => value,
            };
            if !(value.is_finite() && (low..=high).contains(&value)) {
                return give_up("a number out of bounds");
            }
            self.at = end;
            return Ok(value + 0.0);
        }
        let value = match self.number()? {
            // As serde_json reads an integer into an f64: converted.
            (text, true) => integer(text)? as f64,
            (text, false) => match exact_decimal(text) {
                Some(value) => value,
                None => text
                    .parse::<f64>()
                    .or_else(|_| give_up("a number it cannot read"))?,
            },
        };
        if !(value.is_finite() && (low..=high).contains(&value)) {
            return give_up("a number out of bounds");
        }
        // -0.0 is read as 0.0, as the reference does (see `number_field`).
        Ok(value + 0.0)
    }

    /// A string field's value: 1..=[`MAX_STRING_LEN`] bytes.
    fn bounded(&mut self) -> Step<Cow<'a, str>> {
        bounded(self.text()?)
    }

    /// An enumerated string field's value: one of `labels`, read as a
    /// number (a label spelled with escapes is unescaped first).
    fn label<T: Copy>(&mut self, labels: &NameTable<T>) -> Step<T> {
        let from = self.at;
        if let Some(label) = self.packed_name().and_then(|name| labels.get(name)) {
            return Ok(label);
        }
        self.at = from;
        let text = self.text()?;
        labels
            .get(Packed::of(text.as_bytes()))
            .map_or_else(|| give_up("not one of the labels"), Ok)
    }
}

/// A word of eight bytes each 1: the word-at-a-time tests of
/// [`plain_run`], [`Cursor::packed_name`] and [`non_digits`].
const ONES: u64 = 0x0101_0101_0101_0101;

/// The high bit of `word`'s zero bytes, exactly for the lowest (a borrow
/// only runs upwards), which is the only one the callers read.
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & (ONES << 7)
}

/// Where the run of bytes of `bytes` from `from` that are neither a quote,
/// a backslash nor a control character ends: eight bytes at a time. What
/// a JSON string may hold as is; the canonical writer
/// ([`EventRef::write_json`]) checks its strings with it too.
pub(crate) fn plain_run(bytes: &[u8], from: usize) -> usize {
    let mut end = from;
    while let Some(chunk) = bytes.get(end..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*chunk);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        // `word - 0x20 * ONES & !word` sets the high bit of its bytes
        // below 0x20, as `zero_bytes` of its zero bytes (exact for the
        // lowest such byte, the only one that counts).
        let special = zero_bytes(quote)
            | zero_bytes(backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word & (ONES << 7));
        if special != 0 {
            return end + (special.trailing_zeros() / 8) as usize;
        }
        end += 8;
    }
    while let Some(&byte) = bytes.get(end) {
        if byte == b'"' || byte == b'\\' || byte < 0x20 {
            break;
        }
        end += 1;
    }
    end
}

/// The high bit of each byte of `word` that is not an ASCII digit, exactly
/// for the lowest (the only one the caller reads): a byte is a digit when
/// it is at most 9 once `'0'` is taken off it. (Adding `0x76` carries out
/// of a byte only above `0x89`, a byte whose high bit is set already, and a
/// carry runs upwards, past the lowest such byte.)
fn non_digits(word: u64) -> u64 {
    let offset = word ^ (ONES * u64::from(b'0'));
    (offset.wrapping_add(ONES * 0x76) | offset) & (ONES << 7)
}

/// What [`Cursor::short_number`] reads: an integer of at most 15 digits,
/// or a fraction of at most 15 digits (at most 7 after the point) with no
/// exponent.
enum Short {
    Integer(i64),
    Fraction(f64),
}

/// Powers of ten up to 10^8.
const POWERS_OF_TEN: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// The run of digits starting at `at` within the eight bytes there: how
/// many (8: the run may go on) and their value; `None` if fewer than eight
/// bytes are left.
fn digit_word(bytes: &[u8], at: usize) -> Option<(usize, u64)> {
    let word = u64::from_le_bytes(*bytes.get(at..)?.first_chunk::<8>()?);
    let others = non_digits(word);
    let digits = if others == 0 {
        8
    } else {
        (others.trailing_zeros() / 8) as usize
    };
    if digits == 0 {
        return Some((0, 0));
    }
    // The digits moved to the word's top (its last bytes), '0's before
    // them: the same number, eight digits' worth.
    let shifted = word << (8 * (8 - digits));
    let zeros = (ONES * u64::from(b'0'))
        .checked_shr(8 * digits as u32)
        .unwrap_or(0);
    Some((digits, eight_digits((shifted | zeros).to_le_bytes())))
}

/// Powers of ten a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A decimal fraction's text (JSON's grammar checked, not in integer form)
/// as the nearest double, when that takes one division: no exponent, at
/// most 15 digits. Its digits make an integer below 10^15 < 2^53 and its
/// scale a power of ten below 10^16, both held exactly by a double, so
/// IEEE division rounds their quotient correctly — the nearest double, as
/// `str::parse` gives (Clinger's fast path). `None` for anything else.
fn exact_decimal(text: &str) -> Option<f64> {
    let (negative, unsigned) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    if unsigned.len() > 16 {
        return None;
    }
    let mut mantissa = 0u64;
    let mut scale = None;
    for (i, &byte) in unsigned.iter().enumerate() {
        match byte {
            b'0'..=b'9' => mantissa = mantissa * 10 + u64::from(byte - b'0'),
            b'.' => scale = Some(unsigned.len() - i - 1),
            _ => return None,
        }
    }
    scaled(negative, mantissa, scale?)
}

/// `mantissa / 10^scale`, negated if `negative`, for a mantissa below
/// 10^15 < 2^53 and a scale of at most 15: both held exactly by a double,
/// so one IEEE division gives the nearest double to the decimal, as
/// `str::parse` does (Clinger's fast path). `None` past those bounds.
fn scaled(negative: bool, mantissa: u64, scale: usize) -> Option<f64> {
    if mantissa >= 1_000_000_000_000_000 {
        return None;
    }
    let magnitude = mantissa as f64 / *EXACT_POWERS_OF_TEN.get(scale)?;
    Some(if negative { -magnitude } else { magnitude })
}

/// Eight ASCII digits (checked already), the first the most significant,
/// as their number: pairs, then fours, then all eight combined in one word
/// (three multiplies instead of eight).
fn eight_digits(digits: [u8; 8]) -> u64 {
    let mut word = u64::from_le_bytes(digits) - 0x3030_3030_3030_3030;
    word = (word * 10 + (word >> 8)) & 0x00FF_00FF_00FF_00FF;
    word = (word * 100 + (word >> 16)) & 0x0000_FFFF_0000_FFFF;
    (word * 10_000 + (word >> 32)) & 0xFFFF_FFFF
}

/// An integer's text (JSON's integer form, its grammar checked) as an
/// `i64`; `-0` is not one.
fn integer(text: &str) -> Step<i64> {
    let (negative, digits) = match text.as_bytes() {
        [b'-', b'0'] => return give_up("-0"),
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    // Up to 18 digits stay below 10^18 < i64::MAX: accumulated without a
    // check per digit (`ts` has 13; a checked multiply a digit was a tenth
    // of the decoder's time).
    if digits.len() <= 18 {
        let mut magnitude = 0u64;
        let mut rest = digits;
        while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
            magnitude = magnitude * 100_000_000 + eight_digits(*eight);
            rest = tail;
        }
        for &digit in rest {
            magnitude = magnitude * 10 + u64::from(digit - b'0');
        }
        let value = i64::try_from(magnitude).map_or_else(|_| give_up("beyond i64"), Ok)?;
        return Ok(if negative { -value } else { value });
    }
    // Accumulated negative: i64::MIN has no positive twin.
    let mut value: i64 = 0;
    for &digit in digits {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(digit - b'0')))
            .map_or_else(|| give_up("an integer beyond i64"), Ok)?;
    }
    match negative {
        true => Ok(value),
        false => value
            .checked_neg()
            .map_or_else(|| give_up("an integer beyond i64"), Ok),
    }
}

fn bounded(text: Cow<'_, str>) -> Step<Cow<'_, str>> {
    if text.is_empty() || text.len() > MAX_STRING_LEN {
        return give_up("a string out of bounds");
    }
    Ok(text)
}

impl<'a> WireEvent<'a> {
    /// Decodes one JSON object (nothing but whitespace after it). The bytes
    /// are checked as UTF-8 once, whole.
    pub fn decode(bytes: &'a [u8]) -> Result<WireEvent<'a>, DecodeError> {
        let mut event = EventRef::slot();
        let present = WireEvent::decode_into(bytes, &mut event)?;
        Ok(WireEvent { event, present })
    }

    /// [`WireEvent::decode`] written into `event` (which must come in
    /// bare: only the fields given are set) with its rule applied: whether
    /// the event is valid. What the fold calls: an event is ~0.45 KB, and
    /// moving it from the decoder through `Result`s and `Option`s into the
    /// fold's buffer was ~6 % of the speed layer's time. (`false` leaves
    /// `event` half written.)
    pub fn decode_valid_into(bytes: &'a [u8], event: &mut EventRef<'a>) -> bool {
        WireEvent::decode_into(bytes, event)
            .is_ok_and(|present| WireEvent::follows_rule(event.event_type, present))
    }

    /// Decodes into `event`; the [`Field::bit`]s of the keys given.
    fn decode_into(bytes: &'a [u8], event: &mut EventRef<'a>) -> Result<u32, DecodeError> {
        let text = simdutf8::basic::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        let mut cursor = Cursor { text, at: 0 };
        let c = &mut cursor;
        c.expect(b'{', "a value that is not an object")?;
        let mut present = 0u32;
        if c.next_token() == Some(b'}') {
            c.at += 1;
        } else {
            loop {
                let (key, bit) = c.key()?;
                if present & bit != 0 {
                    return give_up("a key given twice");
                }
                present |= bit;
                c.expect(b':', "a key without a value")?;
                read_value(c, key, event)?;
                match c.next_token() {
                    Some(b',') => c.at += 1,
                    Some(b'}') => {
                        c.at += 1;
                        break;
                    }
                    _ => return give_up("a member not followed by , or }"),
                }
            }
        }
        if c.next_token().is_some() {
            return give_up("more after the object");
        }
        Ok(present)
    }

    /// The event, if it has `event_id`, `event_type` and `ts` and the
    /// fields its type's rule requires and allows, exactly as
    /// [`Event::from_json_reference`](crate::Event::from_json_reference)
    /// would accept it; `None` for anything else (the caller then asks the
    /// reference decoder, which also says why).
    #[inline]
    pub fn validate(self) -> Option<EventRef<'a>> {
        WireEvent::follows_rule(self.event.event_type, self.present).then_some(self.event)
    }

    /// Whether keys `present` make a whole event of `event_type`.
    fn follows_rule(event_type: EventType, present: u32) -> bool {
        let common = EVENT_ID | EVENT_TYPE | TS;
        let (required, allowed) = event_type.masks();
        let fields = present & !common;
        let complete = present & common == common;
        complete && fields & !allowed == 0 && required & !fields == 0
    }
}

/// Reads the value of `key` into `e`, checked against its bound.
fn read_value<'a>(c: &mut Cursor<'a>, key: Key, e: &mut EventRef<'a>) -> Step<()> {
    match key {
        Key::EventId => {
            let id = c.text()?;
            if id.is_empty() || id.len() > MAX_EVENT_ID_LEN {
                return give_up("an event_id out of bounds");
            }
            e.event_id = id;
        }
        Key::EventType => e.event_type = c.label(&EVENT_TYPES)?,
        Key::Ts => {
            // Integer milliseconds, or an RFC 3339 string.
            let ms = match c.next_token() {
                Some(b'"') => crate::time::rfc3339_millis(&c.string()?)
                    .map_or_else(|_| give_up("not a time"), Ok)?,
                _ => c.integer()?,
            };
            if !(0..=MAX_TS_MS).contains(&ms) {
                return give_up("a ts out of bounds");
            }
            e.ts = ms;
        }
        Key::Field(Field::UserId) => e.user_id = Some(c.bounded()?),
        Key::Field(Field::SessionId) => e.session_id = Some(c.bounded()?),
        Key::Field(Field::Device) => e.device = Some(c.label(&DEVICES)?),
        Key::Field(Field::Page) => e.page = Some(c.bounded()?),
        Key::Field(Field::RenderMs) => e.render_ms = Some(c.float(0.0, MAX_RENDER_MS)?),
        Key::Field(Field::CampaignId) => e.campaign_id = Some(c.bounded()?),
        Key::Field(Field::ProductId) => e.product_id = Some(c.bounded()?),
        Key::Field(Field::AmountCents) => {
            let cents = c.integer()?;
            if !(0..=MAX_AMOUNT_CENTS).contains(&cents) {
                return give_up("an amount out of bounds");
            }
            e.amount_cents = Some(cents);
        }
        Key::Field(Field::ErrorCode) => {
            // A string, or an integer written as one.
            e.error_code = Some(match c.next_token() {
                Some(b'"') => bounded(c.string()?)?,
                _ => Cow::Owned(c.integer()?.to_string()),
            });
        }
        Key::Field(Field::DeviceId) => e.device_id = Some(c.bounded()?),
        Key::Field(Field::Sensor) => e.sensor = Some(c.bounded()?),
        Key::Field(Field::Value) => e.value = Some(c.float(-MAX_ABS_VALUE, MAX_ABS_VALUE)?),
        Key::Field(Field::Unit) => e.unit = Some(c.bounded()?),
        Key::Field(Field::Status) => e.status = Some(c.label(&STATUSES)?),
        Key::Field(Field::BatteryPct) => e.battery_pct = Some(c.float(0.0, MAX_BATTERY_PCT)?),
        Key::Field(Field::Alarm) => e.alarm = Some(c.bounded()?),
        Key::Field(Field::Severity) => e.severity = Some(c.label(&SEVERITIES)?),
        Key::Field(Field::Message) => e.message = Some(c.bounded()?),
    }
    Ok(())
}

/// What serde's derive makes of the same object: every field typed and
/// borrowed, no rule applied, unknown keys ignored — the least work a Rust
/// program does to read an event with serde_json, and so the ceiling
/// `lambda bench speed` measures our decoder and the speed layer against.
/// (Generated events only: a number where it expects a string fails it.)
#[derive(Debug, serde::Deserialize)]
pub struct TypedBaseline<'a> {
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    pub ts: i64,
    #[serde(borrow, default)]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub device: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub page: Option<Cow<'a, str>>,
    #[serde(default)]
    pub render_ms: Option<f64>,
    #[serde(borrow, default)]
    pub campaign_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub product_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(borrow, default)]
    pub error_code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub device_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub sensor: Option<Cow<'a, str>>,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(borrow, default)]
    pub unit: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub status: Option<Cow<'a, str>>,
    #[serde(default)]
    pub battery_pct: Option<f64>,
    #[serde(borrow, default)]
    pub alarm: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub severity: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub message: Option<Cow<'a, str>>,
}

impl<'a> TypedBaseline<'a> {
    /// `serde_json::from_slice`, as a program that has bytes would call it.
    pub fn decode(bytes: &'a [u8]) -> Result<TypedBaseline<'a>, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Integers to both ends of `i64` and one past each; `-0` is left to
    /// the reference (serde_json reads it as a float).
    #[test]
    fn integers_reach_both_ends_of_i64_and_not_past() {
        for (text, expected) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-12", Some(-12)),
            ("12345678", Some(12_345_678)),
            ("1796547464632", Some(1_796_547_464_632)),
            ("90000000", Some(90_000_000)),
            ("-9876543210987654", Some(-9_876_543_210_987_654)),
            // 18 digits (read without a check per digit) and 19 (with).
            ("999999999999999999", Some(999_999_999_999_999_999)),
            ("-999999999999999999", Some(-999_999_999_999_999_999)),
            ("1000000000000000000", Some(1_000_000_000_000_000_000)),
            ("-1000000000000000000", Some(-1_000_000_000_000_000_000)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("99999999999999999999", None),
            ("-0", None),
        ] {
            assert_eq!(integer(text).ok(), expected, "{text}");
        }
        // Every length, every digit in every place: as `str::parse` reads them.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let n = (seed >> 1) as i64 >> (seed % 63);
            for text in [n.to_string(), (-n).to_string()] {
                assert_eq!(integer(&text).ok(), text.parse::<i64>().ok(), "{text}");
            }
        }
    }

    /// Every key is read as itself wherever its closing quote falls (in
    /// the first word, the second, or a line's last bytes); a name one
    /// byte short or long, an escape, or sixteen bytes without a quote are
    /// not keys.
    #[test]
    fn keys_are_read_by_their_packed_bytes_and_nothing_else_is() {
        let keys = [Key::EventId, Key::EventType, Key::Ts]
            .into_iter()
            .chain(Field::ALL.iter().map(|f| Key::Field(*f)));
        let read = |text: &str| {
            let mut cursor = Cursor { text, at: 0 };
            cursor.key().map(|(k, _)| (k.name(), cursor.at)).ok()
        };
        for key in keys {
            let name = key.name();
            for tail in ["", ":1}", ":\"a long value after it\"}"] {
                let text = format!(" \"{name}\"{tail}");
                assert_eq!(read(&text), Some((name, name.len() + 3)), "{text}");
            }
            let short = &name[..name.len() - 1];
            for text in [
                format!("\"{short}\":1, \"padding\": 2}}"),
                format!("\"{name}x\":1, \"padding\": 2}}"),
                format!("\"{short}\\u{:04x}\":1}}", name.as_bytes()[name.len() - 1]),
                format!("\"{name}\u{0}\":1, \"padding\": 2}}"),
            ] {
                assert_eq!(read(&text), None, "{text}");
            }
        }
        assert_eq!(read("\"abcdefghijklmnop\":1, \"padding\": 2}"), None);
        assert_eq!(read("\"\":1, \"padding\": 2}"), None);
        assert_eq!(read("\"ts"), None);
    }

    /// Every label of every enumerated field is read as itself, in a word,
    /// at a line's end or spelled with an escape; a label of another field
    /// or one byte short or long is not.
    #[test]
    fn labels_are_read_by_their_packed_bytes_and_nothing_else_is() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(
            table: &NameTable<T>,
            all: &[T],
            name: fn(T) -> &'static str,
            other: &str,
        ) {
            let read = |text: &str| {
                let mut cursor = Cursor { text, at: 0 };
                cursor.label(table).ok().map(|label| (label, cursor.at))
            };
            for &label in all {
                let spelled = name(label);
                for tail in ["", "}", ",\"a long key after it\":1}"] {
                    let text = format!("\"{spelled}\"{tail}");
                    assert_eq!(read(&text), Some((label, spelled.len() + 2)), "{text}");
                }
                let short = &spelled[..spelled.len() - 1];
                for text in [
                    format!("\"{short}\",\"padding\":1}}"),
                    format!("\"{spelled}s\",\"padding\":1}}"),
                ] {
                    assert_eq!(read(&text), None, "{text}");
                }
                // Escaped, it is unescaped first.
                let escaped = format!(
                    "\"{short}\\u{:04x}\"}}",
                    spelled.as_bytes()[spelled.len() - 1]
                );
                assert_eq!(read(&escaped).map(|(l, _)| l), Some(label), "{escaped}");
            }
            assert_eq!(read(&format!("\"{other}\",\"padding\":1}}")), None);
            assert_eq!(read("1}"), None);
        }
        check(&EVENT_TYPES, EventType::ALL, EventType::as_str, "mobile");
        check(&DEVICES, Device::ALL, Device::as_str, "page_view");
        check(&STATUSES, DeviceStatus::ALL, DeviceStatus::as_str, "low");
        check(&SEVERITIES, Severity::ALL, Severity::as_str, "online");
    }

    /// The word-at-a-time digit test finds the lowest byte that is not a
    /// digit, whatever byte it is and wherever it falls, with digits or
    /// anything above it.
    #[test]
    fn the_first_byte_that_is_not_a_digit_is_found_in_a_word() {
        for position in 0..8 {
            for byte in 0..=255u8 {
                for above in [b'7', 0xFF, 0x00, b'.'] {
                    let mut word = [b'5'; 8];
                    word[position] = byte;
                    for later in word.iter_mut().skip(position + 1) {
                        *later = above;
                    }
                    let expected = word.iter().position(|b| !b.is_ascii_digit());
                    let found = non_digits(u64::from_le_bytes(word));
                    let first = (found != 0).then(|| (found.trailing_zeros() / 8) as usize);
                    assert_eq!(first, expected, "{word:?}");
                }
            }
        }
        let mut cursor = Cursor {
            text: "12345678901234567890123,",
            at: 0,
        };
        cursor.digits();
        assert_eq!(cursor.at, 23);
    }

    /// Numbers read a word at a time are read as `str::parse` reads them,
    /// and what the word-at-a-time reader leaves (17 digits and more, an
    /// exponent, a line's last bytes, `-0`, a leading zero) goes the long
    /// way to the same answer or to giving up.
    #[test]
    fn numbers_read_a_word_at_a_time_are_read_as_str_parse_reads_them() {
        let mut seed = 0x0123_4567_89AB_CDEFu64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1442695040888963407);
            seed
        };
        let mut texts = vec![
            "0",
            "-0",
            "00",
            "01",
            "-01",
            "0.0",
            "-0.0",
            "1.",
            "1.e5",
            "1e5",
            "1E5",
            "1.5e3",
            "12345678",
            "123456789",
            "1234567890123456",
            "12345678901234567",
            "9223372036854775807",
            "-9223372036854775808",
            "0.1234567",
            "0.12345678",
            "12345678.1234567",
            "1234567.12345678",
            "123456789012345.1",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        for _ in 0..20_000 {
            let r = next();
            let whole = (r >> 4) % 10u64.pow(1 + (r % 17) as u32);
            let sign = if r & 1 == 1 { "-" } else { "" };
            let text = match (r >> 60) % 3 {
                0 => format!("{sign}{whole}"),
                1 => {
                    let digits = 1 + (next() % 9) as usize;
                    let fraction = next() % 10u64.pow(digits as u32);
                    format!("{sign}{whole}.{fraction:0digits$}")
                }
                _ => format!("{sign}{whole}.{}e{}", next() % 1000, next() % 20),
            };
            texts.push(text);
        }
        // `read` at the start of `line` (`text` and a tail) against what
        // serde_json reads of `text`.
        fn check<T: PartialEq + std::fmt::Debug>(
            line: &str,
            text: &str,
            read: impl FnOnce(&mut Cursor<'_>) -> Step<T>,
            reference: Option<T>,
        ) {
            let mut cursor = Cursor { text: line, at: 0 };
            match read(&mut cursor) {
                Ok(value) if cursor.at == text.len() => {
                    assert_eq!(Some(value), reference, "{line}");
                }
                // A number read short of the text (`00`): the next token
                // is not `,` or `}`, and the line is refused.
                Ok(_) => assert!(reference.is_none(), "{line}"),
                // Giving up is allowed only where the reference decides
                // apart: `-0`, which it reads as a float.
                Err(_) => assert!(reference.is_none() || text == "-0", "{line}"),
            }
        }
        for text in texts {
            for tail in [",\"padding_padding\":1}", "}"] {
                let line = format!("{text}{tail}");
                let value = || serde_json::from_str::<serde_json::Value>(&text).ok();
                check(
                    &line,
                    &text,
                    |c| c.float(-1e300, 1e300),
                    value().and_then(|v| v.as_f64()).map(|r| r + 0.0),
                );
                check(
                    &line,
                    &text,
                    |c| c.integer(),
                    value().and_then(|v| v.as_i64()),
                );
            }
        }
    }

    /// A decimal fraction of up to 15 digits is read as `str::parse` reads
    /// it; an exponent, 16 digits or an integer are left to it.
    #[test]
    fn short_decimal_fractions_are_read_as_str_parse_reads_them() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..50_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let digits = 1 + (seed >> 60) as usize % 15;
            let mantissa = (seed >> 8) % 10u64.pow(digits as u32);
            let text = format!("{mantissa:0digits$}");
            let point = 1 + (seed >> 4) as usize % digits.max(2).min(digits);
            let (whole, fraction) = text.split_at(point.min(digits - 1).max(1));
            for sign in ["", "-"] {
                let decimal = format!("{sign}{whole}.{fraction}");
                if fraction.is_empty() {
                    continue;
                }
                let read = exact_decimal(&decimal);
                assert_eq!(read, decimal.parse::<f64>().ok(), "{decimal}");
            }
        }
        for text in [
            "0.1",
            "1010.86",
            "317.0",
            "-0.5",
            "999999999999.999",
            "0.00000000000001",
        ] {
            assert_eq!(exact_decimal(text), text.parse::<f64>().ok(), "{text}");
        }
        for text in [
            "1.0e3",
            "1E-2",
            "1234567890.123456",
            "0.000000000000001",
            "12",
            "-7",
        ] {
            assert_eq!(exact_decimal(text), None, "{text}");
        }
    }

    /// The word-at-a-time run finds the first quote, backslash or control
    /// byte wherever it falls in a word, and passes every other byte
    /// (multi-byte UTF-8 included).
    #[test]
    fn a_plain_run_ends_at_the_first_special_byte_wherever_it_falls() {
        let naive = |text: &str, from: usize| {
            text.as_bytes()[from..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(text.len(), |i| from + i)
        };
        let fillers = ["a", " ", "~", "\u{7f}", "é", "€", "😀"];
        let specials = ["\"", "\\", "\u{0}", "\u{1f}", "\n"];
        for filler in fillers {
            for len in 0..20 {
                let plain = filler.repeat(len);
                for from in [0, filler.len().min(plain.len())] {
                    let cursor = Cursor {
                        text: &plain,
                        at: 0,
                    };
                    assert_eq!(cursor.plain_run(from), plain.len(), "{plain:?}");
                    for special in specials {
                        for later in ["", "\"", "\u{1}"] {
                            let text = format!("{plain}{special}{filler}{later}");
                            let cursor = Cursor { text: &text, at: 0 };
                            assert_eq!(cursor.plain_run(from), naive(&text, from), "{text:?}");
                        }
                    }
                }
            }
        }
    }
}
