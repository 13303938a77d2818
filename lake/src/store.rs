//! The lake: object storage picked by URL (`file://DIR`, `memory://`,
//! `s3://bucket/prefix`), plus local paths for DuckDB, which reads local
//! files only here (no httpfs): objects of a remote lake are fetched into a
//! local cache first — they are immutable, so a cached copy never goes stale.
//! [`Lake`] only reads; [`LakeWriter`] (the batch layer's) also writes.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// Object storage for the master dataset, batch views and manifests.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    url: String,
    local_root: Option<PathBuf>,
    cache_dir: PathBuf,
}

/// The result of a conditional create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The object was written.
    Written,
    /// An object already existed at the path; nothing was written.
    AlreadyExists,
}

impl Lake {
    /// Opens the lake at `url`; `cache_dir` holds local copies of remote objects for DuckDB.
    pub fn open(url: &str, cache_dir: impl Into<PathBuf>) -> anyhow::Result<Lake> {
        Lake::open_with_options(url, Vec::new(), cache_dir)
    }

    /// [`Lake::open`] with object store options for `s3://` lakes, keyed as
    /// `object_store` names them (`aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`,
    /// `aws_conditional_put`, …). The caller decides where they come from.
    pub fn open_with_options(
        url: &str,
        options: Vec<(String, String)>,
        cache_dir: impl Into<PathBuf>,
    ) -> anyhow::Result<Lake> {
        let cache_dir = cache_dir.into();
        if let Some(path) = url.strip_prefix("file://") {
            let root = PathBuf::from(path);
            std::fs::create_dir_all(&root)
                .with_context(|| format!("creating lake directory {path}"))?;
            let root = root
                .canonicalize()
                .with_context(|| format!("resolving {path}"))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .with_context(|| format!("opening lake {url}"))?;
            return Ok(Lake {
                store: Arc::new(store),
                url: url.into(),
                local_root: Some(root),
                cache_dir,
            });
        }
        if url.starts_with("memory://") {
            let store = object_store::memory::InMemory::new();
            return Ok(Lake {
                store: Arc::new(store),
                url: url.into(),
                local_root: None,
                cache_dir,
            });
        }
        if url.starts_with("s3://") {
            let parsed = url::Url::parse(url).with_context(|| format!("parsing lake url {url}"))?;
            let (store, prefix) = object_store::parse_url_opts(&parsed, options)
                .with_context(|| format!("opening lake {url}"))?;
            let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
                Arc::from(store)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
            };
            return Ok(Lake {
                store,
                url: url.into(),
                local_root: None,
                cache_dir,
            });
        }
        bail!("unsupported lake url {url:?}: expected file://DIR, memory:// or s3://BUCKET/PREFIX")
    }

    /// The URL the lake was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Reads an object whole.
    pub async fn get(&self, path: &Path) -> anyhow::Result<Bytes> {
        let result = self
            .store
            .get(path)
            .await
            .with_context(|| format!("reading {path}"))?;
        result
            .bytes()
            .await
            .with_context(|| format!("reading {path}"))
    }

    /// Whether an object exists at `path`.
    pub async fn exists(&self, path: &Path) -> anyhow::Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("looking for {path}")),
        }
    }

    /// Lists the objects under `prefix`.
    pub async fn list(&self, prefix: &Path) -> anyhow::Result<Vec<Path>> {
        let metas: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing {prefix}"))?;
        Ok(metas.into_iter().map(|m| m.location).collect())
    }

    /// A local file DuckDB can read holding the object at `path`.
    pub async fn local_path(&self, path: &Path) -> anyhow::Result<PathBuf> {
        if let Some(root) = &self.local_root {
            return Ok(root.join(path.as_ref()));
        }
        let local = self.cache_dir.join(path.as_ref());
        if !local.exists() {
            let bytes = self.get(path).await?;
            write_cache_file(&local, &bytes)?;
        }
        Ok(local)
    }
}

/// The lake's write side. Only the batch layer holds one (it is the only
/// writer of the lake); every other role gets the read-only [`Lake`], which
/// has no method that writes. A writer reads too (it derefs to its [`Lake`]).
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
    pub fn open(url: &str, cache_dir: impl Into<PathBuf>) -> anyhow::Result<LakeWriter> {
        LakeWriter::open_with_options(url, Vec::new(), cache_dir)
    }

    /// [`LakeWriter::open`] with object store options (see [`Lake::open_with_options`]).
    pub fn open_with_options(
        url: &str,
        options: Vec<(String, String)>,
        cache_dir: impl Into<PathBuf>,
    ) -> anyhow::Result<LakeWriter> {
        Lake::open_with_options(url, options, cache_dir).map(|lake| LakeWriter { lake })
    }

    /// The read-only handle on the same store (a `memory://` lake included),
    /// for the roles that only read.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Writes (or replaces) an object; on a local lake it is on disk
    /// (fsynced, with its directory) when this returns.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> anyhow::Result<()> {
        self.lake
            .store
            .put(path, PutPayload::from(bytes))
            .await
            .with_context(|| format!("writing {path}"))?;
        self.sync_local(path).await
    }

    /// On a `file://` lake, fsyncs the object and its directory: object
    /// stores make a put durable before answering, and the batch layer
    /// relies on it (log retention trusts a committed manifest), but the
    /// local file store only renames a written file into place.
    async fn sync_local(&self, path: &Path) -> anyhow::Result<()> {
        let Some(root) = &self.lake.local_root else {
            return Ok(());
        };
        let file = root.join(path.as_ref());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .context("fsync task")?
        .with_context(|| format!("syncing {path}"))
    }

    /// Writes an object only if none exists at `path` (a conditional put).
    pub async fn create(&self, path: &Path, bytes: Bytes) -> anyhow::Result<Created> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => {
                self.sync_local(path).await?;
                Ok(Created::Written)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(e).with_context(|| format!("creating {path}")),
        }
    }

    /// Deletes an object (and its cached copy); a missing one is not an error.
    pub async fn delete(&self, path: &Path) -> anyhow::Result<()> {
        match self.lake.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting {path}")),
        }
        if self.lake.local_root.is_none() {
            let _ = std::fs::remove_file(self.lake.cache_dir.join(path.as_ref()));
        }
        Ok(())
    }
}

fn write_cache_file(local: &FsPath, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = local.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = local.with_extension("part");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, local).with_context(|| format!("renaming {}", tmp.display()))
}
