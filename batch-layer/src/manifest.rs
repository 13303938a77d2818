//! Committing and vacuuming manifests (the read side — [`Manifest`],
//! [`latest`], [`read`] — is `lambda_lake::manifest`, re-exported here).

use object_store::path::Path;

use crate::lake::{Created, LakeWriter};
pub use lambda_lake::manifest::{
    DataFile, HourPartition, MANIFEST_DIR, Manifest, RunStats, ViewsEngine, latest, manifest_path,
    read,
};

/// Deletes the files that manifest `newest.version - keep` references and
/// none of the `keep` newest (`newest` itself and the ones before it) does:
/// compacted data files, replaced view files, merged index files. Each file
/// is deleted once, `keep` runs after the last manifest that needed it, so a
/// reader that loaded one of the newest manifests still finds everything it
/// names. Returns how many.
pub async fn vacuum(lake: &LakeWriter, newest: &Manifest, keep: u64) -> anyhow::Result<u64> {
    let version = newest.version;
    if version <= keep {
        return Ok(0);
    }
    let Some(old) = read(lake, version - keep).await? else {
        return Ok(0);
    };
    let mut needed: std::collections::HashSet<String> =
        newest.files().map(str::to_string).collect();
    for v in version - keep + 1..version {
        if let Some(m) = read(lake, v).await? {
            needed.extend(m.files().map(str::to_string));
        }
    }
    let mut deleted = 0;
    for path in old.files() {
        if !needed.contains(path) {
            lake.delete(&Path::from(path)).await?;
            deleted += 1;
        }
    }
    // The manifest goes with its files: the lake keeps `keep` manifests, so
    // finding the newest one lists a handful of objects, not every run ever.
    lake.delete(&manifest_path(old.version)).await?;
    Ok(deleted)
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer committed this version first.
    #[error("manifest version {0} was committed by another writer first")]
    Conflict(u64),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] lambda_lake::LakeError),
}

/// Commits `manifest` (its version must be the latest + 1).
pub async fn commit(lake: &LakeWriter, manifest: &Manifest) -> Result<(), CommitError> {
    let bytes = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    match lake
        .create(&manifest_path(manifest.version), bytes.into())
        .await?
    {
        Created::Written => Ok(()),
        Created::AlreadyExists => Err(CommitError::Conflict(manifest.version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Arbitrary bytes and damaged manifests never panic the decoder, and a
    /// manifest round-trips (the quarantine note included).
    #[test]
    fn manifests_decode_or_fail_cleanly() {
        let mut manifest = Manifest {
            version: 7,
            ..Manifest::default()
        };
        manifest.partitions.insert(
            "funnel-events/date=2026-01-01/hour=01".into(),
            HourPartition {
                topic: "funnel-events".into(),
                hour_start_ms: 1_767_229_200_000,
                quarantined: Some("view funnel: boom".into()),
                ..HourPartition::default()
            },
        );
        let good = serde_json::to_vec(&manifest).unwrap();
        assert_eq!(serde_json::from_slice::<Manifest>(&good).unwrap(), manifest);
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 1024,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[5; 32]),
        );
        let damage = (
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            prop::collection::vec(any::<u8>(), 0..200),
        );
        runner
            .run(&damage, |(flips, junk)| {
                let mut bytes = good.clone();
                for (at, byte) in flips {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                let _ = serde_json::from_slice::<Manifest>(&bytes);
                let _ = serde_json::from_slice::<Manifest>(&junk);
                Ok(())
            })
            .unwrap();
    }
}
