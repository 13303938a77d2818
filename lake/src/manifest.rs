//! Manifests: the one write that commits a batch run. `manifests/<version>.json`
//! lists every data file and batch view file that is visible, the log offsets
//! the dataset covers, and the time boundary B. It is written with a
//! conditional put, so two writers cannot both commit the same version;
//! readers take the highest version and never see files of an uncommitted run.

use std::collections::BTreeMap;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::LakeError;
use crate::store::Lake;

/// An hour, in ms: the master dataset and its views are partitioned by hour.
pub const HOUR_MS: i64 = 3_600_000;

/// Where manifests live in the lake.
pub const MANIFEST_DIR: &str = "manifests";

/// One committed state of the lake.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Increases by one per committed run, from 1.
    pub version: u64,
    /// Wall time of the commit (ms).
    pub created_at_ms: i64,
    /// The time boundary B: buckets starting before it are answered by the batch views.
    pub boundary_ms: Option<i64>,
    /// Greatest event time in the master dataset.
    pub max_event_ts: Option<i64>,
    /// Next log offset not yet in the dataset, by topic and partition.
    pub offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Every hour partition of the master dataset, by `<topic>/date=…/hour=…`.
    pub partitions: BTreeMap<String, HourPartition>,
    /// The id index files by topic (see `lambda_batch::index`); absent in lakes
    /// written before the index existed.
    #[serde(default)]
    pub id_index: BTreeMap<String, Vec<DataFile>>,
    /// What the run that wrote this manifest did.
    pub run: RunStats,
}

/// One `<topic>/date=YYYY-MM-DD/hour=HH` partition: its data files and view files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HourPartition {
    /// The topic.
    pub topic: String,
    /// Start of the hour (ms).
    pub hour_start_ms: i64,
    /// Parquet files of the master dataset, deduplicated by `event_id` among themselves.
    pub data_files: Vec<DataFile>,
    /// Batch view files computed from all of `data_files`, by view name.
    pub views: BTreeMap<String, String>,
    /// Why the hour's views could not be recomputed from its data (a
    /// poisoned hour): its data files are kept, its views stay those of the
    /// last good computation, every later run tries again, and status and
    /// metrics name it until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

/// One Parquet file of the master dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Path in the lake.
    pub path: String,
    /// Rows in it.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// Figures of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// Records read from the log.
    pub records_read: u64,
    /// Events newly written to the master dataset.
    pub events_written: u64,
    /// Events dropped as already present (same `event_id`).
    pub duplicates: u64,
    /// Records that were not valid events.
    pub invalid: u64,
    /// Hour partitions whose views were recomputed.
    pub hours_recomputed: u64,
    /// Hour partitions whose data files were merged into one.
    #[serde(default)]
    pub hours_compacted: u64,
    /// Hour partitions quarantined after this run (views not computable from their data).
    #[serde(default)]
    pub hours_quarantined: u64,
    /// Files no manifest needs any more, deleted after the commit (so in
    /// the run's report, not in its manifest).
    #[serde(skip)]
    pub files_deleted: u64,
    /// Wall time of the run (ms).
    pub duration_ms: u64,
    /// The engine that computed the run's views.
    #[serde(default)]
    pub views_engine: ViewsEngine,
}

/// The engine that computed a run's views (both write identical view
/// files; recorded so a user can tell which one ran, e.g. under
/// `--batch-engine auto`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViewsEngine {
    /// DuckDB in the batch process.
    #[default]
    Duckdb,
    /// A Spark cluster through Spark Connect.
    Spark,
}

impl ViewsEngine {
    /// `duckdb` or `spark`.
    pub fn name(self) -> &'static str {
        match self {
            ViewsEngine::Duckdb => "duckdb",
            ViewsEngine::Spark => "spark",
        }
    }
}

/// The path of manifest `version`.
pub fn manifest_path(version: u64) -> Path {
    Path::from(format!("{MANIFEST_DIR}/{version:020}.json"))
}

/// The newest committed manifest, if any run has committed.
pub async fn latest(lake: &Lake) -> Result<Option<Manifest>, LakeError> {
    let newest = lake
        .list(&Path::from(MANIFEST_DIR))
        .await?
        .into_iter()
        .filter_map(|p| {
            p.filename()
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .max();
    let Some(version) = newest else {
        return Ok(None);
    };
    read(lake, version).await
}

/// The manifest of `version`, if it was committed.
pub async fn read(lake: &Lake, version: u64) -> Result<Option<Manifest>, LakeError> {
    let bytes = match lake.get(&manifest_path(version)).await {
        Ok(bytes) => bytes,
        Err(LakeError::Store {
            source: object_store::Error::NotFound { .. },
            ..
        }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let manifest =
        serde_json::from_slice(&bytes).map_err(|source| LakeError::Manifest { version, source })?;
    Ok(Some(manifest))
}

impl Manifest {
    /// Every file this manifest references: data, view and index files.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.partitions
            .values()
            .flat_map(|p| {
                p.data_files
                    .iter()
                    .map(|d| d.path.as_str())
                    .chain(p.views.values().map(String::as_str))
            })
            .chain(self.id_index.values().flatten().map(|d| d.path.as_str()))
    }
}
