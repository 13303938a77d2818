//! The partition checkpoint store: where each log partition's speed state
//! is checkpointed once instances share the partitions through a consumer
//! group (issue 16) — on object storage (`file://`, `s3://`, `memory://`),
//! so that a partition's state lives with the partition, not with the host
//! that last consumed it.
//!
//! Layout under the store's root, per partition:
//!
//! ```text
//! <topic>/<partition>/manifest/<version, 20 digits>.json   one per checkpoint, never rewritten
//! <topic>/<partition>/files/<name>                          immutable files a manifest names
//! ```
//!
//! **Fencing by conditional put.** A checkpoint's manifest is created only
//! if no object exists at its version (`PutMode::Create`: `If-None-Match:
//! *` on S3, an exclusive create on a local directory), and each writer
//! commits version N + 1 of the version it restored or last committed. Two
//! owners of one partition race for the same N + 1: one wins, the other is
//! told [`Commit::Fenced`] (as is a writer whose version is below the
//! newest: vacuumed versions are free again, so a commit checks it did not
//! land below one). An old owner that is fenced drops the partition without
//! writing anything else. A new owner claims a partition by committing once
//! right after restoring it, which fences the old owner's next checkpoint
//! (if the old owner's last checkpoint wins instead, the new owner reloads
//! and claims again). The
//! group generation alone does not do it: a broker may hand a partition to
//! its new owner before the old one has let go of it (tansu 0.6 does, for
//! one to three seconds, with both the eager and the cooperative protocol),
//! and an old owner that is only slow never learns its generation is gone.
//!
//! **Members.** Each instance of the group also announces itself under
//! `_members/<member>.json` (its URL and when it last said so), rewritten
//! every checkpoint interval and removed when it leaves: serving lists them
//! to find the instances that own partitions now ([`MemberRecord`]). (`_`
//! cannot begin a topic's directory: see [`partition_dir`].)

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::checkpoint::is_plain_name;

/// One log partition: the unit of speed state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

impl PartitionId {
    /// `topic`'s `partition`.
    pub fn new(topic: impl Into<String>, partition: u32) -> PartitionId {
        PartitionId {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// The outcome of [`CheckpointStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The manifest is durable at its version.
    Committed,
    /// Another owner committed that version (or a later one) first. An
    /// old owner no longer owns the partition and must not write to it
    /// again; a new owner whose claim lost to the old owner's last
    /// checkpoint reloads the newest version and claims the next one.
    /// `newest` is the newest version now in the store.
    Fenced {
        /// The newest committed version.
        newest: u64,
    },
}

/// Partition checkpoints on an object store.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    local_root: Option<PathBuf>,
    url: String,
}

/// An instance of the group as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// Its name in the group.
    pub member: String,
    /// Where it answers, e.g. `http://speed-1:8082`.
    pub url: String,
    /// Wall time it last announced itself (ms).
    pub updated_ms: i64,
}

/// Where member records live.
const MEMBERS_DIR: &str = "_members";

/// Manifests of a partition kept by [`CheckpointStore::vacuum`] by default.
pub const KEEP_MANIFESTS: usize = 3;

impl CheckpointStore {
    /// Opens the store at `url` (`file://DIR`, `memory://`,
    /// `s3://BUCKET/PREFIX` with `options`: see
    /// `lambda_lake::store::s3_options`; S3 needs conditional puts).
    pub fn open(url: &str, options: Vec<(String, String)>) -> anyhow::Result<CheckpointStore> {
        let opened = lambda_lake::store::open_store(url, options)
            .with_context(|| format!("opening the checkpoint store {url}"))?;
        Ok(CheckpointStore {
            store: opened.store,
            local_root: opened.local_root,
            url: url.to_string(),
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes (or rewrites) `record` under its member's name.
    pub async fn announce(&self, record: &MemberRecord) -> anyhow::Result<()> {
        let path = member_path(&record.member)?;
        let bytes = serde_json::to_vec(record).context("a member record")?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {path} in {}", self.url))?;
        Ok(())
    }

    /// Removes `member`'s record (a missing one is not an error).
    pub async fn withdraw(&self, member: &str) -> anyhow::Result<()> {
        self.delete(&member_path(member)?).await
    }

    /// Every member record (unreadable ones are skipped, and logged).
    pub async fn members(&self) -> anyhow::Result<Vec<MemberRecord>> {
        let mut records = Vec::new();
        for name in self.names(&Path::from(MEMBERS_DIR)).await? {
            let path = Path::from(MEMBERS_DIR).join(name.as_str());
            match self.get(&path).await.and_then(|bytes| {
                serde_json::from_slice::<MemberRecord>(&bytes).context("decoding a member record")
            }) {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::debug!(error = %format!("{error:#}"), %path, "skipping a member record")
                }
            }
        }
        records.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(records)
    }

    /// The newest committed manifest of `partition`: its version and bytes.
    pub async fn latest(&self, partition: &PartitionId) -> anyhow::Result<Option<(u64, Bytes)>> {
        let Some(version) = self.versions(partition).await?.last().copied() else {
            return Ok(None);
        };
        let path = manifest_path(partition, version)?;
        let bytes = self.get(&path).await?;
        Ok(Some((version, bytes)))
    }

    /// Commits `bytes` as `partition`'s manifest `version` unless another
    /// writer committed that version, or a later one, first
    /// ([`Commit::Fenced`]). Durable when it returns [`Commit::Committed`].
    /// An error may come after the manifest became visible (a failed fsync
    /// of a `file://` store): read the newest version before trying again.
    pub async fn commit(
        &self,
        partition: &PartitionId,
        version: u64,
        bytes: Bytes,
    ) -> anyhow::Result<Commit> {
        anyhow::ensure!(version > 0, "{partition}: checkpoint versions start at 1");
        let path = manifest_path(partition, version)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => {
                self.sync_local(&path).await?;
                // A version below one already committed was free only
                // because vacuum deleted it: this writer is stale. Its
                // manifest goes (no reader takes a lower version).
                let newest = self.versions(partition).await?.last().copied();
                if let Some(newest) = newest.filter(|n| *n > version) {
                    self.delete(&path).await?;
                    return Ok(Commit::Fenced { newest });
                }
                Ok(Commit::Committed)
            }
            Err(object_store::Error::AlreadyExists { .. }) => {
                let newest = self.versions(partition).await?.last().copied();
                Ok(Commit::Fenced {
                    newest: newest.unwrap_or(version),
                })
            }
            Err(error) => Err(error).with_context(|| format!("committing {path} in {}", self.url)),
        }
    }

    /// Writes one of `partition`'s files (a window's views or ids), which
    /// a manifest committed later names. Names are never reused: a file
    /// that exists already is an error.
    pub async fn put_file(
        &self,
        partition: &PartitionId,
        name: &str,
        bytes: Bytes,
    ) -> anyhow::Result<()> {
        let path = file_path(partition, name)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&path, PutPayload::from(bytes), options)
            .await
            .with_context(|| format!("writing {path} in {}", self.url))?;
        self.sync_local(&path).await
    }

    /// Reads one of `partition`'s files.
    pub async fn get_file(&self, partition: &PartitionId, name: &str) -> anyhow::Result<Bytes> {
        self.get(&file_path(partition, name)?).await
    }

    /// Deletes one of `partition`'s files (a missing one is not an error).
    pub async fn delete_file(&self, partition: &PartitionId, name: &str) -> anyhow::Result<()> {
        self.delete(&file_path(partition, name)?).await
    }

    /// The names of `partition`'s files.
    pub async fn files(&self, partition: &PartitionId) -> anyhow::Result<Vec<String>> {
        let mut names = self.names(&partition_dir(partition)?.join("files")).await?;
        names.sort();
        Ok(names)
    }

    /// Deletes `partition`'s manifests but the newest `keep`; returns how
    /// many it deleted. (The files only older manifests name are the
    /// checkpoint writer's to delete: it knows which it superseded, and
    /// never deletes by listing, which would take files a newer owner has
    /// written but not committed yet.)
    pub async fn vacuum(&self, partition: &PartitionId, keep: usize) -> anyhow::Result<usize> {
        let versions = self.versions(partition).await?;
        let old = versions.len().saturating_sub(keep.max(1));
        for version in &versions[..old] {
            self.delete(&manifest_path(partition, *version)?).await?;
        }
        Ok(old)
    }

    /// `partition`'s committed manifest versions, oldest first.
    pub async fn versions(&self, partition: &PartitionId) -> anyhow::Result<Vec<u64>> {
        let names = self
            .names(&partition_dir(partition)?.join("manifest"))
            .await?;
        let mut versions: Vec<u64> = names
            .iter()
            .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The names of the objects under `prefix`.
    async fn names(&self, prefix: &Path) -> anyhow::Result<Vec<String>> {
        let listed: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing {prefix} in {}", self.url))?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| meta.location.filename().map(str::to_string))
            .collect())
    }

    async fn get(&self, path: &Path) -> anyhow::Result<Bytes> {
        let got = self
            .store
            .get(path)
            .await
            .with_context(|| format!("reading {path} in {}", self.url))?;
        got.bytes()
            .await
            .with_context(|| format!("reading {path} in {}", self.url))
    }

    async fn delete(&self, path: &Path) -> anyhow::Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error).with_context(|| format!("deleting {path} in {}", self.url)),
        }
    }

    /// On a `file://` store, fsyncs what was just written (object stores
    /// make a put durable before answering; the local file store only
    /// renames a written file into place).
    async fn sync_local(&self, path: &Path) -> anyhow::Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || lambda_lake::store::sync_file_and_dir(&file))
            .await
            .context("syncing a checkpoint file")?
            .map_err(anyhow::Error::from)
    }
}

/// `<topic>/<partition>`, for a topic name that stays one path segment.
fn partition_dir(partition: &PartitionId) -> anyhow::Result<Path> {
    anyhow::ensure!(
        is_plain_name(&partition.topic),
        "topic {:?}: a checkpoint store keeps topics named with ASCII letters, digits, '-' and '.' only",
        partition.topic
    );
    Ok(Path::from(partition.topic.as_str()).join(partition.partition.to_string()))
}

fn member_path(member: &str) -> anyhow::Result<Path> {
    anyhow::ensure!(
        is_plain_name(member),
        "member {member:?}: a member's name is ASCII letters, digits, '-' and '.' only"
    );
    Ok(Path::from(MEMBERS_DIR).join(format!("{member}.json")))
}

fn manifest_path(partition: &PartitionId, version: u64) -> anyhow::Result<Path> {
    Ok(partition_dir(partition)?
        .join("manifest")
        .join(format!("{version:020}.json")))
}

fn file_path(partition: &PartitionId, name: &str) -> anyhow::Result<Path> {
    anyhow::ensure!(
        is_plain_name(name),
        "checkpoint file {name:?}: names are ASCII letters, digits, '-' and '.' only"
    );
    Ok(partition_dir(partition)?.join("files").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_their_partition() {
        let p = PartitionId::new("funnel-events", 3);
        assert_eq!(
            manifest_path(&p, 7).unwrap().as_ref(),
            "funnel-events/3/manifest/00000000000000000007.json"
        );
        assert_eq!(
            file_path(&p, "60000-ab.json").unwrap().as_ref(),
            "funnel-events/3/files/60000-ab.json"
        );
        for bad in ["", "..", ".hidden", "a/b", "a\\b", "ü", &"x".repeat(129)] {
            assert!(file_path(&p, bad).is_err(), "{bad:?}");
        }
        assert!(file_path(&p, &"x".repeat(128)).is_ok());
        assert!(partition_dir(&PartitionId::new("../etc", 0)).is_err());
    }
}
