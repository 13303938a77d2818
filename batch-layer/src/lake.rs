//! The lake (object storage by URL): `lambda_lake::store::Lake` reads; the
//! [`LakeWriter`] here writes, and only this crate defines it.

use std::path::PathBuf;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use lambda_lake::LakeError;
pub use lambda_lake::store::Lake;

/// The result of a conditional create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was written.
    Written,
    /// An object already existed at the path; nothing was written.
    AlreadyExists,
}

/// The lake's write side, defined here so that only the batch layer (the
/// only writer of the lake) can make one: serving and the speed layer link
/// `lambda-lake`, whose [`Lake`] has no method that writes. A writer reads
/// too (it derefs to its [`Lake`]).
#[derive(Debug, Clone)]
pub struct LakeWriter {
    lake: Lake,
}

impl std::ops::Deref for LakeWriter {
    type Target = Lake;

    fn deref(&self) -> &Lake {
        &self.lake
    }
}

impl LakeWriter {
    /// Opens the lake at `url` for writing (see [`Lake::open`]).
    pub fn open(url: &str, cache_dir: impl Into<PathBuf>) -> Result<LakeWriter, LakeError> {
        LakeWriter::open_with_options(url, Vec::new(), cache_dir)
    }

    /// [`LakeWriter::open`] with object store options (see [`Lake::open_with_options`]).
    pub fn open_with_options(
        url: &str,
        options: Vec<(String, String)>,
        cache_dir: impl Into<PathBuf>,
    ) -> Result<LakeWriter, LakeError> {
        Lake::open_with_options(url, options, cache_dir).map(|lake| LakeWriter { lake })
    }

    /// The read-only handle on the same store (a `memory://` lake included),
    /// for the roles that only read.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Writes (or replaces) an object; on a local lake it is on disk
    /// (fsynced, with its directory) when this returns.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), LakeError> {
        self.lake
            .object_store()
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(|e| LakeError::store("writing", path, e))?;
        self.sync_local(path).await
    }

    /// On a `file://` lake, fsyncs the object and its directory: object
    /// stores make a put durable before answering, and the batch layer
    /// relies on it (log retention trusts a committed manifest), but the
    /// local file store only renames a written file into place.
    async fn sync_local(&self, path: &Path) -> Result<(), LakeError> {
        let Some(root) = self.lake.local_root() else {
            return Ok(());
        };
        let file = root.join(path.as_ref());
        let synced = file.clone();
        tokio::task::spawn_blocking(move || lambda_lake::store::sync_file_and_dir(&synced))
            .await
            .unwrap_or_else(|join| {
                Err(LakeError::Local {
                    action: "syncing",
                    path: file,
                    source: std::io::Error::other(join),
                })
            })
    }

    /// Writes an object only if none exists at `path` (a conditional put).
    pub async fn create(&self, path: &Path, bytes: Bytes) -> Result<Created, LakeError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .object_store()
            .put_opts(path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => {
                self.sync_local(path).await?;
                Ok(Created::Written)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(LakeError::store("creating", path, e)),
        }
    }

    /// Deletes an object (and its cached copy); a missing one is not an error.
    pub async fn delete(&self, path: &Path) -> Result<(), LakeError> {
        match self.lake.object_store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(LakeError::store("deleting", path, e)),
        }
        if self.lake.local_root().is_none() {
            let _ = std::fs::remove_file(self.lake.cache_dir().join(path.as_ref()));
        }
        Ok(())
    }
}
