//! What can go wrong reading the lake, by kind: the caller tells a lake it
//! cannot open from a store that fails a call, a manifest that does not
//! parse, or a view file that does not hold its view.

use std::path::PathBuf;

/// An error of the lake's read side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LakeError {
    /// The URL names no supported store.
    #[error("unsupported store url {0:?}: expected file://DIR, memory:// or s3://BUCKET/PREFIX")]
    UnsupportedUrl(String),
    /// The store could not be opened (a bad URL or option, a missing directory).
    #[error("opening the object store {url}")]
    Open {
        /// The lake's URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A call to the object store failed.
    #[error("{action} {path}")]
    Store {
        /// What was being done (`reading`, `listing`, …).
        action: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file (the read cache) could not be written.
    #[error("{action} {}", path.display())]
    Local {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A committed manifest that does not parse.
    #[error("manifest version {version} does not parse")]
    Manifest {
        /// Its version.
        version: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest names a view this version does not know.
    #[error("unknown view {0:?}: expected funnel, pages, iot_sensors or iot_devices")]
    UnknownView(String),
    /// A view file that does not hold its view's columns.
    #[error("view file {path} ({view}): {reason}")]
    ViewFile {
        /// The file.
        path: String,
        /// The view it should hold.
        view: crate::views::ViewName,
        /// What is wrong with it.
        reason: String,
    },
}

impl LakeError {
    /// A failed object store call.
    pub fn store(
        action: &'static str,
        path: impl ToString,
        source: object_store::Error,
    ) -> LakeError {
        LakeError::Store {
            action,
            path: path.to_string(),
            source,
        }
    }

    /// A failed local file operation.
    pub(crate) fn local(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> LakeError {
        LakeError::Local {
            action,
            path: path.into(),
            source,
        }
    }
}
