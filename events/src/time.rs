//! Times and durations as the pipeline's inputs write them, parsed in one
//! place: a point in time is integer milliseconds since the epoch or an
//! RFC 3339 string (events' `ts`, query `from`/`to`, CLI flags); a duration
//! is `250ms`, `30s`, `5m`, `2h`, `7d` or plain seconds, at most
//! [`MAX_DURATION`] (CLI flags, admin requests). Each caller applies its own
//! bounds and words its own errors; see [`crate::limits`].

use std::time::Duration;

/// Milliseconds since the epoch of an RFC 3339 time (`2026-01-01T00:00:00Z`,
/// any offset, any fraction of a second).
pub fn rfc3339_millis(text: &str) -> Result<i64, chrono::ParseError> {
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis())
}

/// A point in time written as integer milliseconds since the epoch or as
/// RFC 3339, in milliseconds. Unbounded: the caller checks its own range.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    rfc3339_millis(text).map_err(|e| {
        format!(
            "{text:?} is neither milliseconds nor RFC 3339 \
             (ms since the epoch, or e.g. 2026-01-01T00:00:00Z): {e}"
        )
    })
}

/// [`parse_instant`], within [`QUERY_TIME_RANGE`] (1970 to the end of 9999):
/// query parameters and CLI flags.
///
/// [`QUERY_TIME_RANGE`]: crate::limits::QUERY_TIME_RANGE
pub fn parse_bounded_instant(text: &str) -> Result<i64, String> {
    let ms = parse_instant(text)?;
    let (earliest, latest) = crate::limits::QUERY_TIME_RANGE;
    if (earliest..=latest).contains(&ms) {
        Ok(ms)
    } else {
        Err(format!(
            "{ms} is outside the bounds {earliest}..={latest} (1970 to the end of 9999)"
        ))
    }
}

/// A point in time on the command line, relative to `now_ms`: `now`, a
/// duration before now (`-30m`, `now-30m`), or [`parse_bounded_instant`].
pub fn parse_when(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ms);
    }
    if let Some(ago) = text.strip_prefix("now-").or_else(|| text.strip_prefix('-')) {
        return parse_duration_millis(ago).map(|ago| now_ms.saturating_sub(ago));
    }
    parse_bounded_instant(text)
        .map_err(|e| format!("{e}; or `now`, or a time before now such as -30m"))
}

/// `ms` as RFC 3339 in UTC to the second (`2026-01-01T00:00:00Z`); the raw
/// number if it is past what chrono can show.
pub fn format_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

/// The longest duration accepted anywhere (ten years): every setting that
/// takes one (lateness, intervals, retention) is far below it, and its
/// milliseconds fit an `i64` with room to add to any event time.
pub const MAX_DURATION: Duration = Duration::from_secs(crate::limits::MAX_DURATION_DAYS * 86_400);

/// Parses `250ms`, `30s`, `5m`, `2h`, `7d` or a number of seconds, up to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// [`parse_duration`], as whole milliseconds (which always fit an `i64`).
pub fn parse_duration_millis(text: &str) -> Result<i64, String> {
    parse_duration(text).map(|d| i64::try_from(d.as_millis()).expect("bounded by MAX_DURATION"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn instants_are_bounded_and_relative_ones_count_back_from_now() {
        use super::{parse_bounded_instant, parse_when};
        let (earliest, latest) = crate::limits::QUERY_TIME_RANGE;
        assert_eq!(parse_bounded_instant(&earliest.to_string()), Ok(earliest));
        assert_eq!(parse_bounded_instant(&latest.to_string()), Ok(latest));
        for outside in [earliest - 1, latest + 1] {
            let error = parse_bounded_instant(&outside.to_string()).unwrap_err();
            assert!(error.contains("outside the bounds"), "{error}");
        }
        let now = 1_767_225_600_000;
        assert_eq!(parse_when("now", now), Ok(now));
        assert_eq!(parse_when("-30m", now), Ok(now - 1_800_000));
        assert_eq!(parse_when("now-2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_when("2026-01-01T00:00:00Z", now), Ok(now));
        assert!(
            parse_when("-5x", now)
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert!(
            parse_when("soon", now)
                .unwrap_err()
                .contains("a time before now")
        );
    }

    use super::*;

    #[test]
    fn instants_are_milliseconds_or_rfc3339() {
        assert_eq!(parse_instant("1767225600000"), Ok(1_767_225_600_000));
        assert_eq!(parse_instant(" -5 "), Ok(-5));
        assert_eq!(parse_instant("2026-01-01T00:00:00Z"), Ok(1_767_225_600_000));
        assert_eq!(
            parse_instant("2026-01-01T01:00:00.5+01:00"),
            Ok(1_767_225_600_500)
        );
        let err = parse_instant("yesterday").unwrap_err();
        assert!(
            err.contains("\"yesterday\"") && err.contains("RFC 3339"),
            "{err}"
        );
        assert!(parse_instant("99999999999999999999").is_err());
        assert_eq!(format_rfc3339(1_767_225_600_000), "2026-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn durations_are_bounded_on_both_sides() {
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration_millis("3650d"), Ok(315_360_000_000));
        for bad in [
            "3650.001d",
            "99999999999999999999d",
            "9999999999999999s",
            "1e400s",
            "-5s",
            "NaN",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains(bad) || err.contains("duration"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse_duration("9999999999999999s")
                .unwrap_err()
                .contains("longest duration")
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }
}
