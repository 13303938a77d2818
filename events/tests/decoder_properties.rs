//! Generated inputs for the event decoder and the body parser (fixed seeds,
//! bounded case counts, so CI runs the same cases every time):
//! - arbitrary bytes and arbitrary JSON never panic, and whatever the decoder
//!   accepts is within every bound of the limits table and round-trips
//!   through its canonical form;
//! - a body's lines are reported in order, each once, and never more than
//!   the per-request limit.

use lambda_events::limits::{
    MAX_ABS_VALUE, MAX_AMOUNT_CENTS, MAX_EVENT_ID_LEN, MAX_LINES_PER_REQUEST, MAX_RENDER_MS,
    MAX_STRING_LEN, MAX_TS_MS,
};
use lambda_events::{Event, parse_body};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]))
}

/// Every bound an accepted event must be within.
fn assert_within_bounds(event: &Event) {
    assert!(!event.event_id.is_empty() && event.event_id.len() <= MAX_EVENT_ID_LEN);
    assert!((0..=MAX_TS_MS).contains(&event.ts));
    if let Some(amount) = event.amount_cents {
        assert!((0..=MAX_AMOUNT_CENTS).contains(&amount));
    }
    if let Some(value) = event.value {
        assert!(value.is_finite() && value.abs() <= MAX_ABS_VALUE);
    }
    if let Some(render) = event.render_ms {
        assert!((0.0..=MAX_RENDER_MS).contains(&render));
    }
    if let Some(battery) = event.battery_pct {
        assert!((0.0..=100.0).contains(&battery));
    }
    for text in [
        &event.user_id,
        &event.page,
        &event.device_id,
        &event.sensor,
        &event.message,
    ]
    .into_iter()
    .flatten()
    {
        assert!(!text.is_empty() && text.len() <= MAX_STRING_LEN);
    }
    let again = Event::from_json(&event.to_json()).expect("the canonical form is valid");
    assert_eq!(&again, event);
}

/// JSON values shaped like events: known field names with values of any kind.
fn event_like() -> impl Strategy<Value = Value> {
    let names = prop::sample::select(vec![
        "event_id",
        "event_type",
        "ts",
        "user_id",
        "page",
        "render_ms",
        "amount_cents",
        "device_id",
        "sensor",
        "value",
        "status",
        "battery_pct",
        "alarm",
        "severity",
        "device",
        "error_code",
        "campaign_id",
        "message",
        "unit",
        "extra",
    ]);
    let types = prop::sample::select(vec![
        "page_view",
        "click",
        "purchase",
        "error",
        "sensor_reading",
        "device_status",
        "alarm",
        "nope",
    ]);
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("json numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            0i64,
            -1,
            1,
            MAX_AMOUNT_CENTS,
            MAX_AMOUNT_CENTS + 1,
            MAX_TS_MS,
            MAX_TS_MS + 1,
            1_767_225_600_000
        ])
        .prop_map(Value::from),
        prop::sample::select(vec![
            1e15,
            -1e15,
            1.0000000000000002e15,
            3_600_000.0,
            100.0,
            100.5,
            -0.0
        ])
        .prop_map(Value::from),
        ".{0,300}".prop_map(Value::from),
        types.prop_map(Value::from),
        prop::sample::select(vec![
            "online",
            "offline",
            "low",
            "critical",
            "mobile",
            "2026-01-01T00:00:00Z",
            "+10000-01-01T00:00:00Z"
        ])
        .prop_map(Value::from),
    ];
    prop::collection::btree_map(names, scalar, 0..12).prop_map(|fields| {
        Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    })
}

#[test]
fn arbitrary_bytes_never_panic_the_decoder() {
    runner(2048)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
            if let Ok(event) = Event::from_json(&bytes) {
                assert_within_bounds(&event);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn event_shaped_json_is_accepted_only_within_bounds() {
    let accepted = std::cell::Cell::new(0u32);
    runner(4096)
        .run(&event_like(), |value| {
            let bytes = serde_json::to_vec(&value).unwrap();
            match Event::from_json(&bytes) {
                Ok(event) => {
                    assert_within_bounds(&event);
                    accepted.set(accepted.get() + 1);
                }
                Err(error) => {
                    // Every rejection says what is wrong (and names a field when one is at fault).
                    assert!(!error.message.is_empty());
                }
            }
            Ok(())
        })
        .unwrap();
    let valid = json!({"event_id": "e", "ts": 1, "event_type": "click", "user_id": "u"});
    assert!(Event::from_value(&valid).is_ok());
    // Random fields rarely make a valid event; the bounds checks above ran
    // on whatever did (the count is printed for whoever tunes the generator).
    println!("accepted {} of 4096 generated objects", accepted.get());
}

#[test]
fn bodies_report_each_line_once_in_order() {
    let line = prop_oneof![
        Just(r#"{"event_id":"a","ts":1,"event_type":"click","user_id":"u"}"#.to_string()),
        Just(String::new()),
        Just("  ".to_string()),
        "[^\n]{0,80}",
    ];
    runner(512)
        .run(&prop::collection::vec(line, 0..50), |lines| {
            let body = lines.join("\n");
            let parsed = parse_body(body.as_bytes()).expect("under the line limit");
            assert!(parsed.len() <= MAX_LINES_PER_REQUEST);
            let numbers: Vec<usize> = parsed.iter().map(|p| p.line).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
            assert!(numbers.iter().all(|n| *n >= 1 && *n <= lines.len().max(1)));
            Ok(())
        })
        .unwrap();
}
