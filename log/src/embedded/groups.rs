//! Consumer-group offsets: one small JSON file per group, replaced atomically
//! (write to a temporary file, fsync, rename, fsync the directory).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::sync_dir;
use crate::LogError;

type GroupOffsets = BTreeMap<String, BTreeMap<u32, u64>>;

fn group_path(dir: &Path, group: &str) -> PathBuf {
    dir.join("__consumer_offsets").join(format!("{group}.json"))
}

fn load(path: &Path) -> Result<GroupOffsets, LogError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
            path: path.display().to_string(),
            position: 0,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GroupOffsets::new()),
        Err(e) => Err(LogError::io(format!("reading {}", path.display()))(e)),
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let dir = path.parent().expect("paths here always have a parent");
    fs::create_dir_all(dir).map_err(LogError::io(format!("creating {}", dir.display())))?;
    let tmp = path.with_extension("tmp");
    let context = || format!("writing {}", path.display());
    let mut file = fs::File::create(&tmp).map_err(LogError::io(context()))?;
    file.write_all(bytes).map_err(LogError::io(context()))?;
    file.sync_all().map_err(LogError::io(context()))?;
    fs::rename(&tmp, path).map_err(LogError::io(context()))?;
    sync_dir(dir).map_err(LogError::io(context()))
}

pub(crate) fn commit(
    dir: &Path,
    group: &str,
    topic: &str,
    offsets: &[(u32, u64)],
) -> Result<(), LogError> {
    let path = group_path(dir, group);
    let mut all = load(&path)?;
    let topic_offsets = all.entry(topic.to_string()).or_default();
    for (partition, offset) in offsets {
        topic_offsets.insert(*partition, *offset);
    }
    write_atomically(
        &path,
        &serde_json::to_vec_pretty(&all).expect("offsets serialize"),
    )
}

pub(crate) fn committed(
    dir: &Path,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<u32, u64>, LogError> {
    Ok(load(&group_path(dir, group))?
        .remove(topic)
        .unwrap_or_default())
}
