//! The lake: object storage picked by URL (`file://DIR`, `memory://`,
//! `s3://bucket/prefix`), plus local paths for DuckDB, which reads local
//! files only here (no httpfs): objects of a remote lake are fetched into a
//! local cache first — they are immutable, so a cached copy never goes stale.
//! [`Lake`] only reads: writing is `lambda_batch::LakeWriter`, which only
//! the batch layer's crate defines and constructs.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Object storage for the master dataset, batch views and manifests.
#[derive(Debug, Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    url: String,
    local_root: Option<PathBuf>,
    cache_dir: PathBuf,
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

    /// The object store under the lake, for the batch layer's `LakeWriter`:
    /// only with the `write` feature, which only `lambda-batch` enables.
    #[cfg(feature = "write")]
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The directory of a `file://` lake (`None` for others).
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// Where local copies of a remote lake's objects are kept.
    pub fn cache_dir(&self) -> &FsPath {
        &self.cache_dir
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

fn write_cache_file(local: &FsPath, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = local.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = local.with_extension("part");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, local).with_context(|| format!("renaming {}", tmp.display()))
}
