//! Batch views on a real Spark standalone cluster (a master, two workers and
//! a Spark Connect server, started from the `pyspark` distribution): for
//! generated traffic with late events and resends, every view of every hour
//! computed by Spark equals DuckDB's, column by column; scheduled runs and a
//! backfill on Spark write the same view files, byte for byte (sketches
//! included), as runs on DuckDB; the work ran on both workers; an
//! unreachable Connect URL and a worker killed mid-job leave nothing
//! half-done, and the next run converges; `--batch-engine auto` computes on
//! DuckDB while Spark does not answer and on Spark when it does; with both
//! workers lost, a Spark backfill fails after `--spark-timeout` and commits
//! nothing, and an auto run commits DuckDB's views; `0.0` and `-0.0` reach
//! both engines as one zero.
//!
//! One cluster for the whole file (about a minute to start and ~2 GB): the
//! checks are steps of one test.

mod common;

use std::sync::Arc;

use arrow::compute::concat_batches;
use lambda_batch::manifest::{self, ViewsEngine};
use lambda_batch::run::RunContext;
use lambda_batch::spark::{SparkConfig, SparkEngine, spark_uri};
use lambda_batch::views::{ViewEngine, views_of};
use lambda_batch::{BatchEngine, LakeWriter, run_once};
use lambda_events::{Event, Topic};
use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog, Record};

use common::append;
use lambda_testkit::Spark;
use object_store::path::Path;

fn events(seed: u64, n: usize) -> Vec<Event> {
    common::events_at(seed, n, 2.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_computes_the_same_views_as_duckdb_on_both_workers() {
    let mut spark = tokio::task::spawn_blocking(Spark::start).await.unwrap();

    // A lake of several hours, written by two runs (the second brings late
    // events into hours the first had closed, and resends).
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(dir.path().join("log"), EmbeddedConfig::default())
            .await
            .unwrap(),
    );
    lambda_ingest::ensure_topics(&log, 3).await.unwrap();
    let open_lake = |name: &str| {
        LakeWriter::open(
            &format!("file://{}", dir.path().join(name).display()),
            dir.path().join(format!("{name}-cache")),
        )
        .unwrap()
    };
    let spark_engine = BatchEngine::Spark(SparkConfig::new(&spark.connect_url));
    // The same log into two lakes: views by DuckDB, and by Spark.
    let ctx = RunContext {
        log: Arc::clone(&log),
        lake: open_lake("lake"),
        allowed_lateness_ms: 60_000,
        engine: BatchEngine::DuckDb,
    };
    let on_spark = RunContext {
        lake: open_lake("lake-spark"),
        engine: spark_engine.clone(),
        ..ctx.clone()
    };
    let all = events(7, 24_000);
    let (first, second) = all.split_at(16_000);
    append(&log, first).await;
    append_signed_zeros(&log).await;
    assert_eq!(
        run_once(&ctx).await.unwrap().stats.views_engine,
        ViewsEngine::Duckdb
    );
    let report = run_once(&on_spark).await.unwrap();
    assert!(report.committed);
    assert_eq!(report.stats.views_engine, ViewsEngine::Spark);
    append(&log, second).await;
    assert!(run_once(&ctx).await.unwrap().committed);
    assert!(run_once(&on_spark).await.unwrap().committed);
    let manifest = manifest::latest(&ctx.lake).await.unwrap().unwrap();
    assert!(
        manifest.partitions.len() >= 4,
        "{:?}",
        manifest.partitions.keys()
    );

    // Each view of each hour, by each engine, column by column.
    let config = SparkConfig::new(&spark.connect_url);
    let engine = tokio::task::spawn_blocking(move || SparkEngine::connect(&config))
        .await
        .unwrap()
        .unwrap();
    let duckdb = ViewEngine::new().unwrap();
    let root = ctx.lake.local_root().unwrap().to_path_buf();
    let mut compared = 0;
    let mut rows = std::collections::BTreeMap::new();
    for (key, partition) in &manifest.partitions {
        let topic = Topic::from_name(&partition.topic).unwrap();
        let local: Vec<_> = partition
            .data_files
            .iter()
            .map(|f| root.join(&f.path))
            .collect();
        let uris: Vec<String> = partition
            .data_files
            .iter()
            .map(|f| spark_uri(&ctx.lake, &Path::from(f.path.as_str())).unwrap())
            .collect();
        for (view, n) in engines_agree(&engine, &duckdb, key, topic, &local, &uris).await {
            *rows.entry(view.to_string()).or_insert(0) += n;
            compared += 1;
        }
    }
    assert!(compared >= 8, "{compared} views compared");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(
        rows.values().all(|n| *n > 100),
        "rows compared per view: {rows:?}"
    );

    // A lake written before the decoders read -0.0 as 0.0 may hold -0.0:
    // each engine still computes the same views from such a file (half
    // its float values -0.0, half 0.0).
    let dir_zeros = tempfile::tempdir().unwrap();
    for topic in Topic::ALL {
        let (key, partition) = manifest
            .partitions
            .iter()
            .filter(|(_, p)| p.topic == topic.name())
            .max_by_key(|(_, p)| p.data_files[0].rows)
            .unwrap();
        let source = root.join(&partition.data_files[0].path);
        let zeros = dir_zeros
            .path()
            .join(format!("{}.parquet", partition.topic));
        signed_zero_copy(topic, &source, &zeros);
        let uri = format!("file://{}", zeros.display());
        let agreed = engines_agree(&engine, &duckdb, key, topic, &[zeros], &[uri]).await;
        assert!(agreed.iter().all(|(_, n)| *n > 0), "{key}: {agreed:?}");
    }

    // The work ran on both workers: each has an executor of the Connect
    // server's application, and the master granted it both cores.
    let master = spark.master_json();
    assert!(master.contains("Spark Connect server"), "{master}");
    for ui in &spark.worker_uis {
        let address = ui.trim_start_matches("http://");
        let state = lambda_testkit::http_get(address, "/json/").unwrap_or_default();
        assert!(
            state.contains("\"executors\" : [ {") || state.contains("\"executors\":[{"),
            "worker {ui} ran no executor: {state}"
        );
    }

    // The runs on Spark wrote the same view files as the runs on DuckDB.
    assert_same_view_files(&ctx.lake, &on_spark.lake).await;

    // A backfill of every hour on Spark (one job per view over all of
    // them) writes the same view files again.
    let (from, to) = interval(&manifest);
    let report = lambda_batch::backfill(&on_spark.lake, &spark_engine, from, to, |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.hours, manifest.partitions.len() as u64);
    assert_eq!(report.views_engine, ViewsEngine::Spark);
    assert_same_view_files(&ctx.lake, &on_spark.lake).await;

    // `lambda compare`'s batch side (recomputed, not committed) on Spark:
    // the same views as on DuckDB.
    let retained = std::collections::BTreeMap::new();
    let recompute = |engine: BatchEngine| {
        let (lake, manifest, retained) = (&ctx.lake, &manifest, &retained);
        async move {
            lambda_batch::recompute::recompute(lake, manifest, from, to, retained, &engine)
                .await
                .unwrap()
        }
    };
    let by_duckdb = recompute(BatchEngine::DuckDb).await;
    let by_spark = recompute(spark_engine.clone()).await;
    assert_eq!(by_spark.views_engine, ViewsEngine::Spark);
    assert_eq!(by_duckdb.views_engine, ViewsEngine::Duckdb);
    assert!(by_duckdb.buckets.len() >= 60, "{}", by_duckdb.buckets.len());
    assert!(
        by_spark.buckets == by_duckdb.buckets,
        "the recomputed views differ"
    );
    assert_eq!(
        (by_spark.rows, by_spark.files),
        (by_duckdb.rows, by_duckdb.files)
    );

    // An unreachable Connect server: the run fails at once naming it, and
    // commits nothing; the next run on Spark converges.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dead_url = format!("sc://127.0.0.1:{dead_port}");
    let unreachable = RunContext {
        engine: BatchEngine::Spark(SparkConfig::new(&dead_url)),
        ..on_spark.clone()
    };
    append(&log, &events(8, 3_000)).await;
    let before = manifest::latest(&on_spark.lake).await.unwrap().unwrap();
    let error = format!("{:#}", run_once(&unreachable).await.unwrap_err());
    assert!(
        error.contains(&dead_url) && error.contains("unreachable"),
        "{error}"
    );
    assert_eq!(
        manifest::latest(&on_spark.lake)
            .await
            .unwrap()
            .unwrap()
            .version,
        before.version,
        "a failed run committed"
    );
    assert!(run_once(&ctx).await.unwrap().committed);

    // `--batch-engine auto` (the compose stack's): with the Connect server
    // unreachable the run computes on DuckDB and commits; with it
    // answering, on Spark. The files are the same either way.
    let auto = |url: &str| RunContext {
        engine: BatchEngine::Auto(SparkConfig::new(url)),
        ..on_spark.clone()
    };
    let report = run_once(&auto(&dead_url)).await.unwrap();
    assert!(report.committed);
    assert_eq!(report.stats.views_engine, ViewsEngine::Duckdb);
    assert_same_view_files(&ctx.lake, &on_spark.lake).await;
    append(&log, &events(9, 2_000)).await;
    assert!(run_once(&ctx).await.unwrap().committed);
    let report = run_once(&auto(&spark.connect_url)).await.unwrap();
    assert!(report.committed);
    assert_eq!(report.stats.views_engine, ViewsEngine::Spark);
    assert_same_view_files(&ctx.lake, &on_spark.lake).await;

    // A worker killed while a backfill's job runs: the backfill either
    // finishes on the other worker (Spark runs the lost tasks again) with
    // the right views, or fails and commits nothing; the next one converges.
    let manifest = manifest::latest(&on_spark.lake).await.unwrap().unwrap();
    let (from, to) = interval(&manifest);
    let mut killed = false;
    for _ in 0..5 {
        let before = manifest::latest(&on_spark.lake)
            .await
            .unwrap()
            .unwrap()
            .version;
        let (lake, engine) = (on_spark.lake.clone(), spark_engine.clone());
        let backfill = tokio::spawn(async move {
            lambda_batch::backfill(&lake, &engine, from, to, |_, _| {}).await
        });
        while !backfill.is_finished() && !killed {
            if spark.job_running() {
                spark.kill_worker(2);
                killed = true;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        let outcome = backfill.await.unwrap();
        let after = manifest::latest(&on_spark.lake)
            .await
            .unwrap()
            .unwrap()
            .version;
        match outcome {
            Ok(report) => assert_eq!(report.version, after),
            Err(error) => assert_eq!(after, before, "a failed backfill committed: {error:#}"),
        }
        assert_same_view_files(&ctx.lake, &on_spark.lake).await;
        if killed {
            break;
        }
    }
    assert!(
        killed,
        "no backfill job was seen running to kill a worker under"
    );
    let report = lambda_batch::backfill(&on_spark.lake, &spark_engine, from, to, |_, _| {})
        .await
        .unwrap();
    assert_eq!(report.hours, manifest.partitions.len() as u64);
    assert_eq!(report.views_engine, ViewsEngine::Spark);
    assert_same_view_files(&ctx.lake, &on_spark.lake).await;

    // Both workers lost for good: no job runs (Spark waits for executors
    // that never come). On Spark the backfill fails once --spark-timeout
    // has passed and commits nothing; under auto the run's views are
    // computed by DuckDB and committed — the same files.
    spark.kill_worker(1);
    let quick = SparkConfig {
        timeout: std::time::Duration::from_secs(15),
        ..SparkConfig::new(&spark.connect_url)
    };
    let before = manifest::latest(&on_spark.lake).await.unwrap().unwrap();
    let error = lambda_batch::backfill(
        &on_spark.lake,
        &BatchEngine::Spark(quick.clone()),
        from,
        to,
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("--spark-timeout"),
        "{error:#}"
    );
    let after = manifest::latest(&on_spark.lake).await.unwrap().unwrap();
    assert_eq!(after.version, before.version, "a failed backfill committed");
    append(&log, &events(10, 2_000)).await;
    assert!(run_once(&ctx).await.unwrap().committed);
    let report = run_once(&RunContext {
        engine: BatchEngine::Auto(quick),
        ..on_spark.clone()
    })
    .await
    .unwrap();
    assert!(report.committed);
    assert_eq!(
        report.stats.views_engine,
        ViewsEngine::Duckdb,
        "{report:?}; the master: {}",
        spark.master_json()
    );
    assert_same_view_files(&ctx.lake, &on_spark.lake).await;
}

/// Readings and page views of `0.0` and `-0.0` in the same minutes, in
/// both orders, as producers send them (raw records: `Event::to_json`
/// would write what the decoder made of them). Each engine orders the two
/// zeros its own way in min, max and last: they must reach the views as
/// one zero.
async fn append_signed_zeros(log: &Arc<dyn EventLog>) {
    let minute = common::START_MS + 5 * 60_000;
    let mut iot = Vec::new();
    let mut funnel = Vec::new();
    for (i, (a, b)) in [("0.0", "-0.0"), ("-0.0", "0.0"), ("-0", "0")]
        .iter()
        .enumerate()
    {
        let at = minute + i as i64 * 60_000;
        for (j, value) in [a, b].iter().enumerate() {
            let ts = at + j as i64 * 1_000;
            iot.push(Record::keyed(
                b"zero-device",
                format!(r#"{{"event_id":"z-r-{i}-{j}","ts":{ts},"event_type":"sensor_reading","device_id":"zero-device","sensor":"temperature","value":{value}}}"#).into_bytes(),
                0,
            ));
            funnel.push(Record::keyed(
                b"zero-user",
                format!(r#"{{"event_id":"z-p-{i}-{j}","ts":{ts},"event_type":"page_view","user_id":"zero-user","page":"/zero","render_ms":{value}}}"#).into_bytes(),
                0,
            ));
        }
    }
    log.append(Topic::IOT, iot).await.unwrap();
    log.append(Topic::FUNNEL, funnel).await.unwrap();
}

/// Each view of `topic` over `local` (DuckDB) and `uris` (the same files,
/// on Spark) is the same, column by column; the rows compared per view.
async fn engines_agree(
    engine: &SparkEngine,
    duckdb: &ViewEngine,
    key: &str,
    topic: Topic,
    local: &[std::path::PathBuf],
    uris: &[String],
) -> Vec<(lambda_lake::ViewName, usize)> {
    let mut rows = Vec::new();
    for view in views_of(topic) {
        let (d_schema, d_batches) = duckdb.compute(view, local).unwrap();
        let (engine, view_def, uris) = (engine.clone(), *view, uris.to_vec());
        let (s_schema, s_batches) =
            tokio::task::spawn_blocking(move || engine.compute(&view_def, &uris))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{key} {}: {e:#}", view.name));
        assert_eq!(
            s_schema, d_schema,
            "{key} {}: the schemas differ",
            view.name
        );
        let d = concat_batches(&d_schema, &d_batches).unwrap();
        let s = concat_batches(&s_schema, &s_batches).unwrap();
        assert_eq!(
            s.num_rows(),
            d.num_rows(),
            "{key} {}: row counts",
            view.name
        );
        for (i, field) in d_schema.fields().iter().enumerate() {
            assert_eq!(
                s.column(i).as_ref(),
                d.column(i).as_ref(),
                "{key} {}: column {} differs",
                view.name,
                field.name()
            );
        }
        rows.push((view.name, d.num_rows()));
    }
    rows
}

/// A copy of the master data file `source` whose float values are all
/// zeros, `-0.0` in rows of even offset and `0.0` in the others (nulls
/// stay null).
fn signed_zero_copy(topic: Topic, source: &std::path::Path, target: &std::path::Path) {
    let zero = |c: &str| {
        format!(
            "CASE WHEN {c} IS NULL THEN NULL WHEN log_offset % 2 = 0 THEN CAST('-0.0' AS DOUBLE) ELSE CAST(0 AS DOUBLE) END AS {c}"
        )
    };
    let zeros: Vec<String> = lambda_batch::master::float_columns(topic)
        .into_iter()
        .map(zero)
        .collect();
    let sql = format!(
        "COPY (SELECT * REPLACE ({}) FROM read_parquet('{}', hive_partitioning = false)) TO '{}' (FORMAT parquet)",
        zeros.join(", "),
        source.display(),
        target.display()
    );
    duckdb::Connection::open_in_memory()
        .unwrap()
        .execute_batch(&sql)
        .unwrap();
}

/// The hours a manifest's partitions span: `[first start, last end)`.
fn interval(manifest: &manifest::Manifest) -> (i64, i64) {
    let starts = manifest.partitions.values().map(|p| p.hour_start_ms);
    (
        starts.clone().min().unwrap(),
        starts.max().unwrap() + 3_600_000,
    )
}

/// Both lakes' latest manifests hold the same partitions, none quarantined,
/// and each view file of one has the same bytes as the other's.
async fn assert_same_view_files(a: &LakeWriter, b: &LakeWriter) {
    let (ma, mb) = (
        manifest::latest(a).await.unwrap().unwrap(),
        manifest::latest(b).await.unwrap().unwrap(),
    );
    assert_eq!(
        ma.partitions.keys().collect::<Vec<_>>(),
        mb.partitions.keys().collect::<Vec<_>>()
    );
    for (key, pa) in &ma.partitions {
        let pb = &mb.partitions[key];
        assert!(
            pa.quarantined.is_none() && pb.quarantined.is_none(),
            "{key} quarantined"
        );
        assert_eq!(
            pa.views.keys().collect::<Vec<_>>(),
            pb.views.keys().collect::<Vec<_>>(),
            "{key}"
        );
        for (view, path) in &pa.views {
            let bytes_a = a.get(&Path::from(path.as_str())).await.unwrap();
            let bytes_b = b.get(&Path::from(pb.views[view].as_str())).await.unwrap();
            assert!(bytes_a == bytes_b, "{key} {view}: the view files differ");
        }
    }
}
