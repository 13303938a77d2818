//! Property tests of the speed layer's fold:
//! - window assignment: an event lands in the one window that contains it,
//!   and every roll-up bucket contains that window;
//! - any arrival order of events within the allowed lateness gives the same
//!   views (sketches and sums included);
//! - restoring a checkpoint taken at any point and replaying the rest gives
//!   the same state as never stopping, and doing it twice changes nothing;
//! - incremental checkpoints taken at any points, across restarts and new
//!   checkpointers of the same state, load back as the state of the last one.

use lambda_events::bucket::MINUTE_MS;
use lambda_events::{Device, DeviceStatus, Event, EventType, Severity, Step, floor_to};
use lambda_speed::SpeedState;
use lambda_speed::checkpoint::{Checkpointer, decode, encode, load};
use proptest::prelude::*;

const T0: i64 = 1_767_225_600_000;
const LATENESS: i64 = 5 * MINUTE_MS;
const HORIZON: i64 = 3_600_000;

/// One event from a few generated numbers; `ts_offset` within the lateness.
fn event(id: u32, kind: u8, ts_offset: i64, who: u8, value: i16) -> Event {
    let ts = T0 + ts_offset;
    let types = [
        EventType::Impression,
        EventType::Click,
        EventType::Purchase,
        EventType::PageView,
        EventType::Error,
        EventType::SensorReading,
        EventType::DeviceStatus,
        EventType::Alarm,
    ];
    let t = types[kind as usize % types.len()];
    let mut e = Event::bare(format!("e{id}"), t, ts);
    match t {
        EventType::SensorReading | EventType::DeviceStatus | EventType::Alarm => {
            e.device_id = Some(format!("dev-{}", who % 4));
            e.sensor = Some(["temp", "hum"][who as usize % 2].into());
            // Multiples of 0.25: sums are exact in any order.
            e.value = Some(f64::from(value) * 0.25);
            e.status = Some(if value % 2 == 0 {
                DeviceStatus::Online
            } else {
                DeviceStatus::Offline
            });
            e.alarm = Some("overheat".into());
            e.severity = Some([Severity::Low, Severity::High][who as usize % 2]);
        }
        _ => {
            e.user_id = Some(format!("u{}", who % 16));
            e.campaign_id = (who % 3 > 0).then(|| format!("c{}", who % 3));
            e.amount_cents = Some(i64::from(value.unsigned_abs()));
            e.page = Some(format!("/p{}", who % 2));
            e.device = Some([Device::Desktop, Device::Mobile][who as usize % 2]);
            e.render_ms = Some(f64::from(value.unsigned_abs()) + 1.0);
            e.error_code = Some("E1".into());
        }
    }
    e
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    // Offsets within the lateness: no order can make one of them late.
    prop::collection::vec((0u8..8, 0..LATENESS, any::<u8>(), any::<i16>()), 1..120).prop_map(
        |specs| {
            let mut events: Vec<Event> = specs
                .into_iter()
                .enumerate()
                .map(|(i, (kind, offset, who, value))| event(i as u32, kind, offset, who, value))
                .collect();
            // Some resends: the same event again.
            let resends: Vec<Event> = events.iter().step_by(7).cloned().collect();
            events.extend(resends);
            events
        },
    )
}

fn fold(events: &[Event]) -> SpeedState {
    let mut state = SpeedState::new(LATENESS, HORIZON);
    for e in events {
        state.apply(e);
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn an_event_lands_in_the_window_that_contains_it(ts in -10_000_000_000_000i64..10_000_000_000_000) {
        let start = floor_to(ts, MINUTE_MS);
        prop_assert!(start <= ts && ts < start + MINUTE_MS);
        prop_assert_eq!(start.rem_euclid(MINUTE_MS), 0);
        let mut state = SpeedState::new(0, i64::MAX / 4);
        let mut e = Event::bare("x", EventType::Click, ts);
        e.user_id = Some("u".into());
        state.apply(&e);
        prop_assert_eq!(state.windows().keys().copied().collect::<Vec<_>>(), vec![start]);
        for step in [Step::FiveMinutes, Step::Hour, Step::Day] {
            let bucket = floor_to(ts, step.millis());
            prop_assert!(bucket <= start && start + MINUTE_MS <= bucket + step.millis());
        }
    }

    #[test]
    fn any_arrival_order_within_the_lateness_gives_the_same_views(
        events in events(),
        seed in any::<u64>(),
    ) {
        let in_order = fold(&events);
        // A shuffle driven by the seed (Fisher–Yates with xorshift).
        let mut shuffled = events.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let other = fold(&shuffled);
        prop_assert_eq!(other.counters(), in_order.counters());
        prop_assert_eq!(other.counters().late, 0);
        prop_assert_eq!(other.windows().len(), in_order.windows().len());
        for (start, window) in in_order.windows() {
            prop_assert_eq!(&other.windows()[start].views, &window.views, "window {}", start);
        }
        prop_assert_eq!(other.watermark(), in_order.watermark());
    }

    #[test]
    fn replaying_from_a_checkpoint_is_idempotent(
        events in events(),
        cut in any::<prop::sample::Index>(),
    ) {
        let whole = fold(&events);
        let k = cut.index(events.len() + 1);
        let bytes = encode(&fold(&events[..k]));
        // Restore and replay the rest.
        let mut restored = decode(&bytes, LATENESS, HORIZON).unwrap();
        for e in &events[k..] {
            restored.apply(e);
        }
        prop_assert_eq!(encode(&restored), encode(&whole));
        // Restore the same checkpoint again and replay again: the same state.
        let mut again = decode(&bytes, LATENESS, HORIZON).unwrap();
        for e in &events[k..] {
            again.apply(e);
        }
        prop_assert_eq!(encode(&again), encode(&whole));
        // Replaying records already in the checkpoint counts none of them twice.
        let mut replayed = decode(&encode(&whole), LATENESS, HORIZON).unwrap();
        for e in &events {
            replayed.apply(e);
        }
        for (start, window) in whole.windows() {
            prop_assert_eq!(&replayed.windows()[start].views, &window.views);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Events over 20 minutes (so windows close, drop their ids, and get
    /// evicted), checkpointed incrementally at any points: what loads is
    /// the state of the last checkpoint, ids included.
    #[test]
    fn incremental_checkpoints_load_back_as_the_state(
        specs in prop::collection::vec((0u8..8, 0..20 * MINUTE_MS, any::<u8>(), any::<i16>()), 1..150),
        cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut events: Vec<Event> = specs
            .into_iter()
            .enumerate()
            .map(|(i, (kind, offset, who, value))| event(i as u32, kind, offset, who, value))
            .collect();
        events.sort_by_key(|e| e.ts);
        let resends: Vec<Event> = events.iter().step_by(5).cloned().collect();
        events.extend(resends);
        let mut cuts: Vec<(usize, u8)> = cuts.iter().map(|(c, how)| (c.index(events.len() + 1), *how)).collect();
        cuts.sort_unstable();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.json");
        let mut state = SpeedState::new(2 * MINUTE_MS, 10 * MINUTE_MS);
        let mut checkpointer = Checkpointer::new(&path, &mut state);
        let (mut folded, mut checkpointed) = (0, 0);
        for (cut, how) in cuts {
            for e in &events[folded..cut] {
                state.apply(e);
                state.evict();
            }
            folded = cut;
            match how % 3 {
                // A restart: the last checkpoint, and what came after it
                // folded again (the log replayed from its offsets).
                0 => {
                    state = load(&path, 2 * MINUTE_MS, 10 * MINUTE_MS)
                        .unwrap()
                        .unwrap_or_else(|| SpeedState::new(2 * MINUTE_MS, 10 * MINUTE_MS));
                    for e in &events[checkpointed..cut] {
                        state.apply(e);
                        state.evict();
                    }
                    checkpointer = Checkpointer::new(&path, &mut state);
                }
                // A new job on the same state (a kappa switch).
                1 => checkpointer = Checkpointer::new(&path, &mut state),
                _ => {}
            }
            let durable = checkpointer.snapshot(&state).write().unwrap();
            checkpointer.written(&durable);
            checkpointed = cut;
            let loaded = load(&path, 2 * MINUTE_MS, 10 * MINUTE_MS).unwrap().unwrap();
            prop_assert_eq!(encode(&loaded), encode(&state));
        }
        // Resuming from the last one and folding the rest ends where never
        // stopping ends.
        let mut resumed = load(&path, 2 * MINUTE_MS, 10 * MINUTE_MS).unwrap().unwrap();
        let mut whole = SpeedState::new(2 * MINUTE_MS, 10 * MINUTE_MS);
        for e in &events {
            whole.apply(e);
            whole.evict();
        }
        for e in &events[folded..] {
            resumed.apply(e);
            resumed.evict();
        }
        prop_assert_eq!(encode(&resumed), encode(&whole));
    }
}

/// Arbitrary bytes, and checkpoints with bytes flipped, never panic the
/// checkpoint decoder: it restores a state or names what is wrong.
#[test]
fn damaged_checkpoints_are_errors_not_panics() {
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut state = SpeedState::new(LATENESS, HORIZON);
    for id in 0..40u32 {
        state.apply(&event(
            id,
            (id % 8) as u8,
            i64::from(id) * 7_000,
            id as u8,
            id as i16,
        ));
    }
    let good = encode(&state);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 1024,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[3; 32]),
    );
    let damage = (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        prop::collection::vec(any::<u8>(), 0..256),
        any::<bool>(),
    );
    runner
        .run(&damage, |(flips, junk, use_junk)| {
            let bytes = if use_junk {
                junk
            } else {
                let mut bytes = good.clone();
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            };
            if let Ok(restored) = decode(&bytes, LATENESS, HORIZON) {
                // Whatever decodes encodes again.
                let _ = encode(&restored);
            }
            Ok(())
        })
        .unwrap();
}
