//! [`EventRef`]: a valid event whose strings borrow from the record it was
//! decoded from, so that the speed layer's hot path decodes and folds a
//! record without allocating. It holds the same fields as [`Event`], passed
//! the same rule table; [`EventRef::into_owned`] and [`Event::to_ref`]
//! convert without checking again.

use std::borrow::Cow;

use bytes::BufMut;
use serde::Serialize;

use crate::decode::WireEvent;
use crate::event::{Device, DeviceStatus, Event, EventError, EventType, Severity, Topic};

/// A valid event, its strings borrowed where the input had no escapes (see
/// [`Event`] for what each field means). It serializes exactly as the
/// [`Event`] it stands for (the canonical JSON written to the log).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRef<'a> {
    pub event_id: Cow<'a, str>,
    pub event_type: EventType,
    pub ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub battery_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Cow<'a, str>>,
}

impl<'a> EventRef<'a> {
    /// Parses and validates one JSON object, as [`Event::from_json`] does
    /// (same rules, same errors), borrowing its strings from `bytes`.
    #[inline]
    pub fn from_json(bytes: &'a [u8]) -> Result<EventRef<'a>, EventError> {
        let mut event = EventRef::slot();
        EventRef::read_json(bytes, &mut event)?;
        Ok(event)
    }

    /// [`EventRef::from_json`] written into `slot` instead of returned (the
    /// same rules, the same errors; on an error `slot` holds no event worth
    /// reading): an event is ~0.45 KB, and a caller going through many
    /// (the fold's chunk of records, the collector's body) decodes each into
    /// a slot it keeps rather than moving it out of the decoder.
    pub fn read_json(bytes: &'a [u8], slot: &mut EventRef<'a>) -> Result<(), EventError> {
        *slot = EventRef::slot();
        if !WireEvent::decode_valid_into(bytes, slot) {
            *slot = Event::from_json_reference(bytes).map(EventRef::from)?;
        }
        Ok(())
    }

    /// [`EventRef::from_json`] for a record read from `topic`: an event
    /// whose type belongs on the other topic is invalid here.
    #[inline]
    pub fn from_record(bytes: &'a [u8], topic: &str) -> Result<EventRef<'a>, EventError> {
        let event = EventRef::from_json(bytes)?;
        event.check_topic(topic)?;
        Ok(event)
    }

    /// An event whose type belongs on another topic than `topic` is invalid
    /// there.
    fn check_topic(&self, topic: &str) -> Result<(), EventError> {
        let home = self.event_type.topic();
        if home.name() != topic {
            return Err(EventError::field(
                "event_type",
                format!(
                    "{} events belong on topic {}, not {topic}",
                    self.event_type.as_str(),
                    home.name()
                ),
            ));
        }
        Ok(())
    }

    /// [`EventRef::from_log_record`] written into `slot` instead of
    /// returned, as [`EventRef::read_json`] is.
    pub fn read_log_record(
        bytes: &'a [u8],
        topic: &str,
        record_ts_ms: i64,
        slot: &mut EventRef<'a>,
    ) -> Result<(), EventError> {
        EventRef::read_json(bytes, slot)?;
        slot.check_topic(topic)?;
        if record_ts_ms > 0 {
            crate::event::check_not_ahead(
                slot.ts,
                record_ts_ms,
                crate::limits::DEFAULT_MAX_TS_AHEAD_MS,
            )?;
        }
        Ok(())
    }

    /// [`EventRef::from_record`] plus the bound on how far `ts` may be ahead
    /// of the record's own timestamp (see [`Event::from_log_record`]).
    #[inline]
    pub fn from_log_record(
        bytes: &'a [u8],
        topic: &str,
        record_ts_ms: i64,
    ) -> Result<EventRef<'a>, EventError> {
        let mut event = EventRef::slot();
        EventRef::read_log_record(bytes, topic, record_ts_ms, &mut event)?;
        Ok(event)
    }

    /// The topic the event belongs to.
    pub fn topic(&self) -> Topic {
        self.event_type.topic()
    }

    /// The partitioning key (see [`Event::key`]).
    pub fn key(&self) -> &str {
        crate::event::partition_key(
            self.event_type,
            self.user_id.as_deref(),
            self.device_id.as_deref(),
        )
    }

    /// The canonical JSON encoding, the same bytes as [`Event::to_json`].
    pub fn to_json(&self) -> Vec<u8> {
        // Most events fit: one allocation, no growing.
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        out
    }

    /// Appends the canonical JSON encoding to `out`: byte for byte what
    /// serde_json writes for this struct (`tests/decoder_properties.rs`
    /// checks it on every generated event), written without serde's
    /// machinery — keys as constant bytes, a string copied whole unless it
    /// has something to escape. The collector writes one per accepted
    /// event; serde's writer was two fifths of its CPU time in a profile of
    /// `lambda bench ingest`.
    pub fn write_json(&self, out: &mut impl BufMut) {
        out.put_slice(b"{\"event_id\":");
        json_string(out, &self.event_id);
        out.put_slice(b",\"event_type\":");
        label(out, self.event_type.as_str());
        out.put_slice(b",\"ts\":");
        json_integer(out, self.ts);
        // In the struct's order, as serde writes them; absent ones skipped.
        macro_rules! put {
            ($($key:ident),+) => {$(
                if let Some(value) = &self.$key {
                    out.put_slice(concat!(",\"", stringify!($key), "\":").as_bytes());
                    value.write_json(&mut *out);
                }
            )+};
        }
        put!(
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
            message
        );
        out.put_u8(b'}');
    }

    /// See [`Event::check_not_ahead`].
    pub fn check_not_ahead(&self, now_ms: i64, max_ahead_ms: i64) -> Result<(), EventError> {
        crate::event::check_not_ahead(self.ts, now_ms, max_ahead_ms)
    }

    /// See [`Event::check_not_behind`].
    pub fn check_not_behind(&self, now_ms: i64, max_behind_ms: i64) -> Result<(), EventError> {
        crate::event::check_not_behind(self.ts, now_ms, max_behind_ms)
    }

    /// The event with owned strings (no validation again: it passed).
    pub fn into_owned(self) -> Event {
        Event {
            event_id: self.event_id.into_owned(),
            event_type: self.event_type,
            ts: self.ts,
            user_id: self.user_id.map(Cow::into_owned),
            session_id: self.session_id.map(Cow::into_owned),
            device: self.device,
            page: self.page.map(Cow::into_owned),
            render_ms: self.render_ms,
            campaign_id: self.campaign_id.map(Cow::into_owned),
            product_id: self.product_id.map(Cow::into_owned),
            amount_cents: self.amount_cents,
            error_code: self.error_code.map(Cow::into_owned),
            device_id: self.device_id.map(Cow::into_owned),
            sensor: self.sensor.map(Cow::into_owned),
            value: self.value,
            unit: self.unit.map(Cow::into_owned),
            status: self.status,
            battery_pct: self.battery_pct,
            alarm: self.alarm.map(Cow::into_owned),
            severity: self.severity,
            message: self.message.map(Cow::into_owned),
        }
    }

    /// A bare event to decode into ([`EventRef::read_json`] and the
    /// decoders reset it to this before each event).
    pub fn slot() -> EventRef<'a> {
        EventRef::bare(Cow::Borrowed(""), EventType::Click, 0)
    }

    /// An event of `event_type` at `ts` with no optional field set.
    pub fn bare(event_id: Cow<'a, str>, event_type: EventType, ts: i64) -> EventRef<'a> {
        EventRef {
            event_id,
            event_type,
            ts,
            user_id: None,
            session_id: None,
            device: None,
            page: None,
            render_ms: None,
            campaign_id: None,
            product_id: None,
            amount_cents: None,
            error_code: None,
            device_id: None,
            sensor: None,
            value: None,
            unit: None,
            status: None,
            battery_pct: None,
            alarm: None,
            severity: None,
            message: None,
        }
    }
}

/// A field's value as its canonical JSON.
trait JsonValue {
    fn write_json(&self, out: &mut impl BufMut);
}

impl JsonValue for Cow<'_, str> {
    fn write_json(&self, out: &mut impl BufMut) {
        json_string(out, self);
    }
}

impl JsonValue for f64 {
    fn write_json(&self, out: &mut impl BufMut) {
        json_number(out, *self);
    }
}

impl JsonValue for i64 {
    fn write_json(&self, out: &mut impl BufMut) {
        json_integer(out, *self);
    }
}

macro_rules! label_value {
    ($($t:ty),+) => {$(
        impl JsonValue for $t {
            fn write_json(&self, out: &mut impl BufMut) {
                label(out, self.as_str());
            }
        }
    )+};
}
label_value!(Device, DeviceStatus, Severity);

/// A label (an enum's spelling: plain ASCII, nothing to escape) in quotes.
fn label(out: &mut impl BufMut, text: &str) {
    out.put_u8(b'"');
    out.put_slice(text.as_bytes());
    out.put_u8(b'"');
}

/// A JSON string: copied whole when nothing in it needs escaping (the
/// usual case: checked eight bytes at a time, as the decoder checks), else
/// written by serde_json, whose escapes the canonical form is.
fn json_string(out: &mut impl BufMut, text: &str) {
    if crate::decode::plain_run(text.as_bytes(), 0) == text.len() {
        label(out, text);
    } else {
        serde_json::to_writer(out.writer(), text).expect("a string always serializes");
    }
}

fn json_integer(out: &mut impl BufMut, value: i64) {
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// A number as serde_json writes an `f64` (shortest round-trip form; a
/// bound checked on decoding keeps it finite).
fn json_number(out: &mut impl BufMut, value: f64) {
    serde_json::to_writer(out.writer(), &value).expect("a number always serializes");
}

impl From<Event> for EventRef<'static> {
    fn from(event: Event) -> EventRef<'static> {
        EventRef {
            event_id: Cow::Owned(event.event_id),
            event_type: event.event_type,
            ts: event.ts,
            user_id: event.user_id.map(Cow::Owned),
            session_id: event.session_id.map(Cow::Owned),
            device: event.device,
            page: event.page.map(Cow::Owned),
            render_ms: event.render_ms,
            campaign_id: event.campaign_id.map(Cow::Owned),
            product_id: event.product_id.map(Cow::Owned),
            amount_cents: event.amount_cents,
            error_code: event.error_code.map(Cow::Owned),
            device_id: event.device_id.map(Cow::Owned),
            sensor: event.sensor.map(Cow::Owned),
            value: event.value,
            unit: event.unit.map(Cow::Owned),
            status: event.status,
            battery_pct: event.battery_pct,
            alarm: event.alarm.map(Cow::Owned),
            severity: event.severity,
            message: event.message.map(Cow::Owned),
        }
    }
}

/// A string field, borrowed.
fn text(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

impl Event {
    /// The event as an [`EventRef`] borrowing this one's strings.
    pub fn to_ref(&self) -> EventRef<'_> {
        EventRef {
            event_id: Cow::Borrowed(&self.event_id),
            event_type: self.event_type,
            ts: self.ts,
            user_id: text(&self.user_id),
            session_id: text(&self.session_id),
            device: self.device,
            page: text(&self.page),
            render_ms: self.render_ms,
            campaign_id: text(&self.campaign_id),
            product_id: text(&self.product_id),
            amount_cents: self.amount_cents,
            error_code: text(&self.error_code),
            device_id: text(&self.device_id),
            sensor: text(&self.sensor),
            value: self.value,
            unit: text(&self.unit),
            status: self.status,
            battery_pct: self.battery_pct,
            alarm: text(&self.alarm),
            severity: self.severity,
            message: text(&self.message),
        }
    }
}
