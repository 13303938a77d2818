//! The master dataset: events as typed Parquet columns (zstd), one file per
//! run and hour partition, at `master/<topic>/date=YYYY-MM-DD/hour=HH/part-<version>.parquet`.
//!
//! Columns (all nullable unless noted): `event_id` (utf8, not null),
//! `event_type` (utf8, not null), `ts` (timestamp ms UTC, not null), then the
//! topic's fields of DESIGN.md §3 with their JSON types (strings as utf8,
//! `render_ms`/`value`/`battery_pct` as float64, `amount_cents` as int64), and
//! the lineage columns `log_partition` (int32) and `log_offset` (int64).

use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use lambda_events::{Event, Topic};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// An event with where it was read from in the log.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// The event.
    pub event: Event,
    /// Log partition.
    pub partition: u32,
    /// Log offset.
    pub offset: u64,
}

pub use lambda_lake::manifest::HOUR_MS;

/// The partition key `<topic>/date=YYYY-MM-DD/hour=HH` of an hour.
pub fn partition_key(topic: Topic, hour_start_ms: i64) -> String {
    let t =
        chrono::DateTime::from_timestamp_millis(hour_start_ms).expect("event times are in range");
    format!(
        "{}/date={}/hour={}",
        topic.name(),
        t.format("%Y-%m-%d"),
        t.format("%H")
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Text(fn(&Event) -> Option<&str>),
    Float(fn(&Event) -> Option<f64>),
    Int(fn(&Event) -> Option<i64>),
}

fn columns(topic: Topic) -> Vec<(&'static str, Kind)> {
    use Kind::*;
    match topic {
        Topic::Funnel => vec![
            ("user_id", Text(|e| e.user_id.as_deref())),
            ("session_id", Text(|e| e.session_id.as_deref())),
            ("device", Text(|e| e.device.map(|d| d.as_str()))),
            ("page", Text(|e| e.page.as_deref())),
            ("render_ms", Float(|e| e.render_ms)),
            ("campaign_id", Text(|e| e.campaign_id.as_deref())),
            ("product_id", Text(|e| e.product_id.as_deref())),
            ("amount_cents", Int(|e| e.amount_cents)),
            ("error_code", Text(|e| e.error_code.as_deref())),
        ],
        Topic::Iot => vec![
            ("device_id", Text(|e| e.device_id.as_deref())),
            ("sensor", Text(|e| e.sensor.as_deref())),
            ("value", Float(|e| e.value)),
            ("unit", Text(|e| e.unit.as_deref())),
            ("status", Text(|e| e.status.map(|s| s.as_str()))),
            ("battery_pct", Float(|e| e.battery_pct)),
            ("alarm", Text(|e| e.alarm.as_deref())),
            ("severity", Text(|e| e.severity.map(|s| s.as_str()))),
            ("message", Text(|e| e.message.as_deref())),
        ],
    }
}

/// The float columns of a topic's master dataset files.
pub fn float_columns(topic: Topic) -> Vec<&'static str> {
    columns(topic)
        .into_iter()
        .filter(|(_, kind)| matches!(kind, Kind::Float(_)))
        .map(|(name, _)| name)
        .collect()
}

/// The Arrow schema of a topic's master dataset files.
pub fn schema(topic: Topic) -> SchemaRef {
    let mut fields = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ];
    for (name, kind) in columns(topic) {
        let data_type = match kind {
            Kind::Text(_) => DataType::Utf8,
            Kind::Float(_) => DataType::Float64,
            Kind::Int(_) => DataType::Int64,
        };
        fields.push(Field::new(name, data_type, true));
    }
    fields.push(Field::new("log_partition", DataType::Int32, false));
    fields.push(Field::new("log_offset", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Builds one record batch of `events` (all of `topic`).
pub fn record_batch(topic: Topic, events: &[LoggedEvent]) -> anyhow::Result<RecordBatch> {
    let n = events.len();
    let mut ids = StringBuilder::with_capacity(n, n * 24);
    let mut types = StringBuilder::with_capacity(n, n * 8);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut partitions = Int32Builder::with_capacity(n);
    let mut offsets = Int64Builder::with_capacity(n);
    /// One column's builder, with the field it reads.
    enum Column {
        Text(fn(&Event) -> Option<&str>, StringBuilder),
        Float(fn(&Event) -> Option<f64>, Float64Builder),
        Int(fn(&Event) -> Option<i64>, Int64Builder),
    }
    let mut columns: Vec<Column> = columns(topic)
        .into_iter()
        .map(|(_, kind)| match kind {
            Kind::Text(get) => Column::Text(get, StringBuilder::with_capacity(n, n * 8)),
            Kind::Float(get) => Column::Float(get, Float64Builder::with_capacity(n)),
            Kind::Int(get) => Column::Int(get, Int64Builder::with_capacity(n)),
        })
        .collect();
    // One pass, row by row: an event (~0.5 KB) is read once for all its
    // columns, not once per column (a pass per column read every event
    // from memory a dozen times).
    for logged in events {
        let event = &logged.event;
        ids.append_value(&event.event_id);
        types.append_value(event.event_type.as_str());
        ts.append_value(event.ts);
        partitions.append_value(logged.partition as i32);
        offsets.append_value(logged.offset as i64);
        for column in &mut columns {
            match column {
                Column::Text(get, b) => b.append_option(get(event)),
                Column::Float(get, b) => b.append_option(get(event)),
                Column::Int(get, b) => b.append_option(get(event)),
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(types.finish()),
        Arc::new(ts.finish()),
    ];
    for column in columns {
        arrays.push(match column {
            Column::Text(_, mut b) => Arc::new(b.finish()),
            Column::Float(_, mut b) => Arc::new(b.finish()),
            Column::Int(_, mut b) => Arc::new(b.finish()),
        });
    }
    arrays.push(Arc::new(partitions.finish()));
    arrays.push(Arc::new(offsets.finish()));
    Ok(RecordBatch::try_new(schema(topic), arrays)?)
}

/// Writer settings for every Parquet file of the lake: zstd, bounded row
/// groups, dictionaries for the columns that repeat.
///
/// zstd at level 1: level 3 wrote a run's file 0.2 % smaller (8.72 against
/// 8.74 MB for 1 M events, DuckDB's writer 11.62 MB) in about 7 % more
/// time (`lambda bench batch`, nineteenth session).
///
/// Columns that are unique per row get no dictionary (it would only add a
/// page of every value): `event_id` is written plain, and the sorted
/// integers `ts` and `log_offset` delta-encoded, which zstd then packs to
/// almost nothing (`lambda bench batch` compares sizes with DuckDB's writer).
/// `event_id` keeps no min/max statistics: ids are unique and unordered, so
/// they never let a reader skip a row group, and keeping them compared every
/// id twice (a tenth of the writer's time in a profile).
pub fn writer_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("level 1 is valid"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for (column, encoding) in [
        ("event_id", Encoding::PLAIN),
        ("ts", Encoding::DELTA_BINARY_PACKED),
        ("log_offset", Encoding::DELTA_BINARY_PACKED),
    ] {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, encoding);
    }
    builder
        .set_column_statistics_enabled(ColumnPath::from("event_id"), EnabledStatistics::None)
        .build()
}

/// Encodes record batches (of one schema) as one Parquet file.
pub fn to_parquet(schema: SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<Bytes> {
    write_batches(schema, batches.iter().cloned().map(Ok))
}

/// Encodes record batches as they are made, each written before the next.
fn write_batches(
    schema: SchemaRef,
    batches: impl Iterator<Item = anyhow::Result<RecordBatch>>,
) -> anyhow::Result<Bytes> {
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, Some(writer_properties()))?;
    for batch in batches {
        writer.write(&batch?)?;
    }
    writer.close()?;
    Ok(Bytes::from(buffer))
}

/// Encodes events of one topic as one Parquet file.
pub fn encode(topic: Topic, events: &[LoggedEvent]) -> anyhow::Result<Bytes> {
    // A batch at a time, each handed to the writer (which copies it into
    // its pages) before the next is built: the builders' memory is reused
    // rather than a whole run's columns taken fresh from the kernel.
    let chunks = events.chunks(ENCODE_BATCH_ROWS);
    // No rows: one empty batch, as before.
    let chunks = chunks.chain(events.is_empty().then_some(events));
    write_batches(schema(topic), chunks.map(|rows| record_batch(topic, rows)))
}

/// Rows per record batch [`encode`] builds.
const ENCODE_BATCH_ROWS: usize = 16 * 1024;

/// One file holding every row of `files` (all of `topic`), sorted by
/// `(ts, event_id)` as a run writes them: what compaction puts in place of
/// an hour's several files. Each file is sorted already; when they do not
/// overlap (runs that each brought a later stretch of the hour, the usual
/// case) their batches are written one file after the other, with no sort
/// and no copy; otherwise every row is sorted.
pub fn compact(topic: Topic, files: &[std::path::PathBuf]) -> anyhow::Result<Bytes> {
    use anyhow::Context;
    use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let schema = schema(topic);
    let mut runs: Vec<Vec<RecordBatch>> = Vec::new();
    for path in files {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("reading {}", path.display()))?
            .build()?;
        let mut run = Vec::new();
        for batch in reader {
            let batch = batch.with_context(|| format!("reading {}", path.display()))?;
            // Same columns, restated under the one schema (field metadata may differ).
            run.push(RecordBatch::try_new(
                Arc::clone(&schema),
                batch.columns().to_vec(),
            )?);
        }
        runs.push(run);
    }
    // The runs by their first row; then whether every row follows the one before.
    let first_key = |run: &Vec<RecordBatch>| {
        run.iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| SortKeys::of(b).map(|k| (k.ts.value(0), k.id.value(0).to_owned())))
    };
    runs.sort_by_cached_key(first_key);
    let batches: Vec<RecordBatch> = runs.into_iter().flatten().collect();
    if in_order(&batches) {
        return to_parquet(schema, &batches);
    }
    let all = concat_batches(&schema, &batches)?;
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: Arc::clone(all.column(2)),
                options: None,
            },
            SortColumn {
                values: Arc::clone(all.column(0)),
                options: None,
            },
        ],
        None,
    )?;
    let sorted = take_record_batch(&all, &order)?;
    to_parquet(schema, &[sorted])
}

/// A master batch's sort columns: `ts` and `event_id`.
struct SortKeys<'a> {
    ts: &'a arrow::array::TimestampMillisecondArray,
    id: &'a arrow::array::StringArray,
}

impl<'a> SortKeys<'a> {
    fn of(batch: &'a RecordBatch) -> Option<SortKeys<'a>> {
        use arrow::array::AsArray;
        use arrow::datatypes::TimestampMillisecondType;
        Some(SortKeys {
            ts: batch
                .column(2)
                .as_primitive_opt::<TimestampMillisecondType>()?,
            id: batch.column(0).as_string_opt::<i32>()?,
        })
    }

    fn at(&self, row: usize) -> (i64, &'a str) {
        (self.ts.value(row), self.id.value(row))
    }
}

/// Whether the rows of `batches`, one batch after the other, are sorted by
/// `(ts, event_id)` (with no nulls in either).
fn in_order(batches: &[RecordBatch]) -> bool {
    let mut last: Option<(i64, &str)> = None;
    for batch in batches {
        let Some(keys) = SortKeys::of(batch) else {
            return false;
        };
        if arrow::array::Array::null_count(keys.ts) > 0
            || arrow::array::Array::null_count(keys.id) > 0
        {
            return false;
        }
        for row in 0..batch.num_rows() {
            let key = keys.at(row);
            if last.is_some_and(|l| l > key) {
                return false;
            }
            last = Some(key);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_name_date_and_hour_in_utc() {
        assert_eq!(
            partition_key(Topic::Funnel, 1_700_000_000_000 / HOUR_MS * HOUR_MS),
            "funnel-events/date=2023-11-14/hour=22"
        );
        assert_eq!(
            partition_key(Topic::Iot, 0),
            "iot-events/date=1970-01-01/hour=00"
        );
    }
}

#[cfg(test)]
mod compaction_tests {
    use super::*;
    use lambda_events::EventType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn click(id: &str, ts: i64) -> LoggedEvent {
        let mut event = Event::bare(id, EventType::Click, ts);
        event.user_id = Some("u".into());
        LoggedEvent {
            event,
            partition: 0,
            offset: 0,
        }
    }

    fn keys(bytes: Bytes) -> Vec<(i64, String)> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let keys = SortKeys::of(&batch).unwrap();
            out.extend((0..batch.num_rows()).map(|r| {
                let (ts, id) = keys.at(r);
                (ts, id.to_owned())
            }));
        }
        out
    }

    /// Files that follow one another are joined as they are (given in any
    /// order); files that overlap are sorted row by row. Either way: every
    /// row once, in `(ts, event_id)` order.
    #[test]
    fn compaction_sorts_overlapping_files_and_joins_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, events: &[LoggedEvent]| {
            let path = dir.path().join(name);
            std::fs::write(&path, encode(Topic::Funnel, events).unwrap()).unwrap();
            path
        };
        let early: Vec<_> = (0..100)
            .map(|i| click(&format!("a{i:03}"), 1_000 + i))
            .collect();
        let later: Vec<_> = (0..100)
            .map(|i| click(&format!("b{i:03}"), 2_000 + i))
            .collect();
        // Same ts as `early`'s last rows, ids between: overlaps it.
        let late: Vec<_> = (0..10)
            .map(|i| click(&format!("a{i:03}x"), 1_095 + i / 2))
            .collect();
        let (e, l, x) = (
            write("e.parquet", &early),
            write("l.parquet", &later),
            write("x.parquet", &late),
        );
        let mut expected: Vec<(i64, String)> = early
            .iter()
            .chain(&later)
            .map(|e| (e.event.ts, e.event.event_id.clone()))
            .collect();
        let joined = keys(compact(Topic::Funnel, &[l.clone(), e.clone()]).unwrap());
        assert_eq!(joined, expected);
        expected.extend(late.iter().map(|e| (e.event.ts, e.event.event_id.clone())));
        expected.sort();
        let merged = keys(compact(Topic::Funnel, &[l, x, e]).unwrap());
        assert_eq!(merged, expected);
    }
}
