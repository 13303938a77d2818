//! Checkpoints: the speed layer's windows, watermark, ledger and consumed
//! offsets written together, atomically (temporary file, fsync, rename), so a
//! restart resumes from a state and the offsets that produced it — nothing
//! lost, nothing counted twice.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lambda_events::kpi::{DeviceCounts, FunnelCounts, PageCounts, SensorStats};
use lambda_events::{BucketViews, DdSketch, Hll, Topic};
use serde::{Deserialize, Serialize};

use crate::alerts::AlertEngine;
use crate::window::{PartitionClock, SpeedCounters, SpeedState, Window};

/// The checkpoint format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    format_version: u32,
    max_event_ts: Option<i64>,
    offsets: Vec<(String, u32, u64)>,
    late_ledger: Vec<(Topic, i64, u64)>,
    counters: (u64, u64, u64, u64),
    evicted_before: i64,
    windows: Vec<WindowFile>,
    /// `(topic, partition, max event time)`.
    #[serde(default)]
    clocks: Vec<(String, u32, i64)>,
    #[serde(default)]
    watermark: Option<i64>,
    #[serde(default)]
    alerts: Option<AlertEngine>,
}

#[derive(Serialize, Deserialize)]
struct WindowFile {
    start: i64,
    #[serde(flatten)]
    views: ViewsWire,
    seen: Vec<String>,
}

/// One bucket's views as JSON: sorted lists, so the same views give the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewsWire {
    funnel: Vec<(String, FunnelCounts)>,
    pages: Vec<(String, String, PageCounts)>,
    sensors: Vec<(String, String, SensorStats)>,
    devices: Vec<(String, DeviceCounts)>,
    #[serde(default)]
    users: Vec<(String, Hll)>,
    #[serde(default)]
    render: Vec<(String, String, DdSketch)>,
}

impl ViewsWire {
    /// The sorted form of `v`.
    pub fn from_views(v: &BucketViews) -> ViewsWire {
        let mut funnel: Vec<_> = v.funnel.iter().map(|(k, c)| (k.clone(), *c)).collect();
        let mut pages: Vec<_> = v
            .pages
            .iter()
            .map(|((p, d), c)| (p.clone(), d.clone(), *c))
            .collect();
        let mut sensors: Vec<_> = v
            .sensors
            .iter()
            .map(|((d, s), c)| (d.clone(), s.clone(), c.clone()))
            .collect();
        let mut devices: Vec<_> = v.devices.iter().map(|(k, c)| (k.clone(), *c)).collect();
        funnel.sort_by(|a, b| a.0.cmp(&b.0));
        pages.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        sensors.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        devices.sort_by(|a, b| a.0.cmp(&b.0));
        let mut users: Vec<_> = v
            .users
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        let mut render: Vec<_> = v
            .render
            .iter()
            .map(|((p, d), s)| (p.clone(), d.clone(), s.clone()))
            .collect();
        render.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        ViewsWire {
            funnel,
            pages,
            sensors,
            devices,
            users,
            render,
        }
    }

    /// Back to the keyed form.
    pub fn into_views(self) -> BucketViews {
        BucketViews {
            funnel: self.funnel.into_iter().collect(),
            pages: self
                .pages
                .into_iter()
                .map(|(p, d, c)| ((p, d), c))
                .collect(),
            sensors: self
                .sensors
                .into_iter()
                .map(|(d, s, c)| ((d, s), c))
                .collect(),
            devices: self.devices.into_iter().collect(),
            users: self.users.into_iter().collect(),
            render: self
                .render
                .into_iter()
                .map(|(p, d, s)| ((p, d), s))
                .collect(),
        }
    }
}

/// Serializes the state (sorted, so the same state gives the same bytes).
pub fn encode(state: &SpeedState) -> Vec<u8> {
    let windows = state
        .windows
        .iter()
        .map(|(start, window)| {
            let mut seen: Vec<String> = window.seen.iter().map(str::to_owned).collect();
            seen.sort();
            WindowFile {
                start: *start,
                views: ViewsWire::from_views(&window.views),
                seen,
            }
        })
        .collect();
    let file = CheckpointFile {
        format_version: FORMAT_VERSION,
        max_event_ts: state.max_event_ts,
        offsets: state.offsets_list(),
        late_ledger: state.ledger_list(),
        counters: state.counters.as_tuple(),
        evicted_before: state.evicted_before,
        windows,
        clocks: state
            .clocks
            .iter()
            .map(|c| (c.topic.clone(), c.partition, c.max_ts))
            .collect(),
        watermark: state.watermark(),
        alerts: Some(state.alerts.clone()),
    };
    serde_json::to_vec(&file).expect("checkpoint serializes")
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A file operation failed (a full disk, a missing permission).
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a checkpoint this version reads.
    #[error("the checkpoint does not parse")]
    Parse(#[source] serde_json::Error),
    /// A checkpoint of another format version.
    #[error("checkpoint format {found} is not {FORMAT_VERSION}")]
    Format {
        /// The file's format version.
        found: u32,
    },
    /// A checkpoint file that could not be read back ([`load`]).
    #[error("checkpoint {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<CheckpointError>,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        action,
        path,
        source,
    }
}

/// Restores a state from [`encode`]'s bytes.
pub fn decode(
    bytes: &[u8],
    allowed_lateness_ms: i64,
    horizon_ms: i64,
) -> Result<SpeedState, CheckpointError> {
    let file: CheckpointFile = serde_json::from_slice(bytes).map_err(CheckpointError::Parse)?;
    if file.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Format {
            found: file.format_version,
        });
    }
    let mut state = SpeedState::new(allowed_lateness_ms, horizon_ms);
    state.max_event_ts = file.max_event_ts;
    state.offsets = file
        .offsets
        .into_iter()
        .map(|(t, p, o)| ((t, p), o))
        .collect();
    state.late_ledger = file
        .late_ledger
        .into_iter()
        .map(|(t, s, n)| ((t, s), n))
        .collect();
    let (counted, duplicates, late, invalid) = file.counters;
    state.counters = SpeedCounters {
        counted,
        duplicates,
        late,
        invalid,
    };
    state.evicted_before = file.evicted_before;
    state.clocks = file
        .clocks
        .into_iter()
        .map(|(topic, partition, max_ts)| PartitionClock {
            topic,
            partition,
            max_ts,
            idle: false,
        })
        .collect();
    if let Some(alerts) = file.alerts {
        state.alerts = alerts;
    }
    // Checkpoints from before per-partition clocks: the watermark they implied.
    state.watermark = crate::window::Watermark::restored(
        file.watermark
            .or_else(|| file.max_event_ts.map(|ts| ts - allowed_lateness_ms)),
    );
    state.windows = file
        .windows
        .into_iter()
        .map(|w| {
            let views = w.views.into_views();
            (
                w.start,
                Window {
                    views,
                    seen: w.seen.into_iter().collect(),
                    version: 0,
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    Ok(state)
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(bytes).map_err(io("writing", &tmp))?;
    file.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

/// Reads the checkpoint at `path`, if there is one.
pub fn load(
    path: &Path,
    allowed_lateness_ms: i64,
    horizon_ms: i64,
) -> Result<Option<SpeedState>, CheckpointError> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes, allowed_lateness_ms, horizon_ms)
            .map_err(|source| CheckpointError::File {
                path: path.to_path_buf(),
                source: Box::new(source),
            })
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_events::bucket::MINUTE_MS;
    use lambda_events::{Event, floor_to};

    #[test]
    fn round_trips_every_part_of_the_state() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        let events = [
            r#"{"event_id":"1","ts":1700000000000,"event_type":"purchase","user_id":"u","amount_cents":5,"campaign_id":"c"}"#,
            r#"{"event_id":"2","ts":1700000000000,"event_type":"page_view","user_id":"u","page":"/","device":"mobile"}"#,
            r#"{"event_id":"3","ts":1700000061000,"event_type":"sensor_reading","device_id":"d","sensor":"t","value":2.5}"#,
            // Sums whose nearest f64 needs every digit to parse back exactly.
            r#"{"event_id":"6","ts":1700000061000,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1010.3}"#,
            r#"{"event_id":"7","ts":1700000061001,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1011.32}"#,
            r#"{"event_id":"8","ts":1700000061002,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1010.69}"#,
            r#"{"event_id":"4","ts":1700000400000,"event_type":"alarm","device_id":"d","alarm":"a","severity":"high"}"#,
            r#"{"event_id":"5","ts":1700000000000,"event_type":"click","user_id":"u"}"#,
        ];
        for json in events {
            state.apply(&Event::from_json(json.as_bytes()).unwrap());
        }
        state.offsets.insert(("funnel-events".into(), 3), 77);
        state.evicted_before = 1_699_999_920_000;
        let bytes = encode(&state);
        let restored = decode(&bytes, 60_000, 3_600_000).unwrap();
        assert_eq!(encode(&restored), bytes);
        let key = ("d".to_string(), "p".to_string());
        let window = floor_to(1700000061000, MINUTE_MS);
        assert_eq!(
            restored.windows[&window].views.sensors[&key].sum.to_bits(),
            state.windows[&window].views.sensors[&key].sum.to_bits(),
            "float sums survive the checkpoint bit for bit"
        );
        assert_eq!(restored.counters.late, 1);
        assert_eq!(restored.offsets[&("funnel-events".to_string(), 3)], 77);
        assert_eq!(restored.evicted_before, 1_699_999_920_000);
        let mut again = restored.clone();
        let dup = Event::from_json(events[0].as_bytes()).unwrap();
        assert_ne!(
            again.apply(&dup),
            crate::Applied::Counted,
            "seen ids survive the checkpoint"
        );
    }
}

#[cfg(test)]
mod float_tests {
    use super::*;
    use lambda_events::Event;
    use lambda_events::bucket::MINUTE_MS;
    use lambda_events::floor_to;

    /// Two readings at the largest bounded magnitude, pushed past it by hand
    /// to a sum no f64 holds: the checkpoint still encodes and restores it
    /// (it used to write `null` and fail the next start).
    #[test]
    fn non_finite_sums_survive_the_checkpoint() {
        let mut state = SpeedState::new(60_000, 3_600_000);
        for id in ["a", "b"] {
            let json = format!(
                r#"{{"event_id":"{id}","ts":1700000061000,"event_type":"sensor_reading","device_id":"d","sensor":"p","value":1e15}}"#
            );
            state.apply(&Event::from_json(json.as_bytes()).unwrap());
        }
        let window = floor_to(1_700_000_061_000, MINUTE_MS);
        let key = ("d".to_string(), "p".to_string());
        let stats = state
            .windows
            .get_mut(&window)
            .unwrap()
            .views
            .sensors
            .get_mut(&key)
            .unwrap();
        assert_eq!(stats.sum, 2e15);
        stats.sum = f64::INFINITY;
        stats.min = f64::NEG_INFINITY;
        stats.last = f64::NAN;
        let bytes = encode(&state);
        let restored = decode(&bytes, 60_000, 3_600_000).expect("a non-finite sum restores");
        let back = &restored.windows[&window].views.sensors[&key];
        assert_eq!(back.sum, f64::INFINITY);
        assert_eq!(back.min, f64::NEG_INFINITY);
        assert!(back.last.is_nan());
        assert_eq!(encode(&restored), bytes);
    }
}
