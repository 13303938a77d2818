//! Request bodies: NDJSON (one event per line) or one JSON array of events,
//! parsed line by line so that each bad line is reported by number and field
//! while the good lines are still accepted.

use std::fmt;

use serde::Deserializer;
use serde::de::{SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::EventError;
use crate::event_ref::EventRef;
use crate::limits::{DEAD_LETTER_EXCERPT_BYTES, MAX_LINE_BYTES, MAX_LINES_PER_REQUEST};

/// The first of the codings listed in header field values `values` (each a
/// comma-separated list, as `Content-Encoding` and `Transfer-Encoding`
/// are) that is not `allowed`, quoted to 64 characters: the whole field
/// value it is in (a value that is not text counts as one). Empty list
/// elements are ignored (RFC 9110 §5.6.1); names are compared without case.
pub fn coding_other_than<'v>(
    values: impl IntoIterator<Item = &'v [u8]>,
    allowed: &str,
) -> Option<String> {
    values
        .into_iter()
        .find(|value| {
            std::str::from_utf8(value).map_or(true, |text| {
                text.split(',')
                    .map(str::trim)
                    .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(allowed))
            })
        })
        .map(|value| String::from_utf8_lossy(value).chars().take(64).collect())
}

/// One line (or array element) of a request body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine<'a> {
    /// 1-based line number in the body (element number for a JSON array).
    pub line: usize,
    /// The original bytes of the line, without its line terminator; for a
    /// line over [`MAX_LINE_BYTES`], its first [`DEAD_LETTER_EXCERPT_BYTES`].
    pub raw: &'a [u8],
    /// The line's length in bytes (more than `raw` holds when it was cut).
    pub len: usize,
    /// The validated event (its strings borrowed from the body), or why
    /// the line is invalid.
    pub result: Result<EventRef<'a>, EventError>,
}

/// A body that is refused whole: nothing in it is accepted or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// More lines (or array elements) than [`MAX_LINES_PER_REQUEST`].
    #[error(
        "the body holds more than {max} lines or array elements; send at most {max} per request"
    )]
    TooManyLines {
        /// The limit.
        max: usize,
    },
}

/// One line (or array element) of a request body, split off but not yet
/// parsed: [`BodyLine::parse_into`] parses it into a slot the caller keeps
/// (what the collector does, line after line, without moving each ~0.45 KB
/// event into a vector and out again), [`BodyLine::parse`] into a
/// [`ParsedLine`].
#[derive(Debug, Clone, PartialEq)]
pub struct BodyLine<'a> {
    /// 1-based line number in the body (element number for a JSON array).
    pub line: usize,
    /// The original bytes, as [`ParsedLine::raw`].
    pub raw: &'a [u8],
    /// The line's length in bytes (more than `raw` holds when it was cut).
    pub len: usize,
    /// Why the line is refused before it is parsed: longer than
    /// [`MAX_LINE_BYTES`], or a broken array.
    refused: Option<EventError>,
}

impl<'a> BodyLine<'a> {
    /// A line as split from the body: cut to the excerpt, and refused, when
    /// it is too long to be an event.
    fn new(line: usize, raw: &'a [u8]) -> BodyLine<'a> {
        if raw.len() > MAX_LINE_BYTES {
            return BodyLine {
                line,
                raw: &raw[..DEAD_LETTER_EXCERPT_BYTES.min(raw.len())],
                len: raw.len(),
                refused: Some(EventError::record(format!(
                    "line of {} bytes exceeds the limit of {MAX_LINE_BYTES} bytes",
                    raw.len()
                ))),
            };
        }
        BodyLine {
            line,
            raw,
            len: raw.len(),
            refused: None,
        }
    }

    /// Parses and validates the line into `slot`, as
    /// [`EventRef::read_json`] does (on an error `slot` holds no event worth
    /// reading).
    pub fn parse_into(&self, slot: &mut EventRef<'a>) -> Result<(), EventError> {
        match &self.refused {
            Some(error) => Err(error.clone()),
            None => EventRef::read_json(self.raw, slot),
        }
    }

    /// The line parsed.
    pub fn parse(self) -> ParsedLine<'a> {
        let mut slot = EventRef::slot();
        let result = self.parse_into(&mut slot).map(|()| slot);
        ParsedLine {
            line: self.line,
            raw: self.raw,
            len: self.len,
            result,
        }
    }
}

/// Parses a request body: [`split_body`], each line parsed.
pub fn parse_body(body: &[u8]) -> Result<Vec<ParsedLine<'_>>, BodyError> {
    Ok(split_body(body)?.into_iter().map(BodyLine::parse).collect())
}

/// JSON's whitespace: space, tab, line feed, carriage return — not the
/// form feed `u8::is_ascii_whitespace` also counts (a line of one form
/// feed is a bad line, not a blank one).
pub fn is_json_whitespace(byte: &u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Splits a request body into its lines. A body whose first non-blank byte
/// is `[` is a JSON array; anything else is NDJSON, where blank lines (of
/// JSON's whitespace only) are skipped but counted. A body with more than
/// [`MAX_LINES_PER_REQUEST`] lines or elements is refused whole (counted
/// before anything is parsed, so a huge array of tiny elements costs no
/// more memory than its bytes); a line or element over [`MAX_LINE_BYTES`]
/// is refused on its own.
pub fn split_body(body: &[u8]) -> Result<Vec<BodyLine<'_>>, BodyError> {
    let first = body.iter().find(|b| !is_json_whitespace(b));
    if first == Some(&b'[') {
        return split_array(body);
    }
    // Split at each newline found a word at a time.
    let newlines = memchr::memchr_iter(b'\n', body).count();
    let mut lines = Vec::with_capacity(newlines.min(MAX_LINES_PER_REQUEST) + 1);
    let ends = memchr::memchr_iter(b'\n', body).chain([body.len()]);
    let mut start = 0;
    for (idx, end) in ends.enumerate() {
        let line = &body[start..end];
        start = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(is_json_whitespace) {
            continue;
        }
        if lines.len() == MAX_LINES_PER_REQUEST {
            return Err(BodyError::TooManyLines {
                max: MAX_LINES_PER_REQUEST,
            });
        }
        lines.push(BodyLine::new(idx + 1, line));
    }
    Ok(lines)
}

fn split_array(body: &[u8]) -> Result<Vec<BodyLine<'_>>, BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = deserializer
        .deserialize_seq(BoundedElements)
        .and_then(|elements| deserializer.end().map(|()| elements));
    match parsed {
        // Each element as the client sent it: validated on its own (a number
        // out of range in one element rejects that element, not the array),
        // kept byte for byte for the dead-letter topic, and never built into
        // a tree when it is too long to be an event.
        Ok(elements) => Ok(elements
            .iter()
            .enumerate()
            .map(|(idx, element)| BodyLine::new(idx + 1, element.get().as_bytes()))
            .collect()),
        Err(e) if e.to_string().starts_with(TOO_MANY) => Err(BodyError::TooManyLines {
            max: MAX_LINES_PER_REQUEST,
        }),
        // A broken array cannot be split into elements: the whole body is one
        // bad line, kept (cut to the excerpt) for the dead-letter topic.
        Err(e) => Ok(vec![BodyLine {
            line: 1,
            raw: &body[..body.len().min(DEAD_LETTER_EXCERPT_BYTES)],
            len: body.len(),
            refused: Some(EventError::record(format!("invalid json array: {e}"))),
        }]),
    }
}

const TOO_MANY: &str = "too many elements";

/// A JSON array's elements, unparsed, failing at the first one past the limit.
struct BoundedElements;

impl<'de> Visitor<'de> for BoundedElements {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a json array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<&'de RawValue>, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            if elements.len() == MAX_LINES_PER_REQUEST {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            elements.push(element);
        }
        Ok(elements)
    }
}

#[cfg(test)]
mod tests {

    /// A coding other than the one allowed is found in any field and any
    /// element of one, whatever its case; empty elements do not count.
    #[test]
    fn a_coding_other_than_the_allowed_one_is_found() {
        let find =
            |values: &[&str]| coding_other_than(values.iter().map(|v| v.as_bytes()), "identity");
        for fine in [
            &[][..],
            &["identity"],
            &["IDENTITY"],
            &["identity, ,identity"],
            &[""],
            &["identity,"],
        ] {
            assert_eq!(find(fine), None, "{fine:?}");
        }
        assert_eq!(find(&["gzip"]).as_deref(), Some("gzip"));
        assert_eq!(find(&["identity", "br"]).as_deref(), Some("br"));
        assert_eq!(find(&["identity, zstd"]).as_deref(), Some("identity, zstd"));
        let long = "x".repeat(200);
        assert_eq!(find(&[long.as_str()]).map(|c| c.len()), Some(64));
        let not_text: &[u8] = &[0xff, 0xfe];
        assert!(coding_other_than([not_text], "chunked").is_some());
    }
    use super::*;

    fn summary(body: &str) -> Vec<(usize, Result<String, String>)> {
        parse_body(body.as_bytes())
            .unwrap()
            .into_iter()
            .map(|p| {
                (
                    p.line,
                    p.result
                        .map(|e| e.event_id.into_owned())
                        .map_err(|e| e.to_string()),
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
    fn a_line_parsed_into_a_kept_slot_is_the_line_parsed_alone() {
        // Fields of the line before must not stay in the slot: an IoT event
        // with many fields, then a click with few; escapes, a bad line, a
        // line over the limit, and an array's elements.
        let ndjson = format!(
            "{}\n{}\n{}\nnot json\n{}\n{}\n",
            r#"{"event_id":"a","ts":1,"event_type":"alarm","device_id":"d","alarm":"hot","severity":"high","message":"m"}"#,
            r#"{"event_id":"b","ts":2,"event_type":"click","user_id":"u"}"#,
            r#"{"event_id":"c\"q","ts":3,"event_type":"page_view","user_id":"u","page":"/p","render_ms":1.5}"#,
            "x".repeat(MAX_LINE_BYTES + 1),
            r#"{"event_id":"d","ts":4,"event_type":"impression","user_id":"v"}"#,
        );
        let array = r#"[{"event_id":"a","ts":1,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":2},{"event_id":"b","ts":2,"event_type":"click","user_id":"u"}]"#;
        for body in [ndjson.as_bytes(), array.as_bytes()] {
            let lines = split_body(body).unwrap();
            let mut slot = EventRef::slot();
            for line in lines {
                let kept = line.parse_into(&mut slot).map(|()| slot.clone());
                assert_eq!(kept, line.clone().parse().result, "line {}", line.line);
            }
        }
    }

    #[test]
    fn ndjson_keeps_original_bytes() {
        let parsed = parse_body(b"{\"x\": 1}\r\n").unwrap();
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
    fn array_elements_are_kept_as_sent_and_judged_alone() {
        let body = r#"[ {"zz": 1,   "event_id": "x", "amount_cents": 1E2},
            {"event_id":"a","ts":1,"event_type":"click","user_id":"u"},
            {"event_id":"b","ts":1,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":1e400} ]"#;
        let lines = parse_body(body.as_bytes()).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0].raw,
            br#"{"zz": 1,   "event_id": "x", "amount_cents": 1E2}"#
        );
        assert!(
            lines[1].result.is_ok(),
            "a valid element next to a bad number is accepted"
        );
        let error = lines[2].result.as_ref().unwrap_err().to_string();
        assert!(error.contains("invalid json"), "{error}");
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
        assert!(parse_body(b"").unwrap().is_empty());
        assert!(parse_body(b"\n \n").unwrap().is_empty());
        assert!(parse_body(b" \t\r\n\r\n").unwrap().is_empty());
    }

    #[test]
    fn a_form_feed_is_not_json_whitespace() {
        // A line of one form feed is a bad line, numbered, not skipped.
        let got = summary(
            "\x0c\n{\"event_id\":\"a\",\"ts\":1,\"event_type\":\"click\",\"user_id\":\"u\"}",
        );
        assert_eq!(got.len(), 2);
        assert!(
            got[0].1.as_ref().unwrap_err().starts_with("invalid json"),
            "{got:?}"
        );
        assert_eq!(got[1], (2, Ok("a".into())));
        // Nor does it start an array: the body is NDJSON, one bad line.
        let got = summary("\x0c[]");
        assert_eq!(got.len(), 1);
        let error = got[0].1.as_ref().unwrap_err();
        assert!(
            error.starts_with("invalid json") && !error.starts_with("invalid json array"),
            "{error}"
        );
    }

    fn click(id: usize) -> String {
        format!(r#"{{"event_id":"e{id}","ts":1,"event_type":"click","user_id":"u"}}"#)
    }

    #[test]
    fn lines_per_request_are_bounded_on_both_sides() {
        let at_limit: Vec<String> = (0..MAX_LINES_PER_REQUEST).map(click).collect();
        assert_eq!(
            parse_body(at_limit.join("\n").as_bytes()).unwrap().len(),
            MAX_LINES_PER_REQUEST
        );
        let array = format!("[{}]", at_limit.join(","));
        assert_eq!(
            parse_body(array.as_bytes()).unwrap().len(),
            MAX_LINES_PER_REQUEST
        );
        // Blank lines do not count.
        let with_blanks = format!("{}\n\n\n", at_limit.join("\n\n"));
        assert!(parse_body(with_blanks.as_bytes()).is_ok());

        let mut over = at_limit.clone();
        over.push(click(MAX_LINES_PER_REQUEST));
        let expected = Err(BodyError::TooManyLines {
            max: MAX_LINES_PER_REQUEST,
        });
        assert_eq!(parse_body(over.join("\n").as_bytes()), expected);
        assert_eq!(
            parse_body(format!("[{}]", over.join(",")).as_bytes()),
            expected
        );
        // A million tiny elements are refused without building them all.
        let tiny = format!("[{}0]", "0,".repeat(1_000_000));
        assert_eq!(parse_body(tiny.as_bytes()), expected);
    }

    #[test]
    fn a_line_over_the_limit_is_rejected_alone_and_cut() {
        let padding = "x".repeat(MAX_LINE_BYTES);
        let long = format!(
            r#"{{"event_id":"e","ts":1,"event_type":"click","user_id":"u","pad":"{padding}"}}"#
        );
        let body = format!("{long}\n{}", click(2));
        let lines = parse_body(body.as_bytes()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len, long.len());
        assert_eq!(lines[0].raw.len(), DEAD_LETTER_EXCERPT_BYTES);
        let error = lines[0].result.as_ref().unwrap_err().to_string();
        assert!(
            error.contains(&format!("exceeds the limit of {MAX_LINE_BYTES} bytes")),
            "{error}"
        );
        assert!(lines[1].result.is_ok());
        // A line of exactly the limit is parsed (and here is simply invalid).
        let exact = "y".repeat(MAX_LINE_BYTES);
        let lines = parse_body(exact.as_bytes()).unwrap();
        assert!(
            lines[0]
                .result
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("invalid json")
        );
        assert_eq!(lines[0].raw.len(), MAX_LINE_BYTES);
        // A broken array of 1.5 MiB is one bad line, cut to the excerpt.
        let broken = format!("[\"{}", "a".repeat(1_572_864));
        let lines = parse_body(broken.as_bytes()).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].raw.len(), DEAD_LETTER_EXCERPT_BYTES);
    }
}
