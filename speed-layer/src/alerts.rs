//! Alert rules, evaluated by the speed layer in event time.
//!
//! - `sensor_range`: a sensor's value outside `[min, max]` for `consecutive`
//!   readings in a row raises; the next reading inside clears.
//! - `device_offline`: a device whose last status is offline for longer than
//!   `after` (event time: the watermark passing `offline since + after`)
//!   raises; an online status clears.
//! - `alarm`: an alarm event whose severity is listed raises (one alert per
//!   device and alarm name while active); it clears after `clear_after` of
//!   event time without another, or when the device reports online.
//! - `page_error_rate`: once a 1-minute window closes (the watermark passes
//!   its end), a page with at least `min_views` page views and errors/views
//!   above `threshold` raises; a later closed window under the threshold clears.
//!
//! An alert is raised once and stays active until cleared — no repeats. The
//! engine's state (active alerts, counters, timers, recent alerts) is part of
//! the speed layer's checkpoint, so a restart neither repeats nor forgets one.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use lambda_events::bucket::MINUTE_MS;
use lambda_events::{BucketViews, DeviceStatus, EventRef, EventType, Severity};
use serde::{Deserialize, Serialize};

/// Alerts kept for readers (the newest; see the limits table).
pub const RECENT_ALERTS: usize = lambda_events::limits::ALERT_TRANSITIONS_KEPT;

/// `sensor_range` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorRange {
    /// Sensor name, e.g. `temperature`.
    pub sensor: String,
    /// Lowest value in range.
    pub min: f64,
    /// Highest value in range.
    pub max: f64,
    /// Readings in a row outside the range that raise.
    #[serde(default = "default_consecutive")]
    pub consecutive: u32,
}

impl std::str::FromStr for SensorRange {
    type Err = String;

    /// `SENSOR:MIN:MAX` or `SENSOR:MIN:MAX:N`, e.g. `temperature:15:27:3`.
    fn from_str(text: &str) -> Result<SensorRange, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let number = |i: usize, what: &str| -> Result<f64, String> {
            parts[i]
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    format!(
                        "sensor range {text:?}: {what} {:?} is not a number",
                        parts[i]
                    )
                })
        };
        if !(3..=4).contains(&parts.len()) || parts[0].trim().is_empty() {
            return Err(format!(
                "sensor range {text:?}: expected SENSOR:MIN:MAX or SENSOR:MIN:MAX:N, e.g. temperature:15:27:3"
            ));
        }
        let (min, max) = (number(1, "min")?, number(2, "max")?);
        if min > max {
            return Err(format!(
                "sensor range {text:?}: min {min} is above max {max}"
            ));
        }
        let consecutive = match parts.get(3) {
            None => default_consecutive(),
            Some(n) => n
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    format!("sensor range {text:?}: N {n:?} is not a positive integer")
                })?,
        };
        Ok(SensorRange {
            sensor: parts[0].trim().to_string(),
            min,
            max,
            consecutive,
        })
    }
}

fn default_consecutive() -> u32 {
    3
}

/// `device_offline` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOffline {
    /// Offline for longer than this (ms of event time) raises.
    pub after_ms: i64,
}

/// `alarm` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// Severities that raise.
    pub severities: Vec<Severity>,
    /// Event time without another such alarm after which the alert clears.
    pub clear_after_ms: i64,
}

/// `page_error_rate` rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageErrorRate {
    /// errors / page views above this raises, e.g. 0.05.
    pub threshold: f64,
    /// Windows with fewer page views are not judged.
    pub min_views: u64,
}

/// Every rule; a rule left out is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRules {
    /// Sensor ranges.
    #[serde(default)]
    pub sensor_range: Vec<SensorRange>,
    /// Device offline too long.
    #[serde(default)]
    pub device_offline: Option<DeviceOffline>,
    /// Severe alarms.
    #[serde(default)]
    pub alarm: Option<AlarmRule>,
    /// Page error rate.
    #[serde(default)]
    pub page_error_rate: Option<PageErrorRate>,
}

/// Rules set one by one (by CLI flags), each replacing that rule of a set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertOverrides {
    /// Replaces every sensor range, when not empty.
    pub sensor_range: Vec<SensorRange>,
    /// Replaces the device-offline threshold.
    pub offline_after_ms: Option<i64>,
    /// Replaces the alarm severities (the clearing time is kept).
    pub severities: Vec<Severity>,
    /// Replaces the page error-rate threshold (the minimum views is kept).
    pub error_rate: Option<f64>,
}

impl AlertRules {
    /// These rules with the ones `overrides` sets replaced. A rule that is
    /// off here takes what `overrides` leaves unset from the defaults.
    pub fn with_overrides(mut self, overrides: &AlertOverrides) -> AlertRules {
        let defaults = AlertRules::defaults();
        if !overrides.sensor_range.is_empty() {
            self.sensor_range = overrides.sensor_range.clone();
        }
        if let Some(after_ms) = overrides.offline_after_ms {
            self.device_offline = Some(DeviceOffline { after_ms });
        }
        if !overrides.severities.is_empty() {
            let clear_after_ms = (self.alarm.as_ref())
                .or(defaults.alarm.as_ref())
                .map_or(600_000, |a| a.clear_after_ms);
            self.alarm = Some(AlarmRule {
                severities: overrides.severities.clone(),
                clear_after_ms,
            });
        }
        if let Some(threshold) = overrides.error_rate {
            let min_views = (self.page_error_rate.as_ref())
                .or(defaults.page_error_rate.as_ref())
                .map_or(20, |r| r.min_views);
            self.page_error_rate = Some(PageErrorRate {
                threshold,
                min_views,
            });
        }
        self
    }

    /// The rules `lambda demo` runs with when none are configured: ranges
    /// around the generator's sensors, devices offline over 5 minutes, high
    /// and critical alarms, pages with more than 10% errors.
    pub fn defaults() -> AlertRules {
        AlertRules {
            sensor_range: vec![
                SensorRange {
                    sensor: "temperature".into(),
                    min: 15.0,
                    max: 27.0,
                    consecutive: 3,
                },
                SensorRange {
                    sensor: "humidity".into(),
                    min: 25.0,
                    max: 65.0,
                    consecutive: 3,
                },
            ],
            device_offline: Some(DeviceOffline {
                after_ms: 5 * MINUTE_MS,
            }),
            alarm: Some(AlarmRule {
                severities: vec![Severity::High, Severity::Critical],
                clear_after_ms: 10 * MINUTE_MS,
            }),
            page_error_rate: Some(PageErrorRate {
                threshold: 0.10,
                min_views: 20,
            }),
        }
    }
}

/// Which rule an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleName {
    /// [`SensorRange`].
    SensorRange,
    /// [`DeviceOffline`].
    DeviceOffline,
    /// [`AlarmRule`].
    Alarm,
    /// [`PageErrorRate`].
    PageErrorRate,
}

impl RuleName {
    /// `sensor_range`, `device_offline`, `alarm` or `page_error_rate`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleName::SensorRange => "sensor_range",
            RuleName::DeviceOffline => "device_offline",
            RuleName::Alarm => "alarm",
            RuleName::PageErrorRate => "page_error_rate",
        }
    }
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Raised or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition started.
    Raised,
    /// The condition ended.
    Cleared,
}

/// One alert transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Order of transitions in this speed instance (1, 2, …).
    pub seq: u64,
    /// The rule.
    pub rule: RuleName,
    /// What it is about, e.g. `dev-0007/temperature`, `/checkout`.
    pub key: String,
    /// Raised or cleared.
    pub state: AlertState,
    /// Event time of the transition (ms).
    pub ts: i64,
    /// What happened, for people.
    pub message: String,
    /// The value that tripped or cleared it, when there is one.
    pub value: Option<f64>,
}

/// An alert's `name` (key or message) is at most
/// [`MAX_ALERT_TEXT_BYTES`](lambda_events::limits::MAX_ALERT_TEXT_BYTES)
/// (what comes from outside: a snapshot, a checkpoint).
pub(crate) fn check_text(name: &str, value: &str) -> Result<(), String> {
    use lambda_events::limits::MAX_ALERT_TEXT_BYTES;
    if value.len() <= MAX_ALERT_TEXT_BYTES {
        Ok(())
    } else {
        Err(format!(
            "an alert's {name} is {} bytes; at most {MAX_ALERT_TEXT_BYTES}",
            value.len()
        ))
    }
}

/// Keys each part of the alert state tracks at most (active alerts, devices
/// pending offline, sensors out of range, recent alarms). A key past the cap
/// is not tracked, and counted in `dropped_keys` (status and metrics): one
/// million devices that each send `offline` once cost a bounded state and a
/// bounded checkpoint, not one entry each forever.
pub const MAX_ALERT_KEYS: usize = 100_000;
/// An active alert with no transition for this long in event time (by the
/// watermark) is cleared as expired: a device that went offline and never
/// came back does not stay in the state forever. A condition that still
/// holds raises it again with its next event.
pub const ALERT_TTL_MS: i64 = 24 * 3_600_000;

/// What a reader of a state learns about its alerts
/// ([`AlertEngine::news`], [`Mirror::apply`](crate::export::Mirror::apply)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertNews {
    /// Transitions after the reader's seq, oldest first.
    pub transitions: Vec<Alert>,
    /// The alerts active now, `(rule, key, raised at)`, when the
    /// transitions cannot tell the reader (see [`AlertEngine::news`]).
    pub active: Option<Vec<(RuleName, String, i64)>>,
}

impl AlertNews {
    /// Whether it says anything.
    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.active.is_none()
    }
}

/// The rules' running state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertEngine {
    /// The rules (configuration, not checkpointed; [`AlertEngine::set_rules`]).
    #[serde(skip)]
    rules: AlertRules,
    /// Active alerts and when they were raised.
    active: ActiveAlerts,
    /// Out-of-range readings in a row, by `device/sensor`.
    out_of_range: BTreeMap<String, u32>,
    /// Devices whose last status is offline and whose alert is not raised yet, and since when.
    offline_since: BTreeMap<String, i64>,
    /// Last severe alarm time by `device/alarm`.
    last_alarm: BTreeMap<String, i64>,
    /// Windows before this start have been judged for error rates.
    judged_before: i64,
    /// Last transition's seq.
    seq: u64,
    /// The newest transitions.
    recent: VecDeque<Alert>,
    /// Transitions by (rule, state), for metrics.
    #[serde(with = "pairs")]
    totals: BTreeMap<(RuleName, AlertState), u64>,
    /// Keys not tracked because a map was at [`MAX_ALERT_KEYS`].
    #[serde(default)]
    dropped_keys: u64,
    /// Where an event's alert key is written, so that asking about it
    /// allocates nothing.
    #[serde(skip)]
    key_buf: String,
    /// No expiry, offline alert or alarm clearing falls due before this
    /// event time (`None`: not known, look at every key). Lowered as keys
    /// come in, so that a watermark before it costs no walk over the keys.
    #[serde(skip)]
    due_from: Option<i64>,
}

/// Active alerts: event time raised, by rule and then key. Kept per rule so
/// that an event asks about its own key as a `&str`, without building a
/// `(rule, key)` pair; a checkpoint holds it as the list of
/// `[[rule, key], raised]` pairs, sorted by rule and key.
#[derive(Debug, Clone, Default)]
struct ActiveAlerts {
    by_rule: BTreeMap<RuleName, BTreeMap<String, i64>>,
    len: usize,
}

impl ActiveAlerts {
    /// Whether any alert of `rule` is active.
    fn any_of(&self, rule: RuleName) -> bool {
        self.by_rule.get(&rule).is_some_and(|keys| !keys.is_empty())
    }

    fn contains(&self, rule: RuleName, key: &str) -> bool {
        self.by_rule
            .get(&rule)
            .is_some_and(|keys| keys.contains_key(key))
    }

    /// Adds `key` (not already there).
    fn insert(&mut self, rule: RuleName, key: &str, raised: i64) {
        if self
            .by_rule
            .entry(rule)
            .or_default()
            .insert(key.to_owned(), raised)
            .is_none()
        {
            self.len += 1;
        }
    }

    fn remove(&mut self, rule: RuleName, key: &str) -> Option<i64> {
        let removed = self.by_rule.get_mut(&rule)?.remove(key)?;
        self.len -= 1;
        Some(removed)
    }

    fn len(&self) -> usize {
        self.len
    }

    /// `(rule, key, raised)`, sorted by rule and key.
    fn iter(&self) -> impl Iterator<Item = (RuleName, &str, i64)> {
        self.by_rule.iter().flat_map(|(rule, keys)| {
            keys.iter()
                .map(|(key, raised)| (*rule, key.as_str(), *raised))
        })
    }

    /// The keys of `rule` starting with `prefix`.
    fn with_prefix<'a>(&'a self, rule: RuleName, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.by_rule
            .get(&rule)
            .into_iter()
            .flat_map(move |keys| keys.range::<str, _>((Bound::Included(prefix), Bound::Unbounded)))
            .map(|(key, _)| key.as_str())
            .take_while(move |key| key.starts_with(prefix))
    }
}

impl Serialize for ActiveAlerts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|(rule, key, raised)| ((rule, key), raised)))
    }
}

impl<'de> Deserialize<'de> for ActiveAlerts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ActiveAlerts, D::Error> {
        let mut active = ActiveAlerts::default();
        for ((rule, key), raised) in Vec::<((RuleName, String), i64)>::deserialize(d)? {
            active.insert(rule, &key, raised);
        }
        Ok(active)
    }
}

impl AlertEngine {
    /// An engine running `rules`.
    pub fn new(rules: AlertRules) -> AlertEngine {
        AlertEngine {
            rules,
            judged_before: i64::MIN,
            ..AlertEngine::default()
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &AlertRules {
        &self.rules
    }

    /// Puts `rules` in force (on a restored engine, say): when things fall
    /// due is worked out again under them at the next watermark.
    pub fn set_rules(&mut self, rules: AlertRules) {
        self.rules = rules;
        self.due_from = None;
    }

    /// Transitions after `seq`, oldest first.
    pub fn since(&self, seq: u64) -> impl Iterator<Item = &Alert> {
        self.recent.iter().filter(move |a| a.seq > seq)
    }

    /// What a reader that has taken the transitions up to `since` needs
    /// to know the alerts (`renewed`: it took them from another epoch, and
    /// gets every transition kept): the transitions after it, and the
    /// active alerts when the transitions cannot tell it — after a new
    /// epoch, or when those right after `since` are no longer kept. (The
    /// list with every transition cost as much as the alerts active, up to
    /// [`MAX_ALERT_KEYS`], however little changed.)
    pub fn news(&self, since: u64, renewed: bool) -> AlertNews {
        let since = if renewed { 0 } else { since };
        let transitions: Vec<Alert> = self.since(since).cloned().collect();
        let gap = transitions
            .first()
            .is_some_and(|first| first.seq > since.saturating_add(1));
        let active = (renewed || gap).then(|| {
            self.active()
                .map(|(rule, key, raised)| (rule, key.to_string(), raised))
                .collect()
        });
        AlertNews {
            transitions,
            active,
        }
    }

    /// What a restore computes with is what a state can hold (see
    /// `CheckpointFile::check`): at most [`RECENT_ALERTS`] transitions,
    /// none past the seq (at most 2^53 − 1); times within the bounds of
    /// event time ([`crate::export::plausible_time`]); keys and messages
    /// at most [`MAX_ALERT_TEXT_BYTES`](lambda_events::limits::MAX_ALERT_TEXT_BYTES)
    /// — what a snapshot of it must pass (a hand-made checkpoint's alert
    /// at i64::MAX had every snapshot of its partition refused: a review).
    pub(crate) fn check(&self) -> Result<(), String> {
        use crate::export::plausible_time as time;
        use lambda_events::limits::MAX_ALERT_ID;
        if self.seq > MAX_ALERT_ID {
            return Err(format!("an alert seq of {}, past {MAX_ALERT_ID}", self.seq));
        }
        if self.recent.len() > RECENT_ALERTS {
            return Err(format!("{} recent alert transitions", self.recent.len()));
        }
        for alert in &self.recent {
            if alert.seq > self.seq {
                return Err(format!("an alert seq of {} past the state's", alert.seq));
            }
            time("an alert's time", alert.ts)?;
            check_text("key", &alert.key)?;
            check_text("message", &alert.message)?;
        }
        for (_, key, raised) in self.active.iter() {
            time("an active alert's time", raised)?;
            check_text("key", key)?;
        }
        for (key, t) in self.offline_since.iter().chain(&self.last_alarm) {
            time("an alert rule's time", *t)?;
            check_text("key", key)?;
        }
        if self.judged_before != i64::MIN {
            time("the error rates' judged mark", self.judged_before)?;
        }
        Ok(())
    }

    /// The last transition's seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Keys not tracked because the state was at [`MAX_ALERT_KEYS`].
    pub fn dropped_keys(&self) -> u64 {
        self.dropped_keys
    }

    /// Whether `map` may take `key`: it holds it already or has room. A key
    /// refused is counted.
    fn room_for<V>(map: &BTreeMap<String, V>, key: &str, dropped: &mut u64) -> bool {
        if map.len() < MAX_ALERT_KEYS || map.contains_key(key) {
            true
        } else {
            *dropped += 1;
            false
        }
    }

    /// Active alerts: (rule, key, raised at).
    pub fn active(&self) -> impl Iterator<Item = (RuleName, &str, i64)> {
        self.active.iter()
    }

    /// Transitions so far by (rule, state).
    pub fn totals(&self) -> &BTreeMap<(RuleName, AlertState), u64> {
        &self.totals
    }

    fn transition(
        &mut self,
        rule: RuleName,
        key: &str,
        state: AlertState,
        ts: i64,
        message: impl FnOnce() -> String,
        value: Option<f64>,
    ) {
        match state {
            AlertState::Raised if self.active.contains(rule, key) => return,
            AlertState::Raised if self.active.len() >= MAX_ALERT_KEYS => {
                self.dropped_keys += 1;
                return;
            }
            AlertState::Raised => {
                self.active.insert(rule, key, ts);
                self.due_at(ts.saturating_add(ALERT_TTL_MS));
            }
            AlertState::Cleared if self.active.remove(rule, key).is_none() => return,
            AlertState::Cleared => {}
        }
        // A restored seq is at most 2^53 − 1 (the checkpoint's check).
        self.seq = self.seq.saturating_add(1);
        let total = self.totals.entry((rule, state)).or_default();
        *total = total.saturating_add(1);
        self.recent.push_back(Alert {
            seq: self.seq,
            rule,
            key: key.to_string(),
            state,
            ts,
            message: message(),
            value,
        });
        while self.recent.len() > RECENT_ALERTS {
            self.recent.pop_front();
        }
    }

    /// Applies the per-event rules to a counted event. Allocates nothing
    /// unless the event changes the alert state.
    pub fn on_event(&mut self, event: &EventRef<'_>) {
        let mut key = std::mem::take(&mut self.key_buf);
        self.on_event_keyed(event, &mut key);
        self.key_buf = key;
    }

    /// [`AlertEngine::on_event`], writing alert keys into `key`.
    fn on_event_keyed(&mut self, event: &EventRef<'_>, key: &mut String) {
        let device = event.device_id.as_deref().unwrap_or("");
        match event.event_type {
            EventType::SensorReading => {
                let (Some(sensor), Some(value)) = (event.sensor.as_deref(), event.value) else {
                    return;
                };
                let Some(range) = self.rules.sensor_range.iter().find(|r| r.sensor == sensor)
                else {
                    return;
                };
                let (min, max, needed) = (range.min, range.max, range.consecutive.max(1));
                let in_range = !(value < min || value > max);
                if in_range
                    && self.out_of_range.is_empty()
                    && !self.active.any_of(RuleName::SensorRange)
                {
                    // Nothing to reset or clear: most readings, no key written.
                    return;
                }
                write_alert_key(key, device, sensor);
                if !in_range {
                    if !Self::room_for(&self.out_of_range, key, &mut self.dropped_keys) {
                        return;
                    }
                    let n = self.out_of_range.entry(key.clone()).or_default();
                    *n += 1;
                    if *n >= needed {
                        self.transition(
                            RuleName::SensorRange,
                            key,
                            AlertState::Raised,
                            event.ts,
                            || format!("{sensor} of {device} outside [{min}, {max}] for {needed} readings: {value}"),
                            Some(value),
                        );
                    }
                } else {
                    self.out_of_range.remove(key.as_str());
                    self.transition(
                        RuleName::SensorRange,
                        key,
                        AlertState::Cleared,
                        event.ts,
                        || format!("{sensor} of {device} back in range: {value}"),
                        Some(value),
                    );
                }
            }
            EventType::DeviceStatus => match event.status {
                Some(DeviceStatus::Offline) => {
                    if !self.offline_since.contains_key(device)
                        && Self::room_for(&self.offline_since, device, &mut self.dropped_keys)
                    {
                        self.offline_since.insert(device.to_string(), event.ts);
                        if let Some(rule) = &self.rules.device_offline {
                            self.due_at(event.ts.saturating_add(rule.after_ms));
                        }
                    }
                }
                Some(DeviceStatus::Online) => {
                    self.offline_since.remove(device);
                    self.transition(
                        RuleName::DeviceOffline,
                        device,
                        AlertState::Cleared,
                        event.ts,
                        || format!("{device} is online again"),
                        None,
                    );
                    write_alert_key(key, device, "");
                    let alarms: Vec<String> = self
                        .active
                        .with_prefix(RuleName::Alarm, key)
                        .map(str::to_owned)
                        .collect();
                    for key in alarms {
                        self.last_alarm.remove(&key);
                        self.transition(
                            RuleName::Alarm,
                            &key,
                            AlertState::Cleared,
                            event.ts,
                            || format!("{device} is online again"),
                            None,
                        );
                    }
                }
                None => {}
            },
            EventType::Alarm => {
                let (Some(rule), Some(severity)) = (&self.rules.alarm, event.severity) else {
                    return;
                };
                if !rule.severities.contains(&severity) {
                    return;
                }
                let name = event.alarm.as_deref().unwrap_or("");
                write_alert_key(key, device, name);
                if !Self::room_for(&self.last_alarm, key, &mut self.dropped_keys) {
                    return;
                }
                let last = self.last_alarm.entry(key.clone()).or_insert(event.ts);
                *last = (*last).max(event.ts);
                self.due_at(event.ts.saturating_add(rule.clear_after_ms));
                let detail = event.message.as_deref();
                self.transition(
                    RuleName::Alarm,
                    key,
                    AlertState::Raised,
                    event.ts,
                    || {
                        let detail = detail.map(|m| format!(": {m}")).unwrap_or_default();
                        format!("{} alarm {name} on {device}{detail}", severity.as_str())
                    },
                    None,
                );
            }
            _ => {}
        }
    }

    /// Where the windows passed to [`AlertEngine::on_watermark`] should
    /// start: every earlier window has been judged for error rates.
    pub fn judged_before(&self) -> i64 {
        self.judged_before
    }

    /// Applies the time-driven rules as the watermark reaches `watermark`;
    /// `windows` are the window starts and views from
    /// [`AlertEngine::judged_before`] on, in order.
    pub fn on_watermark<'a>(
        &mut self,
        watermark: i64,
        windows: impl IntoIterator<Item = (i64, &'a BucketViews)>,
    ) {
        if self.due_from.is_none_or(|due| due <= watermark) {
            self.on_due(watermark);
        }
        self.judge_error_rates(watermark, windows);
    }

    /// Lowers [`AlertEngine::due_from`] to `due`.
    fn due_at(&mut self, due: i64) {
        if let Some(from) = &mut self.due_from {
            *from = (*from).min(due);
        }
    }

    /// Expires, raises and clears what falls due by `watermark`, and
    /// notes when the next thing does.
    fn on_due(&mut self, watermark: i64) {
        let expired: Vec<((RuleName, String), i64)> = self
            .active
            .iter()
            .filter(|(_, _, raised)| raised.saturating_add(ALERT_TTL_MS) <= watermark)
            .map(|(rule, key, raised)| ((rule, key.to_owned()), raised))
            .collect();
        for ((rule, key), raised) in expired {
            self.out_of_range.remove(&key);
            self.last_alarm.remove(&key);
            self.transition(
                rule,
                &key,
                AlertState::Cleared,
                raised.saturating_add(ALERT_TTL_MS),
                || format!("expired: no change for {} h", ALERT_TTL_MS / 3_600_000),
                None,
            );
        }
        if let Some(rule) = self.rules.device_offline.clone() {
            let due: Vec<(String, i64)> = self
                .offline_since
                .iter()
                .filter(|(_, since)| since.saturating_add(rule.after_ms) <= watermark)
                .map(|(d, since)| (d.clone(), *since))
                .collect();
            for (device, since) in due {
                // Raised: no longer pending, so later watermarks skip it; the
                // device's online status clears it through `active`.
                self.offline_since.remove(&device);
                let minutes = rule.after_ms as f64 / MINUTE_MS as f64;
                self.transition(
                    RuleName::DeviceOffline,
                    &device,
                    AlertState::Raised,
                    since.saturating_add(rule.after_ms),
                    || format!("{device} offline for more than {minutes} min"),
                    None,
                );
            }
        }
        if let Some(rule) = self.rules.alarm.clone() {
            let quiet: Vec<(String, i64)> = self
                .last_alarm
                .iter()
                .filter(|(_, last)| last.saturating_add(rule.clear_after_ms) <= watermark)
                .map(|(k, last)| (k.clone(), *last))
                .collect();
            for (key, last) in quiet {
                self.last_alarm.remove(&key);
                self.transition(
                    RuleName::Alarm,
                    &key,
                    AlertState::Cleared,
                    last.saturating_add(rule.clear_after_ms),
                    || format!("no further alarm {key}"),
                    None,
                );
            }
        }
        let offline_after = self.rules.device_offline.as_ref().map(|r| r.after_ms);
        let clear_after = self.rules.alarm.as_ref().map(|r| r.clear_after_ms);
        let next = (self.active.iter())
            .map(|(_, _, raised)| raised.saturating_add(ALERT_TTL_MS))
            .chain(offline_after.into_iter().flat_map(|after| {
                (self.offline_since.values()).map(move |since| since.saturating_add(after))
            }))
            .chain(clear_after.into_iter().flat_map(|after| {
                (self.last_alarm.values()).map(move |last| last.saturating_add(after))
            }))
            .min();
        self.due_from = Some(next.unwrap_or(i64::MAX));
    }

    /// Judges the windows closed by `watermark` for page error rates.
    fn judge_error_rates<'a>(
        &mut self,
        watermark: i64,
        windows: impl IntoIterator<Item = (i64, &'a BucketViews)>,
    ) {
        if let Some(rule) = self.rules.page_error_rate.clone() {
            // Windows that closed since the last look: end at or before the watermark.
            let from = self.judged_before;
            let closed: Vec<(i64, BTreeMap<String, (u64, u64)>)> = windows
                .into_iter()
                .skip_while(|(start, _)| *start < from)
                .take_while(|(start, _)| *start + MINUTE_MS <= watermark)
                .map(|(start, views)| (start, per_page(views)))
                .collect();
            for (start, pages) in &closed {
                let start = *start;
                for (page, (views, errors)) in pages {
                    let (views, errors) = (*views, *errors);
                    if views < rule.min_views {
                        continue;
                    }
                    let rate = errors as f64 / views as f64;
                    let state = if rate > rule.threshold {
                        AlertState::Raised
                    } else {
                        AlertState::Cleared
                    };
                    let message = format!(
                        "error rate of {page} {:.1}% in the minute at {start} ({errors} errors, {views} views; threshold {:.1}%)",
                        rate * 100.0,
                        rule.threshold * 100.0
                    );
                    self.transition(
                        RuleName::PageErrorRate,
                        page,
                        state,
                        start + MINUTE_MS,
                        || message,
                        Some(rate),
                    );
                }
            }
            if let Some((last, _)) = closed.last() {
                self.judged_before = self.judged_before.max(last + MINUTE_MS);
            }
        }
    }
}

/// The key of a per-device alert: device and sensor (or alarm name) joined
/// by `/`, each with `%` and `/` escaped (`%25`, `%2F`), so that device
/// `pump/7` alarm `leak` and device `pump` alarm `7/leak` are two alerts, and
/// a device's alerts are exactly the keys starting with `alert_key(device, "")`.
/// Ordinary ids read as they are: `dev-1/temperature`.
pub fn alert_key(device: &str, name: &str) -> String {
    let mut key = String::with_capacity(device.len() + name.len() + 1);
    write_alert_key(&mut key, device, name);
    key
}

/// Writes [`alert_key`] into `key` (cleared first).
fn write_alert_key(key: &mut String, device: &str, name: &str) {
    fn escaped(part: &str, out: &mut String) {
        if !part.contains(['%', '/']) {
            out.push_str(part);
            return;
        }
        for c in part.chars() {
            match c {
                '%' => out.push_str("%25"),
                '/' => out.push_str("%2F"),
                c => out.push(c),
            }
        }
    }
    key.clear();
    escaped(device, key);
    key.push('/');
    escaped(name, key);
}

/// Maps with tuple keys as JSON lists of `[key, value]` pairs (JSON object keys are strings).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// (page views, errors) by page over every device.
fn per_page(views: &BucketViews) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((page, _), counts) in &views.pages {
        let slot = out.entry(page.clone()).or_default();
        slot.0 += counts.page_views;
        slot.1 += counts.errors;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpeedState;
    use lambda_events::Event;

    const T0: i64 = 1_767_225_600_000;

    fn reading(id: &str, ts: i64, value: f64) -> Event {
        let mut e = Event::bare(id, EventType::SensorReading, ts);
        e.device_id = Some("dev-1".into());
        e.sensor = Some("temperature".into());
        e.value = Some(value);
        e
    }

    fn state() -> SpeedState {
        let mut s = SpeedState::new(60_000, 3_600_000);
        s.alerts = AlertEngine::new(AlertRules::defaults());
        s
    }

    fn rules_fired(s: &SpeedState) -> Vec<(RuleName, AlertState)> {
        s.alerts.since(0).map(|a| (a.rule, a.state)).collect()
    }

    /// A reader gets the active alerts only when the transitions cannot
    /// tell it: from another epoch, or past what the engine keeps.
    #[test]
    fn news_carries_the_active_alerts_only_where_transitions_cannot_tell() {
        let mut engine = AlertEngine::new(AlertRules::defaults());
        let raise = |engine: &mut AlertEngine, key: &str, ts: i64| {
            engine.transition(
                RuleName::Alarm,
                key,
                AlertState::Raised,
                ts,
                String::new,
                None,
            );
        };
        raise(&mut engine, "pump", 1);
        let news = engine.news(0, false);
        assert_eq!((news.transitions.len(), news.active), (1, None));
        assert_eq!(engine.news(1, false), AlertNews::default());
        let everything = engine.news(1, true);
        assert_eq!(
            everything.transitions.len(),
            1,
            "all kept, from another epoch"
        );
        let pump = (RuleName::Alarm, "pump".to_string(), 1);
        assert_eq!(everything.active, Some(vec![pump.clone()]));
        // As many more as the engine keeps: the first is no longer there
        // for a reader at 0, which is told what is active; one at 1 is not.
        for i in 0..RECENT_ALERTS as i64 {
            let key = format!("k{}", i / 2);
            match i % 2 {
                0 => raise(&mut engine, &key, 10 + i),
                _ => engine.transition(
                    RuleName::Alarm,
                    &key,
                    AlertState::Cleared,
                    10 + i,
                    String::new,
                    None,
                ),
            }
        }
        let behind = engine.news(0, false);
        assert_eq!(behind.transitions.first().map(|a| a.seq), Some(2));
        assert_eq!(behind.active, Some(vec![pump]));
        assert_eq!(engine.news(1, false).active, None);
    }

    #[test]
    fn sensor_ranges_from_flags() {
        let check = |text: &str, expected: Result<(&str, f64, f64, u32), &str>| {
            let got = text.parse::<SensorRange>();
            match expected {
                Ok((sensor, min, max, n)) => {
                    let r = got.unwrap();
                    assert_eq!(
                        (r.sensor.as_str(), r.min, r.max, r.consecutive),
                        (sensor, min, max, n)
                    );
                }
                Err(part) => {
                    let e = got.unwrap_err();
                    assert!(e.contains(part), "{text}: {e}");
                }
            }
        };
        check("temperature:15:27:3", Ok(("temperature", 15.0, 27.0, 3)));
        check("humidity:-5.5:60", Ok(("humidity", -5.5, 60.0, 3)));
        check("temperature:15", Err("expected SENSOR:MIN:MAX"));
        check(":1:2", Err("expected SENSOR:MIN:MAX"));
        check("t:x:2", Err("min \"x\" is not a number"));
        check("t:1:NaN", Err("max"));
        check("t:5:1", Err("min 5 is above max 1"));
        check("t:1:5:0", Err("N \"0\" is not a positive integer"));
    }

    #[test]
    fn a_sensor_out_of_range_for_n_readings_raises_once_and_clears() {
        let mut s = state();
        s.apply(&reading("a", T0, 30.0));
        s.apply(&reading("b", T0 + 1, 31.0));
        assert!(rules_fired(&s).is_empty(), "two readings are not enough");
        s.apply(&reading("c", T0 + 2, 32.0));
        s.apply(&reading("d", T0 + 3, 33.0)); // still out: no repeat
        s.apply(&reading("d", T0 + 3, 33.0)); // a resend: not counted at all
        s.apply(&reading("e", T0 + 4, 21.0));
        s.apply(&reading("f", T0 + 5, 21.5)); // in range, nothing active: nothing
        assert_eq!(
            rules_fired(&s),
            vec![
                (RuleName::SensorRange, AlertState::Raised),
                (RuleName::SensorRange, AlertState::Cleared)
            ]
        );
        let raised = s.alerts.since(0).next().unwrap();
        assert_eq!(raised.key, "dev-1/temperature");
        assert_eq!(raised.ts, T0 + 2);
        assert_eq!(s.alerts.since(1).count(), 1);
    }

    fn offline(device: &str, ts: i64) -> Event {
        let mut e = Event::bare(format!("off-{device}"), EventType::DeviceStatus, ts);
        e.device_id = Some(device.into());
        e.status = Some(DeviceStatus::Offline);
        e
    }

    /// Devices that send `offline` once and never again: the pending map
    /// holds at most the cap (the rest are counted), and every raised alert
    /// expires after the TTL, so the state returns to empty.
    #[test]
    fn alert_state_is_bounded_by_a_key_cap_and_a_ttl() {
        let mut engine = AlertEngine::new(AlertRules::defaults());
        for i in 0..MAX_ALERT_KEYS + 10 {
            engine.on_event(&offline(&format!("d{i}"), T0).to_ref());
        }
        assert_eq!(engine.offline_since.len(), MAX_ALERT_KEYS);
        assert_eq!(engine.dropped_keys(), 10);
        // A device already pending still updates in place at the cap.
        engine.on_event(&offline("d0", T0 + 1).to_ref());
        assert_eq!(engine.dropped_keys(), 10);
        let windows = || std::iter::empty::<(i64, &BucketViews)>();
        engine.on_watermark(T0 + 6 * MINUTE_MS, windows());
        assert_eq!(engine.active().count(), MAX_ALERT_KEYS);
        assert!(engine.offline_since.is_empty());
        // One ms before the TTL: still active; at it: all expired.
        let raised = T0 + 5 * MINUTE_MS;
        engine.on_watermark(raised + ALERT_TTL_MS - 1, windows());
        assert_eq!(engine.active().count(), MAX_ALERT_KEYS);
        engine.on_watermark(raised + ALERT_TTL_MS, windows());
        assert_eq!(engine.active().count(), 0);
        let last = engine.since(engine.seq() - 1).next().unwrap();
        assert_eq!(last.state, AlertState::Cleared);
        assert!(last.message.starts_with("expired"), "{}", last.message);
    }

    /// A watermark that found nothing due notes that nothing is; a key that
    /// comes in after it still falls due on time (offline alert, alarm
    /// clearing, expiry), not a millisecond early.
    #[test]
    fn keys_that_come_after_a_quiet_watermark_still_fall_due() {
        let rules = AlertRules::defaults();
        let after = rules.device_offline.as_ref().unwrap().after_ms;
        let clear_after = rules.alarm.as_ref().unwrap().clear_after_ms;
        let mut engine = AlertEngine::new(rules);
        let windows = || std::iter::empty::<(i64, &BucketViews)>();
        engine.on_watermark(T0, windows());
        assert_eq!(engine.due_from, Some(i64::MAX));
        engine.on_event(&offline("d1", T0).to_ref());
        engine.on_event(&alarm("a1", "d2", "leak", T0).to_ref());
        let active = |e: &AlertEngine| -> Vec<(RuleName, String)> {
            e.active().map(|(r, k, _)| (r, k.to_owned())).collect()
        };
        assert_eq!(active(&engine), vec![(RuleName::Alarm, "d2/leak".into())]);
        engine.on_watermark(T0 + after - 1, windows());
        assert_eq!(active(&engine).len(), 1);
        engine.on_watermark(T0 + after, windows());
        assert!(active(&engine).contains(&(RuleName::DeviceOffline, "d1".into())));
        engine.on_watermark(T0 + clear_after - 1, windows());
        assert!(active(&engine).contains(&(RuleName::Alarm, "d2/leak".into())));
        engine.on_watermark(T0 + clear_after, windows());
        assert_eq!(
            active(&engine),
            vec![(RuleName::DeviceOffline, "d1".into())]
        );
        engine.on_watermark(T0 + after + ALERT_TTL_MS - 1, windows());
        assert_eq!(active(&engine).len(), 1);
        engine.on_watermark(T0 + after + ALERT_TTL_MS, windows());
        assert!(active(&engine).is_empty());
        assert_eq!(engine.due_from, Some(i64::MAX));
        // New rules: when things fall due is worked out again under them.
        engine.set_rules(AlertRules::defaults());
        assert_eq!(engine.due_from, None);
    }

    fn alarm(id: &str, device: &str, name: &str, ts: i64) -> Event {
        let mut e = Event::bare(id, EventType::Alarm, ts);
        e.device_id = Some(device.into());
        e.alarm = Some(name.into());
        e.severity = Some(Severity::Critical);
        e
    }

    /// Device `pump/7` alarm `leak` and device `pump` alarm `7/leak` used to
    /// share the key `pump/7/leak`: one alert for two, and `pump/7` coming
    /// online did not clear its own alarm.
    #[test]
    fn alert_keys_of_devices_with_slashes_do_not_collide() {
        assert_eq!(alert_key("dev-1", "temperature"), "dev-1/temperature");
        assert_eq!(alert_key("pump/7", "leak"), "pump%2F7/leak");
        assert_eq!(alert_key("pump", "7/leak"), "pump/7%2Fleak");
        assert_eq!(alert_key("a%2Fb", "x"), "a%252Fb/x");
        let mut engine = AlertEngine::new(AlertRules::defaults());
        engine.on_event(&alarm("a1", "pump/7", "leak", T0).to_ref());
        engine.on_event(&alarm("a2", "pump", "7/leak", T0 + 1).to_ref());
        let active: Vec<(RuleName, &str)> = engine.active().map(|(r, k, _)| (r, k)).collect();
        assert_eq!(
            active,
            vec![
                (RuleName::Alarm, "pump%2F7/leak"),
                (RuleName::Alarm, "pump/7%2Fleak")
            ]
        );
        let mut on = offline("pump/7", T0 + 2);
        on.status = Some(DeviceStatus::Online);
        engine.on_event(&on.to_ref());
        let active: Vec<&str> = engine.active().map(|(_, k, _)| k).collect();
        assert_eq!(active, vec!["pump/7%2Fleak"], "only pump/7's alarm cleared");
    }

    #[test]
    fn offline_devices_alarms_and_error_rates() {
        let mut s = state();
        let mut off = Event::bare("o", EventType::DeviceStatus, T0);
        off.device_id = Some("dev-2".into());
        off.status = Some(DeviceStatus::Offline);
        s.apply(&off);
        let mut alarm = Event::bare("al", EventType::Alarm, T0 + 1_000);
        alarm.device_id = Some("dev-3".into());
        alarm.alarm = Some("overheat".into());
        alarm.severity = Some(Severity::Critical);
        s.apply(&alarm);
        let mut low = alarm.clone();
        low.event_id = "al2".into();
        low.severity = Some(Severity::Low);
        s.apply(&low);
        // A minute with 30 views of /checkout, 6 errors: 20% > 10%.
        for i in 0..30 {
            let mut v = Event::bare(format!("v{i}"), EventType::PageView, T0 + 2_000 + i);
            v.user_id = Some("u".into());
            v.page = Some("/checkout".into());
            s.apply(&v);
        }
        for i in 0..6 {
            let mut e = Event::bare(format!("x{i}"), EventType::Error, T0 + 3_000 + i);
            e.user_id = Some("u".into());
            e.page = Some("/checkout".into());
            e.error_code = Some("500".into());
            s.apply(&e);
        }
        assert_eq!(rules_fired(&s), vec![(RuleName::Alarm, AlertState::Raised)]);
        // Event time moves on 7 minutes (a reading elsewhere): the watermark passes
        // the offline timer and closes the minute of the errors.
        s.apply(&reading("late-1", T0 + 7 * MINUTE_MS, 21.0));
        let fired = rules_fired(&s);
        assert!(
            fired.contains(&(RuleName::DeviceOffline, AlertState::Raised)),
            "{fired:?}"
        );
        assert!(
            fired.contains(&(RuleName::PageErrorRate, AlertState::Raised)),
            "{fired:?}"
        );
        // The device comes back: cleared.
        let mut on = off.clone();
        on.event_id = "on".into();
        on.ts = T0 + 7 * MINUTE_MS + 1;
        on.status = Some(DeviceStatus::Online);
        s.apply(&on);
        assert_eq!(
            s.alerts.since(0).last().map(|a| (a.rule, a.state)),
            Some((RuleName::DeviceOffline, AlertState::Cleared))
        );
        // 10 more minutes without alarms: the alarm clears.
        s.apply(&reading("later", T0 + 18 * MINUTE_MS, 21.0));
        assert!(
            s.alerts
                .active()
                .all(|(rule, _, _)| rule != RuleName::Alarm)
        );
    }
}
