//! Batch views on Apache Spark, through Spark Connect.
//!
//! Spark computes; the batch layer writes. [`SparkEngine`] sends a view's
//! SQL ([`crate::dialect`], the same file DuckDB runs) over the manifest's
//! explicit file list to a Spark Connect server, takes the rows back as
//! Arrow IPC bytes (the client's own arrow version stays inside it), gives
//! them DuckDB's column types, and folds the value lists into the
//! project's sketches as the DuckDB path does. Writing view files and
//! committing the manifest stay with the batch layer, so a Spark job that
//! fails leaves nothing visible.
//!
//! The Spark Connect client is the `spark` cargo feature (its build runs
//! `protoc`): without it, choosing Spark is an error that says so.

use std::time::Duration;

use anyhow::Context;
use object_store::path::Path;

use crate::lake::Lake;

#[cfg(feature = "spark")]
mod session;
#[cfg(feature = "spark")]
pub use session::{SparkEngine, is_timeout};

/// Without the `spark` feature no Spark call is made, so none times out.
#[cfg(not(feature = "spark"))]
pub fn is_timeout(_error: &anyhow::Error) -> bool {
    false
}

/// Without the `spark` feature: no session can be made
/// ([`SparkEngine::connect`] says how to get one), so none exists.
#[cfg(not(feature = "spark"))]
#[derive(Debug, Clone)]
pub struct SparkEngine {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "spark"))]
impl SparkEngine {
    /// Always an error: this build has no Spark Connect client.
    pub fn connect(config: &SparkConfig) -> anyhow::Result<SparkEngine> {
        anyhow::bail!(
            "--batch-engine spark ({}): this lambda was built without Spark support; build it with `cargo build --release --features spark` (needs protoc: apt-get install protobuf-compiler)",
            redact(&config.url)
        )
    }

    /// Always an error, as [`SparkEngine::connect`].
    pub fn shared(config: &SparkConfig, _purpose: &'static str) -> anyhow::Result<SparkEngine> {
        SparkEngine::connect(config)
    }

    /// Never called: there is no engine to call it on.
    pub fn answers(&self) -> bool {
        match self.never {}
    }

    /// Never called: there is no engine to call it on.
    pub fn compute_hours(
        &self,
        _view: &crate::views::ViewDef,
        _hours: &[(String, Vec<String>)],
    ) -> anyhow::Result<
        std::collections::BTreeMap<
            String,
            (arrow_schema::SchemaRef, Vec<arrow_array::RecordBatch>),
        >,
    > {
        match self.never {}
    }
}

/// How to reach Spark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkConfig {
    /// `sc://host:port` of a Spark Connect server (port 15002 if none).
    pub url: String,
    /// Longest a connection or one query may take before it is an error.
    pub timeout: Duration,
}

impl SparkConfig {
    /// `url` with the default timeout (10 minutes: a backfill's query over
    /// many hours is one job).
    pub fn new(url: impl Into<String>) -> SparkConfig {
        SparkConfig {
            url: url.into(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// `url` as messages and logs show it: its parameters (`/;token=…`,
/// `;user_id=…`) hidden, since they may hold a secret.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', ';', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (hidden_user, host) = match authority.rsplit_once('@') {
        Some((_, host)) => (true, host),
        None => (false, authority),
    };
    let mut shown = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    if hidden_user {
        shown.push_str("…@");
    }
    shown.push_str(host);
    if !tail.trim_start_matches('/').is_empty() {
        shown.push_str(if scheme == "sc" { "/;…" } else { "/…" });
    }
    shown
}

/// The `host:port` of an `sc://host:port[/;params]` URL.
pub fn connect_address(full_url: &str) -> anyhow::Result<String> {
    let url = &redact(full_url);
    let rest = full_url.strip_prefix("sc://").with_context(|| {
        format!("--spark-url {url:?}: a Spark Connect URL starts with sc:// (sc://host:15002)")
    })?;
    let authority = rest.split(['/', ';', '?', '#']).next().unwrap_or("");
    // Spark Connect URLs carry parameters (a token) after `/;`; a `user@`
    // or a `?query` would be read as part of the host or port, and shown.
    anyhow::ensure!(
        !authority.contains('@'),
        "--spark-url {url:?}: a Spark Connect URL takes no user@ (pass a token as sc://host:15002/;token=…)"
    );
    anyhow::ensure!(
        !rest.contains(['?', '#']),
        "--spark-url {url:?}: parameters go after /; (sc://host:15002/;token=…), not after ? or #"
    );
    anyhow::ensure!(
        !authority.is_empty(),
        "--spark-url {url:?}: no host (sc://host:15002)"
    );
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'))
    {
        let (host, port) = authority.rsplit_once(':').expect("checked");
        port.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .with_context(|| format!("--spark-url {url:?}: port {port:?} is not 1-65535"))?;
        anyhow::ensure!(!host.is_empty(), "--spark-url {url:?}: no host");
        Ok(authority.to_string())
    } else {
        Ok(format!("{authority}:15002"))
    }
}

/// Characters with which Spark reads a path as a glob (so it may read
/// other files than the manifest lists).
pub(crate) const GLOB_CHARACTERS: [char; 7] = ['*', '?', '[', ']', '{', '}', '\\'];

/// Whether Spark can read `lake`'s files: a `file://` lake whose path has
/// no glob character (Spark would read it as a pattern), or an `s3://`
/// lake; not a `memory://` one. Checked when a run or a backfill starts,
/// so a lake Spark cannot read is refused (`--batch-engine spark`) or
/// left to DuckDB (`auto`) instead of failing hour by hour.
pub fn spark_reads(lake: &Lake) -> anyhow::Result<()> {
    if let Some(root) = lake.local_root() {
        let root = root.display().to_string();
        anyhow::ensure!(
            !root.contains(GLOB_CHARACTERS),
            "lake {root}: Spark would read its paths as globs (a lake for Spark has none of * ? [ ] {{ }} \\ in its path)"
        );
        return Ok(());
    }
    spark_uri(lake, &Path::from("probe")).map(drop)
}

/// The URI Spark reads a lake file at: the file itself for a local lake
/// (`file:///…`, which must be the same path on every Spark worker), `s3a://`
/// for an S3 lake (Spark needs `hadoop-aws`; see the README). A
/// `memory://` lake lives in this process only.
pub fn spark_uri(lake: &Lake, path: &Path) -> anyhow::Result<String> {
    if let Some(root) = lake.local_root() {
        return Ok(format!("file://{}", root.join(path.as_ref()).display()));
    }
    let url = lake.url();
    if let Some(rest) = url.strip_prefix("s3://") {
        return Ok(format!(
            "s3a://{}/{}",
            rest.trim_end_matches('/'),
            path.as_ref()
        ));
    }
    anyhow::bail!(
        "lake {url}: Spark reads a file:// or s3:// lake only (a memory:// lake is in this process alone)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_addresses() {
        assert_eq!(connect_address("sc://spark:15002").unwrap(), "spark:15002");
        assert_eq!(connect_address("sc://spark").unwrap(), "spark:15002");
        assert_eq!(
            connect_address("sc://127.0.0.1:7/;user_id=x").unwrap(),
            "127.0.0.1:7"
        );
        for bad in [
            "http://spark:15002",
            "sc://",
            "sc://spark:0",
            "sc://spark:99999",
            "sc://:15002",
            "spark",
        ] {
            let error = connect_address(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn urls_are_shown_without_their_parameters() {
        assert_eq!(redact("sc://spark:15002"), "sc://spark:15002");
        assert_eq!(redact("sc://spark:15002/"), "sc://spark:15002");
        assert_eq!(
            redact("sc://spark:15002/;token=SECRET"),
            "sc://spark:15002/;…"
        );
        assert_eq!(redact("sc://spark;token=SECRET"), "sc://spark/;…");
        assert_eq!(redact("http://u:SECRET@x/y"), "http://…@x/…");
        assert_eq!(redact("spark"), "spark");
        for (url, shown) in [
            ("sc://spark:0/;token=SECRET", "sc://spark:0"),
            ("sc://spark:15002?token=SECRET", "sc://spark:15002"),
            ("sc://user:SECRET@spark:15002", "sc://…@spark:15002"),
            ("sc://SECRET@spark", "sc://…@spark"),
            ("sc://spark:15002#SECRET", "sc://spark:15002"),
        ] {
            let error = connect_address(url).unwrap_err().to_string();
            assert!(
                !error.contains("SECRET") && error.contains(shown),
                "{url}: {error}"
            );
        }
    }

    #[test]
    fn lake_files_as_spark_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let lake = Lake::open(&url, dir.path().join("cache")).unwrap();
        let uri = spark_uri(&lake, &Path::from("master/a.parquet")).unwrap();
        assert!(
            uri.starts_with("file:///") && uri.ends_with("/master/a.parquet"),
            "{uri}"
        );
        spark_reads(&lake).unwrap();
        let memory = Lake::open("memory://", dir.path().join("cache")).unwrap();
        let error = spark_uri(&memory, &Path::from("a"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("memory://"), "{error}");
        let error = spark_reads(&memory).unwrap_err().to_string();
        assert!(error.contains("memory://"), "{error}");
        for odd in ["gl[o]b", "a*", "q?", "{x}", "back\\slash"] {
            let root = dir.path().join(odd);
            let lake =
                Lake::open(&format!("file://{}", root.display()), dir.path().join("c")).unwrap();
            let error = spark_reads(&lake).unwrap_err().to_string();
            assert!(error.contains("glob") && error.contains(odd), "{error}");
        }
        for fine in ["sp ace", "quo'te", "back`tick", "%41", "ünï"] {
            let root = dir.path().join(fine);
            let lake =
                Lake::open(&format!("file://{}", root.display()), dir.path().join("c")).unwrap();
            spark_reads(&lake).unwrap();
        }
    }
}
