//! Query parameters: `from`/`to` (ms or RFC 3339), `step` and filters, each
//! checked so that a bad one is answered `400` with its name. Parameters only
//! ever select keys in memory; nothing in a request reaches SQL.

use std::collections::HashMap;

use lambda_events::{Step, floor_to};

/// Most buckets one query may return.
pub const MAX_BUCKETS: i64 = 10_000;

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

fn parse_time(name: &str, text: &str) -> Result<i64, BadParameter> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            BadParameter::new(
                name,
                format!("{text:?} is neither milliseconds nor RFC 3339"),
            )
        })
}

/// Checks the parameters of a query: only `allowed` names, plus `from`, `to`, `step`.
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
    let to = match params.get("to") {
        Some(text) => parse_time("to", text)?,
        None => floor_to(now_ms, step.millis()) + step.millis(),
    };
    let from = match params.get("from") {
        Some(text) => parse_time("from", text)?,
        None => to - 60 * step.millis(),
    };
    if from >= to {
        return Err(BadParameter::new(
            "from",
            format!("{from} is not before to ({to})"),
        ));
    }
    let from = floor_to(from, step.millis());
    let buckets = (to - from + step.millis() - 1) / step.millis();
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
        check(
            &[("campaign_id", "x")],
            Ok((
                1_700_000_040_000 - 3_600_000,
                1_700_000_040_000,
                Step::Minute,
            )),
        );
    }
}
