//! The fast path of [`Event::from_json`](crate::Event::from_json): serde_json decodes one object
//! straight into [`WireEvent`] (strings borrowed from the input where they
//! have no escapes, numbers as numbers, no `Value` tree, no map), and
//! [`WireEvent::validate`] applies the rule table to it.
//!
//! The fast path only ever says yes: on anything unusual — a syntax error, a
//! `null`, a key given twice, a key it does not know, a value of another
//! type, a bound crossed, a rule broken — it gives up, and
//! [`Event::from_json_reference`](crate::Event::from_json_reference) (the `Value`-based decoder) decides and
//! writes the error. So the two cannot disagree on what is valid, and the
//! error messages have one source. `tests/decoder_properties.rs` checks that
//! they agree on generated events, near-events and arbitrary bytes.
//!
//! [`WireEvent`]'s decode alone, without validation, is also the
//! typed-decode ceiling `lambda bench speed` measures our decoder against.

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

/// A field's value as decoded, before the rule table looks at it.
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue<'a> {
    /// A string.
    Text(Cow<'a, str>),
    /// A number read as a float (`render_ms`, `value`, `battery_pct`).
    Float(f64),
    /// An integer (`amount_cents`, an integer `error_code`, `ts`).
    Int(i64),
}

/// Decodes a number field as a float, an integer, or (for `error_code` and
/// `ts`) an integer or a string; anything else is an error (the caller then
/// takes the reference path).
struct Slot<'a>(WireValue<'a>);

#[derive(Clone, Copy)]
enum Kind {
    Float,
    Int,
    IntOrText,
}

struct SlotSeed(Kind);

impl<'de> de::DeserializeSeed<'de> for SlotSeed {
    type Value = Slot<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Slot<'de>, D::Error> {
        match self.0 {
            Kind::Float => f64::deserialize(deserializer).map(|v| Slot(WireValue::Float(v))),
            Kind::Int => i64::deserialize(deserializer).map(|v| Slot(WireValue::Int(v))),
            Kind::IntOrText => deserializer.deserialize_any(IntOrText),
        }
    }
}

struct IntOrText;

impl<'de> Visitor<'de> for IntOrText {
    type Value = Slot<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Slot<'de>, E> {
        Ok(Slot(WireValue::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Slot<'de>, E> {
        i64::try_from(v)
            .map(|v| Slot(WireValue::Int(v)))
            .map_err(|_| E::custom("integer beyond i64"))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Slot<'de>, E> {
        Ok(Slot(WireValue::Text(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Slot<'de>, E> {
        Ok(Slot(WireValue::Text(Cow::Owned(v.to_owned()))))
    }
}

/// One event object as decoded, unvalidated: `event_id`, `event_type`, `ts`
/// and one slot per [`Field`], each set at most once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireEvent<'a> {
    /// `event_id`.
    pub event_id: Option<Cow<'a, str>>,
    /// `event_type`, as spelled.
    pub event_type: Option<Cow<'a, str>>,
    /// `ts`: integer milliseconds or an RFC 3339 string.
    pub ts: Option<WireValue<'a>>,
    /// The type-specific fields, indexed by `Field as usize`.
    pub fields: [Option<WireValue<'a>>; Field::ALL.len()],
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
        let mut wire = WireEvent::default();
        let twice = || de::Error::custom("a key given twice");
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            match key.as_ref() {
                "event_id" => {
                    let Text(v) = map.next_value()?;
                    if wire.event_id.replace(v).is_some() {
                        return Err(twice());
                    }
                }
                "event_type" => {
                    let Text(v) = map.next_value()?;
                    if wire.event_type.replace(v).is_some() {
                        return Err(twice());
                    }
                }
                "ts" => {
                    let Slot(v) = map.next_value_seed(SlotSeed(Kind::IntOrText))?;
                    if wire.ts.replace(v).is_some() {
                        return Err(twice());
                    }
                }
                name => {
                    let field = Field::from_name(name)
                        .ok_or_else(|| de::Error::custom("a key that is not a field"))?;
                    let value = match kind(field) {
                        Some(kind) => map.next_value_seed(SlotSeed(kind))?.0,
                        None => WireValue::Text(map.next_value::<Text<'de>>()?.0),
                    };
                    if wire.fields[field as usize].replace(value).is_some() {
                        return Err(twice());
                    }
                }
            }
        }
        Ok(wire)
    }
}

/// How a field's value is decoded (`None`: a string).
fn kind(field: Field) -> Option<Kind> {
    match field {
        Field::RenderMs | Field::Value | Field::BatteryPct => Some(Kind::Float),
        Field::AmountCents => Some(Kind::Int),
        Field::ErrorCode => Some(Kind::IntOrText),
        _ => None,
    }
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

    /// The event, if it satisfies every rule exactly as
    /// [`Event::from_json_reference`](crate::Event::from_json_reference) would accept it; `None` for anything
    /// else (the caller then asks the reference decoder, which also says why).
    pub fn validate(self) -> Option<EventRef<'a>> {
        let event_id = self.event_id?;
        if event_id.is_empty() || event_id.len() > MAX_EVENT_ID_LEN {
            return None;
        }
        let event_type = EventType::parse(self.event_type.as_deref()?)?;
        let ts = match self.ts? {
            WireValue::Int(ms) => ms,
            WireValue::Text(text) => crate::time::rfc3339_millis(&text).ok()?,
            WireValue::Float(_) => return None,
        };
        if !(0..=MAX_TS_MS).contains(&ts) {
            return None;
        }
        let (required, allowed) = event_type.rule().masks();
        let present = (self.fields.iter())
            .zip(Field::ALL)
            .filter(|(value, _)| value.is_some())
            .fold(0, |mask, (_, field)| mask | field.bit());
        if present & !allowed != 0 || required & !present != 0 {
            return None;
        }
        let mut event = EventRef::bare(event_id, event_type, ts);
        let [
            user_id,
            session_id,
            device,
            page,
            render_ms,
            campaign_id,
            product_id,
            amount_cents,
            error_code,
            device_id,
            sensor,
            value,
            unit,
            status,
            battery_pct,
            alarm,
            severity,
            message,
        ] = self.fields;
        event.user_id = text(user_id)?;
        event.session_id = text(session_id)?;
        event.device = label(device, Device::parse)?;
        event.page = text(page)?;
        event.render_ms = float(render_ms, 0.0, MAX_RENDER_MS)?;
        event.campaign_id = text(campaign_id)?;
        event.product_id = text(product_id)?;
        event.amount_cents = match amount_cents {
            None => None,
            Some(WireValue::Int(v)) if (0..=MAX_AMOUNT_CENTS).contains(&v) => Some(v),
            Some(_) => return None,
        };
        event.error_code = match error_code {
            Some(WireValue::Int(v)) => Some(Cow::Owned(v.to_string())),
            other => text(other)?,
        };
        event.device_id = text(device_id)?;
        event.sensor = text(sensor)?;
        event.value = float(value, -MAX_ABS_VALUE, MAX_ABS_VALUE)?;
        event.unit = text(unit)?;
        event.status = label(status, DeviceStatus::parse)?;
        event.battery_pct = float(battery_pct, 0.0, MAX_BATTERY_PCT)?;
        event.alarm = text(alarm)?;
        event.severity = label(severity, Severity::parse)?;
        event.message = text(message)?;
        Some(event)
    }
}

/// A string field: absent, or 1..=MAX_STRING_LEN bytes (`None`: give up).
fn text(value: Option<WireValue<'_>>) -> Option<Option<Cow<'_, str>>> {
    match value {
        None => Some(None),
        Some(WireValue::Text(t)) if !t.is_empty() && t.len() <= MAX_STRING_LEN => Some(Some(t)),
        Some(_) => None,
    }
}

/// An enumerated string field (`None`: give up).
fn label<T>(value: Option<WireValue<'_>>, parse: fn(&str) -> Option<T>) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(WireValue::Text(t)) => parse(&t).map(Some),
        Some(_) => None,
    }
}

/// A number field within `low..=high` (`None`: give up).
fn float(value: Option<WireValue<'_>>, low: f64, high: f64) -> Option<Option<f64>> {
    match value {
        None => Some(None),
        Some(WireValue::Float(v)) if v.is_finite() && (low..=high).contains(&v) => Some(Some(v)),
        Some(_) => None,
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
