//! The bounds every input is held to (DESIGN §6), as one table.
//!
//! The event validator, the collector, the query parser and `/openapi.json`
//! read their bounds from here, and the tests check both sides of each one.
//! A value past a bound is the sender's error: it is answered `4xx` (or
//! dead-lettered) with the bound's name, never folded into a view.
//!
//! The magnitudes are chosen so that no sum a view keeps can overflow:
//! `revenue_cents` is an `i64` and each purchase adds at most
//! [`MAX_AMOUNT_CENTS`], so a bucket needs over 92 million maximal purchases
//! before the (saturating) sum would reach `i64::MAX`; a sensor's `sum` adds
//! values of at most [`MAX_ABS_VALUE`] and stays finite for far more readings
//! than a bucket can hold.

use serde::Serialize;

/// Longest `event_id`, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest value of any other string field (and of a query filter), in bytes.
pub const MAX_STRING_LEN: usize = 256;
/// Largest `amount_cents` (one billion in the currency's main unit).
pub const MAX_AMOUNT_CENTS: i64 = 100_000_000_000;
/// Largest magnitude of a sensor `value`.
pub const MAX_ABS_VALUE: f64 = 1e15;
/// Largest `render_ms` (one hour).
pub const MAX_RENDER_MS: f64 = 3_600_000.0;
/// Largest `battery_pct`.
pub const MAX_BATTERY_PCT: f64 = 100.0;
/// Latest `ts` any event may carry: 9999-12-31T23:59:59.999Z.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;
/// How far ahead of the receiver's clock (the collector's, or the log
/// record's timestamp for records read from the log) `ts` may be, by default.
pub const DEFAULT_MAX_TS_AHEAD_MS: i64 = 5 * 60_000;
/// Largest request body, in bytes.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Most lines (NDJSON) or elements (JSON array) in one request.
pub const MAX_LINES_PER_REQUEST: usize = 10_000;
/// Longest line (or array element) of a request, in bytes: larger ones are
/// rejected on their own and dead-lettered with their first
/// [`DEAD_LETTER_EXCERPT_BYTES`] bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Bytes of a rejected line kept in its dead-letter record.
pub const DEAD_LETTER_EXCERPT_BYTES: usize = 64 * 1024;
/// Rejections listed in one response; the rest are only counted.
pub const MAX_REJECTIONS_LISTED: usize = 100;
/// Most buckets one query may return.
pub const MAX_BUCKETS: i64 = 10_000;
/// Earliest `from` and latest `to` a query may name (the event bounds).
pub const QUERY_TIME_RANGE: (i64, i64) = (0, MAX_TS_MS + 1);
/// Open connections one process serves at once.
pub const MAX_CONNECTIONS: usize = 768;
/// Seconds a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Bytes of a request's target (its path and query, and scheme and
/// authority when given) every server reads; a longer one is refused with
/// `414` naming the bound (nginx's header buffer is 8 KiB too). Past
/// 64 KiB hyper refuses it itself, with a bare `414`.
pub const MAX_REQUEST_TARGET_BYTES: usize = 8 * 1024;
/// Bytes of a request's header fields (names and values) every server
/// reads; more is refused with `431` naming the bound (nginx reads up to
/// 32 KiB of them). Past about 400 KiB of request head, or 100 fields,
/// hyper refuses it itself, with a bare `431`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Seconds a request body may take to arrive at the collector.
pub const BODY_READ_TIMEOUT_SECS: u64 = 30;
/// Largest body of an admin request (`POST /api/v1/admin/kappa/replay`).
pub const MAX_ADMIN_BODY_BYTES: usize = 4096;
/// Seconds a client may leave a response unread (no byte of it accepted by
/// its socket) before the connection is closed (nginx's `send_timeout`).
pub const SEND_TIMEOUT_SECS: u64 = 60;
/// Largest log record (key and value); the log backends refuse larger ones
/// (`lambda_log::MAX_RECORD_BYTES` is this value).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// How long `dead-letter` keeps a record (by its timestamp), whatever any
/// consumer group has read: nothing consumes it on its own schedule.
pub const DEAD_LETTER_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Most bytes `dead-letter` keeps per partition (the oldest go first).
pub const DEAD_LETTER_RETENTION_BYTES: u64 = 1024 * 1024 * 1024;
/// Least time between two comparisons that are not answered from the cache
/// (`GET /api/v1/compare`); the wait is at least as long as the last one took.
pub const COMPARE_MIN_INTERVAL_SECS: u64 = 5;
/// Alert streams (Server-Sent Events) open at once.
pub const MAX_ALERT_STREAMS: usize = 256;
/// Alert transitions one `GET /api/v1/alerts` answers at most.
pub const MAX_ALERTS_PER_PAGE: usize = 1_000;
/// Longest duration a setting or an admin request takes, in days.
pub const MAX_DURATION_DAYS: u64 = 3650;
/// Alert transitions kept: the newest this many, by each speed state (for
/// readers to take) and by serving's feed (`GET /api/v1/alerts`, its
/// stream). A reader asking from before them is told how many it missed
/// (`missed`, an SSE `gap` event); the active alerts do not depend on them.
pub const ALERT_TRANSITIONS_KEPT: usize = 10_000;
/// The largest alert id serving gives: ids stay exact as JavaScript
/// numbers (2^53 − 1). A transition that would be numbered past it is not
/// kept but counted as lost (`/api/v1/status` `alerts.lost`); a feed starts
/// near 1.8 × 10^15 (its start time in ms × 1 000), so only a source's seq
/// jumps could bring it there.
pub const MAX_ALERT_ID: u64 = (1 << 53) - 1;
/// Ids the jumps in a source's alert seqs skip at most in one take of its
/// news (a poll): transitions a speed state dropped before serving took
/// them leave a hole of as many ids (a reader is told how many it missed),
/// but no more than this (a remote speed instance's seqs are outside
/// input: one that jumped to 2^64 − 1 made every later transition share
/// one id, and one jumping 10^9 at each of 20 000 transitions a poll used
/// up every id in two minutes). `alerts.lost` counts every jump whole.
pub const MAX_ALERT_ID_HOLE: u64 = 1_000_000;
/// Ids below which a hole may skip ids (2^52): past it, transitions a
/// source dropped are counted in `alerts.lost` but skip no id, so that the
/// ids left (2^52 of them) go to transitions serving holds — a group's
/// every partition is a source, and sources jumping at once used the id
/// space up in weeks however each poll was bounded (a hostile run).
pub const ALERT_HOLE_IDS_BELOW: u64 = 1 << 52;
/// Partitions per event topic serving mirrors from a speed group
/// (`--speed-checkpoint-url`): a member's claim of a partition at or past
/// it, or of another topic, is not mirrored (a member's record is outside
/// input: claims of new 200 KB topic names each poll grew serving's memory
/// without end).
pub const MAX_GROUP_PARTITIONS: u32 = 1024;
/// Bytes of a speed instance's snapshot serving reads at most (the whole
/// state of a million users and a million devices checkpoints to 136 MB
/// in `lambda bench`): past it the poll fails, named in `/api/v1/status`,
/// and the mirror keeps what it had.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;
/// Bytes of an alert's key or message in a snapshot serving reads (a key
/// is an event's id field, at most 256 bytes, or two of them joined; a
/// message a line about it): past it the snapshot is refused, as one
/// whose times are past [`MAX_TS_MS`] either way or whose lateness is past
/// [`MAX_DURATION_DAYS`] (a remote instance's 20 MB keys filled serving's
/// memory and stalled every route: a hostile run).
pub const MAX_ALERT_TEXT_BYTES: usize = 2048;
/// `(topic, minute)` entries a speed state's late ledger keeps at most (69
/// days of minutes of one topic): past it, the entry of the oldest minute
/// goes (its events still count in `late`). In lambda mode the horizon
/// trims the ledger long before; in kappa mode nothing else does, and late
/// events stamped each in a minute of its own grew it, and every
/// checkpoint, without end (a hostile run: 2 M entries, a 59.5 MB
/// checkpoint).
pub const MAX_LATE_LEDGER_ENTRIES: usize = 100_000;

/// One row of the table: a bound, where it applies and what it is.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limit {
    /// The field, parameter or figure it bounds.
    pub name: &'static str,
    /// Where it is enforced.
    pub applies_to: &'static str,
    /// Smallest allowed value, if bounded below.
    pub min: Option<f64>,
    /// Largest allowed value, if bounded above.
    pub max: Option<f64>,
    /// The unit of `min` and `max`.
    pub unit: &'static str,
}

const fn limit(
    name: &'static str,
    applies_to: &'static str,
    min: Option<f64>,
    max: Option<f64>,
    unit: &'static str,
) -> Limit {
    Limit {
        name,
        applies_to,
        min,
        max,
        unit,
    }
}

/// Every bound, for `/openapi.json`, `docs/robustness.md` and the tests.
pub const TABLE: &[Limit] = &[
    limit(
        "event_id",
        "event",
        Some(1.0),
        Some(MAX_EVENT_ID_LEN as f64),
        "bytes",
    ),
    limit(
        "string fields",
        "event",
        Some(1.0),
        Some(MAX_STRING_LEN as f64),
        "bytes",
    ),
    limit(
        "amount_cents",
        "event",
        Some(0.0),
        Some(MAX_AMOUNT_CENTS as f64),
        "cents",
    ),
    limit(
        "value",
        "event",
        Some(-MAX_ABS_VALUE),
        Some(MAX_ABS_VALUE),
        "sensor unit",
    ),
    limit("render_ms", "event", Some(0.0), Some(MAX_RENDER_MS), "ms"),
    limit(
        "battery_pct",
        "event",
        Some(0.0),
        Some(MAX_BATTERY_PCT),
        "percent",
    ),
    limit(
        "ts",
        "event",
        Some(0.0),
        Some(MAX_TS_MS as f64),
        "ms since the epoch",
    ),
    limit(
        "ts ahead of the receiver's clock",
        "collector; records read from the log (against the record's timestamp)",
        None,
        Some(DEFAULT_MAX_TS_AHEAD_MS as f64),
        "ms",
    ),
    limit(
        "body",
        "POST /api/v1/events",
        None,
        Some(MAX_BODY_BYTES as f64),
        "bytes",
    ),
    limit(
        "lines",
        "POST /api/v1/events",
        Some(1.0),
        Some(MAX_LINES_PER_REQUEST as f64),
        "lines or array elements",
    ),
    limit(
        "line",
        "POST /api/v1/events",
        None,
        Some(MAX_LINE_BYTES as f64),
        "bytes",
    ),
    limit(
        "rejected listed",
        "POST /api/v1/events response",
        None,
        Some(MAX_REJECTIONS_LISTED as f64),
        "rejections",
    ),
    limit(
        "buckets",
        "query",
        Some(1.0),
        Some(MAX_BUCKETS as f64),
        "buckets",
    ),
    limit(
        "from, to",
        "query",
        Some(QUERY_TIME_RANGE.0 as f64),
        Some(QUERY_TIME_RANGE.1 as f64),
        "ms since the epoch",
    ),
    limit(
        "filter",
        "query",
        Some(1.0),
        Some(MAX_STRING_LEN as f64),
        "bytes",
    ),
    limit(
        "connections",
        "every HTTP server",
        None,
        Some(MAX_CONNECTIONS as f64),
        "open connections",
    ),
    limit(
        "request headers",
        "every HTTP server",
        None,
        Some(HEADER_READ_TIMEOUT_SECS as f64),
        "seconds to arrive",
    ),
    limit(
        "request target",
        "every HTTP server",
        None,
        Some(MAX_REQUEST_TARGET_BYTES as f64),
        "bytes",
    ),
    limit(
        "header fields",
        "every HTTP server",
        None,
        Some(MAX_HEADER_BYTES as f64),
        "bytes (names and values)",
    ),
    limit(
        "request body",
        "POST /api/v1/events; POST /api/v1/admin/kappa/replay",
        None,
        Some(BODY_READ_TIMEOUT_SECS as f64),
        "seconds to arrive",
    ),
    limit(
        "admin body",
        "POST /api/v1/admin/kappa/replay",
        None,
        Some(MAX_ADMIN_BODY_BYTES as f64),
        "bytes",
    ),
    limit(
        "unread response",
        "every HTTP server",
        None,
        Some(SEND_TIMEOUT_SECS as f64),
        "seconds without progress",
    ),
    limit(
        "log record",
        "every log backend (key and value)",
        None,
        Some(MAX_RECORD_BYTES as f64),
        "bytes",
    ),
    limit(
        "dead-letter retention",
        "the dead-letter topic",
        None,
        Some(DEAD_LETTER_RETENTION_MS as f64),
        "ms",
    ),
    limit(
        "dead-letter size",
        "the dead-letter topic, per partition",
        None,
        Some(DEAD_LETTER_RETENTION_BYTES as f64),
        "bytes",
    ),
    limit(
        "comparisons",
        "GET /api/v1/compare (answers not in the cache)",
        Some(COMPARE_MIN_INTERVAL_SECS as f64),
        None,
        "seconds apart",
    ),
    limit(
        "alert streams",
        "GET /api/v1/alerts/stream",
        None,
        Some(MAX_ALERT_STREAMS as f64),
        "open streams",
    ),
    limit(
        "limit",
        "GET /api/v1/alerts",
        Some(1.0),
        Some(MAX_ALERTS_PER_PAGE as f64),
        "transitions (and active alerts listed; all counted in active_count)",
    ),
    limit(
        "alert transitions kept",
        "each speed state; serving's feed (GET /api/v1/alerts, /api/v1/alerts/stream)",
        None,
        Some(ALERT_TRANSITIONS_KEPT as f64),
        "transitions (the newest; older ones are reported as missed)",
    ),
    limit(
        "alert ids",
        "serving's alert feed (GET /api/v1/alerts, /api/v1/alerts/stream)",
        None,
        Some(MAX_ALERT_ID as f64),
        "id (past it a transition is counted in alerts.lost, not kept)",
    ),
    limit(
        "alert id hole",
        "serving's alert feed: the jumps in a speed state's alert seqs, one poll",
        None,
        Some(MAX_ALERT_ID_HOLE as f64),
        "ids skipped per poll of a source (alerts.lost counts every jump whole)",
    ),
    limit(
        "alert id holes",
        "serving's alert feed: ids a hole may skip",
        None,
        Some(ALERT_HOLE_IDS_BELOW as f64),
        "id (past it a hole skips none; alerts.lost counts it)",
    ),
    limit(
        "speed group partitions",
        "serving mirroring a speed group (--speed-checkpoint-url)",
        Some(0.0),
        Some((MAX_GROUP_PARTITIONS - 1) as f64),
        "partition number per event topic (others' claims are not mirrored)",
    ),
    limit(
        "speed snapshot",
        "serving reading a speed instance (--speed-url)",
        None,
        Some(MAX_SNAPSHOT_BYTES as f64),
        "bytes (past it the poll fails, named in /api/v1/status)",
    ),
    limit(
        "alert text",
        "an alert's key or message in a speed instance's snapshot",
        None,
        Some(MAX_ALERT_TEXT_BYTES as f64),
        "bytes (past it the snapshot is refused)",
    ),
    limit(
        "late ledger",
        "a speed state's late events itemised by (topic, minute)",
        None,
        Some(MAX_LATE_LEDGER_ENTRIES as f64),
        "entries (the oldest minute's goes first)",
    ),
    limit(
        "durations",
        "CLI flags; POST /api/v1/admin/kappa/replay allowed_lateness",
        Some(0.0),
        Some(MAX_DURATION_DAYS as f64),
        "days",
    ),
];
