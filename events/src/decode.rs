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

/// A key's name as one number: its bytes little-endian, zero-padded to 16
/// bytes (no key is longer). Two names of the same length differ exactly
/// when their numbers do (a name ending in zero bytes packs as a shorter
/// one: the reader compares lengths too).
const fn packed(name: &[u8]) -> u128 {
    let mut word = 0u128;
    let mut i = 0;
    while i < name.len() && i < 16 {
        word |= (name[i] as u128) << (8 * i);
        i += 1;
    }
    word
}

/// [`Key::from_packed`]: each key's number a constant of its own (a
/// `match` on them is a few compares in a tree, no call per name), taken
/// from the names [`Key::name`] spells.
macro_rules! keys_by_number {
    ($($konst:ident => $key:expr),+ $(,)?) => {
        impl Key {
            /// The key whose name packs to `word` (see [`packed`]).
            fn from_packed(word: u128) -> Option<Key> {
                $(const $konst: u128 = packed($key.name().as_bytes());)+
                match word {
                    $($konst => Some($key),)+
                    _ => None,
                }
            }
        }
    };
}

keys_by_number!(
    EVENT_ID_KEY => Key::EventId,
    EVENT_TYPE_KEY => Key::EventType,
    TS_KEY => Key::Ts,
    USER_ID_KEY => Key::Field(Field::UserId),
    SESSION_ID_KEY => Key::Field(Field::SessionId),
    DEVICE_KEY => Key::Field(Field::Device),
    PAGE_KEY => Key::Field(Field::Page),
    RENDER_MS_KEY => Key::Field(Field::RenderMs),
    CAMPAIGN_ID_KEY => Key::Field(Field::CampaignId),
    PRODUCT_ID_KEY => Key::Field(Field::ProductId),
    AMOUNT_CENTS_KEY => Key::Field(Field::AmountCents),
    ERROR_CODE_KEY => Key::Field(Field::ErrorCode),
    DEVICE_ID_KEY => Key::Field(Field::DeviceId),
    SENSOR_KEY => Key::Field(Field::Sensor),
    VALUE_KEY => Key::Field(Field::Value),
    UNIT_KEY => Key::Field(Field::Unit),
    STATUS_KEY => Key::Field(Field::Status),
    BATTERY_PCT_KEY => Key::Field(Field::BatteryPct),
    ALARM_KEY => Key::Field(Field::Alarm),
    SEVERITY_KEY => Key::Field(Field::Severity),
    MESSAGE_KEY => Key::Field(Field::Message),
);

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
    fn next_token(&mut self) -> Option<u8> {
        while self
            .peek()
            .is_some_and(|b| crate::codec::is_json_whitespace(&b))
        {
            self.at += 1;
        }
        self.peek()
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

    /// A key, after whitespace, read as the number its bytes pack to (see
    /// [`packed`]): no string made, no name compared byte by byte. The
    /// sixteen bytes after the opening quote are read as two words and the
    /// first quote among them found at once; the bytes before it are a key
    /// only if they pack to one and are as long as its name (a name holds
    /// no backslash or control character, so nothing else needs checking).
    /// Near a line's end the bytes are scanned as a string's are.
    fn key(&mut self) -> Step<Key> {
        if self.next_token() != Some(b'"') {
            return give_up("a key that is not a string");
        }
        let bytes = self.text.as_bytes();
        let start = self.at + 1;
        let (len, word) = match bytes.get(start..).and_then(<[u8]>::first_chunk::<16>) {
            Some(chunk) => {
                let word = u128::from_le_bytes(*chunk);
                let quotes = |half: u64| zero_bytes(half ^ (ONES * u64::from(b'"')));
                let (low, high) = (quotes(word as u64), quotes((word >> 64) as u64));
                let len = if low != 0 {
                    low.trailing_zeros() / 8
                } else if high != 0 {
                    8 + high.trailing_zeros() / 8
                } else {
                    return give_up("a key that is not a field");
                };
                let mask = u128::MAX.checked_shr(8 * (16 - len)).unwrap_or(0);
                (len as usize, word & mask)
            }
            None => {
                let end = self.plain_run(start);
                if bytes.get(end) != Some(&b'"') {
                    return give_up("a key that is not a field");
                }
                (end - start, packed(&bytes[start..end]))
            }
        };
        // Zero bytes pack as padding does: the length tells them apart.
        let key = Key::from_packed(word)
            .filter(|key| key.name().len() == len)
            .map_or_else(|| give_up("a key that is not a field"), Ok)?;
        self.at = start + len + 1;
        Ok(key)
    }

    /// A string value, after whitespace.
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

    fn digits(&mut self) {
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
        match self.number()? {
            (text, true) => integer(text),
            _ => give_up("a fraction where an integer goes"),
        }
    }

    /// A number within `low..=high`.
    fn float(&mut self, low: f64, high: f64) -> Step<f64> {
        let value = match self.number()? {
            // As serde_json reads an integer into an f64: converted.
            (text, true) => integer(text)? as f64,
            (text, false) => text
                .parse::<f64>()
                .or_else(|_| give_up("a number it cannot read"))?,
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

    /// An enumerated string field's value.
    fn label<T>(&mut self, parse: fn(&str) -> Option<T>) -> Step<T> {
        parse(&self.text()?).map_or_else(|| give_up("not one of the labels"), Ok)
    }
}

/// A word of eight bytes each 1: the word-at-a-time tests of
/// [`plain_run`] and [`Cursor::key`].
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
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        let mut cursor = Cursor { text, at: 0 };
        let c = &mut cursor;
        c.expect(b'{', "a value that is not an object")?;
        let mut present = 0u32;
        if c.next_token() == Some(b'}') {
            c.at += 1;
        } else {
            loop {
                let key = c.key()?;
                let bit = match key {
                    Key::EventId => EVENT_ID,
                    Key::EventType => EVENT_TYPE,
                    Key::Ts => TS,
                    Key::Field(field) => field.bit(),
                };
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
        let (required, allowed) = event_type.rule().masks();
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
        Key::EventType => e.event_type = c.label(EventType::parse)?,
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
        Key::Field(Field::Device) => e.device = Some(c.label(Device::parse)?),
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
        Key::Field(Field::Status) => e.status = Some(c.label(DeviceStatus::parse)?),
        Key::Field(Field::BatteryPct) => e.battery_pct = Some(c.float(0.0, MAX_BATTERY_PCT)?),
        Key::Field(Field::Alarm) => e.alarm = Some(c.bounded()?),
        Key::Field(Field::Severity) => e.severity = Some(c.label(Severity::parse)?),
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
            cursor.key().map(|k| (k.name(), cursor.at)).ok()
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
