//! The KPI definitions both layers implement: what each view counts, per
//! 1-minute bucket, and how two partial aggregates of one bucket merge.
//!
//! The speed layer folds events into these structs; the batch layer computes
//! the same columns in DuckDB SQL (`batch-layer/sql/*.sql`) and maps its rows
//! into them; serving merges them. One definition, two implementations.

use hashbrown::{Equivalent, HashMap};
use serde::{Deserialize, Serialize};

use crate::event::{DeviceStatus, EventType, Severity};
use crate::event_ref::EventRef;
use crate::sketch::{DdSketch, Hll};

/// Funnel counters for one bucket (and one campaign).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelCounts {
    /// `impression` events.
    pub impressions: u64,
    /// `click` events.
    pub clicks: u64,
    /// `add_to_cart` events.
    pub add_to_carts: u64,
    /// `purchase` events.
    pub purchases: u64,
    /// Sum of `amount_cents` over purchases.
    pub revenue_cents: i64,
    /// `signup_start` events.
    pub signup_starts: u64,
    /// `signup_complete` events.
    pub signup_completes: u64,
}

impl FunnelCounts {
    /// Counts one funnel event (other event types are ignored).
    #[inline]
    pub fn add(&mut self, event: &EventRef<'_>) {
        match event.event_type {
            EventType::Impression => self.impressions += 1,
            EventType::Click => self.clicks += 1,
            EventType::AddToCart => self.add_to_carts += 1,
            EventType::Purchase => {
                self.purchases += 1;
                // Saturating: bounded amounts cannot reach i64::MAX in any real
                // bucket, and a sum that did must not wrap negative.
                self.revenue_cents = self
                    .revenue_cents
                    .saturating_add(event.amount_cents.unwrap_or(0));
            }
            EventType::SignupStart => self.signup_starts += 1,
            EventType::SignupComplete => self.signup_completes += 1,
            _ => {}
        }
    }

    /// Adds another aggregate of disjoint events.
    pub fn merge(&mut self, other: &FunnelCounts) {
        self.impressions = self.impressions.saturating_add(other.impressions);
        self.clicks = self.clicks.saturating_add(other.clicks);
        self.add_to_carts = self.add_to_carts.saturating_add(other.add_to_carts);
        self.purchases = self.purchases.saturating_add(other.purchases);
        self.revenue_cents = self.revenue_cents.saturating_add(other.revenue_cents);
        self.signup_starts = self.signup_starts.saturating_add(other.signup_starts);
        self.signup_completes = self.signup_completes.saturating_add(other.signup_completes);
    }

    /// Click-through rate: clicks / impressions (`None` without impressions).
    pub fn ctr(&self) -> Option<f64> {
        ratio(self.clicks, self.impressions)
    }

    /// Conversion rate: purchases / clicks (`None` without clicks).
    pub fn conversion(&self) -> Option<f64> {
        ratio(self.purchases, self.clicks)
    }

    /// Whether the event type contributes to this view.
    pub fn counts(event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::Impression
                | EventType::Click
                | EventType::AddToCart
                | EventType::Purchase
                | EventType::SignupStart
                | EventType::SignupComplete
        )
    }
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// Page counters for one bucket, page and device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCounts {
    /// `page_view` events.
    pub page_views: u64,
    /// `error` events.
    pub errors: u64,
}

impl PageCounts {
    /// Counts one event (page views and errors; others are ignored).
    #[inline]
    pub fn add(&mut self, event: &EventRef<'_>) {
        match event.event_type {
            EventType::PageView => self.page_views += 1,
            EventType::Error => self.errors += 1,
            _ => {}
        }
    }

    /// Adds another aggregate of disjoint events.
    pub fn merge(&mut self, other: &PageCounts) {
        self.page_views = self.page_views.saturating_add(other.page_views);
        self.errors = self.errors.saturating_add(other.errors);
    }

    /// Whether the event type contributes to this view.
    pub fn counts(event_type: EventType) -> bool {
        matches!(event_type, EventType::PageView | EventType::Error)
    }
}

/// Statistics of one sensor's readings in one bucket.
///
/// `last` is the value of the reading with the greatest `(ts, event_id)`, so
/// it does not depend on arrival order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorStats {
    /// Number of readings.
    pub count: u64,
    /// Smallest value.
    #[serde(with = "crate::float")]
    pub min: f64,
    /// Largest value.
    #[serde(with = "crate::float")]
    pub max: f64,
    /// Sum of values (`avg = sum / count`).
    #[serde(with = "crate::float")]
    pub sum: f64,
    /// Event time of the last reading.
    pub last_ts: i64,
    /// `event_id` of the last reading (the tie-breaker).
    pub last_event_id: String,
    /// Value of the last reading.
    #[serde(with = "crate::float")]
    pub last: f64,
}

impl SensorStats {
    /// Stats of a single reading.
    pub fn of(ts: i64, event_id: &str, value: f64) -> SensorStats {
        SensorStats {
            count: 1,
            min: value,
            max: value,
            sum: value,
            last_ts: ts,
            last_event_id: event_id.to_string(),
            last: value,
        }
    }

    /// Adds one reading (as merging [`SensorStats::of`] it would, without allocating).
    #[inline]
    pub fn add(&mut self, ts: i64, event_id: &str, value: f64) {
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        if (ts, event_id) > (self.last_ts, self.last_event_id.as_str()) {
            self.last_ts = ts;
            self.last_event_id.clear();
            self.last_event_id.push_str(event_id);
            self.last = value;
        }
    }

    /// Adds another aggregate of disjoint readings.
    pub fn merge(&mut self, other: &SensorStats) {
        self.count = self.count.saturating_add(other.count);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        if (other.last_ts, other.last_event_id.as_str())
            > (self.last_ts, self.last_event_id.as_str())
        {
            self.last_ts = other.last_ts;
            self.last_event_id.clone_from(&other.last_event_id);
            self.last = other.last;
        }
    }

    /// Mean value.
    pub fn avg(&self) -> f64 {
        self.sum / self.count as f64
    }
}

/// Device status and alarm counters for one bucket and device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCounts {
    /// `device_status` events with status online.
    pub online: u64,
    /// `device_status` events with status offline.
    pub offline: u64,
    /// `alarm` events with severity low.
    pub alarms_low: u64,
    /// ... medium.
    pub alarms_medium: u64,
    /// ... high.
    pub alarms_high: u64,
    /// ... critical.
    pub alarms_critical: u64,
}

impl DeviceCounts {
    /// Counts one status or alarm event (others are ignored).
    #[inline]
    pub fn add(&mut self, event: &EventRef<'_>) {
        match (event.event_type, event.status, event.severity) {
            (EventType::DeviceStatus, Some(DeviceStatus::Online), _) => self.online += 1,
            (EventType::DeviceStatus, Some(DeviceStatus::Offline), _) => self.offline += 1,
            (EventType::Alarm, _, Some(Severity::Low)) => self.alarms_low += 1,
            (EventType::Alarm, _, Some(Severity::Medium)) => self.alarms_medium += 1,
            (EventType::Alarm, _, Some(Severity::High)) => self.alarms_high += 1,
            (EventType::Alarm, _, Some(Severity::Critical)) => self.alarms_critical += 1,
            _ => {}
        }
    }

    /// Adds another aggregate of disjoint events.
    pub fn merge(&mut self, other: &DeviceCounts) {
        self.online = self.online.saturating_add(other.online);
        self.offline = self.offline.saturating_add(other.offline);
        self.alarms_low = self.alarms_low.saturating_add(other.alarms_low);
        self.alarms_medium = self.alarms_medium.saturating_add(other.alarms_medium);
        self.alarms_high = self.alarms_high.saturating_add(other.alarms_high);
        self.alarms_critical = self.alarms_critical.saturating_add(other.alarms_critical);
    }

    /// Whether the event type contributes to this view.
    pub fn counts(event_type: EventType) -> bool {
        matches!(event_type, EventType::DeviceStatus | EventType::Alarm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts merged from outside (a remote speed instance's snapshot)
    /// saturate at u64::MAX instead of overflowing (a review).
    #[test]
    fn merged_counts_saturate() {
        let full = FunnelCounts {
            clicks: u64::MAX,
            purchases: 1,
            ..FunnelCounts::default()
        };
        let mut sum = full;
        sum.merge(&full);
        assert_eq!((sum.clicks, sum.purchases), (u64::MAX, 2));
        let devices = DeviceCounts {
            online: u64::MAX,
            ..DeviceCounts::default()
        };
        let mut both = devices;
        both.merge(&devices);
        assert_eq!(both.online, u64::MAX);
    }

    fn event(json: &str) -> EventRef<'_> {
        EventRef::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn funnel_counts_each_type_and_revenue() {
        let mut counts = FunnelCounts::default();
        for json in [
            r#"{"event_id":"1","ts":1,"event_type":"impression","user_id":"u"}"#,
            r#"{"event_id":"2","ts":1,"event_type":"impression","user_id":"u"}"#,
            r#"{"event_id":"3","ts":1,"event_type":"click","user_id":"u"}"#,
            r#"{"event_id":"4","ts":1,"event_type":"add_to_cart","user_id":"u"}"#,
            r#"{"event_id":"5","ts":1,"event_type":"purchase","user_id":"u","amount_cents":250}"#,
            r#"{"event_id":"6","ts":1,"event_type":"signup_start","user_id":"u"}"#,
            r#"{"event_id":"7","ts":1,"event_type":"page_view","user_id":"u","page":"/"}"#,
        ] {
            counts.add(&event(json));
        }
        let expected = FunnelCounts {
            impressions: 2,
            clicks: 1,
            add_to_carts: 1,
            purchases: 1,
            revenue_cents: 250,
            signup_starts: 1,
            signup_completes: 0,
        };
        assert_eq!(counts, expected);
        assert_eq!(counts.ctr(), Some(0.5));
        assert_eq!(counts.conversion(), Some(1.0));
        assert_eq!(FunnelCounts::default().ctr(), None);
    }

    #[test]
    fn sensor_last_is_independent_of_merge_order() {
        let a = SensorStats::of(10, "a", 1.0);
        let b = SensorStats::of(20, "b", 5.0);
        let c = SensorStats::of(20, "c", -2.0);
        let mut left = a.clone();
        left.merge(&b);
        left.merge(&c);
        let mut right = c.clone();
        right.merge(&b);
        right.merge(&a);
        assert_eq!(left, right);
        assert_eq!(
            (left.count, left.min, left.max, left.last),
            (3, -2.0, 5.0, -2.0)
        );
        assert_eq!(left.avg(), 4.0 / 3.0);
    }

    #[test]
    fn device_counts_status_and_severity() {
        let mut counts = DeviceCounts::default();
        counts.add(&event(r#"{"event_id":"1","ts":1,"event_type":"device_status","device_id":"d","status":"offline"}"#));
        counts.add(&event(r#"{"event_id":"2","ts":1,"event_type":"alarm","device_id":"d","alarm":"x","severity":"critical"}"#));
        assert_eq!(
            (counts.offline, counts.alarms_critical, counts.online),
            (1, 1, 0)
        );
    }
}

/// A two-part key (`(page, device)`, `(device_id, sensor)`) borrowed from
/// an event: it hashes as the `(String, String)` it stands for, so a bucket's
/// maps are looked up without allocating, and a key is copied only the first
/// time the bucket sees it.
#[derive(Debug, Hash)]
struct Pair<'a>(&'a str, &'a str);

impl Equivalent<(String, String)> for Pair<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

impl From<&Pair<'_>> for (String, String) {
    fn from(pair: &Pair<'_>) -> (String, String) {
        (pair.0.to_owned(), pair.1.to_owned())
    }
}

/// Everything both layers keep for one 1-minute bucket, keyed as the API filters:
/// funnel by campaign, pages by (page, device), sensors by (device, sensor), devices by id.
/// Missing optional keys (no campaign, no device) are the empty string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketViews {
    /// Funnel counters by `campaign_id`.
    pub funnel: HashMap<String, FunnelCounts>,
    /// Page counters by (`page`, `device`).
    pub pages: HashMap<(String, String), PageCounts>,
    /// Sensor stats by (`device_id`, `sensor`).
    pub sensors: HashMap<(String, String), SensorStats>,
    /// Status and alarm counters by `device_id`.
    pub devices: HashMap<String, DeviceCounts>,
    /// Distinct `user_id`s of funnel events, by `campaign_id` (`distinct_users`).
    pub users: HashMap<String, Hll>,
    /// `render_ms` of page views, by (`page`, `device`) (the render-time percentiles);
    /// present only where a page view carried a render time.
    pub render: HashMap<(String, String), DdSketch>,
}

impl BucketViews {
    /// Folds one event into the bucket (the caller has already checked the
    /// bucket and dedup). It allocates only for a key the bucket has not seen.
    #[inline]
    pub fn add(&mut self, event: &EventRef<'_>) {
        let t = event.event_type;
        if FunnelCounts::counts(t) {
            let campaign = event.campaign_id.as_deref().unwrap_or("");
            if let Some(user) = &event.user_id {
                self.users
                    .entry_ref(campaign)
                    .or_default()
                    .add(user.as_bytes());
            }
            self.funnel.entry_ref(campaign).or_default().add(event);
        }
        if PageCounts::counts(t) {
            let key = Pair(
                event.page.as_deref().unwrap_or(""),
                event.device.map_or("", |d| d.as_str()),
            );
            if t == EventType::PageView
                && let Some(render_ms) = event.render_ms
            {
                self.render.entry_ref(&key).or_default().add(render_ms);
            }
            self.pages.entry_ref(&key).or_default().add(event);
        }
        if t == EventType::SensorReading
            && let (Some(device_id), Some(sensor), Some(value)) =
                (&event.device_id, &event.sensor, event.value)
        {
            match self.sensors.get_mut(&Pair(device_id, sensor)) {
                Some(stats) => stats.add(event.ts, &event.event_id, value),
                None => {
                    let stats = SensorStats::of(event.ts, &event.event_id, value);
                    self.sensors
                        .insert((device_id.to_string(), sensor.to_string()), stats);
                }
            }
        }
        if DeviceCounts::counts(t) {
            let device = event.device_id.as_deref().unwrap_or("");
            self.devices.entry_ref(device).or_default().add(event);
        }
    }

    /// Merges another bucket's views of disjoint events into this one.
    pub fn merge(&mut self, other: &BucketViews) {
        for (k, v) in &other.funnel {
            self.funnel.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &other.pages {
            self.pages.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &other.sensors {
            match self.sensors.get_mut(k) {
                Some(existing) => existing.merge(v),
                None => {
                    self.sensors.insert(k.clone(), v.clone());
                }
            }
        }
        for (k, v) in &other.devices {
            self.devices.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &other.users {
            self.users.entry(k.clone()).or_default().merge(v);
        }
        for (k, v) in &other.render {
            self.render.entry(k.clone()).or_default().merge(v);
        }
    }

    /// Whether no event has been folded in.
    pub fn is_empty(&self) -> bool {
        self.funnel.is_empty()
            && self.pages.is_empty()
            && self.sensors.is_empty()
            && self.devices.is_empty()
    }
}
