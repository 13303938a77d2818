//! Generated inputs for the event decoder and the body parser (fixed seeds,
//! bounded case counts, so CI runs the same cases every time):
//! - arbitrary bytes and arbitrary JSON never panic, and whatever the decoder
//!   accepts is within every bound of the limits table and round-trips
//!   through its canonical form;
//! - the fast decoder and the reference decoder (`Event::from_json` and
//!   `Event::from_json_reference`) agree on every input: the same event, or
//!   the same error;
//! - a body's lines are reported in order, each once, and never more than
//!   the per-request limit.

use lambda_events::decode::WireEvent;
use lambda_events::event::Field;
use lambda_events::limits::{
    MAX_ABS_VALUE, MAX_AMOUNT_CENTS, MAX_EVENT_ID_LEN, MAX_LINES_PER_REQUEST, MAX_RENDER_MS,
    MAX_STRING_LEN, MAX_TS_MS,
};
use lambda_events::{Event, EventRef, EventType, parse_body};
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
    let canonical = event.to_json();
    assert_eq!(
        canonical,
        serde_json::to_vec(&event.to_ref()).unwrap(),
        "the canonical writer writes what serde_json does"
    );
    let again = Event::from_json(&canonical).expect("the canonical form is valid");
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
            let decoded = Event::from_json(&bytes);
            assert_eq!(decoded, Event::from_json_reference(&bytes));
            if let Ok(event) = decoded {
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
            assert_eq!(Event::from_json(&bytes), Event::from_json_reference(&bytes));
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

/// A valid value for `field`, picked by `n`.
fn valid_value(field: Field, n: u64) -> Value {
    let text = [
        "a",
        "ü-é",
        "with \"quote\"",
        "back\\slash",
        "/checkout",
        "x",
        "past the BMP: 😀",
    ];
    match field {
        Field::Device => json!(["desktop", "mobile", "tablet"][n as usize % 3]),
        Field::Status => json!(["online", "offline"][n as usize % 2]),
        Field::Severity => json!(["low", "medium", "high", "critical"][n as usize % 4]),
        Field::RenderMs => json!((n % 1_000_000) as f64 / 7.0),
        Field::Value => json!((n % 2_000_001) as f64 / 3.0 - 333_333.0),
        Field::BatteryPct => json!((n % 1001) as f64 / 10.0),
        Field::AmountCents => json!(n as i64 % (MAX_AMOUNT_CENTS + 1)),
        Field::ErrorCode if n % 2 == 0 => json!(n % 1000),
        _ => json!(format!("{}{}", text[n as usize % text.len()], n % 97)),
    }
}

/// Events as a producer writes them, most valid, some with one thing wrong
/// (a null, a key twice, an unknown key, an escaped key, a float `ts`, a
/// bound crossed, an empty string, a key missing, a field its type does not
/// carry), as JSON text.
fn near_valid_event() -> impl Strategy<Value = (String, u8, usize)> {
    (
        prop::sample::select(EventType::ALL.to_vec()),
        "[a-z0-9-]{1,66}",
        0..=MAX_TS_MS,
        any::<bool>(),
        prop::collection::vec(any::<u64>(), Field::ALL.len()),
        0u8..24,
    )
        .prop_map(|(event_type, id, ts, rfc3339, picks, mutation)| {
            let id_len = id.len();
            let mut pairs: Vec<(String, Value)> = vec![
                ("event_id".into(), json!(id)),
                ("event_type".into(), json!(event_type.as_str())),
                (
                    "ts".into(),
                    match rfc3339 {
                        true => json!(lambda_events::time::format_rfc3339(ts)),
                        false => json!(ts),
                    },
                ),
            ];
            let rule = event_type.rule();
            for (field, pick) in Field::ALL.iter().zip(&picks) {
                let optional = rule.optional.contains(field) && pick % 3 != 0;
                if rule.required.contains(field) || optional {
                    pairs.push((field.name().into(), valid_value(*field, pick / 3)));
                }
            }
            let at = picks[0] as usize % pairs.len();
            let mut escaped_key = None;
            match mutation {
                0 => pairs[at].1 = Value::Null,
                1 => pairs.push(pairs[at].clone()),
                2 => pairs.push(("extra".into(), json!(1))),
                3 => escaped_key = Some(at),
                4 => pairs[2].1 = json!(ts as f64 + 0.5),
                5 => pairs[at].1 = json!(1e300),
                6 => pairs[at].1 = json!(""),
                7 => pairs[at].1 = json!("x".repeat(MAX_STRING_LEN + 1)),
                // A key missing (a required field, or `event_id`, `event_type`, `ts`).
                8 => {
                    pairs.remove(at);
                }
                // A field this type does not carry, with a valid value.
                9 => {
                    let others: Vec<Field> = (Field::ALL.iter().copied())
                        .filter(|f| !rule.required.contains(f) && !rule.optional.contains(f))
                        .collect();
                    let field = others[picks[1] as usize % others.len()];
                    pairs.push((field.name().into(), valid_value(field, picks[2])));
                }
                _ => {}
            }
            let body: Vec<String> = pairs
                .iter()
                .enumerate()
                .map(|(i, (key, value))| {
                    let key = match escaped_key == Some(i) {
                        // `\u0065` is `e`: the same key, spelled with an escape.
                        true => format!("\"{}\"", key.replacen('e', "\\u0065", 1)),
                        false => serde_json::to_string(key).unwrap(),
                    };
                    format!("{key}:{value}")
                })
                .collect();
            (format!("{{{}}}", body.join(",")), mutation, id_len)
        })
}

#[test]
fn the_fast_decoder_agrees_with_the_reference_one() {
    let (accepted, rejected) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let fast_path = std::cell::Cell::new(0u32);
    runner(8192)
        .run(&near_valid_event(), |(text, mutation, id_len)| {
            let fast = Event::from_json(text.as_bytes());
            let reference = Event::from_json_reference(text.as_bytes());
            assert_eq!(fast, reference, "{text}");
            // The fast path alone, where it says yes: the reference's event.
            if let Some(event) = WireEvent::decode(text.as_bytes())
                .ok()
                .and_then(WireEvent::validate)
            {
                assert_eq!(Ok(event.into_owned()), reference, "{text}");
                fast_path.set(fast_path.get() + 1);
            }
            match fast {
                Ok(event) => {
                    assert_within_bounds(&event);
                    // The collector writes the borrowed form: the same bytes.
                    assert_eq!(event.to_ref().to_json(), event.to_json());
                    accepted.set(accepted.get() + 1);
                }
                Err(_) => rejected.set(rejected.get() + 1),
            }
            if mutation >= 10 && id_len <= MAX_EVENT_ID_LEN {
                assert!(reference.is_ok(), "an unmutated event is valid: {text}");
            }
            Ok(())
        })
        .unwrap();
    // Both sides of the fast path ran many times.
    assert!(accepted.get() > 4096, "accepted {}", accepted.get());
    assert!(
        fast_path.get() > 4096,
        "the fast path took {}",
        fast_path.get()
    );
    assert!(rejected.get() > 1024, "rejected {}", rejected.get());
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

/// Every spelling of a value the scanner of the fast path must read as
/// serde_json does (numbers, escapes, surrogates, whitespace) or leave to
/// the reference decoder: where the fast path says yes, it is the
/// reference's event, to the byte of its canonical form (`-0.0` is not
/// `0.0` there); and it says yes to every spelling marked so.
#[test]
fn the_fast_path_reads_each_spelling_as_the_reference_does() {
    let sensor = |ts: &str, device: &str, value: &str| {
        format!(
            r#"{{"event_id":"e1","event_type":"sensor_reading","ts":{ts},"device_id":{device},"sensor":"t","value":{value}}}"#
        )
    };
    // (text, whether the fast path must read it itself)
    let mut cases: Vec<(String, bool)> = Vec::new();
    for (value, fast) in [
        ("1", true),
        ("-1", true),
        ("0", true),
        ("-0", false),
        ("-0.0", true),
        ("0.5", true),
        ("-12.25", true),
        ("1e3", true),
        ("1E+3", true),
        ("1e-3", true),
        ("2.5e-400", true),
        ("0.1000000000000000055511151231257827", true),
        ("1e15", true),
        ("1000000000000000", true),
        ("1000000000000001", false),
        ("123456789012345678901234567890", false),
        ("1.5e400", false),
        ("1.", false),
        (".5", false),
        ("01", false),
        ("-", false),
        ("+1", false),
        ("1e", false),
        ("1e+", false),
        ("NaN", false),
        ("Infinity", false),
        ("true", false),
        ("null", false),
        ("[1]", false),
        ("{}", false),
        ("\"1\"", false),
        (" \t\r\n2 \n", true),
    ] {
        cases.push((sensor("1", "\"d\"", value), fast));
    }
    for (device, fast) in [
        (r#""d\u00e9""#, true),
        (r#""\ud83d\ude00""#, true),
        (r#""\uD83D\uDE00x""#, true),
        (r#""a\/b\\c\"d\b\f\n\r\t""#, true),
        (r#""\ud83d""#, false),
        (r#""\ude00""#, false),
        (r#""\ud83dx""#, false),
        (r#""\ud83d\u0041""#, false),
        (r#""\x""#, false),
        (r#""\u12""#, false),
        (r#""\u00G0""#, false),
        ("\"raw\ttab\"", false),
        ("\"unterminated", false),
        (r#""ü-é""#, true),
        (r#""""#, false),
        (r#""\u0000""#, true),
    ] {
        cases.push((sensor("1", device, "1"), fast));
    }
    for (ts, fast) in [
        ("1767225600000", true),
        (r#""2026-01-01T00:00:00Z""#, true),
        (r#""2026-01-01T00:00:00.123+02:00""#, true),
        (r#""2026-01-01T00:00:00\u005a""#, true),
        ("1.0", false),
        ("1e3", false),
        ("-0", false),
        ("-1", false),
        ("01", false),
        ("9223372036854775808", false),
        (r#""yesterday""#, false),
    ] {
        cases.push((sensor(ts, "\"d\"", "1"), fast));
    }
    // Found by a hostile review: numbers on the halfway point between two
    // doubles at a bound (one ulp flips accepted to refused), and at the
    // edge of the subnormals, where serde_json's parser and `str::parse`
    // must round alike.
    let half_min = "2.4703282292062327208828439643411068618252990130716238221279284125033775363510437593264991818081799618989828234772285886546332835517796989819938739800539093906315035659515570226392290858392449105184435931802849936536152500319370457678249219365623669863658480757001585769269903706311928279558551332927834338409351978015531246597263579574622766465272827220056374006485499977096599470454020828166226237857393450736339007967761930577506740176324673600968951340535537458516661134223766678604162159680461914467291840300530057530849048765391711386591646239524912623653881879636239373280423891018672348497668235089863388587925628302755995657524455507255189313690836254779186948667994968324049705821028513185451396213837722826145437693412532098591327667236328125e-324";
    let mantissa = half_min.split('e').next().unwrap();
    let three_half_min = format!("{}e-324", 3.0 * 2.470_328_229_206_232_7);
    let numbers = [
        ("value", "1000000000000000.0625".to_string()),
        ("value", "1000000000000000.0625000001".to_string()),
        ("value", "999999999999999.9375".to_string()),
        ("value", half_min.to_string()),
        ("value", format!("-{half_min}")),
        ("value", format!("{mantissa}1e-324")),
        ("value", three_half_min),
        (
            "value",
            format!("0.{}12345678901234567890123e60010", "0".repeat(60_000)),
        ),
        ("value", "1234567890123456789012345e-2147483647".to_string()),
        ("value", "-0e99999999999".to_string()),
        ("value", "0e2147483647".to_string()),
        ("value", "1e-2147483648".to_string()),
        ("value", "1e2147483648".to_string()),
        ("value", "-1e-400".to_string()),
        (
            "battery_pct",
            "100.00000000000000710542735760100185871124267578125".to_string(),
        ),
        (
            "battery_pct",
            "100.00000000000000710542735760100185871124267578125000001".to_string(),
        ),
        (
            "render_ms",
            "3600000.00000000023283064365386962890625".to_string(),
        ),
        (
            "render_ms",
            "3600000.00000000023283064365386962890625000001".to_string(),
        ),
    ];
    for (field, number) in numbers {
        let text = match field {
            "value" => sensor("1", "\"d\"", &number),
            "battery_pct" => format!(
                r#"{{"event_id":"e1","event_type":"device_status","ts":1,"device_id":"d","status":"online","battery_pct":{number}}}"#
            ),
            _ => format!(
                r#"{{"event_id":"e1","event_type":"page_view","ts":1,"user_id":"u","page":"/","render_ms":{number}}}"#
            ),
        };
        cases.push((text, false));
    }
    for (device, fast) in [
        (r#""\ud83d\ud83d\ude00""#, false),
        (r#""\uDBFF\uDFFF""#, true),
        ("\"del \u{7f}\"", true),
        ("\"é\"\\", false),
    ] {
        cases.push((sensor("1", device, "1"), fast));
    }
    for (spelling, fast) in [
        (r#""error_code":-0"#, false),
        (r#""error_code":18446744073709551615"#, false),
        (r#""error_code":1.0"#, false),
        (r#""error_code":404"#, true),
    ] {
        cases.push((
            format!(r#"{{"event_id":"e1","event_type":"error","ts":1,"user_id":"u",{spelling}}}"#),
            fast,
        ));
    }
    let valid = sensor("1", "\"d\"", "1");
    for (text, fast) in [
        (format!(" \n{valid}\n "), true),
        (valid.replace(',', " , ").replace(':', " : "), true),
        (valid.replace('}', ",}"), false),
        (valid.replace("\"ts\":", "\"ts\""), false),
        (format!("{valid}x"), false),
        (format!("{valid}{{}}"), false),
        (format!("\u{feff}{valid}"), false),
        (valid.replace("\"ts\"", "\"t\\u0073\""), false),
        (valid.replace("\"sensor\":\"t\",", ""), false),
        ("{}".to_string(), false),
        ("".to_string(), false),
        ("[]".to_string(), false),
    ] {
        cases.push((text, fast));
    }
    for (text, must_be_fast) in &cases {
        let reference = Event::from_json_reference(text.as_bytes());
        assert_eq!(Event::from_json(text.as_bytes()), reference, "{text}");
        let fast = WireEvent::decode(text.as_bytes())
            .ok()
            .and_then(WireEvent::validate);
        match &fast {
            Some(event) => {
                let event = event.clone().into_owned();
                assert_eq!(Ok(&event), reference.as_ref(), "{text}");
                let canonical = reference.as_ref().unwrap().to_json();
                assert_eq!(event.to_json(), canonical, "{text}");
            }
            None => assert!(!must_be_fast, "the fast path gave up on {text}"),
        }
    }
}

/// The same valid event spelled another way JSON allows — whitespace
/// between any two tokens, any character of a string value escaped (`\u`
/// with surrogate pairs past the BMP, or its short escape), a fraction
/// written with an exponent — is the same event, and the fast path reads
/// it itself (only an escaped key and a `null` are left to the reference).
#[test]
fn every_spelling_of_a_valid_event_is_read_by_the_fast_path_alike() {
    fn space(rng: &mut TestRng, out: &mut String) {
        for _ in 0..rng.random_range(0..3u8) {
            out.push([' ', '\t', '\n', '\r'][rng.random_range(0..4usize)]);
        }
    }
    fn string(rng: &mut TestRng, text: &str, out: &mut String) {
        out.push('"');
        for c in text.chars() {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '/' if rng.random_bool(0.5) => Some("\\/"),
                _ => None,
            };
            match short {
                Some(escape) => out.push_str(escape),
                None if (c as u32) < 0x20 || rng.random_bool(0.3) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                None => out.push(c),
            }
        }
        out.push('"');
    }
    let rng = std::cell::RefCell::new(TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]));
    let (checked, respelled_numbers) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner(4096)
        .run(&near_valid_event(), |(text, _, _)| {
            let Ok(reference) = Event::from_json_reference(text.as_bytes()) else {
                return Ok(());
            };
            let rng = &mut *rng.borrow_mut();
            let Value::Object(members) = serde_json::from_str::<Value>(&text).unwrap() else {
                unreachable!("an accepted event is an object")
            };
            // A `null` (an optional field left out) is the reference's to read.
            if members.values().any(Value::is_null) {
                return Ok(());
            }
            let mut out = String::new();
            space(rng, &mut out);
            out.push('{');
            for (i, (key, value)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(rng, &mut out);
                out.push_str(&serde_json::to_string(key).unwrap());
                space(rng, &mut out);
                out.push(':');
                space(rng, &mut out);
                match value {
                    Value::String(text) => string(rng, text, &mut out),
                    Value::Number(n) if n.is_f64() => {
                        // The shortest exponent form that reads back to the same f64.
                        out.push_str(&format!("{:e}", n.as_f64().unwrap()));
                        respelled_numbers.set(respelled_numbers.get() + 1);
                    }
                    other => out.push_str(&other.to_string()),
                }
                space(rng, &mut out);
            }
            out.push('}');
            space(rng, &mut out);
            assert_eq!(
                Event::from_json(out.as_bytes()),
                Ok(reference.clone()),
                "{out}"
            );
            let fast = WireEvent::decode(out.as_bytes())
                .ok()
                .and_then(WireEvent::validate)
                .map(EventRef::into_owned);
            assert_eq!(fast.as_ref(), Some(&reference), "the fast path: {out}");
            assert_eq!(fast.unwrap().to_json(), reference.to_json(), "{out}");
            checked.set(checked.get() + 1);
            Ok(())
        })
        .unwrap();
    assert!(checked.get() > 1024, "checked {}", checked.get());
    assert!(
        respelled_numbers.get() > 256,
        "numbers {}",
        respelled_numbers.get()
    );
}
