//! The fast path of [`Event::from_json`](crate::Event::from_json): serde_json
//! decodes one object straight into the [`EventRef`] it becomes (strings
//! borrowed from the input where they have no escapes, each value checked
//! against its bound as it is read, no `Value` tree, no map), and
//! [`WireEvent::validate`] applies the rule of its type: two bit masks.
//!
//! The fast path only ever says yes: on anything unusual — a syntax error, a
//! `null`, a key given twice, a key it does not know, a value of another
//! type, a bound crossed, a rule broken — it gives up, and
//! [`Event::from_json_reference`](crate::Event::from_json_reference) (the `Value`-based decoder) decides and
//! writes the error. So the two cannot disagree on what is valid, and the
//! error messages have one source. `tests/decoder_properties.rs` checks that
//! they agree on generated events, near-events and arbitrary bytes.
//!
//! [`TypedBaseline`] is the ceiling `lambda bench speed` measures our decoder
//! against: serde's derive into a borrowed struct, no rule applied.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::event::{EventType, Field};
use crate::event_ref::EventRef;
use crate::limits::{
    MAX_ABS_VALUE, MAX_AMOUNT_CENTS, MAX_BATTERY_PCT, MAX_EVENT_ID_LEN, MAX_RENDER_MS,
    MAX_STRING_LEN, MAX_TS_MS,
};
use crate::{Device, DeviceStatus, Severity};

/// A JSON string, borrowed from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// Why [`WireEvent::decode`] gave up (the reference decoder words the
/// error a client sees).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not UTF-8.
    #[error("not utf-8")]
    NotUtf8,
    /// Not one event object as the fast path reads it.
    #[error(transparent)]
    Json(serde_json::Error),
}

/// `ts` as given: integer milliseconds or an RFC 3339 string.
struct Ts(i64);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Ts, D::Error> {
        deserializer
            .deserialize_any(IntOrText)
            .and_then(|value| match value {
                IntOrTextValue::Int(ms) => Ok(Ts(ms)),
                IntOrTextValue::Text(text) => crate::time::rfc3339_millis(&text)
                    .map(Ts)
                    .map_err(|_| de::Error::custom("not a time")),
            })
    }
}

/// An `error_code`: a string, or an integer written as one.
struct ErrorCode<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for ErrorCode<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(ErrorCode(
            match deserializer.deserialize_any(IntOrText)? {
                IntOrTextValue::Int(code) => Cow::Owned(code.to_string()),
                IntOrTextValue::Text(text) => text,
            },
        ))
    }
}

enum IntOrTextValue<'a> {
    Int(i64),
    Text(Cow<'a, str>),
}

struct IntOrText;

impl<'de> Visitor<'de> for IntOrText {
    type Value = IntOrTextValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(IntOrTextValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        i64::try_from(v)
            .map(IntOrTextValue::Int)
            .map_err(|_| E::custom("integer beyond i64"))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(IntOrTextValue::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(IntOrTextValue::Text(Cow::Owned(v.to_owned())))
    }
}

/// A key of an event object.
#[derive(Clone, Copy)]
enum Key {
    EventId,
    EventType,
    Ts,
    Field(Field),
}

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

impl<'de> Deserialize<'de> for WireEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = WireEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireEvent<'de>, A::Error> {
        let mut event = EventRef::bare(Cow::Borrowed(""), EventType::Click, 0);
        let mut present = 0u32;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let key = match key.as_ref() {
                "event_id" => Key::EventId,
                "event_type" => Key::EventType,
                "ts" => Key::Ts,
                name => Key::Field(
                    Field::from_name(name)
                        .ok_or_else(|| de::Error::custom("a key that is not a field"))?,
                ),
            };
            let bit = match key {
                Key::EventId => EVENT_ID,
                Key::EventType => EVENT_TYPE,
                Key::Ts => TS,
                Key::Field(field) => field.bit(),
            };
            if present & bit != 0 {
                return Err(de::Error::custom("a key given twice"));
            }
            present |= bit;
            let e = &mut event;
            match key {
                Key::EventId => {
                    let Text(id) = map.next_value()?;
                    if id.is_empty() || id.len() > MAX_EVENT_ID_LEN {
                        return Err(de::Error::custom("an event_id out of bounds"));
                    }
                    e.event_id = id;
                }
                Key::EventType => e.event_type = label(&mut map, EventType::parse)?,
                Key::Ts => {
                    let Ts(ms) = map.next_value()?;
                    if !(0..=MAX_TS_MS).contains(&ms) {
                        return Err(de::Error::custom("a ts out of bounds"));
                    }
                    e.ts = ms;
                }
                Key::Field(Field::UserId) => e.user_id = Some(text(&mut map)?),
                Key::Field(Field::SessionId) => e.session_id = Some(text(&mut map)?),
                Key::Field(Field::Device) => e.device = Some(label(&mut map, Device::parse)?),
                Key::Field(Field::Page) => e.page = Some(text(&mut map)?),
                Key::Field(Field::RenderMs) => {
                    e.render_ms = Some(float(&mut map, 0.0, MAX_RENDER_MS)?)
                }
                Key::Field(Field::CampaignId) => e.campaign_id = Some(text(&mut map)?),
                Key::Field(Field::ProductId) => e.product_id = Some(text(&mut map)?),
                Key::Field(Field::AmountCents) => {
                    let cents: i64 = map.next_value()?;
                    if !(0..=MAX_AMOUNT_CENTS).contains(&cents) {
                        return Err(de::Error::custom("an amount out of bounds"));
                    }
                    e.amount_cents = Some(cents);
                }
                Key::Field(Field::ErrorCode) => {
                    let ErrorCode(code) = map.next_value()?;
                    e.error_code = Some(bounded(code)?);
                }
                Key::Field(Field::DeviceId) => e.device_id = Some(text(&mut map)?),
                Key::Field(Field::Sensor) => e.sensor = Some(text(&mut map)?),
                Key::Field(Field::Value) => {
                    e.value = Some(float(&mut map, -MAX_ABS_VALUE, MAX_ABS_VALUE)?)
                }
                Key::Field(Field::Unit) => e.unit = Some(text(&mut map)?),
                Key::Field(Field::Status) => e.status = Some(label(&mut map, DeviceStatus::parse)?),
                Key::Field(Field::BatteryPct) => {
                    e.battery_pct = Some(float(&mut map, 0.0, MAX_BATTERY_PCT)?)
                }
                Key::Field(Field::Alarm) => e.alarm = Some(text(&mut map)?),
                Key::Field(Field::Severity) => e.severity = Some(label(&mut map, Severity::parse)?),
                Key::Field(Field::Message) => e.message = Some(text(&mut map)?),
            }
        }
        Ok(WireEvent { event, present })
    }
}

/// A string field's value: 1..=[`MAX_STRING_LEN`] bytes.
fn text<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Cow<'de, str>, A::Error> {
    let Text(text) = map.next_value()?;
    bounded(text)
}

fn bounded<E: de::Error>(text: Cow<'_, str>) -> Result<Cow<'_, str>, E> {
    if text.is_empty() || text.len() > MAX_STRING_LEN {
        return Err(E::custom("a string out of bounds"));
    }
    Ok(text)
}

/// An enumerated string field's value.
fn label<'de, A: MapAccess<'de>, T>(
    map: &mut A,
    parse: fn(&str) -> Option<T>,
) -> Result<T, A::Error> {
    let Text(text) = map.next_value()?;
    parse(&text).ok_or_else(|| de::Error::custom("not one of the labels"))
}

/// A number field's value within `low..=high` (an integer is read as a float).
fn float<'de, A: MapAccess<'de>>(map: &mut A, low: f64, high: f64) -> Result<f64, A::Error> {
    let value: f64 = map.next_value()?;
    if !(value.is_finite() && (low..=high).contains(&value)) {
        return Err(de::Error::custom("a number out of bounds"));
    }
    Ok(value)
}

impl<'a> WireEvent<'a> {
    /// Decodes one JSON object (nothing but whitespace after it). The bytes
    /// are checked as UTF-8 once, whole, so that serde_json does not check
    /// each string again (its `&str` reader skips that).
    pub fn decode(bytes: &'a [u8]) -> Result<WireEvent<'a>, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let wire = WireEvent::deserialize(&mut deserializer).map_err(DecodeError::Json)?;
        deserializer.end().map_err(DecodeError::Json)?;
        Ok(wire)
    }

    /// The event, if it has `event_id`, `event_type` and `ts` and the
    /// fields its type's rule requires and allows, exactly as
    /// [`Event::from_json_reference`](crate::Event::from_json_reference)
    /// would accept it; `None` for anything else (the caller then asks the
    /// reference decoder, which also says why).
    pub fn validate(self) -> Option<EventRef<'a>> {
        let common = EVENT_ID | EVENT_TYPE | TS;
        let (required, allowed) = self.event.event_type.rule().masks();
        let fields = self.present & !common;
        let complete = self.present & common == common;
        (complete && fields & !allowed == 0 && required & !fields == 0).then_some(self.event)
    }
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
