//! Batch runs against a real embedded log and a local lake, with DuckDB:
//! the batch SQL agrees with the speed layer's code on the same events, runs
//! are idempotent and deduplicate across runs, a failed run leaves nothing
//! visible, two writers cannot commit one version, and a late event is healed
//! by the next run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use lambda_batch::manifest::{self, CommitError};
use lambda_batch::run::{FailPoint, RunContext, run_with_fail_point};
use lambda_batch::{BatchViews, Lake, LakeWriter, run_once};
use lambda_events::{BucketViews, Event, Topic};
use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog};

use common::{START_MS, append};
use lambda_speed::SpeedState;

struct Fixture {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    ctx: RunContext,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(dir.path().join("log"), EmbeddedConfig::default())
            .await
            .unwrap(),
    );
    lambda_ingest::ensure_topics(&log, 3).await.unwrap();
    let lake = LakeWriter::open(
        &format!("file://{}", dir.path().join("lake").display()),
        dir.path().join("cache"),
    )
    .unwrap();
    let ctx = RunContext {
        log: Arc::clone(&log),
        lake,
        allowed_lateness_ms: 60_000,
        engine: Default::default(),
    };
    Fixture {
        _dir: dir,
        log,
        ctx,
    }
}

fn events(seed: u64, n: usize) -> Vec<Event> {
    common::events_at(seed, n, 20.0)
}

async fn loaded(lake: &Lake) -> BatchViews {
    let mut views = BatchViews::default();
    views.refresh(lake).await.unwrap();
    views
}

/// The speed layer's code over the same events, with a lateness that drops nothing.
fn speed_views(events: &[Event]) -> BTreeMap<i64, BucketViews> {
    let mut state = SpeedState::new(i64::MAX / 4, i64::MAX / 4);
    for event in events {
        state.apply(event);
    }
    state
        .windows()
        .iter()
        .map(|(start, w)| (*start, w.views.clone()))
        .collect()
}

fn assert_same_views(batch: &BTreeMap<i64, BucketViews>, speed: &BTreeMap<i64, BucketViews>) {
    assert_eq!(
        batch.keys().collect::<Vec<_>>(),
        speed.keys().collect::<Vec<_>>(),
        "same buckets"
    );
    for (start, b) in batch {
        let s = &speed[start];
        assert_eq!(b.funnel, s.funnel, "funnel at {start}");
        assert_eq!(b.pages, s.pages, "pages at {start}");
        assert_eq!(b.devices, s.devices, "devices at {start}");
        // The sketches are the same bytes: same registers, same bins.
        assert_eq!(b.users, s.users, "distinct-user sketches at {start}");
        assert_eq!(b.render, s.render, "render-time sketches at {start}");
        assert!(!b.users.is_empty() || b.funnel.is_empty());
        assert_eq!(b.sensors.len(), s.sensors.len(), "sensors at {start}");
        for (key, bs) in &b.sensors {
            let ss = &s.sensors[key];
            assert_eq!(
                (
                    bs.count,
                    bs.min,
                    bs.max,
                    bs.last_ts,
                    &bs.last_event_id,
                    bs.last
                ),
                (
                    ss.count,
                    ss.min,
                    ss.max,
                    ss.last_ts,
                    &ss.last_event_id,
                    ss.last
                ),
                "sensor {key:?} at {start}"
            );
            assert!(
                (bs.sum - ss.sum).abs() <= 1e-9 * ss.sum.abs().max(1.0),
                "sensor sum {key:?} at {start}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sql_agrees_with_the_speed_layer_code() {
    let f = fixture().await;
    let events = events(1, 6000);
    append(&f.log, &events).await;
    let report = run_once(&f.ctx).await.unwrap();
    assert!(report.committed);
    assert!(report.stats.duplicates > 0, "resends are deduplicated");
    let views = loaded(&f.ctx.lake).await;
    assert_same_views(&views.buckets, &speed_views(&events));

    // The master dataset holds each event once, typed.
    let m = views.manifest.unwrap();
    let rows: u64 = m
        .partitions
        .values()
        .flat_map(|p| &p.data_files)
        .map(|d| d.rows)
        .sum();
    let distinct: std::collections::HashSet<&str> =
        events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(rows as usize, distinct.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_idempotent_and_deduplicate_across_runs() {
    let f = fixture().await;
    let first = events(2, 3000);
    append(&f.log, &first).await;
    let one = run_once(&f.ctx).await.unwrap();
    let views_one = loaded(&f.ctx.lake).await;
    // Nothing new: no new manifest.
    let again = run_once(&f.ctx).await.unwrap();
    assert!(!again.committed);
    assert_eq!(again.version, one.version);
    // Resending everything adds nothing.
    append(&f.log, &first).await;
    let resend = run_once(&f.ctx).await.unwrap();
    assert!(resend.committed, "offsets moved");
    assert_eq!(resend.stats.events_written, 0);
    assert!(resend.stats.duplicates as usize >= first.len() / 2);
    let views_two = loaded(&f.ctx.lake).await;
    assert_eq!(views_two.buckets, views_one.buckets);
}

/// One hour whose views cannot be computed does not stop the batch layer:
/// it is quarantined and named in the manifest, the other hour commits (B
/// moves), and the next run (with nothing new) tries it again and heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_hour_is_quarantined_and_the_rest_commits() {
    let f = fixture().await;
    let hour = 3_600_000;
    let click = |id: &str, ts: i64| {
        Event::from_json(
            format!(r#"{{"event_id":"{id}","ts":{ts},"event_type":"click","user_id":"u-{id}"}}"#)
                .as_bytes(),
        )
        .unwrap()
    };
    let sent = vec![
        click("a", START_MS + 1_000),
        click("b", START_MS + 2_000),
        click("c", START_MS + hour + 1_000),
        click("d", START_MS + hour + 61_000),
    ];
    append(&f.log, &sent).await;
    let report = run_with_fail_point(&f.ctx, Some(FailPoint::PoisonHour(START_MS + hour)))
        .await
        .expect("a poisoned hour does not fail the run");
    assert!(report.committed);
    assert_eq!(report.stats.hours_quarantined, 1);
    assert!(report.boundary_ms.is_some());
    let latest = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    let quarantined: Vec<(&String, &String)> = latest
        .partitions
        .iter()
        .filter_map(|(key, p)| p.quarantined.as_ref().map(|why| (key, why)))
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0].0.contains("hour=01"), "{quarantined:?}");
    assert!(
        quarantined[0].1.contains("injected failure"),
        "{quarantined:?}"
    );
    // The healthy hour's views are there; the poisoned hour's data is kept.
    let views = loaded(&f.ctx.lake).await;
    assert_same_views(&views.buckets, &speed_views(&sent[..2]));
    assert_eq!(stored_ids(&f.ctx.lake).await.len(), 4);

    // Nothing new in the log, but a quarantined hour: the next run retries it.
    let healed = run_once(&f.ctx).await.unwrap();
    assert!(healed.committed);
    assert_eq!(healed.stats.hours_quarantined, 0);
    let views = loaded(&f.ctx.lake).await;
    assert_same_views(&views.buckets, &speed_views(&sent));
    let latest = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    assert!(latest.partitions.values().all(|p| p.quarantined.is_none()));
}

/// The batch layer's consumer-group offsets, by topic and partition.
async fn group_offsets(log: &Arc<dyn EventLog>) -> BTreeMap<String, BTreeMap<u32, u64>> {
    let mut all = BTreeMap::new();
    for topic in Topic::ALL {
        let committed = log
            .committed(lambda_batch::run::CONSUMER_GROUP, topic.name())
            .await
            .unwrap();
        all.insert(topic.name().to_string(), committed);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_leaves_nothing_visible_and_the_next_run_completes() {
    let clean = fixture().await;
    let crashy = fixture().await;
    let batch_one = events(3, 2000);
    let batch_two = events(4, 2000);
    for f in [&clean, &crashy] {
        append(&f.log, &batch_one).await;
        run_once(&f.ctx).await.unwrap();
        append(&f.log, &batch_two).await;
    }
    let before = loaded(&crashy.ctx.lake).await;
    for fail_point in [FailPoint::AfterFirstDataFile, FailPoint::BeforeManifest] {
        let error = run_with_fail_point(&crashy.ctx, Some(fail_point))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("injected failure"), "{error}");
        let after = loaded(&crashy.ctx.lake).await;
        assert_eq!(
            after.manifest, before.manifest,
            "no new manifest after {fail_point:?}"
        );
        assert_eq!(
            after.buckets, before.buckets,
            "views unchanged after {fail_point:?}"
        );
    }
    // Failing after the manifest: the run is committed (all of it visible),
    // only the consumer group's offsets lag until the next run.
    let error = run_with_fail_point(&crashy.ctx, Some(FailPoint::AfterManifest))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("injected failure"), "{error}");
    let committed = loaded(&crashy.ctx.lake).await;
    let committed_manifest = committed.manifest.clone().unwrap();
    assert_eq!(
        committed_manifest.version,
        before.manifest.as_ref().unwrap().version + 1
    );
    assert_ne!(
        group_offsets(&crashy.log).await,
        committed_manifest.offsets,
        "the group lags"
    );
    let recovered = run_once(&crashy.ctx).await.unwrap();
    assert!(!recovered.committed, "nothing new after a committed run");
    assert_eq!(
        group_offsets(&crashy.log).await,
        committed_manifest.offsets,
        "and now it does not"
    );
    run_once(&clean.ctx).await.unwrap();
    let (a, b) = (
        loaded(&clean.ctx.lake).await,
        loaded(&crashy.ctx.lake).await,
    );
    assert_eq!(
        a.buckets, b.buckets,
        "the recovered lake answers like an uninterrupted one"
    );
    let (ma, mb) = (a.manifest.unwrap(), b.manifest.unwrap());
    assert_eq!(ma.offsets, mb.offsets);
    // The same bytes: every data and view file of both lakes.
    assert_eq!(ma.partitions, mb.partitions);
    for partition in ma.partitions.values() {
        let files = partition
            .data_files
            .iter()
            .map(|d| d.path.clone())
            .chain(partition.views.values().cloned());
        for path in files {
            let path = object_store::path::Path::from(path.as_str());
            assert_eq!(
                clean.ctx.lake.get(&path).await.unwrap(),
                crashy.ctx.lake.get(&path).await.unwrap(),
                "{path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_cannot_commit_the_same_version() {
    let f = fixture().await;
    append(&f.log, &events(5, 500)).await;
    run_once(&f.ctx).await.unwrap();
    let mut latest = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    latest.version += 1;
    manifest::commit(&f.ctx.lake, &latest).await.unwrap();
    let conflict = manifest::commit(&f.ctx.lake, &latest).await.unwrap_err();
    assert!(
        matches!(conflict, CommitError::Conflict(v) if v == latest.version),
        "{conflict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_event_is_healed_by_the_next_run() {
    let f = fixture().await;
    let on_time = events(6, 3000);
    append(&f.log, &on_time).await;
    run_once(&f.ctx).await.unwrap();
    let before = loaded(&f.ctx.lake).await;
    // A click for the first minute, arriving after that hour was compacted.
    let mut late = Event::bare(
        "late-click-1",
        lambda_events::EventType::Click,
        START_MS + 1_000,
    );
    late.user_id = Some("user-late".into());
    late.campaign_id = Some("spring-sale".into());
    // The speed layer, past that minute, puts it in the late ledger.
    let mut speed = SpeedState::new(60_000, 24 * 3_600_000);
    on_time.iter().for_each(|e| {
        speed.apply(e);
    });
    assert_eq!(speed.apply(&late), lambda_speed::Applied::Late);
    append(&f.log, &[late]).await;
    let report = run_once(&f.ctx).await.unwrap();
    assert_eq!(report.stats.events_written, 1);
    assert_eq!(report.stats.hours_recomputed, 1);
    let after = loaded(&f.ctx.lake).await;
    let clicks = |v: &BatchViews| {
        v.buckets
            .get(&START_MS)
            .and_then(|b| b.funnel.get("spring-sale"))
            .map_or(0, |c| c.clicks)
    };
    assert_eq!(
        clicks(&after),
        clicks(&before) + 1,
        "the batch view of the first minute now counts the late click"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_runs_write_and_read_a_real_s3_server() {
    let moto = lambda_testkit::Moto::start("lake-test");
    let f = fixture().await;
    let options = moto.s3_options();
    let cache = tempfile::tempdir().unwrap();
    let lake =
        LakeWriter::open_with_options("s3://lake-test/pipeline", options, cache.path()).unwrap();
    let ctx = RunContext {
        lake: lake.clone(),
        ..f.ctx.clone()
    };

    let events = events(7, 3000);
    append(&f.log, &events).await;
    let report = run_once(&ctx).await.unwrap();
    assert!(report.committed && report.stats.events_written > 0);
    let views = loaded(&lake).await;
    assert_same_views(&views.buckets, &speed_views(&events));

    // The objects are on the S3 server, under the prefix.
    let listing = reqwest::get(format!(
        "{}/lake-test?list-type=2&prefix=pipeline/",
        moto.endpoint
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        listing.contains("pipeline/manifests/00000000000000000001.json"),
        "{listing}"
    );
    assert!(
        listing.contains("pipeline/master/funnel-events/date="),
        "{listing}"
    );

    // The conditional put holds on S3 too: one version, one writer.
    let mut next = manifest::latest(&lake).await.unwrap().unwrap();
    next.version += 1;
    manifest::commit(&lake, &next).await.unwrap();
    let conflict = manifest::commit(&lake, &next).await.unwrap_err();
    assert!(matches!(conflict, CommitError::Conflict(_)), "{conflict}");
}

/// The master dataset and the views as they lie in the lake, read by pyarrow
/// (`read_lake.py`, none of our code): typed columns, zstd, one row per
/// distinct event, the counts of the events sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_reads_as_it_is_with_pyarrow() {
    let f = fixture().await;
    let sent = events(9, 4000);
    append(&f.log, &sent).await;
    run_once(&f.ctx).await.unwrap();
    // A second run adds a second file to some hours.
    let more = events(10, 1000);
    append(&f.log, &more).await;
    run_once(&f.ctx).await.unwrap();

    let python = lambda_testkit::venv().join("bin/python");
    let output = std::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/read_lake.py"))
        .arg(f._dir.path().join("lake"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    // What was sent, by topic: distinct events by type, revenue.
    let mut expected: BTreeMap<&str, (BTreeMap<String, u64>, i64)> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for e in sent.iter().chain(&more) {
        if seen.insert(e.event_id.clone()) {
            let slot = expected.entry(e.topic().name()).or_default();
            *slot.0.entry(e.event_type.as_str().to_string()).or_default() += 1;
            slot.1 += e.amount_cents.unwrap_or(0);
        }
    }
    for (topic, (by_type, revenue)) in &expected {
        let t = &found["topics"][topic];
        let rows: u64 = by_type.values().sum();
        assert_eq!(t["rows"], rows, "{topic}");
        assert_eq!(t["distinct_ids"], rows, "{topic}: one row per event");
        assert_eq!(t["by_type"], serde_json::json!(by_type), "{topic}");
        assert_eq!(t["revenue_cents"], *revenue, "{topic}");
    }

    let files = found["files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["kind"] == "view"));
    let hours_with_two_files = files
        .iter()
        .filter(|f| f["kind"] == "data" && f["path"].as_str().unwrap().ends_with("2.parquet"))
        .count();
    assert!(hours_with_two_files > 0, "the second run wrote files");
    for file in files {
        assert_eq!(file["codecs"], serde_json::json!(["ZSTD"]), "{file}");
        assert!(file["rows"].as_u64() > Some(0), "{file}");
        if file["kind"] == "data" {
            assert_eq!(file["rows"], file["manifest_rows"], "{file}");
            let schema = file["schema"].as_array().unwrap();
            let column = |name: &str| {
                schema
                    .iter()
                    .find(|c| c[0] == name)
                    .unwrap_or_else(|| panic!("no column {name} in {file}"))
                    .clone()
            };
            assert_eq!(
                column("event_id"),
                serde_json::json!(["event_id", "string", false])
            );
            assert_eq!(
                column("ts"),
                serde_json::json!(["ts", "timestamp[ms, tz=UTC]", false])
            );
            assert_eq!(
                column("log_offset"),
                serde_json::json!(["log_offset", "int64", false])
            );
            if file["path"]
                .as_str()
                .unwrap()
                .starts_with("master/funnel-events/")
            {
                assert_eq!(column("amount_cents")[1], "int64");
                assert_eq!(column("render_ms")[1], "double");
            } else {
                assert_eq!(column("value")[1], "double");
                assert_eq!(column("device_id")[1], "string");
            }
        }
    }
}

/// Every event id in the master dataset, with how often it is there.
async fn stored_ids(lake: &Lake) -> BTreeMap<String, usize> {
    let manifest = manifest::latest(lake).await.unwrap().unwrap();
    let mut ids = BTreeMap::new();
    for partition in manifest.partitions.values() {
        for file in &partition.data_files {
            let bytes = lake
                .get(&object_store::path::Path::from(file.path.as_str()))
                .await
                .unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                let column = batch.column_by_name("event_id").unwrap();
                let column = column
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap();
                for id in column.iter().flatten() {
                    *ids.entry(id.to_string()).or_default() += 1;
                }
            }
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_with_another_time_is_the_same_event() {
    let f = fixture().await;
    let sent = events(11, 2000);
    append(&f.log, &sent).await;
    run_once(&f.ctx).await.unwrap();
    let before = loaded(&f.ctx.lake).await;
    // The same ids again, three hours later: another hour partition.
    let moved: Vec<Event> = sent
        .iter()
        .take(50)
        .map(|e| {
            let mut e = e.clone();
            e.ts += 3 * 3_600_000;
            e
        })
        .collect();
    append(&f.log, &moved).await;
    let report = run_once(&f.ctx).await.unwrap();
    assert_eq!(report.stats.events_written, 0, "{report:?}");
    assert_eq!(report.stats.duplicates, 50);
    assert_eq!(loaded(&f.ctx.lake).await.buckets, before.buckets);
    assert!(stored_ids(&f.ctx.lake).await.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_hours_are_compacted_and_old_files_deleted() {
    let f = fixture().await;
    // Five runs, each adding events to the same hours (resends included).
    let all = events(12, 6000);
    let mut deleted = 0;
    for chunk in all.chunks(1200) {
        append(&f.log, chunk).await;
        deleted += run_once(&f.ctx).await.unwrap().stats.files_deleted;
    }
    let latest = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    let boundary = latest.boundary_ms.unwrap();
    let mut compacted = 0;
    for (key, partition) in &latest.partitions {
        let complete = partition.hour_start_ms + 3_600_000 <= boundary;
        if complete {
            assert_eq!(partition.data_files.len(), 1, "{key}: one file");
            compacted += partition.data_files[0].path.ends_with("-compacted.parquet") as usize;
        }
    }
    assert!(compacted > 0, "some hour was compacted: {latest:#?}");
    // Same answers as the speed layer's code over everything sent, every
    // event once.
    let views = loaded(&f.ctx.lake).await;
    assert_same_views(&views.buckets, &speed_views(&all));
    let ids = stored_ids(&f.ctx.lake).await;
    let distinct: std::collections::HashSet<&str> =
        all.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), distinct.len());
    assert!(ids.values().all(|n| *n == 1));
    // Files no manifest of the newest three needs are gone; those they
    // need are all there.
    let mut needed = std::collections::HashSet::new();
    for v in latest.version - 2..=latest.version {
        let m = manifest::read(&f.ctx.lake, v).await.unwrap().unwrap();
        needed.extend(m.files().map(str::to_string));
    }
    // Older manifests are deleted with their files (they used to pile up).
    let manifests = f
        .ctx
        .lake
        .list(&object_store::path::Path::from("manifests"))
        .await
        .unwrap();
    assert_eq!(manifests.len(), 3, "{manifests:?}");
    let mut present = std::collections::HashSet::new();
    for prefix in ["master", "views", "index"] {
        for path in f
            .ctx
            .lake
            .list(&object_store::path::Path::from(prefix))
            .await
            .unwrap()
        {
            present.insert(path.to_string());
        }
    }
    // Exactly: a file is deleted three runs after the last manifest that named it.
    assert_eq!(present, needed);
    assert!(deleted > 0, "replaced view and data files were deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_from_before_the_index_gets_one() {
    let f = fixture().await;
    let sent = events(13, 2000);
    append(&f.log, &sent).await;
    run_once(&f.ctx).await.unwrap();
    // Rewrite the lake's history: a manifest without an id index, as older
    // versions wrote.
    let mut old = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    old.id_index.clear();
    old.version += 1;
    manifest::commit(&f.ctx.lake, &old).await.unwrap();
    // A resend of everything, moved to another hour: still known.
    let moved: Vec<Event> = sent
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.ts += 5 * 3_600_000;
            e
        })
        .collect();
    append(&f.log, &moved).await;
    let report = run_once(&f.ctx).await.unwrap();
    assert_eq!(report.stats.events_written, 0, "{report:?}");
    let latest = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    for topic in Topic::ALL {
        let files = &latest.id_index[topic.name()];
        assert_eq!(files.len(), 1, "built from the data files");
        assert!(files[0].path.ends_with("-merged.parquet"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_recomputes_an_interval_and_swaps_it_in_at_once() {
    let f = fixture().await;
    let sent = events(14, 3000);
    append(&f.log, &sent).await;
    run_once(&f.ctx).await.unwrap();
    let before = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    let expected = speed_views(&sent);

    // Break one hour's funnel view: point it at another hour's file, as a
    // wrong view definition might have produced.
    let mut keys = before
        .partitions
        .iter()
        .filter(|(_, p)| p.topic == "funnel-events")
        .map(|(k, p)| (k.clone(), p.hour_start_ms));
    let (broken_key, broken_hour) = keys.next().unwrap();
    let (other_key, _) = keys.next().expect("two funnel hours");
    let mut broken = before.clone();
    broken.version += 1;
    let wrong = broken.partitions[&other_key].views["funnel"].clone();
    broken
        .partitions
        .get_mut(&broken_key)
        .unwrap()
        .views
        .insert("funnel".into(), wrong);
    manifest::commit(&f.ctx.lake, &broken).await.unwrap();
    let loaded_broken = loaded(&f.ctx.lake).await;
    let hour_funnel = |buckets: &BTreeMap<i64, BucketViews>| {
        buckets
            .range(broken_hour..broken_hour + 3_600_000)
            .map(|(start, b)| (*start, b.funnel.clone()))
            .filter(|(_, funnel)| !funnel.is_empty())
            .collect::<Vec<_>>()
    };
    assert!(!hour_funnel(&expected).is_empty());
    assert_ne!(
        hour_funnel(&loaded_broken.buckets),
        hour_funnel(&expected),
        "the broken hour answers wrongly"
    );

    // Backfill that hour: recomputed from the master dataset.
    let mut calls = Vec::new();
    let report = lambda_batch::backfill(
        &f.ctx.lake,
        &f.ctx.engine,
        broken_hour,
        broken_hour + 3_600_000,
        |done, total| calls.push((done, total)),
    )
    .await
    .unwrap();
    assert_eq!(report.version, broken.version + 1);
    // The hour of each topic that overlaps.
    let overlapping = before
        .partitions
        .values()
        .filter(|p| p.hour_start_ms == broken_hour)
        .count() as u64;
    assert_eq!(report.hours, overlapping);
    assert_eq!(calls.last(), Some(&(overlapping, overlapping)));
    let after = manifest::latest(&f.ctx.lake).await.unwrap().unwrap();
    assert_eq!(after.version, report.version);
    assert_eq!(after.offsets, before.offsets, "the log is not read");
    assert_eq!(after.boundary_ms, before.boundary_ms);
    assert_eq!(after.id_index, before.id_index);
    for (key, partition) in &after.partitions {
        let recomputed = partition.hour_start_ms == broken_hour;
        for (view, path) in &partition.views {
            assert_eq!(
                path.ends_with(&format!("v{:010}-backfill.parquet", report.version)),
                recomputed,
                "{key} {view}: {path}"
            );
        }
    }
    // The same bytes as the run computed, and the right answers again.
    let funnel_path = |m: &manifest::Manifest| m.partitions[&broken_key].views["funnel"].clone();
    assert_eq!(
        f.ctx
            .lake
            .get(&object_store::path::Path::from(funnel_path(&after)))
            .await
            .unwrap(),
        f.ctx
            .lake
            .get(&object_store::path::Path::from(funnel_path(&before)))
            .await
            .unwrap()
    );
    assert_same_views(&loaded(&f.ctx.lake).await.buckets, &expected);

    let error = lambda_batch::backfill(&f.ctx.lake, &f.ctx.engine, 10, 10, |_, _| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--from"), "{error}");
}
