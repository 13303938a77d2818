//! Durations on the command line and in admin requests: `250ms`, `30s`,
//! `5m`, `2h`, `7d`, or plain seconds, at most [`MAX_DURATION`].

use std::time::Duration;

/// The longest duration accepted anywhere (ten years): every setting that
/// takes one (lateness, intervals, retention) is far below it, and its
/// milliseconds fit an `i64` with room to add to any event time.
pub const MAX_DURATION: Duration =
    Duration::from_secs(lambda_events::limits::MAX_DURATION_DAYS * 86_400);

/// Parses `250ms`, `30s`, `5m`, `2h`, `7d` or a number of seconds, up to
/// [`MAX_DURATION`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 2h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !seconds.is_finite() || seconds > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "{text:?} is longer than the longest duration allowed (3650d)"
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// [`parse`], as whole milliseconds (which always fit an `i64`).
pub fn parse_millis(text: &str) -> Result<i64, String> {
    parse(text).map(|d| i64::try_from(d.as_millis()).expect("bounded by MAX_DURATION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse("5 weeks").is_err());
        assert!(parse("m").is_err());
    }

    #[test]
    fn durations_are_bounded_on_both_sides() {
        assert_eq!(parse("3650d"), Ok(MAX_DURATION));
        assert_eq!(parse_millis("3650d"), Ok(315_360_000_000));
        for bad in [
            "3650.001d",
            "99999999999999999999d",
            "9999999999999999s",
            "1e400s",
            "-5s",
            "NaN",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.contains(bad) || err.contains("duration"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse("9999999999999999s")
                .unwrap_err()
                .contains("longest duration")
        );
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }
}
