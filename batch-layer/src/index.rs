//! The id index: every `event_id` in the master dataset, so a run drops an
//! event already stored under any hour — a resend with another `ts`
//! included — not only those of the hours it touches.
//!
//! Each run that writes events adds one small Parquet file per topic,
//! `index/<topic>/ids-<version>.parquet`, with the `event_id` and `ts` of
//! what it wrote, sorted by `event_id`. A run asks DuckDB which of its
//! candidate ids are in the topic's index files (reading that one column);
//! once a topic has more than [`COMPACT_AT`] index files, the run merges them
//! into one. A lake written before the index existed has none in its
//! manifest: then the topic's data files are the index (they have an
//! `event_id` column too), and the next run's merge writes a real one.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow_array::builder::{StringBuilder, TimestampMillisecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use lambda_events::Topic;

use crate::master::{self, LoggedEvent};
use crate::views::{ViewEngine, parquet_list};

/// Index files of one topic beyond which a run merges them into one.
pub const COMPACT_AT: usize = 8;

/// The index files' schema: `event_id`, `ts`.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// The lake path of `topic`'s index file written by run `version` (`merged`: by its merge).
pub fn path(topic: Topic, version: u64, merged: bool) -> String {
    let suffix = if merged { "-merged" } else { "" };
    format!("index/{}/ids-{version:010}{suffix}.parquet", topic.name())
}

/// An index file of `events`, sorted by `event_id`.
pub fn encode(events: &[LoggedEvent]) -> anyhow::Result<Bytes> {
    let mut sorted: Vec<(&str, i64)> = events
        .iter()
        .map(|e| (e.event.event_id.as_str(), e.event.ts))
        .collect();
    sorted.sort_unstable();
    let mut ids = StringBuilder::new();
    let mut ts = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for (id, t) in sorted {
        ids.append_value(id);
        ts.append_value(t);
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(ids.finish()), Arc::new(ts.finish())];
    let batch = RecordBatch::try_new(schema(), columns)?;
    master::to_parquet(schema(), &[batch])
}

impl ViewEngine {
    /// Which of `candidates` are in `files` (index or data files: anything
    /// with an `event_id` column).
    pub fn known_ids<'a>(
        &self,
        files: &[PathBuf],
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<HashSet<String>> {
        if files.is_empty() {
            return Ok(HashSet::new());
        }
        let conn = self.connection();
        conn.execute_batch("CREATE OR REPLACE TEMP TABLE candidates (event_id VARCHAR)")
            .context("creating the candidates table")?;
        {
            let mut appender = conn.appender("candidates")?;
            for id in candidates {
                appender.append_row([id])?;
            }
            appender.flush()?;
        }
        let list = parquet_list(files);
        let sql = format!(
            "SELECT DISTINCT event_id FROM candidates WHERE event_id IN \
             (SELECT event_id FROM read_parquet([{}]))",
            list
        );
        let mut stmt = conn.prepare(&sql).context("preparing the id lookup")?;
        let known = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<HashSet<_>, _>>()
            .context("looking ids up in the index")?;
        conn.execute_batch("DROP TABLE candidates")?;
        Ok(known)
    }

    /// One index file holding every id of `files`, sorted by `event_id`.
    pub fn merge_index(&self, files: &[PathBuf]) -> anyhow::Result<Bytes> {
        let list = parquet_list(files);
        let sql = format!(
            "SELECT event_id, ts FROM read_parquet([{}]) ORDER BY event_id, ts",
            list
        );
        let mut stmt = self
            .connection()
            .prepare(&sql)
            .context("preparing the index merge")?;
        let batches: Vec<RecordBatch> = stmt.query_arrow([])?.collect();
        // DuckDB's timestamps come back without the time zone: restate the schema.
        let batches = batches
            .into_iter()
            .map(|b| {
                let ts = arrow::compute::cast(
                    b.column(1),
                    &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                )?;
                Ok(RecordBatch::try_new(
                    schema(),
                    vec![Arc::clone(b.column(0)), ts],
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        master::to_parquet(schema(), &batches)
    }
}
