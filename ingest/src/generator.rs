//! Realistic, reproducible traffic: funnel sessions and IoT devices, plus a
//! controlled share of late events, duplicate resends and malformed lines.
//!
//! The generator runs on its own event-time clock (`start_ms`, advancing
//! `1/rate` seconds per event), so the same seed and start give the same lines
//! byte for byte, whether they are sent live (paced to the wall clock by
//! [`crate::sender`]) or produced at once for a test.

use std::collections::VecDeque;

use lambda_events::{Device, DeviceStatus, Event, EventType, Severity};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Same seed and start, same lines.
    pub seed: u64,
    /// Event time of the first event (ms since the epoch).
    pub start_ms: i64,
    /// Events per second of event time.
    pub rate: f64,
    /// Size of the user population (sessions pick users with a long tail).
    pub users: u32,
    /// Number of IoT devices.
    pub devices: u32,
    /// Share of IoT events among all events.
    pub iot_share: f64,
    /// Share of events sent with an event time 2–10 minutes in the past.
    pub late_fraction: f64,
    /// Share of lines that resend an earlier event (same `event_id`).
    pub duplicate_fraction: f64,
    /// Share of lines that are malformed.
    pub malformed_fraction: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            start_ms: 1_700_000_000_000,
            rate: 200.0,
            users: 5_000,
            devices: 50,
            iot_share: 0.35,
            late_fraction: 0.01,
            duplicate_fraction: 0.01,
            malformed_fraction: 0.005,
        }
    }
}

/// What kind of line the generator produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    /// A valid event on time.
    Event,
    /// A valid event whose time is minutes behind the clock.
    Late,
    /// An exact resend of an earlier line.
    Duplicate,
    /// A line the collector must reject.
    Malformed,
}

/// One NDJSON line.
#[derive(Debug, Clone)]
pub struct Line {
    /// The bytes to send (no newline).
    pub bytes: Vec<u8>,
    /// What it is.
    pub kind: LineKind,
}

const CAMPAIGNS: [&str; 5] = [
    "spring-sale",
    "retargeting",
    "newsletter",
    "search-brand",
    "social-video",
];
const PAGES: [&str; 8] = [
    "/",
    "/search",
    "/product",
    "/product",
    "/cart",
    "/checkout",
    "/account",
    "/blog",
];
const SENSORS: [(&str, &str, f64, f64); 3] = [
    ("temperature", "C", 21.0, 0.4),
    ("humidity", "%", 45.0, 1.5),
    ("pressure", "hPa", 1013.0, 0.8),
];

#[derive(Debug)]
struct DeviceState {
    id: String,
    online: bool,
    /// Per-sensor slow drift added to the base value.
    drift: [f64; 3],
    battery: f64,
}

/// The generator; call [`Generator::next_line`] for each line.
#[derive(Debug)]
pub struct Generator {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    clock_ms: f64,
    seq: u64,
    sessions: Vec<VecDeque<Event>>,
    devices: Vec<DeviceState>,
    recent: VecDeque<Vec<u8>>,
}

/// Sessions kept open at once; each event step picks one of them.
const OPEN_SESSIONS: usize = 64;
/// Earlier lines a duplicate may resend.
const RECENT_LINES: usize = 256;

impl Generator {
    /// A generator for `config`.
    pub fn new(config: GeneratorConfig) -> Generator {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let devices = (0..config.devices)
            .map(|i| DeviceState {
                id: format!("dev-{i:04}"),
                online: true,
                drift: [0.0; 3],
                battery: rng.random_range(40.0..100.0),
            })
            .collect();
        Generator {
            clock_ms: config.start_ms as f64,
            config,
            rng,
            seq: 0,
            sessions: Vec::new(),
            devices,
            recent: VecDeque::new(),
        }
    }

    /// The generator's event-time clock (ms).
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms as i64
    }

    /// The next line.
    pub fn next_line(&mut self) -> Line {
        self.clock_ms += 1000.0 / self.config.rate;
        let roll: f64 = self.rng.random();
        if roll < self.config.malformed_fraction {
            return Line {
                bytes: self.malformed(),
                kind: LineKind::Malformed,
            };
        }
        if roll < self.config.malformed_fraction + self.config.duplicate_fraction
            && !self.recent.is_empty()
        {
            let idx = self.rng.random_range(0..self.recent.len());
            return Line {
                bytes: self.recent[idx].clone(),
                kind: LineKind::Duplicate,
            };
        }
        let late = self
            .rng
            .random_bool(self.config.late_fraction.clamp(0.0, 1.0));
        let mut event = if self.rng.random_bool(self.config.iot_share.clamp(0.0, 1.0)) {
            self.iot_event()
        } else {
            self.funnel_event()
        };
        if late {
            event.ts -= self.rng.random_range(120_000..600_000);
        }
        let bytes = event.to_json();
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(bytes.clone());
        Line {
            bytes,
            kind: if late {
                LineKind::Late
            } else {
                LineKind::Event
            },
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{:08x}-{:010}", self.config.seed as u32, self.seq)
    }

    fn event(&mut self, event_type: EventType) -> Event {
        let id = self.next_id();
        Event::bare(id, event_type, self.clock_ms as i64)
    }

    fn funnel_event(&mut self) -> Event {
        while self.sessions.len() < OPEN_SESSIONS {
            let session = self.plan_session();
            self.sessions.push(session);
        }
        let idx = self.rng.random_range(0..self.sessions.len());
        let mut event = self.sessions[idx]
            .pop_front()
            .expect("planned sessions are never empty");
        if self.sessions[idx].is_empty() {
            self.sessions.swap_remove(idx);
        }
        // Planned events carry placeholders for id and time; stamp them now.
        event.event_id = self.next_id();
        event.ts = self.clock_ms as i64;
        event
    }

    /// Plans one visit: page views, impressions, maybe clicks, carts, a purchase, a sign-up, errors.
    fn plan_session(&mut self) -> VecDeque<Event> {
        let rng = &mut self.rng;
        // A long tail of users: a few return often.
        let user = (rng.random::<f64>().powi(3) * self.config.users as f64) as u32;
        let user_id = format!("user-{user:06}");
        let session_id = format!("s-{:x}", rng.random::<u64>());
        let device = match rng.random_range(0..10) {
            0..=5 => Device::Mobile,
            6..=8 => Device::Desktop,
            _ => Device::Tablet,
        };
        let campaign = CAMPAIGNS[rng.random_range(0..CAMPAIGNS.len())].to_string();
        let base = |event_type| {
            let mut e = Event::bare("pending", event_type, 0);
            e.user_id = Some(user_id.clone());
            e
        };
        let mut plan = VecDeque::new();
        for _ in 0..rng.random_range(1..=4) {
            let mut view = base(EventType::PageView);
            view.page = Some(PAGES[rng.random_range(0..PAGES.len())].to_string());
            view.session_id = Some(session_id.clone());
            view.device = Some(device);
            // Log-normal render time: median ~250 ms on desktop, slower on mobile, long tail.
            let median: f64 = match device {
                Device::Desktop => 220.0,
                Device::Tablet => 300.0,
                Device::Mobile => 380.0,
            };
            let normal: f64 = standard_normal(rng);
            view.render_ms = Some((median.ln() + 0.6 * normal).exp().round());
            let page = view.page.clone();
            plan.push_back(view);
            if rng.random_bool(0.02) {
                let mut error = base(EventType::Error);
                error.error_code =
                    Some(["E500", "E502", "E404", "JS_TYPE_ERROR"][rng.random_range(0..4)].into());
                error.page = page;
                error.device = Some(device);
                plan.push_back(error);
            }
        }
        for _ in 0..rng.random_range(1..=5) {
            let product_id = format!("p-{:03}", rng.random_range(0..200));
            let touch = |event_type| {
                let mut e = base(event_type);
                e.session_id = Some(session_id.clone());
                e.campaign_id = Some(campaign.clone());
                e.product_id = Some(product_id.clone());
                e.device = Some(device);
                e
            };
            plan.push_back(touch(EventType::Impression));
            if rng.random_bool(0.08) {
                plan.push_back(touch(EventType::Click));
                if rng.random_bool(0.3) {
                    plan.push_back(touch(EventType::AddToCart));
                    if rng.random_bool(0.45) {
                        let mut purchase = touch(EventType::Purchase);
                        purchase.amount_cents = Some(rng.random_range(5..400) * 100 - 1);
                        plan.push_back(purchase);
                    }
                }
            }
        }
        if rng.random_bool(0.05) {
            let mut start = base(EventType::SignupStart);
            start.session_id = Some(session_id.clone());
            start.device = Some(device);
            plan.push_back(start);
            if rng.random_bool(0.6) {
                let mut complete = base(EventType::SignupComplete);
                complete.session_id = Some(session_id.clone());
                complete.device = Some(device);
                plan.push_back(complete);
            }
        }
        plan
    }

    fn iot_event(&mut self) -> Event {
        let idx = self.rng.random_range(0..self.devices.len());
        let roll: f64 = self.rng.random();
        let device_id = self.devices[idx].id.clone();
        if roll < 0.02 {
            // Status flap.
            let battery = {
                let device = &mut self.devices[idx];
                device.online = !device.online;
                device.battery = (device.battery - 0.5).max(0.0);
                device.battery
            };
            let mut e = self.event(EventType::DeviceStatus);
            e.device_id = Some(device_id);
            e.status = Some(if self.devices[idx].online {
                DeviceStatus::Online
            } else {
                DeviceStatus::Offline
            });
            e.battery_pct = Some((battery * 10.0).round() / 10.0);
            return e;
        }
        if roll < 0.025 {
            let severity = match self.rng.random_range(0..20) {
                0..=9 => Severity::Low,
                10..=15 => Severity::Medium,
                16..=18 => Severity::High,
                _ => Severity::Critical,
            };
            let (alarm, message) = [
                ("overheat", "temperature above limit"),
                ("door_open", "enclosure opened"),
                ("low_battery", "battery low"),
            ][self.rng.random_range(0..3)];
            let mut e = self.event(EventType::Alarm);
            e.device_id = Some(device_id);
            e.alarm = Some(alarm.into());
            e.severity = Some(severity);
            e.message = Some(message.into());
            return e;
        }
        let sensor_idx = self.rng.random_range(0..SENSORS.len());
        let (sensor, unit, base, noise) = SENSORS[sensor_idx];
        let step = standard_normal(&mut self.rng) * noise * 0.05;
        let drift = {
            let device = &mut self.devices[idx];
            device.drift[sensor_idx] =
                (device.drift[sensor_idx] + step).clamp(-5.0 * noise, 5.0 * noise);
            device.drift[sensor_idx]
        };
        let offset = (idx as f64 % 7.0 - 3.0) * noise;
        let value = base + offset + drift + standard_normal(&mut self.rng) * noise;
        let mut e = self.event(EventType::SensorReading);
        e.device_id = Some(device_id);
        e.sensor = Some(sensor.into());
        e.unit = Some(unit.into());
        e.value = Some((value * 100.0).round() / 100.0);
        e
    }

    fn malformed(&mut self) -> Vec<u8> {
        let id = self.next_id();
        let ts = self.clock_ms as i64;
        let line = match self.rng.random_range(0..5) {
            0 => format!(r#"{{"event_id":"{id}","ts":{ts},"event_type":"click""#),
            1 => format!(
                r#"{{"event_id":"{id}","ts":{ts},"event_type":"purchase","user_id":"user-1"}}"#
            ),
            2 => format!(
                r#"{{"event_id":"{id}","ts":{ts},"event_type":"page_view","user_id":"u","page":"/","device":"smart-fridge"}}"#
            ),
            3 => format!(
                r#"{{"event_id":"{id}","ts":"last tuesday","event_type":"impression","user_id":"u"}}"#
            ),
            _ => format!(
                r#"{{"event_id":"{id}","ts":{ts},"event_type":"sensor_reading","device_id":"dev-0001","sensor":"temperature","value":"warm"}}"#
            ),
        };
        line.into_bytes()
    }
}

/// A standard normal sample (Box–Muller), so no distribution crate is needed.
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(config: GeneratorConfig, n: usize) -> Vec<Line> {
        let mut generator = Generator::new(config);
        (0..n).map(|_| generator.next_line()).collect()
    }

    #[test]
    fn same_seed_same_lines() {
        let a = lines(GeneratorConfig::default(), 2000);
        let b = lines(GeneratorConfig::default(), 2000);
        assert!(a.iter().zip(&b).all(|(x, y)| x.bytes == y.bytes));
        let c = lines(
            GeneratorConfig {
                seed: 7,
                ..GeneratorConfig::default()
            },
            2000,
        );
        assert!(a.iter().zip(&c).any(|(x, y)| x.bytes != y.bytes));
    }

    #[test]
    fn lines_are_what_they_claim_in_the_asked_proportions() {
        let config = GeneratorConfig {
            late_fraction: 0.05,
            duplicate_fraction: 0.05,
            malformed_fraction: 0.05,
            ..GeneratorConfig::default()
        };
        let start = config.start_ms;
        let all = lines(config, 20_000);
        let mut counts = std::collections::HashMap::new();
        let mut types = std::collections::HashSet::new();
        let mut clock = start;
        for line in &all {
            *counts.entry(line.kind).or_insert(0) += 1;
            let parsed = Event::from_json(&line.bytes);
            match line.kind {
                LineKind::Malformed => {
                    assert!(parsed.is_err(), "{}", String::from_utf8_lossy(&line.bytes))
                }
                LineKind::Late => {
                    let event = parsed.expect("late lines are valid");
                    assert!(event.ts < clock - 100_000, "late by minutes");
                }
                LineKind::Event => {
                    let event = parsed.expect("valid");
                    assert!(event.ts >= clock, "on-time events follow the clock");
                    clock = event.ts;
                    types.insert(event.event_type);
                }
                LineKind::Duplicate => {
                    assert!(parsed.is_ok());
                }
            }
        }
        for kind in [LineKind::Late, LineKind::Duplicate, LineKind::Malformed] {
            let share = counts[&kind] as f64 / all.len() as f64;
            assert!((0.03..0.07).contains(&share), "{kind:?}: {share}");
        }
        assert_eq!(
            types.len(),
            EventType::ALL.len(),
            "every event type appears: {types:?}"
        );
    }

    #[test]
    fn funnel_narrows() {
        let all = lines(
            GeneratorConfig {
                iot_share: 0.0,
                ..GeneratorConfig::default()
            },
            30_000,
        );
        let count = |t: EventType| {
            all.iter()
                .filter_map(|l| Event::from_json(&l.bytes).ok())
                .filter(|e| e.event_type == t)
                .count()
        };
        let (impressions, clicks, carts, purchases) = (
            count(EventType::Impression),
            count(EventType::Click),
            count(EventType::AddToCart),
            count(EventType::Purchase),
        );
        assert!(impressions > clicks && clicks > carts && carts > purchases && purchases > 0);
        let ctr = clicks as f64 / impressions as f64;
        assert!((0.05..0.12).contains(&ctr), "ctr {ctr}");
    }
}
