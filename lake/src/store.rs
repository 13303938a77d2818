//! The lake: object storage picked by URL (`file://DIR`, `memory://`,
//! `s3://bucket/prefix`), plus local paths for DuckDB, which reads local
//! files only here (no httpfs): objects of a remote lake are fetched into a
//! local cache first — they are immutable, so a cached copy never goes stale.
//! [`Lake`] only reads: writing is `lambda_batch::LakeWriter`, which only
//! the batch layer's crate defines and constructs.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::LakeError;

/// Object store options for an `s3://` lake in `region`, on `endpoint`
/// when it is not AWS (MinIO, moto: `http://` is allowed then), with
/// conditional puts (manifests are committed with one), and the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.
pub fn s3_options(region: &str, endpoint: Option<&str>) -> Vec<(String, String)> {
    let mut options = vec![
        ("aws_region".to_string(), region.to_string()),
        ("aws_conditional_put".to_string(), "etag".to_string()),
    ];
    if let Some(endpoint) = endpoint {
        options.push(("aws_endpoint".into(), endpoint.to_string()));
        if endpoint.starts_with("http://") {
            options.push(("aws_allow_http".into(), "true".into()));
        }
    }
    for (var, key) in [
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ] {
        if let Ok(value) = std::env::var(var) {
            options.push((key.to_string(), value));
        }
    }
    options
}

/// An object store opened by URL: the lake's, or the speed layer's
/// checkpoint store.
#[derive(Debug, Clone)]
pub struct OpenedStore {
    /// The store, rooted at the URL's directory or prefix.
    pub store: Arc<dyn ObjectStore>,
    /// The directory of a `file://` store (`None` for others).
    pub local_root: Option<PathBuf>,
}

/// Opens the object store at `url`: `file://DIR` (created if missing),
/// `memory://`, or `s3://BUCKET/PREFIX` with `options` (see
/// [`s3_options`]).
pub fn open_store(url: &str, options: Vec<(String, String)>) -> Result<OpenedStore, LakeError> {
    let open = |source: Box<dyn std::error::Error + Send + Sync>| LakeError::Open {
        url: url.to_string(),
        source,
    };
    if let Some(path) = url.strip_prefix("file://") {
        let root = PathBuf::from(path);
        std::fs::create_dir_all(&root)
            .map_err(|e| LakeError::local("creating the directory", &root, e))?;
        let root = (root.canonicalize())
            .map_err(|e| LakeError::local("resolving the directory", &root, e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| open(e.into()))?;
        return Ok(OpenedStore {
            store: Arc::new(store),
            local_root: Some(root),
        });
    }
    if url.starts_with("memory://") {
        return Ok(OpenedStore {
            store: Arc::new(object_store::memory::InMemory::new()),
            local_root: None,
        });
    }
    if url.starts_with("s3://") {
        let parsed = url::Url::parse(url).map_err(|e| open(e.into()))?;
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| open(e.into()))?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        return Ok(OpenedStore {
            store,
            local_root: None,
        });
    }
    Err(LakeError::UnsupportedUrl(url.to_string()))
}

/// Fsyncs `file` and its directory: what makes a put on a `file://`
/// store durable (object stores are before they answer; the local file
/// store only renames a written file into place). Blocking.
pub fn sync_file_and_dir(file: &std::path::Path) -> Result<(), LakeError> {
    let sync = || -> std::io::Result<()> {
        std::fs::File::open(file)?.sync_all()?;
        if let Some(dir) = file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    sync().map_err(|source| LakeError::Local {
        action: "syncing",
        path: file.to_path_buf(),
        source,
    })
}

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
    pub fn open(url: &str, cache_dir: impl Into<PathBuf>) -> Result<Lake, LakeError> {
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
    ) -> Result<Lake, LakeError> {
        let OpenedStore { store, local_root } = open_store(url, options)?;
        Ok(Lake {
            store,
            url: url.into(),
            local_root,
            cache_dir: cache_dir.into(),
        })
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
    pub async fn get(&self, path: &Path) -> Result<Bytes, LakeError> {
        let reading = |e| LakeError::store("reading", path, e);
        self.store
            .get(path)
            .await
            .map_err(reading)?
            .bytes()
            .await
            .map_err(reading)
    }

    /// Whether an object exists at `path`.
    pub async fn exists(&self, path: &Path) -> Result<bool, LakeError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(LakeError::store("looking for", path, e)),
        }
    }

    /// Lists the objects under `prefix`.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<Path>, LakeError> {
        let metas: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| LakeError::store("listing", prefix, e))?;
        Ok(metas.into_iter().map(|m| m.location).collect())
    }

    /// A local file DuckDB can read holding the object at `path`.
    pub async fn local_path(&self, path: &Path) -> Result<PathBuf, LakeError> {
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

fn write_cache_file(local: &FsPath, bytes: &[u8]) -> Result<(), LakeError> {
    if let Some(dir) = local.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LakeError::local("creating", dir, e))?;
    }
    let tmp = local.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| LakeError::local("writing", &tmp, e))?;
    std::fs::rename(&tmp, local).map_err(|e| LakeError::local("renaming", &tmp, e))
}
