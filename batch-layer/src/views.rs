//! Batch views: DuckDB runs the `.sql` files in `batch-layer/sql/` (one per
//! view) over an hour partition's Parquet files, and the results are stored
//! as Parquet beside the master dataset. [`BatchViews`] (in `lambda-lake`)
//! reads them back into the same `BucketViews` the speed layer keeps, for
//! serving.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use arrow::compute::cast;
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef, BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use lambda_events::{DdSketch, Hll, Topic};

use crate::dialect::{self, Dialect};

pub use lambda_lake::views::{BatchViews, ViewName, apply_view_file};

/// A batch view: its name, the topic it reads and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct ViewDef {
    /// Name (also the file name of its SQL and the directory of its files).
    pub name: ViewName,
    /// The topic whose events it reads.
    pub topic: Topic,
    /// The query, over a relation `events` (with `ts_ms`), in both
    /// engines' SQL with [`crate::dialect`] placeholders.
    pub sql: &'static str,
}

/// Every batch view.
pub const VIEWS: [ViewDef; 4] = [
    ViewDef {
        name: ViewName::Funnel,
        topic: Topic::Funnel,
        sql: include_str!("../sql/funnel.sql"),
    },
    ViewDef {
        name: ViewName::Pages,
        topic: Topic::Funnel,
        sql: include_str!("../sql/pages.sql"),
    },
    ViewDef {
        name: ViewName::IotSensors,
        topic: Topic::Iot,
        sql: include_str!("../sql/iot_sensors.sql"),
    },
    ViewDef {
        name: ViewName::IotDevices,
        topic: Topic::Iot,
        sql: include_str!("../sql/iot_devices.sql"),
    },
];

/// The views that read `topic`.
pub fn views_of(topic: Topic) -> impl Iterator<Item = &'static ViewDef> {
    VIEWS.iter().filter(move |v| v.topic == topic)
}

/// A DuckDB connection for one run.
pub struct ViewEngine {
    conn: duckdb::Connection,
}

impl std::fmt::Debug for ViewEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewEngine")
    }
}

/// `files` as the SQL list `read_parquet([…])` takes.
pub(crate) fn parquet_list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| sql_string(&f.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A SQL string literal; the paths quoted are the lake's own, never request data.
pub(crate) fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl ViewEngine {
    /// An in-memory DuckDB.
    pub fn new() -> anyhow::Result<ViewEngine> {
        let conn = duckdb::Connection::open_in_memory().context("opening duckdb")?;
        conn.execute_batch("SET threads TO 2; SET preserve_insertion_order = false;")
            .context("configuring duckdb")?;
        Ok(ViewEngine { conn })
    }

    fn define_events(&self, topic: Topic, files: &[PathBuf]) -> anyhow::Result<()> {
        let files: Vec<String> = files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        let sql = format!(
            "CREATE OR REPLACE TEMP VIEW events AS {}",
            Dialect::DuckDb.events_relation(topic, &files)?
        );
        self.conn
            .execute_batch(&sql)
            .context("defining the events relation")
    }

    /// The connection, for the other parts of a run (the id index).
    pub(crate) fn connection(&self) -> &duckdb::Connection {
        &self.conn
    }

    /// Runs `view` over `files` and returns its rows, sketches folded: what
    /// its view file holds.
    pub fn compute(
        &self,
        view: &ViewDef,
        files: &[PathBuf],
    ) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
        let (schema, batches) = self.compute_lists(view, files)?;
        fold_sketches(schema, batches)
    }

    /// The columns and types `view`'s SQL gives on DuckDB, before its value
    /// lists are folded into sketches: what another engine's answer is cast
    /// to (run over an empty file of the view's topic).
    pub fn lists_schema(&self, view: &ViewDef) -> anyhow::Result<SchemaRef> {
        let dir = tempfile::tempdir().context("a temporary directory for an empty master file")?;
        let file = dir.path().join("empty.parquet");
        let bytes = crate::master::encode(view.topic, &[])?;
        std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
        let (schema, _) = self.compute_lists(view, &[file])?;
        Ok(schema)
    }

    /// Runs `view` over `files`: its rows with the value lists unfolded.
    fn compute_lists(
        &self,
        view: &ViewDef,
        files: &[PathBuf],
    ) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
        self.define_events(view.topic, files)?;
        let sql = dialect::expand(view.sql, Dialect::DuckDb)?;
        let mut stmt = self
            .conn
            .prepare(&sql)
            .with_context(|| format!("preparing view {}", view.name))?;
        let arrow = stmt
            .query_arrow([])
            .with_context(|| format!("running view {}", view.name))?;
        let schema = arrow.get_schema();
        let batches: Vec<RecordBatch> = arrow.collect();
        Ok((schema, batches))
    }
}

/// List columns the SQL returns, and the sketch column each is folded into.
const SKETCH_COLUMNS: [(&str, &str); 2] =
    [("users", "users_hll"), ("render_values", "render_sketch")];

/// Replaces each list column of [`SKETCH_COLUMNS`] by its sketch's bytes
/// (the same form the speed layer keeps), so view files hold sketches, not lists.
pub(crate) fn fold_sketches(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut fields: Vec<Field> = Vec::new();
    let mut plan: Vec<(usize, Option<&str>)> = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        match SKETCH_COLUMNS.iter().find(|(list, _)| list == field.name()) {
            Some((_, sketch)) => {
                fields.push(Field::new(*sketch, DataType::Binary, false));
                plan.push((i, Some(field.name().as_str())));
            }
            None => {
                fields.push(field.as_ref().clone());
                plan.push((i, None));
            }
        }
    }
    if plan.iter().all(|(_, list)| list.is_none()) {
        return Ok((schema, batches));
    }
    let out_schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let columns = plan
            .iter()
            .map(|(i, list)| match list {
                None => Ok(Arc::clone(batch.column(*i))),
                Some(name) => sketch_column(name, batch.column(*i).as_ref()),
            })
            .collect::<anyhow::Result<Vec<ArrayRef>>>()?;
        out.push(RecordBatch::try_new(Arc::clone(&out_schema), columns)?);
    }
    Ok((out_schema, out))
}

fn sketch_column(name: &str, column: &dyn Array) -> anyhow::Result<ArrayRef> {
    let list = column
        .as_list_opt::<i32>()
        .with_context(|| format!("column {name} is not a list"))?;
    let mut rows: Vec<Vec<u8>> = Vec::with_capacity(list.len());
    for i in 0..list.len() {
        let values = if list.is_null(i) {
            None
        } else {
            Some(list.value(i))
        };
        let bytes = if name == "users" {
            let mut hll = Hll::new();
            if let Some(values) = values {
                let values = cast(&values, &DataType::Utf8)?;
                for user in values.as_string::<i32>().iter().flatten() {
                    hll.add(user.as_bytes());
                }
            }
            hll.to_bytes()
        } else {
            let mut sketch = DdSketch::new();
            if let Some(values) = values {
                let values = cast(&values, &DataType::Float64)?;
                for v in values.as_primitive::<Float64Type>().iter().flatten() {
                    sketch.add(v);
                }
            }
            sketch.to_bytes()
        };
        rows.push(bytes);
    }
    Ok(Arc::new(BinaryArray::from_iter_values(rows)))
}
