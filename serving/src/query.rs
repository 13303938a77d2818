//! Query parameters: `from`/`to` (ms or RFC 3339), `step` and filters, each
//! checked so that a bad one is answered `400` with its name. Parameters only
//! ever select keys in memory; nothing in a request reaches SQL.

use std::collections::HashMap;

use lambda_events::{Step, floor_to};

/// Most buckets one query may return.
pub use lambda_events::limits::MAX_BUCKETS;
use lambda_events::limits::{MAX_STRING_LEN, QUERY_TIME_RANGE};

/// A parameter problem: which parameter and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParameter {
    /// The parameter's name.
    pub parameter: String,
    /// What is wrong with it.
    pub message: String,
}

impl BadParameter {
    fn new(parameter: &str, message: impl Into<String>) -> Self {
        BadParameter {
            parameter: parameter.into(),
            message: message.into(),
        }
    }
}

/// A validated time range and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Inclusive start, floored to the step.
    pub from: i64,
    /// Exclusive end.
    pub to: i64,
    /// Bucket width.
    pub step: Step,
}

impl Range {
    /// Start of every bucket in the range.
    pub fn bucket_starts(&self) -> impl Iterator<Item = i64> {
        let width = self.step.millis();
        (self.from..self.to).step_by(width as usize)
    }
}

/// Filters `/api/v1/funnel` accepts (besides `from`, `to`, `step`).
pub const FUNNEL_FILTERS: &[&str] = &["campaign_id"];
/// Filters `/api/v1/pages` accepts.
pub const PAGES_FILTERS: &[&str] = &["device", "page"];
/// Filters `/api/v1/iot` accepts.
pub const IOT_FILTERS: &[&str] = &["device_id", "sensor"];

fn parse_time(name: &str, text: &str) -> Result<i64, BadParameter> {
    lambda_events::time::parse_bounded_instant(text).map_err(|e| BadParameter::new(name, e))
}

/// Checks the parameters of a query: only `allowed` names, plus `from`, `to`, `step`.
///
/// Every time is within [`QUERY_TIME_RANGE`] before any arithmetic, so none
/// of the sums below can overflow.
pub fn parse(
    params: &HashMap<String, String>,
    allowed_filters: &[&str],
    now_ms: i64,
) -> Result<Range, BadParameter> {
    for name in params.keys() {
        if !matches!(name.as_str(), "from" | "to" | "step")
            && !allowed_filters.contains(&name.as_str())
        {
            let mut known = vec!["from", "to", "step"];
            known.extend_from_slice(allowed_filters);
            return Err(BadParameter::new(
                name,
                format!("unknown parameter; known: {}", known.join(", ")),
            ));
        }
    }
    let step = match params.get("step") {
        Some(text) => text
            .parse::<Step>()
            .map_err(|e| BadParameter::new("step", e.to_string()))?,
        None => Step::Minute,
    };
    let width = step.millis();
    let to = match params.get("to") {
        Some(text) => parse_time("to", text)?,
        None => {
            floor_to(
                now_ms.clamp(QUERY_TIME_RANGE.0, QUERY_TIME_RANGE.1 - width),
                width,
            ) + width
        }
    };
    let from = match params.get("from") {
        Some(text) => parse_time("from", text)?,
        None => to.saturating_sub(60 * width).max(QUERY_TIME_RANGE.0),
    };
    if from >= to {
        return Err(BadParameter::new(
            "from",
            format!("{from} is not before to ({to})"),
        ));
    }
    let from = floor_to(from, width);
    // Both ends are within the bounds, so this neither overflows nor wraps.
    let buckets = (to - from + width - 1) / width;
    if buckets > MAX_BUCKETS {
        return Err(BadParameter::new(
            "step",
            format!(
                "the range holds {buckets} buckets of {step}; at most {MAX_BUCKETS} are allowed"
            ),
        ));
    }
    Ok(Range { from, to, step })
}

/// A non-empty filter value, or a `400` naming it.
pub fn filter<'a>(
    params: &'a HashMap<String, String>,
    name: &str,
) -> Result<Option<&'a str>, BadParameter> {
    match params.get(name) {
        Some(value) if value.is_empty() => Err(BadParameter::new(name, "must not be empty")),
        Some(value) if value.len() > MAX_STRING_LEN => Err(BadParameter::new(
            name,
            format!(
                "longer than {MAX_STRING_LEN} bytes ({} bytes); no event carries such a value",
                value.len()
            ),
        )),
        Some(value) => Ok(Some(value.as_str())),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(query: &[(&str, &str)], expected: Result<(i64, i64, Step), (&str, &str)>) {
        let params: HashMap<String, String> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = parse(&params, &["campaign_id"], 1_700_000_030_000);
        match (got, expected) {
            (Ok(range), Ok((from, to, step))) => {
                assert_eq!((range.from, range.to, range.step), (from, to, step))
            }
            (Err(bad), Err((parameter, fragment))) => {
                assert_eq!(bad.parameter, parameter);
                assert!(bad.message.contains(fragment), "{bad:?}");
            }
            (got, expected) => panic!("{query:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parses_and_rejects_parameters_by_name() {
        check(
            &[("from", "60000"), ("to", "180000")],
            Ok((60_000, 180_000, Step::Minute)),
        );
        check(
            &[("from", "61000"), ("to", "180000"), ("step", "1m")],
            Ok((60_000, 180_000, Step::Minute)),
        );
        check(
            &[
                ("from", "1970-01-01T00:01:00Z"),
                ("to", "1970-01-01T01:00:00+00:00"),
                ("step", "5m"),
            ],
            Ok((0, 3_600_000, Step::FiveMinutes)),
        );
        check(
            &[],
            Ok((
                1_700_000_040_000 - 3_600_000,
                1_700_000_040_000,
                Step::Minute,
            )),
        );
        check(
            &[("from", "yesterday")],
            Err(("from", "neither milliseconds nor RFC 3339")),
        );
        check(&[("to", "1.5")], Err(("to", "neither")));
        check(&[("step", "2m")], Err(("step", "unknown step")));
        check(
            &[("from", "5"), ("to", "5")],
            Err(("from", "not before to")),
        );
        check(
            &[("from", "0"), ("to", "700000000")],
            Err(("step", "at most 10000")),
        );
        check(&[("colour", "red")], Err(("colour", "unknown parameter")));
        // Far ends that used to wrap the bucket count negative.
        check(
            &[
                ("from", "-9000000000000000000"),
                ("to", "9000000000000000000"),
            ],
            Err(("to", "outside the bounds")),
        );
        check(
            &[("from", "0"), ("to", "9223372036854775807")],
            Err(("to", "outside the bounds")),
        );
        check(
            &[("from", "-9223372036854775808"), ("to", "0")],
            Err(("from", "outside the bounds")),
        );
        check(&[("from", "-1"), ("to", "60000")], Err(("from", "outside")));
        // The bounds themselves are accepted (and then counted).
        let last = QUERY_TIME_RANGE.1.to_string();
        check(
            &[("from", "0"), ("to", &last)],
            Err(("step", "at most 10000")),
        );
        let from = (QUERY_TIME_RANGE.1 - 60_000).to_string();
        check(
            &[("from", &from), ("to", &last)],
            Ok((
                floor_to(QUERY_TIME_RANGE.1 - 60_000, 60_000),
                QUERY_TIME_RANGE.1,
                Step::Minute,
            )),
        );
        // Exactly the bucket cap, and one more.
        let cap_to = (60_000 * MAX_BUCKETS).to_string();
        check(
            &[("from", "0"), ("to", &cap_to)],
            Ok((0, 60_000 * MAX_BUCKETS, Step::Minute)),
        );
        let over_to = (60_000 * MAX_BUCKETS + 1).to_string();
        check(
            &[("from", "0"), ("to", &over_to)],
            Err(("step", "10001 buckets")),
        );
        check(
            &[("campaign_id", "x")],
            Ok((
                1_700_000_040_000 - 3_600_000,
                1_700_000_040_000,
                Step::Minute,
            )),
        );
    }

    /// Arbitrary text in every parameter: never a panic, and an accepted
    /// range always holds 1 to MAX_BUCKETS buckets within the bounds.
    #[test]
    fn arbitrary_parameters_never_panic_and_accepted_ranges_hold() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let time = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (-1_000_000_000_000_000i64..=300_000_000_000_000).prop_map(|n| n.to_string()),
            Just(QUERY_TIME_RANGE.1.to_string()),
            Just("2026-01-01T00:00:00Z".to_string()),
            ".{0,40}",
        ];
        let step = prop_oneof![
            prop::sample::select(vec!["1m", "5m", "1h", "1d"]).prop_map(String::from),
            ".{0,5}",
        ];
        let params = (
            prop::option::of(time.clone()),
            prop::option::of(time),
            prop::option::of(step),
            any::<i64>(),
        );
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 4096,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[11; 32]),
        );
        runner
            .run(&params, |(from, to, step, now)| {
                let mut map = HashMap::new();
                for (name, value) in [("from", from), ("to", to), ("step", step)] {
                    if let Some(value) = value {
                        map.insert(name.to_string(), value);
                    }
                }
                if let Ok(range) = parse(&map, &[], now) {
                    let (earliest, latest) = QUERY_TIME_RANGE;
                    prop_assert!(
                        earliest <= range.from && range.from < range.to && range.to <= latest
                    );
                    let buckets = range.bucket_starts().count() as i64;
                    prop_assert!((1..=MAX_BUCKETS).contains(&buckets), "{buckets} buckets");
                }
                Ok(())
            })
            .unwrap();
    }
}
