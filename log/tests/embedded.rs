//! The embedded backend: the conformance suite, plus what only a local file
//! log can show: reopening, recovery from a torn segment, refusal of a corrupt
//! one, group offsets past the end, rolling and retention.

use std::sync::Arc;
use std::time::Duration;

use lambda_log::conformance::{self, read_all};
use lambda_log::{
    EmbeddedConfig, EmbeddedLog, EventLog, FetchPosition, LogError, MAX_RECORD_BYTES, Record,
    TopicRetention,
};

/// The default settings with segments of `bytes` (small, so tests roll them).
fn with_segments_of(bytes: u64) -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: bytes,
        ..EmbeddedConfig::default()
    }
}

fn record(key: &str, value: String, timestamp_ms: i64) -> Record {
    Record::keyed(key, value, timestamp_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    conformance::run_all(Arc::new(log), "conf").await;
}

/// On a current-thread runtime the embedded log cannot read in place: it
/// reads values on the blocking pool and appends them on the task.
#[tokio::test(flavor = "current_thread")]
async fn fetch_values_on_a_current_thread_runtime_reads_what_fetch_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    conformance::fetch_values_reads_what_fetch_reads(&log, "current").await;
}

/// A fetch of values across segments, from the middle of one, keeps every
/// record once, in order, and stops at the span's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_values_crosses_segments_and_stops_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), small_segments())
        .await
        .unwrap();
    log.create_topic("t", 1).await.unwrap();
    let values = append_records(&log, "t", 1000).await;
    assert!(segment_files(&dir.path().join("t").join("0")).len() > 2);
    for (start, end, fetch_max) in [(0, 1000, 5000), (7, 950, 16), (123, 124, 5), (999, 1000, 1)] {
        let mut span = lambda_log::ValueSpan {
            position: FetchPosition {
                topic: "t".into(),
                partition: 0,
                offset: start,
            },
            end,
            records: Vec::new(),
        };
        while span.position.offset < end {
            let read = log
                .fetch_values(&mut [&mut span], fetch_max, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(
                read.records > 0 && read.records <= fetch_max,
                "{start}..{end}"
            );
        }
        let offsets: Vec<u64> = span.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (start..end).collect::<Vec<_>>(), "{start}..{end}");
        for record in &span.records {
            assert_eq!(record.value, values[record.offset as usize].as_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_records_topics_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .unwrap();
        log.create_topic("t", 2).await.unwrap();
        let records = (0..50)
            .map(|i| record(&format!("k{i}"), format!("v{i}"), i))
            .collect();
        log.append("t", records).await.unwrap();
        log.commit("g", "t", &[(0, 3)]).await.unwrap();
        log.close().await.unwrap();
        assert!(matches!(
            log.append("t", vec![record("k", "x".into(), 0)]).await,
            Err(LogError::Closed)
        ));
    }
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    assert_eq!(log.partition_count("t").await.unwrap(), 2);
    assert_eq!(read_all(&log, "t").await.len(), 50);
    assert_eq!(log.committed("g", "t").await.unwrap().get(&0), Some(&3));
    // Appends carry on after the recovered end.
    let positions = log
        .append("t", vec![record("k0", "after".into(), 0)])
        .await
        .unwrap();
    let ranges = log.ranges("t").await.unwrap();
    assert_eq!(
        positions[0].offset + 1,
        ranges[positions[0].partition as usize].end
    );
}

/// Cuts the last segment in the middle of a record at many points: reopening
/// finds every complete record before the cut and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_torn_write_keeps_exactly_the_complete_records() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<String> = (0..40)
        .map(|i| format!("value-{i}-{}", "x".repeat(i * 3)))
        .collect();
    {
        let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .unwrap();
        log.create_topic("t", 1).await.unwrap();
        for value in &values {
            log.append("t", vec![record("k", value.clone(), 0)])
                .await
                .unwrap();
        }
        log.close().await.unwrap();
    }
    let segment = dir.path().join("t/0/00000000000000000000.log");
    let full = std::fs::read(&segment).unwrap();
    // Frame boundaries, from the frame lengths.
    let mut boundaries = vec![0usize];
    while *boundaries.last().unwrap() < full.len() {
        let at = *boundaries.last().unwrap();
        let len = u32::from_le_bytes(full[at..at + 4].try_into().unwrap()) as usize;
        boundaries.push(at + 8 + len);
    }
    assert_eq!(boundaries.len(), values.len() + 1);
    for record_idx in [0usize, 1, 17, 39] {
        for into_record in [1usize, 4, 9, 20] {
            let (start, end) = (boundaries[record_idx], boundaries[record_idx + 1]);
            let cut = (start + into_record).min(end - 1);
            std::fs::write(&segment, &full[..cut]).unwrap();
            let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
                .await
                .unwrap();
            let read: Vec<String> = read_all(&log, "t")
                .await
                .into_iter()
                .map(|s| String::from_utf8(s.record.value.to_vec()).unwrap())
                .collect();
            assert_eq!(
                read,
                values[..record_idx],
                "cut {into_record} bytes into record {record_idx}"
            );
            assert_eq!(
                std::fs::metadata(&segment).unwrap().len() as usize,
                start,
                "torn tail removed"
            );
            // The next append goes right after the last complete record.
            let positions = log
                .append("t", vec![record("k", "again".into(), 0)])
                .await
                .unwrap();
            assert_eq!(positions[0].offset, record_idx as u64);
            log.close().await.unwrap();
        }
    }
    // A flipped byte in the last record is caught by the checksum, too.
    let mut flipped = full.clone();
    let last = boundaries[values.len() - 1];
    flipped[last + 20] ^= 0xff;
    std::fs::write(&segment, &flipped).unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    assert_eq!(read_all(&log, "t").await.len(), values.len() - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_roll_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_segments_of(1024);
    let log = EmbeddedLog::open(dir.path(), config.clone()).await.unwrap();
    log.create_topic("t", 1).await.unwrap();
    for chunk in 0..10 {
        let records = (0..20)
            .map(|i| record("k", format!("{chunk}-{i}-{}", "y".repeat(40)), 0))
            .collect();
        log.append("t", records).await.unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("t/0")).unwrap().count();
    assert!(segments > 5, "1 KiB segments roll: {segments}");
    let all = read_all(&log, "t").await;
    assert_eq!(all.len(), 200);
    // A read from the middle starts at the exact offset.
    let position = FetchPosition {
        topic: "t".into(),
        partition: 0,
        offset: 137,
    };
    let got = log
        .fetch(&[position], 5, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|s| s.offset).collect::<Vec<_>>(),
        [137, 138, 139, 140, 141]
    );
    log.close().await.unwrap();
    // Reopen across many segments.
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    assert_eq!(read_all(&log, "t").await.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_and_time_drops_oldest_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let config = EmbeddedConfig {
        segment_bytes: 1024,
        retention_ms: Some(3_600_000),
        retention_bytes: None,
        retention_guards: Vec::new(),
        ..EmbeddedConfig::default()
    };
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    log.create_topic("t", 1).await.unwrap();
    // Two hours old, then fresh.
    for i in 0..60 {
        log.append(
            "t",
            vec![record(
                "k",
                format!("old-{i}-{}", "z".repeat(30)),
                now - 7_200_000,
            )],
        )
        .await
        .unwrap();
    }
    for i in 0..60 {
        log.append(
            "t",
            vec![record("k", format!("new-{i}-{}", "z".repeat(30)), now)],
        )
        .await
        .unwrap();
    }
    let dropped = log.enforce_retention().await.unwrap();
    assert!(dropped > 0);
    let range = log.ranges("t").await.unwrap()[0];
    assert_eq!(range.start, dropped);
    let remaining = read_all(&log, "t").await;
    assert!(remaining.iter().all(|s| s.offset >= dropped));
    // Every fresh record survives; old ones only where they share a segment with fresh ones.
    let fresh = remaining
        .iter()
        .filter(|s| s.record.value.starts_with(b"new-"))
        .count();
    assert_eq!(fresh, 60);
    // Reading below the start is out of range.
    let position = FetchPosition {
        topic: "t".into(),
        partition: 0,
        offset: 0,
    };
    assert!(matches!(
        log.fetch(&[position], 1, Duration::ZERO).await,
        Err(LogError::OffsetOutOfRange { start, .. }) if start == dropped
    ));
    log.close().await.unwrap();

    // Size: keep at most ~3 KiB per partition.
    let config = EmbeddedConfig {
        segment_bytes: 1024,
        retention_ms: None,
        retention_bytes: Some(3 * 1024),
        retention_guards: Vec::new(),
        ..EmbeddedConfig::default()
    };
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    log.enforce_retention().await.unwrap();
    let bytes: u64 = std::fs::read_dir(dir.path().join("t/0"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        bytes <= 3 * 1024 + 1024,
        "partition shrunk to the size limit plus the active segment: {bytes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_the_guard_groups() {
    let dir = tempfile::tempdir().unwrap();
    let old = chrono::Utc::now().timestamp_millis() - 7_200_000;
    let config = EmbeddedConfig {
        segment_bytes: 1024,
        retention_ms: Some(3_600_000),
        retention_bytes: Some(1),
        retention_guards: vec!["batch-layer".into()],
        ..EmbeddedConfig::default()
    };
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    log.create_topic("t", 1).await.unwrap();
    for i in 0..100 {
        log.append(
            "t",
            vec![record("k", format!("old-{i}-{}", "z".repeat(30)), old)],
        )
        .await
        .unwrap();
    }
    // Every segment is expired and over the size limit, but the batch layer
    // never committed: nothing goes.
    assert_eq!(log.enforce_retention().await.unwrap(), 0);
    assert_eq!(log.ranges("t").await.unwrap()[0].start, 0);
    // Committed up to 40: only segments wholly below 40 go.
    log.commit("batch-layer", "t", &[(0, 40)]).await.unwrap();
    let dropped = log.enforce_retention().await.unwrap();
    assert!(dropped > 0 && dropped <= 40, "{dropped}");
    let start = log.ranges("t").await.unwrap()[0].start;
    assert_eq!(start, dropped);
    let remaining = read_all(&log, "t").await;
    assert_eq!(remaining.first().map(|s| s.offset), Some(start));
    assert!(
        remaining.iter().any(|s| s.offset == 40),
        "offset 40 is kept"
    );
    // Another group's commits do not count.
    log.commit("someone-else", "t", &[(0, 100)]).await.unwrap();
    assert_eq!(log.enforce_retention().await.unwrap(), 0);
    log.close().await.unwrap();
}

/// A topic with a retention of its own (`dead-letter`) is trimmed by age and
/// size though the guard group never reads it, while the guarded topics
/// still wait for the guard. (`dead-letter` used to grow without bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_its_own_retention_is_trimmed_without_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let config = EmbeddedConfig {
        segment_bytes: 1024,
        retention_ms: Some(3_600_000),
        retention_bytes: Some(1),
        retention_guards: vec!["batch-layer".into()],
        topic_retention: [(
            "dead-letter".to_string(),
            TopicRetention {
                retention_ms: Some(3_600_000),
                retention_bytes: Some(4 * 1024),
            },
        )]
        .into(),
    };
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    log.create_topic("events", 1).await.unwrap();
    log.create_topic("dead-letter", 1).await.unwrap();
    let value = |i: usize| format!("{i}-{}", "z".repeat(40));
    for topic in ["events", "dead-letter"] {
        for i in 0..100 {
            // Two hours old: past the time limit of both.
            log.append(topic, vec![record("k", value(i), now - 7_200_000)])
                .await
                .unwrap();
        }
    }
    let dropped = log.enforce_retention().await.unwrap();
    assert!(dropped > 0);
    assert_eq!(log.ranges("events").await.unwrap()[0].start, 0, "guarded");
    assert_eq!(log.ranges("dead-letter").await.unwrap()[0].start, dropped);
    // Only the active segment is left of the old records.
    let kept = read_all(&log, "dead-letter").await;
    assert!(kept.len() < 30, "{} old records kept", kept.len());

    // By size: fresh records, over 4 KiB; the oldest closed segments go
    // until the partition fits (the active segment always stays).
    for i in 0..200 {
        log.append("dead-letter", vec![record("k", value(i), now)])
            .await
            .unwrap();
    }
    log.enforce_retention().await.unwrap();
    let bytes: u64 = std::fs::read_dir(dir.path().join("dead-letter/0"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        (2 * 1024..=4 * 1024 + 1024).contains(&bytes),
        "{bytes} bytes kept: the limit, less at most a segment, plus the active one"
    );
    let kept = read_all(&log, "dead-letter").await;
    assert_eq!(kept.last().unwrap().offset, 299, "the newest are kept");
    log.close().await.unwrap();
}

/// A segment left full at close rolls on the first append after a reopen:
/// that group has no frames of its own for the full segment, whose file the
/// new writer has not opened (it used to panic there, and every later
/// append, and every restart, failed with it; found in review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_segment_rolls_on_the_first_append_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_segments_of(1024);
    let log = EmbeddedLog::open(dir.path(), config.clone()).await.unwrap();
    log.create_topic("t", 1).await.unwrap();
    log.append("t", vec![record("k", "x".repeat(1000), 0)])
        .await
        .unwrap();
    log.close().await.unwrap();
    assert_eq!(segment_files(&dir.path().join("t/0")).len(), 1);

    let log = EmbeddedLog::open(dir.path(), config.clone()).await.unwrap();
    let positions = log
        .append("t", vec![record("k", "second".into(), 0)])
        .await
        .unwrap();
    assert_eq!(positions[0].offset, 1);
    assert_eq!(segment_files(&dir.path().join("t/0")).len(), 2, "rolled");
    log.append("t", vec![record("k", "third".into(), 0)])
        .await
        .unwrap();
    assert_eq!(read_all(&log, "t").await.len(), 3);
    log.close().await.unwrap();
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    assert_eq!(read_all(&log, "t").await.len(), 3);
}

/// Appends `n` records with one key (so one partition) in group commits of 50.
async fn append_records(log: &EmbeddedLog, topic: &str, n: usize) -> Vec<String> {
    let values: Vec<String> = (0..n)
        .map(|i| format!("record-{i}-{}", "x".repeat(i % 40)))
        .collect();
    for chunk in values.chunks(50) {
        let records = chunk.iter().map(|v| record("k", v.clone(), 0)).collect();
        log.append(topic, records).await.unwrap();
    }
    values
}

/// A partition's segment files, oldest first.
fn segment_files(partition_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(partition_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Where each frame of a segment starts, plus the end of the last one.
fn frame_boundaries(bytes: &[u8]) -> Vec<usize> {
    let mut boundaries = vec![0usize];
    while *boundaries.last().unwrap() < bytes.len() {
        let at = *boundaries.last().unwrap();
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        boundaries.push(at + 8 + len);
    }
    assert_eq!(*boundaries.last().unwrap(), bytes.len(), "whole frames");
    boundaries
}

/// The base offset a segment's file name encodes.
fn base_offset(segment: &std::path::Path) -> u64 {
    segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Writes 2000 records into many small segments and closes the log.
async fn many_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let log = EmbeddedLog::open(dir, small_segments()).await.unwrap();
    log.create_topic("t", 1).await.unwrap();
    append_records(&log, "t", 2000).await;
    log.close().await.unwrap();
    let segments = segment_files(&dir.join("t/0"));
    assert!(segments.len() >= 5, "{} segments", segments.len());
    segments
}

fn small_segments() -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 16 * 1024,
        ..EmbeddedConfig::default()
    }
}

/// Flips one byte in the middle of `segment` and returns (start of the frame
/// it hit, the next frame's start, that frame's offset).
fn flip_middle_byte(segment: &std::path::Path) -> (u64, u64, u64) {
    let mut bytes = std::fs::read(segment).unwrap();
    let boundaries = frame_boundaries(&bytes);
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(segment, &bytes).unwrap();
    let hit = boundaries.partition_point(|b| *b <= middle) - 1;
    assert!(hit + 2 < boundaries.len(), "frames follow the flipped one");
    (
        boundaries[hit] as u64,
        boundaries[hit + 1] as u64,
        base_offset(segment) + hit as u64 + 1,
    )
}

/// Asserts that opening the log fails with `Corrupt` at `position` of
/// `segment`, saying where valid records resume, and leaves the file as it was.
async fn assert_refuses_to_open(
    dir: &std::path::Path,
    segment: &std::path::Path,
    (position, resume_at, resume_offset): (u64, u64, u64),
) {
    let before = std::fs::read(segment).unwrap();
    let err = EmbeddedLog::open(dir, small_segments())
        .await
        .expect_err("a corrupt segment refuses to open");
    let LogError::Corrupt {
        path,
        position: found,
        reason,
    } = &err
    else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(path, &segment.display().to_string());
    assert_eq!(*found, position, "{err}");
    assert!(
        reason.contains(&format!(
            "valid records follow: offset {resume_offset} resumes at byte {resume_at}"
        )),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "segment {}: corrupt record at byte {position}: ",
            segment.display()
        )),
        "{message}"
    );
    assert_eq!(
        std::fs::read(segment).unwrap(),
        before,
        "nothing is cut from a corrupt segment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_older_segment_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let segments = many_segments(dir.path()).await;
    let older = &segments[2];
    let flipped = flip_middle_byte(older);
    assert_refuses_to_open(dir.path(), older, flipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_last_segment_with_records_after_it_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let segments = many_segments(dir.path()).await;
    let last = segments.last().unwrap();
    let flipped = flip_middle_byte(last);
    assert_refuses_to_open(dir.path(), last, flipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_every_record_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let segments = many_segments(dir.path()).await;
    let last = segments.last().unwrap();
    let full = std::fs::read(last).unwrap();
    let boundaries = frame_boundaries(&full);
    let n_last = boundaries.len() as u64 - 1;
    assert!(n_last >= 3, "the last segment holds {n_last} frames");
    let base = base_offset(last);
    let garbage: &[u8] = b"\x7f\x00\x00\x00\xde\xad\xbe\xef half-written frame, then noise";
    // (bytes of the last segment, records expected to survive)
    let torn_tails: Vec<(Vec<u8>, u64)> = vec![
        // Cut in the middle of the last frame.
        (
            full[..boundaries[boundaries.len() - 2] + 13].to_vec(),
            base + n_last - 1,
        ),
        // Cut in the middle of an earlier frame: everything after it is gone too.
        (full[..boundaries[1] + 30].to_vec(), base + 1),
        // Garbage after the last complete frame.
        ([full.as_slice(), garbage].concat(), base + n_last),
        // Zeroes after it (a file extended but not written).
        ([full.as_slice(), &[0u8; 512]].concat(), base + n_last),
        // A cut frame followed by garbage.
        (
            [&full[..boundaries[boundaries.len() - 2] + 9], garbage].concat(),
            base + n_last - 1,
        ),
    ];
    for (bytes, kept) in torn_tails {
        std::fs::write(last, &bytes).unwrap();
        let log = EmbeddedLog::open(dir.path(), small_segments())
            .await
            .unwrap();
        let read = read_all(&log, "t").await;
        assert_eq!(read.len() as u64, kept, "records before the tear");
        assert!(read.iter().enumerate().all(|(i, s)| s.offset == i as u64));
        let cut_at = boundaries[(kept - base) as usize];
        assert_eq!(
            std::fs::metadata(last).unwrap().len() as usize,
            cut_at,
            "torn tail cut at the last complete frame"
        );
        log.close().await.unwrap();
        std::fs::write(last, &full).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_offset_past_the_end_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "funnel-events";
    let config = EmbeddedConfig {
        retention_guards: vec!["batch".into()],
        retention_ms: Some(0),
        ..small_segments()
    };
    {
        let log = EmbeddedLog::open(dir.path(), config.clone()).await.unwrap();
        log.create_topic(topic, 1).await.unwrap();
        append_records(&log, topic, 2000).await;
        log.commit("batch", topic, &[(0, 2000)]).await.unwrap();
        log.close().await.unwrap();
    }
    // Restored from an older copy: the newest two segments are gone.
    let segments = segment_files(&dir.path().join(topic).join("0"));
    let end = base_offset(&segments[segments.len() - 2]);
    for segment in &segments[segments.len() - 2..] {
        std::fs::remove_file(segment).unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    assert_eq!(log.ranges(topic).await.unwrap()[0].end, end);
    let err = log
        .committed("batch", topic)
        .await
        .expect_err("committed past the end");
    assert!(
        matches!(
            &err,
            LogError::GroupOffsetPastEnd {
                group,
                topic: found_topic,
                partition: 0,
                committed: 2000,
                end: found_end,
            } if group == "batch" && found_topic == topic && *found_end == end
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "group batch topic funnel-events partition 0: committed offset 2000 is past the \
             partition's end {end} (the log lost records, or was restored from an older copy)"
        )
    );
    // Fetching from there is out of range at once, not an empty wait.
    let position = FetchPosition {
        topic: topic.into(),
        partition: 0,
        offset: 2000,
    };
    assert!(matches!(
        log.fetch(&[position], 10, Duration::from_secs(30)).await,
        Err(LogError::OffsetOutOfRange { offset: 2000, end: e, .. }) if e == end
    ));
    // Retention does not trust the guard either: it deletes nothing.
    assert!(matches!(
        log.enforce_retention().await,
        Err(LogError::GroupOffsetPastEnd { .. })
    ));
    assert_eq!(log.ranges(topic).await.unwrap()[0].start, 0);
    // Once the group commits a real position again, it reads back.
    log.commit("batch", topic, &[(0, end)]).await.unwrap();
    assert_eq!(
        log.committed("batch", topic).await.unwrap().get(&0),
        Some(&end)
    );
    log.close().await.unwrap();
}

/// A read starts where the last one ended (the segment remembers it), and a
/// read from any other offset — before it, after it, in another segment —
/// still gets exactly the records from that offset on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_any_offset_after_a_read_get_exactly_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = with_segments_of(16 * 1024);
    let log = EmbeddedLog::open(dir.path(), config).await.unwrap();
    log.create_topic("t", 1).await.unwrap();
    let records = (0..1000)
        .map(|i| record("k", format!("value-{i:04}"), i))
        .collect();
    log.append("t", records).await.unwrap();
    let fetch = |offset: u64, max: usize| {
        let log = &log;
        async move {
            let position = FetchPosition {
                topic: "t".into(),
                partition: 0,
                offset,
            };
            log.fetch(&[position], max, Duration::from_millis(10))
                .await
                .unwrap()
        }
    };
    for (offset, max) in [
        (0, 100),
        (100, 100),
        (37, 10),
        (200, 1),
        (201, 300),
        (150, 5),
        (999, 10),
        (501, 499),
        (64, 64),
        (128, 1),
    ] {
        let got = fetch(offset, max).await;
        let expected: Vec<u64> = (offset..(offset + max as u64).min(1000)).collect();
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            expected,
            "from {offset}"
        );
        for r in &got {
            assert_eq!(
                r.record.value,
                format!("value-{:04}", r.offset).into_bytes()
            );
        }
    }
}

/// A fetch reads a segment in chunks of at most 64 KiB, and a record read
/// shares its chunk: records of every size up to the limit — some far
/// longer than a chunk, some cut by a chunk's end — read back whole and
/// in order, however many a fetch asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_longer_than_a_read_and_cut_by_one_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), with_segments_of(4 * 1024 * 1024))
        .await
        .unwrap();
    log.create_topic("t", 1).await.unwrap();
    let sizes = [
        1,
        5_000,
        70_000,
        200_000,
        63_000,
        65_536,
        10,
        // The largest a record may be, its one-byte key included.
        MAX_RECORD_BYTES - 1,
        3,
    ];
    let values: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let size = sizes[i % sizes.len()];
            let mut value = format!("{i}:").into_bytes();
            value.resize(size.max(value.len()), b'a' + (i % 26) as u8);
            value.truncate(size.max(1));
            value
        })
        .collect();
    for value in &values {
        let record = Record::keyed("k", value.clone(), 0);
        log.append("t", vec![record]).await.unwrap();
    }
    for max in [1, 3, 1000] {
        let mut offset = 0;
        while offset < values.len() as u64 {
            let position = FetchPosition {
                topic: "t".into(),
                partition: 0,
                offset,
            };
            let got = log
                .fetch(&[position], max, Duration::from_millis(10))
                .await
                .unwrap();
            assert!(!got.is_empty() && got.len() <= max, "max {max} at {offset}");
            for r in got {
                assert_eq!(r.offset, offset, "max {max}");
                assert_eq!(
                    r.record.value, values[offset as usize],
                    "offset {offset}, max {max}"
                );
                offset += 1;
            }
        }
    }
}

/// Reads go into buffers the log reuses once every record of their last
/// read is dropped: records kept from earlier reads (some kept, some
/// dropped, in every pattern of fetch sizes, with reads of other
/// partitions between them) still hold exactly their bytes.
#[tokio::test]
async fn records_kept_from_earlier_reads_keep_their_bytes_while_buffers_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
        .await
        .unwrap();
    log.create_topic("t", 2).await.unwrap();
    let values = append_records(&log, "t", 3_000).await;
    let by_offset: std::collections::HashMap<(u32, u64), Vec<u8>> = {
        let all = read_all(&log, "t").await;
        assert_eq!(all.len(), values.len());
        all.into_iter()
            .map(|r| ((r.partition, r.offset), r.record.value.to_vec()))
            .collect()
    };
    for max in [1, 7, 100, 4096] {
        let mut kept = Vec::new();
        let mut positions: Vec<FetchPosition> = (0..2)
            .map(|partition| FetchPosition {
                topic: "t".into(),
                partition,
                offset: 0,
            })
            .collect();
        let mut fetches = 0u64;
        loop {
            let got = log
                .fetch(&positions, max, Duration::from_millis(1))
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            fetches += 1;
            for r in got {
                let position = positions
                    .iter_mut()
                    .find(|p| p.partition == r.partition)
                    .unwrap();
                position.offset = r.offset + 1;
                // Every other fetch's records are kept; the rest dropped.
                if fetches % 2 == 0 {
                    kept.push(r);
                }
            }
        }
        for r in &kept {
            assert_eq!(
                r.record.value.as_ref(),
                by_offset[&(r.partition, r.offset)].as_slice(),
                "max {max}: {}/{} changed by the {fetches} fetches after it",
                r.partition,
                r.offset
            );
        }
        assert!(fetches >= 2 && !kept.is_empty(), "max {max}: {fetches}");
    }
}

/// A task that fetches in a loop from a partition that always has records
/// (a replay, the batch layer's read) still gives the runtime a turn: its
/// other futures — a shutdown, here a timer beside the loop in one
/// `select!` — run. (The read runs in place on the multi-threaded runtime;
/// without the turn each fetch was ready at once and the loop never let go.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_fetching_in_a_loop_still_sees_its_other_futures() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        EmbeddedLog::open(dir.path(), EmbeddedConfig::default())
            .await
            .unwrap(),
    );
    log.create_topic("t", 1).await.unwrap();
    let records = (0..10).map(|i| record("k", format!("v{i}"), i)).collect();
    log.append("t", records).await.unwrap();
    let position = FetchPosition {
        topic: "t".into(),
        partition: 0,
        offset: 0,
    };
    // Enough fetches to take far longer than the timer (seconds), so a loop
    // that never lets go ends first and the test fails instead of hanging.
    const FETCHES: u32 = 1_000_000;
    let winner = tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => "the timer",
        _ = async {
            for _ in 0..FETCHES {
                let got = log.fetch(std::slice::from_ref(&position), 5, Duration::ZERO).await.unwrap();
                assert_eq!(got.len(), 5);
            }
        } => "the fetch loop",
    };
    assert_eq!(winner, "the timer");
}
