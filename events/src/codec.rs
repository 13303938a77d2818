//! Request bodies: NDJSON (one event per line) or one JSON array of events,
//! parsed line by line so that each bad line is reported by number and field
//! while the good lines are still accepted.

use serde_json::Value;

use crate::event::{Event, EventError};

/// One line (or array element) of a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// 1-based line number in the body (element number for a JSON array).
    pub line: usize,
    /// The original bytes of the line, without its line terminator.
    pub raw: Vec<u8>,
    /// The validated event, or why the line is invalid.
    pub result: Result<Event, EventError>,
}

/// Parses a request body. A body whose first non-blank byte is `[` is a JSON
/// array; anything else is NDJSON, where blank lines are skipped but counted.
pub fn parse_body(body: &[u8]) -> Vec<ParsedLine> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return parse_array(body);
    }
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter_map(|(idx, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                return None;
            }
            Some(ParsedLine {
                line: idx + 1,
                raw: line.to_vec(),
                result: Event::from_json(line),
            })
        })
        .collect()
}

fn parse_array(body: &[u8]) -> Vec<ParsedLine> {
    match serde_json::from_slice::<Vec<Value>>(body) {
        Ok(values) => values
            .iter()
            .enumerate()
            .map(|(idx, value)| ParsedLine {
                line: idx + 1,
                raw: serde_json::to_vec(value).expect("a parsed value serializes"),
                result: Event::from_value(value),
            })
            .collect(),
        // A broken array cannot be split into elements: the whole body is one bad line.
        Err(e) => vec![ParsedLine {
            line: 1,
            raw: body.to_vec(),
            result: Err(EventError::record(format!("invalid json array: {e}"))),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(body: &str) -> Vec<(usize, Result<String, String>)> {
        parse_body(body.as_bytes())
            .into_iter()
            .map(|p| {
                (
                    p.line,
                    p.result.map(|e| e.event_id).map_err(|e| e.to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn ndjson_reports_bad_lines_by_number() {
        let body = concat!(
            r#"{"event_id":"a","ts":1,"event_type":"click","user_id":"u"}"#,
            "\n\n",
            r#"{"event_id":"b","ts":1,"event_type":"click"}"#,
            "\r\n",
            "not json\n",
            r#"{"event_id":"c","ts":1,"event_type":"impression","user_id":"u"}"#,
        );
        let got = summary(body);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], (1, Ok("a".into())));
        assert_eq!(
            got[1],
            (
                3,
                Err("field user_id: required for event_type click".into())
            )
        );
        assert_eq!(got[2].0, 4);
        assert!(got[2].1.as_ref().unwrap_err().starts_with("invalid json"));
        assert_eq!(got[3], (5, Ok("c".into())));
    }

    #[test]
    fn ndjson_keeps_original_bytes() {
        let parsed = parse_body(b"{\"x\": 1}\r\n");
        assert_eq!(parsed[0].raw, b"{\"x\": 1}");
    }

    #[test]
    fn json_array_reports_elements_by_position() {
        let body = r#" [{"event_id":"a","ts":1,"event_type":"click","user_id":"u"}, 5]"#;
        let got = summary(body);
        assert_eq!(got[0], (1, Ok("a".into())));
        assert_eq!(
            got[1],
            (2, Err("expected a json object, found a number".into()))
        );
    }

    #[test]
    fn broken_array_is_one_bad_line() {
        let got = summary("[{");
        assert_eq!(got.len(), 1);
        assert!(
            got[0]
                .1
                .as_ref()
                .unwrap_err()
                .starts_with("invalid json array")
        );
    }

    #[test]
    fn empty_body_has_no_lines() {
        assert!(parse_body(b"").is_empty());
        assert!(parse_body(b"\n \n").is_empty());
    }
}
