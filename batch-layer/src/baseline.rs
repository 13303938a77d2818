//! DuckDB's own Parquet writer, the baseline `lambda bench batch` measures
//! the master dataset's writer against: the same rows, loaded into a DuckDB
//! table first (not timed), then `COPY … TO … (FORMAT parquet, COMPRESSION
//! zstd)`.

use std::path::{Path as FsPath, PathBuf};

use anyhow::Context;

use crate::views::{parquet_list, sql_string};

/// A DuckDB table holding the rows of some Parquet files.
pub struct DuckTable {
    conn: duckdb::Connection,
    rows: u64,
}

impl std::fmt::Debug for DuckTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DuckTable")
            .field("rows", &self.rows)
            .finish()
    }
}

impl DuckTable {
    /// Loads `files` into an in-memory table, in `(ts, event_id)` order as the lake keeps them.
    pub fn load(files: &[PathBuf]) -> anyhow::Result<DuckTable> {
        let conn = duckdb::Connection::open_in_memory().context("opening duckdb")?;
        let list = parquet_list(files);
        conn.execute_batch(&format!(
            "CREATE TABLE rows AS SELECT * FROM read_parquet([{}]) ORDER BY ts, event_id",
            list
        ))
        .context("loading the rows into duckdb")?;
        let rows: u64 = conn
            .query_row("SELECT count(*) FROM rows", [], |r| r.get(0))
            .context("counting rows")?;
        Ok(DuckTable { conn, rows })
    }

    /// Rows in the table.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// `COPY rows TO out (FORMAT parquet, COMPRESSION zstd)`.
    pub fn copy_to(&self, out: &FsPath) -> anyhow::Result<()> {
        self.conn
            .execute_batch(&format!(
                "COPY rows TO {} (FORMAT parquet, COMPRESSION zstd)",
                sql_string(&out.to_string_lossy())
            ))
            .with_context(|| format!("copying to {}", out.display()))
    }
}
