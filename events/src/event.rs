//! The event model of DESIGN.md §3: one flat, typed record per event and the
//! rule table that says which fields each `event_type` requires and allows.
//!
//! Events are flat (one optional field per possible attribute) rather than one
//! enum variant per type so that the rule table is data, the Parquet master
//! dataset has one typed column per field, and validation errors can name the
//! field they are about.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event_ref::EventRef;

use crate::limits::{MAX_ABS_VALUE, MAX_AMOUNT_CENTS, MAX_BATTERY_PCT, MAX_RENDER_MS, MAX_TS_MS};
pub use crate::limits::{MAX_EVENT_ID_LEN, MAX_STRING_LEN};

/// The log topic an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Topic {
    /// `funnel-events`, keyed by `user_id`.
    #[serde(rename = "funnel-events")]
    Funnel,
    /// `iot-events`, keyed by `device_id`.
    #[serde(rename = "iot-events")]
    Iot,
}

impl Topic {
    /// Topic names as they appear in the log.
    pub const FUNNEL: &'static str = "funnel-events";
    /// See [`Topic::FUNNEL`].
    pub const IOT: &'static str = "iot-events";
    /// The topic that receives invalid records with the reason.
    pub const DEAD_LETTER: &'static str = "dead-letter";
    /// Both event topics.
    pub const ALL: [Topic; 2] = [Topic::Funnel, Topic::Iot];

    /// The topic's name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Funnel => Self::FUNNEL,
            Topic::Iot => Self::IOT,
        }
    }

    /// The topic for a log topic name, if it is one of the event topics.
    pub fn from_name(name: &str) -> Option<Topic> {
        match name {
            Self::FUNNEL => Some(Topic::Funnel),
            Self::IOT => Some(Topic::Iot),
            _ => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(
                #[doc = concat!("`", $text, "`")]
                #[serde(rename = $text)]
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as it is spelled in JSON.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The value for its JSON spelling.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// The `event_type` field.
    EventType {
        PageView => "page_view",
        Impression => "impression",
        Click => "click",
        AddToCart => "add_to_cart",
        Purchase => "purchase",
        SignupStart => "signup_start",
        SignupComplete => "signup_complete",
        Error => "error",
        SensorReading => "sensor_reading",
        DeviceStatus => "device_status",
        Alarm => "alarm",
    }
);

string_enum!(
    /// The `device` a funnel event was seen on.
    Device { Desktop => "desktop", Mobile => "mobile", Tablet => "tablet" }
);

string_enum!(
    /// The `status` of a `device_status` event.
    DeviceStatus { Online => "online", Offline => "offline" }
);

string_enum!(
    /// The `severity` of an `alarm` event.
    Severity { Low => "low", Medium => "medium", High => "high", Critical => "critical" }
);

impl EventType {
    /// The topic events of this type are written to.
    pub fn topic(self) -> Topic {
        match self {
            EventType::SensorReading | EventType::DeviceStatus | EventType::Alarm => Topic::Iot,
            _ => Topic::Funnel,
        }
    }

    /// The fields this type requires and the ones it may carry, besides the
    /// common `event_id`, `event_type` and `ts`.
    pub const fn rule(self) -> Rule {
        use Field::*;
        const TOUCH: &[Field] = &[SessionId, CampaignId, ProductId, Device];
        let (required, optional): (&'static [Field], &'static [Field]) = match self {
            EventType::PageView => (&[UserId, Page], &[SessionId, Device, RenderMs]),
            EventType::Impression | EventType::Click | EventType::AddToCart => (&[UserId], TOUCH),
            EventType::Purchase => (&[UserId, AmountCents], TOUCH),
            EventType::SignupStart | EventType::SignupComplete => (&[UserId], &[SessionId, Device]),
            EventType::Error => (&[UserId, ErrorCode], &[Page, Device]),
            EventType::SensorReading => (&[DeviceId, Sensor, Value], &[Unit]),
            EventType::DeviceStatus => (&[DeviceId, Status], &[BatteryPct]),
            EventType::Alarm => (&[DeviceId, Alarm, Severity], &[Message]),
        };
        Rule { required, optional }
    }
}

/// Which fields an event type requires and which it may carry.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Fields that must be present.
    pub required: &'static [Field],
    /// Fields that may be present.
    pub optional: &'static [Field],
}

impl Rule {
    fn allows(&self, field: Field) -> bool {
        self.required.contains(&field) || self.optional.contains(&field)
    }

    /// `(required, allowed)` as [`Field::bit`] masks: the rule in two words,
    /// for the decoder's fast path (see [`EventType::masks`]).
    const fn masks(&self) -> (u32, u32) {
        const fn mask(fields: &[Field]) -> u32 {
            let (mut mask, mut i) = (0, 0);
            while i < fields.len() {
                mask |= fields[i].bit();
                i += 1;
            }
            mask
        }
        let required = mask(self.required);
        (required, required | mask(self.optional))
    }
}

/// Each event type's [`Rule::masks`], by the type's place in
/// [`EventType::ALL`], worked out when the program is compiled: built from
/// the rule's lists for every event, they were ~1 % of the speed layer's
/// instructions (callgrind).
const RULE_MASKS: [(u32, u32); EventType::ALL.len()] = {
    let mut masks = [(0, 0); EventType::ALL.len()];
    let mut i = 0;
    while i < masks.len() {
        masks[EventType::ALL[i] as usize] = EventType::ALL[i].rule().masks();
        i += 1;
    }
    masks
};

impl EventType {
    /// The type's rule as `(required, allowed)` [`Field::bit`] masks: the
    /// rule in two words, for the decoder's fast path.
    pub(crate) const fn masks(self) -> (u32, u32) {
        RULE_MASKS[self as usize]
    }
}

/// Every type-specific field an event can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    UserId,
    SessionId,
    Device,
    Page,
    RenderMs,
    CampaignId,
    ProductId,
    AmountCents,
    ErrorCode,
    DeviceId,
    Sensor,
    Value,
    Unit,
    Status,
    BatteryPct,
    Alarm,
    Severity,
    Message,
}

impl Field {
    /// Every field, in the order of the master dataset's columns.
    pub const ALL: &'static [Field] = &[
        Field::UserId,
        Field::SessionId,
        Field::Device,
        Field::Page,
        Field::RenderMs,
        Field::CampaignId,
        Field::ProductId,
        Field::AmountCents,
        Field::ErrorCode,
        Field::DeviceId,
        Field::Sensor,
        Field::Value,
        Field::Unit,
        Field::Status,
        Field::BatteryPct,
        Field::Alarm,
        Field::Severity,
        Field::Message,
    ];

    /// The field's JSON name.
    pub const fn name(self) -> &'static str {
        match self {
            Field::UserId => "user_id",
            Field::SessionId => "session_id",
            Field::Device => "device",
            Field::Page => "page",
            Field::RenderMs => "render_ms",
            Field::CampaignId => "campaign_id",
            Field::ProductId => "product_id",
            Field::AmountCents => "amount_cents",
            Field::ErrorCode => "error_code",
            Field::DeviceId => "device_id",
            Field::Sensor => "sensor",
            Field::Value => "value",
            Field::Unit => "unit",
            Field::Status => "status",
            Field::BatteryPct => "battery_pct",
            Field::Alarm => "alarm",
            Field::Severity => "severity",
            Field::Message => "message",
        }
    }

    /// The field named `name` (a `match`, so one length check and a compare
    /// or two, not a walk over every name).
    pub(crate) fn from_name(name: &str) -> Option<Field> {
        Some(match name {
            "user_id" => Field::UserId,
            "session_id" => Field::SessionId,
            "device" => Field::Device,
            "page" => Field::Page,
            "render_ms" => Field::RenderMs,
            "campaign_id" => Field::CampaignId,
            "product_id" => Field::ProductId,
            "amount_cents" => Field::AmountCents,
            "error_code" => Field::ErrorCode,
            "device_id" => Field::DeviceId,
            "sensor" => Field::Sensor,
            "value" => Field::Value,
            "unit" => Field::Unit,
            "status" => Field::Status,
            "battery_pct" => Field::BatteryPct,
            "alarm" => Field::Alarm,
            "severity" => Field::Severity,
            "message" => Field::Message,
            _ => return None,
        })
    }

    /// The field's bit in a set of fields.
    pub(crate) const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// A valid event. Construct it with [`Event::from_json`] (or [`Event::from_value`]),
/// which enforces the rule table; the serialized form is canonical (`ts` in ms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The primary key: two events with one id are the same event.
    pub event_id: String,
    /// What happened.
    pub event_type: EventType,
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Page render time in milliseconds (finite, ≥ 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// Purchase amount in cents (≥ 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// Sensor value (finite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Battery level in percent (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why an event is invalid, naming the field when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct EventError {
    /// The offending field, if the problem is about one field.
    pub field: Option<String>,
    /// What is wrong, lowercase, no trailing full stop.
    pub message: String,
}

impl EventError {
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        EventError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// An error about the record as a whole (not one field).
    pub fn record(message: impl Into<String>) -> Self {
        EventError {
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field {field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl Event {
    /// Parses and validates a record read from `topic`: a valid event whose
    /// type belongs on another topic is invalid here (a producer other than
    /// the collector wrote it to the wrong place).
    pub fn from_record(bytes: &[u8], topic: &str) -> Result<Event, EventError> {
        EventRef::from_record(bytes, topic).map(EventRef::into_owned)
    }

    /// Parses and validates a record read from the log: [`Event::from_record`]
    /// plus the bound on how far `ts` may be ahead of the record's own
    /// timestamp (the collector's clock when it wrote it, or a Kafka
    /// producer's), so that events produced straight to the log are held to
    /// the bound the collector applies. A record without a timestamp
    /// (`record_ts_ms <= 0`) is not checked against it.
    pub fn from_log_record(
        bytes: &[u8],
        topic: &str,
        record_ts_ms: i64,
    ) -> Result<Event, EventError> {
        EventRef::from_log_record(bytes, topic, record_ts_ms).map(EventRef::into_owned)
    }

    /// Parses and validates one JSON object. A well-formed event takes the
    /// typed fast path ([`crate::decode`]); anything else is decided, and its
    /// error written, by [`Event::from_json_reference`].
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        EventRef::from_json(bytes).map(EventRef::into_owned)
    }

    /// The reference decoder: parses into a `serde_json::Value` and applies
    /// [`Event::from_value`]. Slower than [`Event::from_json`], and what it
    /// is checked against; it decides every input the fast path gives up on.
    pub fn from_json_reference(bytes: &[u8]) -> Result<Event, EventError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| EventError::record(format!("invalid json: {e}")))?;
        // A `Value` map keeps the last of two values under one key without a
        // word: a key given twice is refused here, before the map hides it.
        if let Some(key) = first_repeated_key(bytes) {
            return Err(EventError::field(&key, "given more than once"));
        }
        Event::from_value(&value)
    }

    /// Validates one JSON value against the rule table of its `event_type`.
    pub fn from_value(value: &Value) -> Result<Event, EventError> {
        let Value::Object(object) = value else {
            return Err(EventError::record(format!(
                "expected a json object, found {}",
                json_kind(value)
            )));
        };
        let event_id = string_field(object, "event_id", MAX_EVENT_ID_LEN)?
            .ok_or_else(|| EventError::field("event_id", "required"))?;
        let type_name = string_field(object, "event_type", MAX_STRING_LEN)?
            .ok_or_else(|| EventError::field("event_type", "required"))?;
        let event_type = EventType::parse(&type_name).ok_or_else(|| {
            EventError::field("event_type", format!("unknown event type {type_name:?}"))
        })?;
        let ts = parse_ts(
            object
                .get("ts")
                .ok_or_else(|| EventError::field("ts", "required"))?,
        )?;
        let rule = event_type.rule();

        for key in object.keys() {
            if matches!(key.as_str(), "event_id" | "event_type" | "ts") {
                continue;
            }
            match Field::from_name(key) {
                Some(field) if rule.allows(field) => {}
                _ => {
                    return Err(EventError::field(
                        key,
                        format!("not allowed for event_type {event_type}"),
                    ));
                }
            }
        }
        for field in rule.required {
            match object.get(field.name()) {
                None | Some(Value::Null) => {
                    return Err(EventError::field(
                        field.name(),
                        format!("required for event_type {event_type}"),
                    ));
                }
                Some(_) => {}
            }
        }

        let s = |name: &str| string_field(object, name, MAX_STRING_LEN);
        let event = Event {
            event_id,
            event_type,
            ts,
            user_id: s("user_id")?,
            session_id: s("session_id")?,
            device: enum_field(object, "device", Device::parse, Device::ALL)?,
            page: s("page")?,
            render_ms: number_field(object, "render_ms", (0.0, MAX_RENDER_MS))?,
            campaign_id: s("campaign_id")?,
            product_id: s("product_id")?,
            amount_cents: integer_field(object, "amount_cents", (0, MAX_AMOUNT_CENTS))?,
            error_code: code_field(object, "error_code")?,
            device_id: s("device_id")?,
            sensor: s("sensor")?,
            value: number_field(object, "value", (-MAX_ABS_VALUE, MAX_ABS_VALUE))?,
            unit: s("unit")?,
            status: enum_field(object, "status", DeviceStatus::parse, DeviceStatus::ALL)?,
            battery_pct: number_field(object, "battery_pct", (0.0, MAX_BATTERY_PCT))?,
            alarm: s("alarm")?,
            severity: enum_field(object, "severity", Severity::parse, Severity::ALL)?,
            message: s("message")?,
        };
        Ok(event)
    }

    /// Rejects an event time more than `max_ahead_ms` after `now_ms`: one
    /// event from a broken clock would otherwise drag the watermark and the
    /// boundary into the future and make every later event late.
    pub fn check_not_ahead(&self, now_ms: i64, max_ahead_ms: i64) -> Result<(), EventError> {
        check_not_ahead(self.ts, now_ms, max_ahead_ms)
    }

    /// Rejects an event time more than `max_behind_ms` before `now_ms`.
    pub fn check_not_behind(&self, now_ms: i64, max_behind_ms: i64) -> Result<(), EventError> {
        check_not_behind(self.ts, now_ms, max_behind_ms)
    }

    /// The topic this event is written to.
    pub fn topic(&self) -> Topic {
        self.event_type.topic()
    }

    /// The partitioning key: `user_id` for funnel events, `device_id` for IoT events.
    pub fn key(&self) -> &str {
        partition_key(
            self.event_type,
            self.user_id.as_deref(),
            self.device_id.as_deref(),
        )
    }

    /// The canonical JSON encoding (what is written to the log; the same
    /// bytes as [`EventRef::to_json`]).
    pub fn to_json(&self) -> Vec<u8> {
        self.to_ref().to_json()
    }

    /// An event of the given type with every optional field empty; for tests and generators.
    pub fn bare(event_id: impl Into<String>, event_type: EventType, ts: i64) -> Event {
        EventRef::bare(std::borrow::Cow::Owned(event_id.into()), event_type, ts).into_owned()
    }
}

/// The first key of a JSON object (`bytes`, already known to parse) that
/// appears twice, however it is spelled (`\u` escapes are decoded first).
fn first_repeated_key(bytes: &[u8]) -> Option<String> {
    use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut repeated = None;
            // Read to the end of the object even after a repeat: left
            // early, the deserializer found no `}` where it stopped, the
            // whole read was an error, and the repeat went unreported —
            // every repeat but one in the last member was accepted, its
            // last value kept (found by a hostile run).
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if let Some(key) = seen.replace(key) {
                    repeated.get_or_insert(key);
                }
            }
            Ok(repeated)
        }
    }
    serde_json::Deserializer::from_slice(bytes)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}

/// See [`Event::key`].
pub(crate) fn partition_key<'s>(
    event_type: EventType,
    user_id: Option<&'s str>,
    device_id: Option<&'s str>,
) -> &'s str {
    let key = match event_type.topic() {
        Topic::Funnel => user_id,
        Topic::Iot => device_id,
    };
    key.expect("validation guarantees the key field of every event type")
}

/// See [`Event::check_not_ahead`].
pub(crate) fn check_not_ahead(ts: i64, now_ms: i64, max_ahead_ms: i64) -> Result<(), EventError> {
    let ahead = ts.saturating_sub(now_ms);
    if ahead > max_ahead_ms {
        return Err(EventError::field(
            "ts",
            format!(
                "{ts} is {ahead} ms ahead of the receiver's clock (at most {max_ahead_ms} allowed)"
            ),
        ));
    }
    Ok(())
}

/// See [`Event::check_not_behind`].
pub(crate) fn check_not_behind(ts: i64, now_ms: i64, max_behind_ms: i64) -> Result<(), EventError> {
    let behind = now_ms.saturating_sub(ts);
    if behind > max_behind_ms {
        return Err(EventError::field(
            "ts",
            format!(
                "{ts} is {behind} ms behind the receiver's clock (at most {max_behind_ms} allowed)"
            ),
        ));
    }
    Ok(())
}

/// The time an event read from the log moves event-time clocks to (the
/// speed layer's watermark, the batch layer's boundary B): its `ts`, but never
/// past the record's own timestamp, so that events stamped ahead of the time
/// they were written (within the ahead bound) cannot make on-time events
/// late. A record without a timestamp (`record_ts_ms <= 0`) uses `ts`.
#[inline]
pub fn clock_ts(event_ts: i64, record_ts_ms: i64) -> i64 {
    if record_ts_ms > 0 {
        event_ts.min(record_ts_ms)
    } else {
        event_ts
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(
    object: &Map<String, Value>,
    name: &str,
    max_len: usize,
) -> Result<Option<String>, EventError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if text.is_empty() {
                Err(EventError::field(name, "must not be empty"))
            } else if text.len() > max_len {
                Err(EventError::field(
                    name,
                    format!("longer than {max_len} bytes ({} bytes)", text.len()),
                ))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(other) => Err(EventError::field(
            name,
            format!("expected a string, found {}", json_kind(other)),
        )),
    }
}

/// `error_code` may be a string or an integer; both are kept as a string.
/// Anything else is refused saying both are allowed (a fraction, `-0` or
/// an integer past 64 bits is a number that is not an integer).
fn code_field(object: &Map<String, Value>, name: &str) -> Result<Option<String>, EventError> {
    match object.get(name) {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(Value::Number(n)) => Err(EventError::field(
            name,
            format!("expected a string or an integer, found {n} (not an integer within 64 bits)"),
        )),
        Some(other @ (Value::Bool(_) | Value::Array(_) | Value::Object(_))) => {
            Err(EventError::field(
                name,
                format!(
                    "expected a string or an integer, found {}",
                    json_kind(other)
                ),
            ))
        }
        _ => string_field(object, name, MAX_STRING_LEN),
    }
}

fn enum_field<T: fmt::Display>(
    object: &Map<String, Value>,
    name: &str,
    parse: fn(&str) -> Option<T>,
    all: &[T],
) -> Result<Option<T>, EventError> {
    let Some(text) = string_field(object, name, MAX_STRING_LEN)? else {
        return Ok(None);
    };
    parse(&text).map(Some).ok_or_else(|| {
        let allowed: Vec<String> = all.iter().map(|v| v.to_string()).collect();
        EventError::field(
            name,
            format!("{text:?} is not one of {}", allowed.join(", ")),
        )
    })
}

fn number_field(
    object: &Map<String, Value>,
    name: &str,
    (low, high): (f64, f64),
) -> Result<Option<f64>, EventError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let value = n
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| EventError::field(name, format!("{n} is not a finite number")))?;
            if !(low..=high).contains(&value) {
                return Err(EventError::field(
                    name,
                    format!("{value} is outside the bounds {low}..={high}"),
                ));
            }
            // -0.0 is read as 0.0 (adding +0.0 turns -0.0 into +0.0 and
            // leaves every other value as it is): the engines that fold a
            // value — the speed layer, DuckDB, Spark — order the two zeros
            // differently in min, max and last, and would give different
            // views of the same events.
            Ok(Some(value + 0.0))
        }
        Some(other) => Err(EventError::field(
            name,
            format!("expected a number, found {}", json_kind(other)),
        )),
    }
}

fn integer_field(
    object: &Map<String, Value>,
    name: &str,
    (min, max): (i64, i64),
) -> Result<Option<i64>, EventError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let out_of_bounds =
                || EventError::field(name, format!("{n} is outside the bounds {min}..={max}"));
            let value = match n.as_i64() {
                Some(value) => value,
                // An integer too large for i64 is still an integer: out of bounds.
                None if n.is_u64() => return Err(out_of_bounds()),
                None => {
                    return Err(EventError::field(name, format!("{n} is not an integer")));
                }
            };
            if !(min..=max).contains(&value) {
                return Err(out_of_bounds());
            }
            Ok(Some(value))
        }
        Some(other) => Err(EventError::field(
            name,
            format!("expected an integer, found {}", json_kind(other)),
        )),
    }
}

/// `ts`: integer milliseconds since the epoch, or an RFC 3339 string (normalised to ms).
fn parse_ts(value: &Value) -> Result<i64, EventError> {
    match value {
        Value::Number(n) => {
            let ms = n.as_i64().ok_or_else(|| {
                EventError::field(
                    "ts",
                    format!("{n} is not an integer number of milliseconds"),
                )
            })?;
            check_ts_bounds(ms, &ms.to_string())
        }
        Value::String(text) => crate::time::rfc3339_millis(text)
            .map_err(|e| EventError::field("ts", format!("{text:?} is not RFC 3339: {e}")))
            .and_then(|ms| check_ts_bounds(ms, &format!("{text:?}"))),
        other => Err(EventError::field(
            "ts",
            format!(
                "expected milliseconds or an RFC 3339 string, found {}",
                json_kind(other)
            ),
        )),
    }
}

/// `ts` within 1970-01-01 ..= 9999-12-31 (every such time has an RFC 3339
/// form and a Parquet timestamp; later ones would not).
fn check_ts_bounds(ms: i64, shown: &str) -> Result<i64, EventError> {
    if ms < 0 {
        Err(EventError::field("ts", format!("{shown} is before 1970")))
    } else if ms > MAX_TS_MS {
        Err(EventError::field(
            "ts",
            format!("{shown} is after 9999-12-31T23:59:59.999Z (at most {MAX_TS_MS} ms)"),
        ))
    } else {
        Ok(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masks worked out at compile time say what each type's rule
    /// says, field by field.
    #[test]
    fn each_type_s_masks_are_its_rule() {
        for &event_type in EventType::ALL {
            let rule = event_type.rule();
            let (required, allowed) = event_type.masks();
            for &field in Field::ALL {
                let what = format!("{event_type} {}", field.name());
                let required_bit = required & field.bit() != 0;
                assert_eq!(required_bit, rule.required.contains(&field), "{what}");
                assert_eq!(allowed & field.bit() != 0, rule.allows(field), "{what}");
            }
        }
    }

    #[test]
    fn a_key_given_twice_is_refused_however_it_is_spelled() {
        for (input, field) in [
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","user_id":"u1","user_id":"u2"}"#,
                "user_id",
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","user_id":"u1","user\u005fid":"u2"}"#,
                "user_id",
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"purchase","user_id":"u","amount_cents":1,"event_type":"click"}"#,
                "event_type",
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","user_id":"u","ts":2}"#,
                "ts",
            ),
            // A repeat followed by other members, and the first of two repeats.
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","campaign_id":"a","campaign_id":"b","user_id":"u"}"#,
                "campaign_id",
            ),
            (
                r#"{"event_id":"e","event_id":"f","ts":1,"event_type":"click","user_id":"u"}"#,
                "event_id",
            ),
            (
                r#"{"ts":1,"ts":2,"event_id":"e","event_type":"click","user_id":"u","user_id":"v"}"#,
                "ts",
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","event_type":"impression","user_id":"u"}"#,
                "event_type",
            ),
        ] {
            check(input, Err((field, "given more than once")));
            assert_eq!(
                Event::from_json_reference(input.as_bytes()),
                Event::from_json(input.as_bytes())
            );
        }
    }

    #[test]
    fn every_field_is_found_by_its_name_and_has_its_own_bit() {
        let mut bits = 0;
        for field in Field::ALL {
            assert_eq!(Field::from_name(field.name()), Some(*field));
            assert_eq!(bits & field.bit(), 0, "{field:?}");
            bits |= field.bit();
        }
        assert_eq!(Field::from_name("user_i"), None);
        assert_eq!(Field::from_name("event_id"), None);
    }

    /// Validates `input`; `expected` is `Ok(event_type)` or `Err((field, message fragment))`.
    fn check(input: &str, expected: Result<EventType, (&str, &str)>) {
        let got = Event::from_json(input.as_bytes());
        match (got, expected) {
            (Ok(event), Ok(event_type)) => {
                assert_eq!(event.event_type, event_type, "{input}");
                // Canonical form round-trips to the same event.
                let again = Event::from_json(&event.to_json()).expect("canonical form is valid");
                assert_eq!(again, event);
            }
            (Err(err), Err((field, fragment))) => {
                assert_eq!(err.field.as_deref().unwrap_or(""), field, "{input}: {err}");
                assert!(
                    err.message.contains(fragment),
                    "{input}: {err:?} lacks {fragment:?}"
                );
            }
            (got, expected) => panic!("{input}: got {got:?}, expected {expected:?}"),
        }
    }

    const TS: &str = r#""event_id":"e1","ts":1700000000000"#;

    #[test]
    fn valid_events_of_every_type() {
        use EventType::*;
        let cases: &[(&str, EventType)] = &[
            (
                r#""event_type":"page_view","user_id":"u1","page":"/home""#,
                PageView,
            ),
            (
                r#""event_type":"page_view","user_id":"u1","page":"/p","session_id":"s","device":"mobile","render_ms":812.5"#,
                PageView,
            ),
            (r#""event_type":"impression","user_id":"u1""#, Impression),
            (
                r#""event_type":"click","user_id":"u1","campaign_id":"c1","product_id":"p1","device":"tablet","session_id":"s""#,
                Click,
            ),
            (
                r#""event_type":"add_to_cart","user_id":"u1","product_id":"p9""#,
                AddToCart,
            ),
            (
                r#""event_type":"purchase","user_id":"u1","amount_cents":0"#,
                Purchase,
            ),
            (
                r#""event_type":"purchase","user_id":"u1","amount_cents":1999,"campaign_id":"c1""#,
                Purchase,
            ),
            (
                r#""event_type":"signup_start","user_id":"u1","device":"desktop""#,
                SignupStart,
            ),
            (
                r#""event_type":"signup_complete","user_id":"u1","session_id":"s""#,
                SignupComplete,
            ),
            (
                r#""event_type":"error","user_id":"u1","error_code":"E500","page":"/x""#,
                Error,
            ),
            (
                r#""event_type":"error","user_id":"u1","error_code":503"#,
                Error,
            ),
            (
                r#""event_type":"sensor_reading","device_id":"d1","sensor":"temp","value":-3.5"#,
                SensorReading,
            ),
            (
                r#""event_type":"sensor_reading","device_id":"d1","sensor":"temp","value":21,"unit":"C""#,
                SensorReading,
            ),
            (
                r#""event_type":"device_status","device_id":"d1","status":"offline""#,
                DeviceStatus,
            ),
            (
                r#""event_type":"device_status","device_id":"d1","status":"online","battery_pct":100"#,
                DeviceStatus,
            ),
            (
                r#""event_type":"alarm","device_id":"d1","alarm":"overheat","severity":"critical""#,
                Alarm,
            ),
            (
                r#""event_type":"alarm","device_id":"d1","alarm":"door","severity":"low","message":"open""#,
                Alarm,
            ),
        ];
        for (body, event_type) in cases {
            check(&format!("{{{TS},{body}}}"), Ok(*event_type));
        }
    }

    #[test]
    fn invalid_events_name_the_field() {
        let cases: &[(&str, (&str, &str))] = &[
            (
                r#"{"ts":1,"event_type":"click","user_id":"u"}"#,
                ("event_id", "required"),
            ),
            (
                r#"{"event_id":"","ts":1,"event_type":"click","user_id":"u"}"#,
                ("event_id", "empty"),
            ),
            (
                &format!(
                    r#"{{"event_id":"{}","ts":1,"event_type":"click","user_id":"u"}}"#,
                    "x".repeat(65)
                ),
                ("event_id", "longer than 64"),
            ),
            (
                r#"{"event_id":7,"ts":1,"event_type":"click","user_id":"u"}"#,
                ("event_id", "expected a string"),
            ),
            // error_code takes a string or an integer, and says so.
            (
                r#"{"event_id":"e","ts":1,"event_type":"error","user_id":"u","error_code":-0}"#,
                ("error_code", "expected a string or an integer, found -0.0"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"error","user_id":"u","error_code":1.5}"#,
                ("error_code", "expected a string or an integer, found 1.5"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"error","user_id":"u","error_code":true}"#,
                (
                    "error_code",
                    "expected a string or an integer, found a boolean",
                ),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"error","user_id":"u","error_code":""}"#,
                ("error_code", "must not be empty"),
            ),
            (
                r#"{"event_id":"e","ts":1,"user_id":"u"}"#,
                ("event_type", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"hover","user_id":"u"}"#,
                ("event_type", "unknown event type"),
            ),
            (
                r#"{"event_id":"e","event_type":"click","user_id":"u"}"#,
                ("ts", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1.5,"event_type":"click","user_id":"u"}"#,
                ("ts", "not an integer"),
            ),
            (
                r#"{"event_id":"e","ts":-5,"event_type":"click","user_id":"u"}"#,
                ("ts", "before 1970"),
            ),
            (
                r#"{"event_id":"e","ts":"yesterday","event_type":"click","user_id":"u"}"#,
                ("ts", "not RFC 3339"),
            ),
            (
                r#"{"event_id":"e","ts":true,"event_type":"click","user_id":"u"}"#,
                ("ts", "expected milliseconds"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click"}"#,
                ("user_id", "required for event_type click"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","user_id":null}"#,
                ("user_id", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"page_view","user_id":"u"}"#,
                ("page", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"page_view","user_id":"u","page":"/","render_ms":-1}"#,
                ("render_ms", "outside the bounds 0..="),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"page_view","user_id":"u","page":"/","render_ms":"fast"}"#,
                ("render_ms", "expected a number"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"page_view","user_id":"u","page":"/","device":"watch"}"#,
                ("device", "not one of desktop, mobile, tablet"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"purchase","user_id":"u"}"#,
                ("amount_cents", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"purchase","user_id":"u","amount_cents":-1}"#,
                ("amount_cents", "outside the bounds 0..="),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"purchase","user_id":"u","amount_cents":9.99}"#,
                ("amount_cents", "not an integer"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"error","user_id":"u"}"#,
                ("error_code", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","user_id":"u","render_ms":3}"#,
                ("render_ms", "not allowed for event_type click"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"click","user_id":"u","colour":"red"}"#,
                ("colour", "not allowed"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"sensor_reading","device_id":"d","sensor":"t"}"#,
                ("value", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":"hot"}"#,
                ("value", "expected a number"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"sensor_reading","sensor":"t","value":1}"#,
                ("device_id", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"device_status","device_id":"d"}"#,
                ("status", "required"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"device_status","device_id":"d","status":"asleep"}"#,
                ("status", "not one of online, offline"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"device_status","device_id":"d","status":"online","battery_pct":101}"#,
                ("battery_pct", "outside the bounds 0..=100"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"alarm","device_id":"d","alarm":"a","severity":"extreme"}"#,
                ("severity", "not one of low, medium, high, critical"),
            ),
            (
                r#"{"event_id":"e","ts":1,"event_type":"alarm","device_id":"d","severity":"low"}"#,
                ("alarm", "required"),
            ),
            (r#"[1,2]"#, ("", "expected a json object, found an array")),
            (r#"{"event_id":"e""#, ("", "invalid json")),
        ];
        for (input, (field, fragment)) in cases {
            check(input, Err((field, fragment)));
        }
    }

    /// Every numeric bound of the limits table, one step inside and one step
    /// outside each side.
    #[test]
    fn numeric_bounds_hold_on_both_sides() {
        use crate::limits::*;
        let purchase = |amount: &str| {
            format!(
                r#"{{"event_id":"e","ts":1,"event_type":"purchase","user_id":"u","amount_cents":{amount}}}"#
            )
        };
        let reading = |value: &str| {
            format!(
                r#"{{"event_id":"e","ts":1,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":{value}}}"#
            )
        };
        let page = |render: &str| {
            format!(
                r#"{{"event_id":"e","ts":1,"event_type":"page_view","user_id":"u","page":"/","render_ms":{render}}}"#
            )
        };
        let status = |battery: &str| {
            format!(
                r#"{{"event_id":"e","ts":1,"event_type":"device_status","device_id":"d","status":"online","battery_pct":{battery}}}"#
            )
        };
        let at = |ts: &str| {
            format!(r#"{{"event_id":"e","ts":{ts},"event_type":"click","user_id":"u"}}"#)
        };
        let max_amount = MAX_AMOUNT_CENTS.to_string();
        let over_amount = (MAX_AMOUNT_CENTS + 1).to_string();
        for ok in ["0", max_amount.as_str()] {
            check(&purchase(ok), Ok(EventType::Purchase));
        }
        for bad in [
            "-1",
            over_amount.as_str(),
            "5000000000000000000",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            let expected = if bad == "99999999999999999999" {
                "not an integer"
            } else {
                "outside the bounds"
            };
            check(&purchase(bad), Err(("amount_cents", expected)));
        }
        for ok in ["-1e15", "1e15", "0", "21.5"] {
            check(&reading(ok), Ok(EventType::SensorReading));
        }
        for bad in ["-1.0000000000000002e15", "1.0000000000000002e15", "1.7e308"] {
            check(&reading(bad), Err(("value", "outside the bounds")));
        }
        for ok in ["0", "3600000"] {
            check(&page(ok), Ok(EventType::PageView));
        }
        for bad in ["-0.001", "3600000.001"] {
            check(&page(bad), Err(("render_ms", "outside the bounds")));
        }
        for ok in ["0", "100"] {
            check(&status(ok), Ok(EventType::DeviceStatus));
        }
        for bad in ["-0.5", "100.5"] {
            check(&status(bad), Err(("battery_pct", "outside the bounds")));
        }
        let max_ts = MAX_TS_MS.to_string();
        let over_ts = (MAX_TS_MS + 1).to_string();
        for ok in ["0", max_ts.as_str(), r#""9999-12-31T23:59:59.999Z""#] {
            check(&at(ok), Ok(EventType::Click));
        }
        check(&at("-1"), Err(("ts", "before 1970")));
        check(&at(&over_ts), Err(("ts", "after 9999-12-31")));
        check(
            &at(r#""+10000-01-01T00:00:00Z""#),
            Err(("ts", "not RFC 3339")),
        );
        check(&at("9223372036854775807"), Err(("ts", "after 9999-12-31")));
    }

    /// `-0.0` (in any spelling) is read as `0.0` by the reference decoder,
    /// the fast decoder (`EventRef`) and `from_json`, so every engine that
    /// folds it sees one zero.
    #[test]
    fn negative_zero_is_read_as_zero() {
        for zero in ["-0.0", "-0", "-0e0", "-0.000e-5"] {
            let lines = [
                format!(
                    r#"{{"event_id":"e","ts":1,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":{zero}}}"#
                ),
                format!(
                    r#"{{"event_id":"e","ts":1,"event_type":"page_view","user_id":"u","page":"/","render_ms":{zero}}}"#
                ),
                format!(
                    r#"{{"event_id":"e","ts":1,"event_type":"device_status","device_id":"d","status":"online","battery_pct":{zero}}}"#
                ),
            ];
            for line in &lines {
                let numbers = |e: &Event| [e.value, e.render_ms, e.battery_pct];
                let reference = Event::from_json_reference(line.as_bytes()).unwrap();
                let fast = Event::from_json(line.as_bytes()).unwrap();
                let borrowed = crate::EventRef::from_json(line.as_bytes()).unwrap();
                let fast_numbers = [borrowed.value, borrowed.render_ms, borrowed.battery_pct];
                for value in numbers(&reference)
                    .into_iter()
                    .chain(numbers(&fast))
                    .chain(fast_numbers)
                    .flatten()
                {
                    assert!(
                        value == 0.0 && value.is_sign_positive(),
                        "{line}: {value:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rfc3339_ts_is_normalised_to_millis() {
        let event = Event::from_json(
            br#"{"event_id":"e","ts":"2023-11-14T22:13:20.5+01:00","event_type":"impression","user_id":"u"}"#,
        )
        .unwrap();
        assert_eq!(event.ts, 1_699_996_400_500);
        assert!(
            String::from_utf8(event.to_json())
                .unwrap()
                .contains(r#""ts":1699996400500"#)
        );
    }

    #[test]
    fn event_times_far_ahead_of_now_are_rejected() {
        let event = Event::bare("e", EventType::Impression, 10_000);
        assert!(event.check_not_ahead(9_000, 1_000).is_ok());
        let err = event.check_not_ahead(8_999, 1_000).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("ts"));
        assert!(err.message.contains("1001 ms ahead"), "{err}");
        assert!(event.check_not_behind(11_000, 1_000).is_ok());
        let err = event.check_not_behind(11_001, 1_000).unwrap_err();
        assert!(err.message.contains("1001 ms behind"), "{err}");
        assert!(
            event.check_not_ahead(i64::MIN, 1_000).is_err(),
            "no overflow"
        );
        assert!(
            event.check_not_behind(i64::MAX, 1_000).is_err(),
            "no overflow"
        );
    }

    #[test]
    fn records_read_from_the_log_are_held_to_the_ahead_bound() {
        use crate::limits::DEFAULT_MAX_TS_AHEAD_MS;
        let json = br#"{"event_id":"e","ts":1700000300000,"event_type":"click","user_id":"u"}"#;
        let at = |record_ts: i64| Event::from_log_record(json, Topic::FUNNEL, record_ts);
        assert!(at(1_700_000_300_000 - DEFAULT_MAX_TS_AHEAD_MS).is_ok());
        let err = at(1_700_000_300_000 - DEFAULT_MAX_TS_AHEAD_MS - 1).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("ts"), "{err}");
        assert!(at(0).is_ok(), "a record without a timestamp is not checked");
        assert!(Event::from_log_record(json, Topic::IOT, 1_700_000_300_000).is_err());
    }

    #[test]
    fn key_follows_the_topic() {
        let funnel =
            Event::from_json(br#"{"event_id":"e","ts":1,"event_type":"click","user_id":"u7"}"#)
                .unwrap();
        assert_eq!((funnel.topic(), funnel.key()), (Topic::Funnel, "u7"));
        let iot = Event::from_json(br#"{"event_id":"e","ts":1,"event_type":"alarm","device_id":"d3","alarm":"a","severity":"high"}"#).unwrap();
        assert_eq!((iot.topic(), iot.key()), (Topic::Iot, "d3"));
    }
}
