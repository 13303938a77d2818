//! Time buckets: the steps a query can ask for and how event time is floored to them.

use std::fmt;
use std::str::FromStr;

/// One minute in milliseconds: the width of the base bucket both layers keep.
pub const MINUTE_MS: i64 = 60_000;

/// A query step; every step is a whole number of base (1-minute) buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// One minute: the base bucket.
    Minute,
    /// Five minutes.
    FiveMinutes,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Step {
    /// The width of the step in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Step::Minute => MINUTE_MS,
            Step::FiveMinutes => 5 * MINUTE_MS,
            Step::Hour => 60 * MINUTE_MS,
            Step::Day => 24 * 60 * MINUTE_MS,
        }
    }

    /// The spelling used in the API (`1m`, `5m`, `1h`, `1d`).
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Minute => "1m",
            Step::FiveMinutes => "5m",
            Step::Hour => "1h",
            Step::Day => "1d",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a step that is not one of `1m`, `5m`, `1h`, `1d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown step {0:?}: expected one of 1m, 5m, 1h, 1d")]
pub struct UnknownStep(pub String);

impl FromStr for Step {
    type Err = UnknownStep;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1m" => Ok(Step::Minute),
            "5m" => Ok(Step::FiveMinutes),
            "1h" => Ok(Step::Hour),
            "1d" => Ok(Step::Day),
            other => Err(UnknownStep(other.to_string())),
        }
    }
}

/// Floors `ts_ms` to the start of its bucket of width `width_ms` (also for times before 1970).
#[inline]
pub fn floor_to(ts_ms: i64, width_ms: i64) -> i64 {
    ts_ms.div_euclid(width_ms) * width_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_to_bucket_start() {
        let check = |ts: i64, step: Step, expected: i64| {
            assert_eq!(floor_to(ts, step.millis()), expected, "ts {ts} step {step}");
        };
        check(0, Step::Minute, 0);
        check(59_999, Step::Minute, 0);
        check(60_000, Step::Minute, 60_000);
        check(-1, Step::Minute, -60_000);
        check(1_700_000_123_456, Step::FiveMinutes, 1_700_000_100_000);
        check(1_700_000_123_456, Step::Hour, 1_699_999_200_000);
        check(1_700_000_123_456, Step::Day, 1_699_920_000_000);
    }

    #[test]
    fn parses_steps() {
        for step in [Step::Minute, Step::FiveMinutes, Step::Hour, Step::Day] {
            assert_eq!(step.as_str().parse::<Step>(), Ok(step));
        }
        assert_eq!("2m".parse::<Step>(), Err(UnknownStep("2m".into())));
    }
}
