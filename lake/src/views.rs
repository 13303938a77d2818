//! Batch views read back: a view file (Parquet, one row per bucket and key,
//! written by the batch layer's DuckDB views) folded into the same
//! [`BucketViews`] the speed layer keeps, and [`BatchViews`], the views of
//! one committed manifest in memory, for serving.

use std::collections::BTreeMap;

use anyhow::Context;
use arrow::compute::cast;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts, SensorStats};
use lambda_events::{BucketViews, DdSketch, Hll};
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::LakeError;
use crate::manifest::{self, HOUR_MS, Manifest};
use crate::store::Lake;

/// The batch views, by the name their files and manifests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViewName {
    /// Funnel counts, revenue and distinct users per campaign.
    Funnel,
    /// Page views, errors and render times per page and device.
    Pages,
    /// Sensor statistics per device and sensor.
    IotSensors,
    /// Device status and alarms per device.
    IotDevices,
}

impl ViewName {
    /// Every view.
    pub const ALL: [ViewName; 4] = [
        ViewName::Funnel,
        ViewName::Pages,
        ViewName::IotSensors,
        ViewName::IotDevices,
    ];

    /// The name files and manifests use.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewName::Funnel => "funnel",
            ViewName::Pages => "pages",
            ViewName::IotSensors => "iot_sensors",
            ViewName::IotDevices => "iot_devices",
        }
    }
}

impl std::fmt::Display for ViewName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ViewName {
    type Err = LakeError;

    fn from_str(name: &str) -> Result<ViewName, LakeError> {
        (ViewName::ALL.into_iter())
            .find(|view| view.as_str() == name)
            .ok_or_else(|| LakeError::UnknownView(name.to_string()))
    }
}

fn binaries(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let array = column(batch, name)?;
    let array = array
        .as_binary_opt::<i32>()
        .with_context(|| format!("column {name} is not binary"))?;
    Ok(array
        .iter()
        .map(|v| v.unwrap_or_default().to_vec())
        .collect())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> anyhow::Result<&'a dyn Array> {
    Ok(batch
        .column_by_name(name)
        .with_context(|| format!("view file lacks column {name}"))?
        .as_ref())
}

fn ints(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<i64>> {
    let array = cast(column(batch, name)?, &DataType::Int64)?;
    Ok(array
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect())
}

fn floats(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<f64>> {
    let array = cast(column(batch, name)?, &DataType::Float64)?;
    Ok(array
        .as_primitive::<Float64Type>()
        .iter()
        .map(|v| v.unwrap_or(0.0))
        .collect())
}

fn texts(batch: &RecordBatch, name: &str) -> anyhow::Result<Vec<String>> {
    let array = cast(column(batch, name)?, &DataType::Utf8)?;
    Ok(array
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or("").to_string())
        .collect())
}

/// Folds the rows of the view file at `path`, which holds `view`, into `buckets`.
pub fn apply_view_file(
    path: &str,
    view: ViewName,
    bytes: Bytes,
    buckets: &mut BTreeMap<i64, BucketViews>,
) -> Result<(), LakeError> {
    fold_view_file(view, bytes, buckets).map_err(|e| LakeError::ViewFile {
        path: path.to_string(),
        view,
        reason: format!("{e:#}"),
    })
}

fn fold_view_file(
    view: ViewName,
    bytes: Bytes,
    buckets: &mut BTreeMap<i64, BucketViews>,
) -> anyhow::Result<()> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    for batch in reader {
        let batch = batch?;
        let starts = ints(&batch, "bucket_start")?;
        match view {
            ViewName::Funnel => {
                let (campaign, imp, clk, cart, buy, rev, ss, sc) = (
                    texts(&batch, "campaign_id")?,
                    ints(&batch, "impressions")?,
                    ints(&batch, "clicks")?,
                    ints(&batch, "add_to_carts")?,
                    ints(&batch, "purchases")?,
                    ints(&batch, "revenue_cents")?,
                    ints(&batch, "signup_starts")?,
                    ints(&batch, "signup_completes")?,
                );
                for i in 0..batch.num_rows() {
                    let counts = FunnelCounts {
                        impressions: imp[i] as u64,
                        clicks: clk[i] as u64,
                        add_to_carts: cart[i] as u64,
                        purchases: buy[i] as u64,
                        revenue_cents: rev[i],
                        signup_starts: ss[i] as u64,
                        signup_completes: sc[i] as u64,
                    };
                    buckets
                        .entry(starts[i])
                        .or_default()
                        .funnel
                        .insert(campaign[i].clone(), counts);
                }
                for (i, bytes) in binaries(&batch, "users_hll")?.iter().enumerate() {
                    let hll = Hll::from_bytes(bytes)?;
                    if !hll.is_empty() {
                        let bucket = buckets.entry(starts[i]).or_default();
                        bucket.users.insert(campaign[i].clone(), hll);
                    }
                }
            }
            ViewName::Pages => {
                let (page, device, views, errors) = (
                    texts(&batch, "page")?,
                    texts(&batch, "device")?,
                    ints(&batch, "page_views")?,
                    ints(&batch, "errors")?,
                );
                for i in 0..batch.num_rows() {
                    let counts = PageCounts {
                        page_views: views[i] as u64,
                        errors: errors[i] as u64,
                    };
                    buckets
                        .entry(starts[i])
                        .or_default()
                        .pages
                        .insert((page[i].clone(), device[i].clone()), counts);
                }
                for (i, bytes) in binaries(&batch, "render_sketch")?.iter().enumerate() {
                    let sketch = DdSketch::from_bytes(bytes)?;
                    if sketch.count() > 0 {
                        let bucket = buckets.entry(starts[i]).or_default();
                        bucket
                            .render
                            .insert((page[i].clone(), device[i].clone()), sketch);
                    }
                }
            }
            ViewName::IotSensors => {
                let (device, sensor, count, min, max, sum, last_ts, last_id, last) = (
                    texts(&batch, "device_id")?,
                    texts(&batch, "sensor")?,
                    ints(&batch, "count")?,
                    floats(&batch, "min")?,
                    floats(&batch, "max")?,
                    floats(&batch, "sum")?,
                    ints(&batch, "last_ts")?,
                    texts(&batch, "last_event_id")?,
                    floats(&batch, "last")?,
                );
                for i in 0..batch.num_rows() {
                    let stats = SensorStats {
                        count: count[i] as u64,
                        min: min[i],
                        max: max[i],
                        sum: sum[i],
                        last_ts: last_ts[i],
                        last_event_id: last_id[i].clone(),
                        last: last[i],
                    };
                    buckets
                        .entry(starts[i])
                        .or_default()
                        .sensors
                        .insert((device[i].clone(), sensor[i].clone()), stats);
                }
            }
            ViewName::IotDevices => {
                let (device, on, off, low, medium, high, critical) = (
                    texts(&batch, "device_id")?,
                    ints(&batch, "online")?,
                    ints(&batch, "offline")?,
                    ints(&batch, "alarms_low")?,
                    ints(&batch, "alarms_medium")?,
                    ints(&batch, "alarms_high")?,
                    ints(&batch, "alarms_critical")?,
                );
                for i in 0..batch.num_rows() {
                    let counts = DeviceCounts {
                        online: on[i] as u64,
                        offline: off[i] as u64,
                        alarms_low: low[i] as u64,
                        alarms_medium: medium[i] as u64,
                        alarms_high: high[i] as u64,
                        alarms_critical: critical[i] as u64,
                    };
                    buckets
                        .entry(starts[i])
                        .or_default()
                        .devices
                        .insert(device[i].clone(), counts);
                }
            }
        }
    }
    Ok(())
}

fn clear_view(view: ViewName, hour_start_ms: i64, buckets: &mut BTreeMap<i64, BucketViews>) {
    for (_, bucket) in buckets.range_mut(hour_start_ms..hour_start_ms + HOUR_MS) {
        match view {
            ViewName::Funnel => {
                bucket.funnel.clear();
                bucket.users.clear();
            }
            ViewName::Pages => {
                bucket.pages.clear();
                bucket.render.clear();
            }
            ViewName::IotSensors => bucket.sensors.clear(),
            ViewName::IotDevices => bucket.devices.clear(),
        }
    }
}

/// The batch views of one committed manifest, in memory, for serving.
#[derive(Debug, Clone, Default)]
pub struct BatchViews {
    /// The manifest the views belong to (`None` before the first run).
    pub manifest: Option<Manifest>,
    /// Views by bucket start.
    pub buckets: BTreeMap<i64, BucketViews>,
    /// View file loaded, by `<partition key>/<view>`.
    loaded: BTreeMap<String, String>,
}

impl BatchViews {
    /// The boundary B of the loaded manifest.
    pub fn boundary_ms(&self) -> Option<i64> {
        self.manifest.as_ref().and_then(|m| m.boundary_ms)
    }

    /// The version of the loaded manifest (0 before the first run).
    pub fn version(&self) -> u64 {
        self.manifest.as_ref().map_or(0, |m| m.version)
    }

    /// Loads the newest manifest if it is newer than the one held, reading
    /// only view files that changed. Returns whether anything changed.
    pub async fn refresh(&mut self, lake: &Lake) -> Result<bool, LakeError> {
        match manifest::latest(lake).await? {
            Some(latest) if latest.version > self.version() => {
                self.load(lake, latest).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Moves to `latest`, reading only the view files that differ from the ones held.
    pub async fn load(&mut self, lake: &Lake, latest: Manifest) -> Result<(), LakeError> {
        for (key, partition) in &latest.partitions {
            for (name, path) in &partition.views {
                let slot = format!("{key}/{name}");
                if self.loaded.get(&slot) == Some(path) {
                    continue;
                }
                let view: ViewName = name.parse()?;
                let bytes = lake.get(&Path::from(path.as_str())).await?;
                clear_view(view, partition.hour_start_ms, &mut self.buckets);
                apply_view_file(path, view, bytes, &mut self.buckets)?;
                self.loaded.insert(slot, path.clone());
            }
        }
        self.buckets.retain(|_, b| !b.is_empty());
        tracing::debug!(
            version = latest.version,
            boundary = latest.boundary_ms,
            "loaded batch views"
        );
        self.manifest = Some(latest);
        Ok(())
    }
}
