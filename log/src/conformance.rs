//! The conformance suite every [`EventLog`] backend must pass: generic async
//! checks that panic with a message on failure. Each backend's test file
//! calls [`run_all`] with a fresh log and a unique topic prefix.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Bytes, EventLog, FetchPosition, LogError, Record, StoredRecord, ValueRecord, ValueSpan,
};

/// The topics [`run_all`] creates, as (suffix, partitions): a backend whose
/// test broker cannot create topics through the API creates these first.
pub const TOPICS: &[(&str, u32)] = &[
    ("create", 3),
    ("roundtrip", 2),
    ("order", 4),
    ("tail", 1),
    ("range", 1),
    ("groups", 2),
    ("group-end", 1),
    ("concurrent", 4),
    ("into", 1),
];

/// Runs every check against `log`, naming topics `<prefix>-<check>`.
pub async fn run_all(log: Arc<dyn EventLog>, prefix: &str) {
    create_topic_is_idempotent(log.as_ref(), &format!("{prefix}-create")).await;
    append_and_read_back(log.as_ref(), &format!("{prefix}-roundtrip")).await;
    keys_keep_partition_and_order(log.as_ref(), &format!("{prefix}-order")).await;
    fetch_waits_for_appends(Arc::clone(&log), &format!("{prefix}-tail")).await;
    fetch_beyond_end_is_an_error(log.as_ref(), &format!("{prefix}-range")).await;
    groups_commit_offsets(log.as_ref(), &format!("{prefix}-groups")).await;
    committed_past_end_is_an_error(log.as_ref(), &format!("{prefix}-group-end")).await;
    concurrent_appends_are_all_durable_once(Arc::clone(&log), &format!("{prefix}-concurrent"))
        .await;
    fetch_values_reads_what_fetch_reads(log.as_ref(), &format!("{prefix}-into")).await;
}

fn record(key: Option<&str>, value: &str) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        timestamp_ms: 1_700_000_000_000,
        headers: Vec::new(),
    }
}

/// Reads every record of `topic` from each partition's start to its end.
pub async fn read_all(log: &dyn EventLog, topic: &str) -> Vec<StoredRecord> {
    let ranges = log.ranges(topic).await.expect("ranges");
    let mut out = Vec::new();
    for (partition, range) in ranges.iter().enumerate() {
        let mut offset = range.start;
        while offset < range.end {
            let position = FetchPosition {
                topic: topic.into(),
                partition: partition as u32,
                offset,
            };
            let batch = log
                .fetch(&[position], 1000, Duration::from_secs(5))
                .await
                .expect("fetch");
            assert!(
                !batch.is_empty(),
                "{topic}/{partition}: nothing at {offset} below end {}",
                range.end
            );
            for stored in batch {
                assert_eq!(
                    stored.offset, offset,
                    "{topic}/{partition}: offsets are dense"
                );
                offset += 1;
                out.push(stored);
            }
        }
    }
    out
}

/// Creating a topic twice is fine; with another partition count it is an error.
pub async fn create_topic_is_idempotent(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 3).await.expect("create");
    log.create_topic(topic, 3).await.expect("create again");
    assert_eq!(log.partition_count(topic).await.expect("count"), 3);
    let err = log
        .create_topic(topic, 5)
        .await
        .expect_err("mismatched partitions");
    assert!(
        matches!(
            err,
            LogError::PartitionMismatch {
                existing: 3,
                requested: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        log.partition_count("no-such-topic-here").await,
        Err(LogError::UnknownTopic(_))
    ));
}

/// What is appended is read back byte for byte, with headers and null keys.
pub async fn append_and_read_back(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 2).await.expect("create");
    let mut with_headers = record(None, "no key, two headers");
    with_headers.headers = vec![
        ("reason".into(), b"bad field".to_vec()),
        ("line".into(), b"7".to_vec()),
    ];
    let records = vec![
        record(Some("a"), "first"),
        with_headers,
        record(Some("b"), ""),
    ];
    let positions = log.append(topic, records.clone()).await.expect("append");
    assert_eq!(positions.len(), 3);
    let stored = read_all(log, topic).await;
    assert_eq!(stored.len(), 3);
    for (record, position) in records.iter().zip(&positions) {
        let found = stored
            .iter()
            .find(|s| s.partition == position.partition && s.offset == position.offset)
            .expect("record at its acknowledged position");
        assert_eq!(&found.record.value, &record.value);
        assert_eq!(&found.record.key, &record.key);
        assert_eq!(&found.record.headers, &record.headers);
        assert_eq!(&*found.topic, topic);
    }
}

/// Records with one key go to one partition and keep their order.
pub async fn keys_keep_partition_and_order(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 4).await.expect("create");
    for round in 0..5 {
        let batch: Vec<Record> = (0..8)
            .map(|k| record(Some(&format!("key-{k}")), &format!("{k}:{round}")))
            .collect();
        log.append(topic, batch).await.expect("append");
    }
    let stored = read_all(log, topic).await;
    assert_eq!(stored.len(), 40);
    let mut partition_of: BTreeMap<Bytes, u32> = BTreeMap::new();
    let mut rounds_seen: BTreeMap<Bytes, Vec<String>> = BTreeMap::new();
    for s in &stored {
        let key = s.record.key.clone().expect("keyed");
        let partition = *partition_of.entry(key.clone()).or_insert(s.partition);
        assert_eq!(partition, s.partition, "one key, one partition");
        let value = String::from_utf8(s.record.value.to_vec()).expect("utf-8");
        rounds_seen
            .entry(key)
            .or_default()
            .push(value.split(':').nth(1).expect("round").to_string());
    }
    for (key, rounds) in rounds_seen {
        assert_eq!(
            rounds,
            ["0", "1", "2", "3", "4"],
            "order of {}",
            String::from_utf8_lossy(&key)
        );
    }
    let used: HashSet<u32> = partition_of.values().copied().collect();
    assert!(
        used.len() > 1,
        "8 keys should spread over more than one of 4 partitions"
    );
}

/// A fetch at the end waits for the next append and returns it; with none it returns empty.
pub async fn fetch_waits_for_appends(log: Arc<dyn EventLog>, topic: &str) {
    log.create_topic(topic, 1).await.expect("create");
    let at_end = vec![FetchPosition {
        topic: topic.into(),
        partition: 0,
        offset: 0,
    }];
    let empty = log
        .fetch(&at_end, 10, Duration::from_millis(200))
        .await
        .expect("fetch");
    assert!(empty.is_empty());
    let writer = {
        let log = Arc::clone(&log);
        let topic = topic.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            log.append(&topic, vec![record(None, "late arrival")])
                .await
                .expect("append");
        })
    };
    let started = std::time::Instant::now();
    let got = log
        .fetch(&at_end, 10, Duration::from_secs(20))
        .await
        .expect("fetch");
    assert_eq!(
        got.len(),
        1,
        "the fetch returns the record appended while it waited"
    );
    assert_eq!(got[0].record.value, &b"late arrival"[..]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "woken by the append, not the timeout"
    );
    writer.await.expect("writer task");
}

/// Reading past the end offset is an out-of-range error that names the range.
pub async fn fetch_beyond_end_is_an_error(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 1).await.expect("create");
    log.append(topic, vec![record(None, "only")])
        .await
        .expect("append");
    let beyond = vec![FetchPosition {
        topic: topic.into(),
        partition: 0,
        offset: 5,
    }];
    let err = log
        .fetch(&beyond, 10, Duration::from_millis(100))
        .await
        .expect_err("out of range");
    assert!(
        matches!(
            err,
            LogError::OffsetOutOfRange {
                offset: 5,
                end: 1,
                ..
            }
        ),
        "{err}"
    );
}

/// Committed offsets are per group and per partition.
pub async fn groups_commit_offsets(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 2).await.expect("create");
    // Unkeyed records go round robin: ten in each partition, so the offsets
    // committed below are within the partitions.
    let records = (0..20).map(|i| record(None, &format!("r{i}"))).collect();
    log.append(topic, records).await.expect("append");
    assert!(
        log.committed("group-a", topic)
            .await
            .expect("committed")
            .is_empty()
    );
    log.commit("group-a", topic, &[(0, 5), (1, 7)])
        .await
        .expect("commit");
    log.commit("group-a", topic, &[(1, 9)])
        .await
        .expect("commit");
    log.commit("group-b", topic, &[(0, 1)])
        .await
        .expect("commit");
    let a = log.committed("group-a", topic).await.expect("committed");
    assert_eq!(a, BTreeMap::from([(0, 5), (1, 9)]));
    let b = log.committed("group-b", topic).await.expect("committed");
    assert_eq!(b, BTreeMap::from([(0, 1)]));
}

/// A group's committed offset past its partition's end (the log lost
/// records, or was restored from an older copy) is an error naming the group,
/// topic and partition, not a position to resume from. A backend may refuse
/// such a commit up front instead; neither backend here does (Kafka accepts it).
pub async fn committed_past_end_is_an_error(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 1).await.expect("create");
    log.append(topic, vec![record(None, "one"), record(None, "two")])
        .await
        .expect("append");
    log.commit("group-ahead", topic, &[(0, 2)])
        .await
        .expect("commit at the end");
    assert_eq!(
        log.committed("group-ahead", topic)
            .await
            .expect("an offset at the end is a position"),
        BTreeMap::from([(0, 2)])
    );
    if log
        .commit("group-ahead", topic, &[(0, 21_000)])
        .await
        .is_err()
    {
        return;
    }
    let err = log
        .committed("group-ahead", topic)
        .await
        .expect_err("an offset past the end is an error");
    assert!(
        matches!(
            &err,
            LogError::GroupOffsetPastEnd {
                group,
                partition: 0,
                committed: 21_000,
                end: 2,
                ..
            } if group == "group-ahead"
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "group group-ahead topic {topic} partition 0: committed offset 21000 is past the partition's end 2"
        )),
        "{message}"
    );
}

/// Many concurrent appenders: every acknowledged record is in the log exactly once.
pub async fn concurrent_appends_are_all_durable_once(log: Arc<dyn EventLog>, topic: &str) {
    log.create_topic(topic, 4).await.expect("create");
    let mut tasks = Vec::new();
    for task in 0..16 {
        let log = Arc::clone(&log);
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..20 {
                let value = format!("t{task}-r{i}");
                let positions = log
                    .append(&topic, vec![record(Some(&format!("k{task}")), &value)])
                    .await
                    .expect("append");
                acknowledged.push((positions[0], value));
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.expect("task"));
    }
    let stored = read_all(log.as_ref(), topic).await;
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "no record lost or duplicated"
    );
    for (position, value) in acknowledged {
        let found = stored
            .iter()
            .find(|s| s.partition == position.partition && s.offset == position.offset)
            .expect("acknowledged position exists");
        assert_eq!(found.record.value, value.as_bytes());
    }
}

/// `fetch_values` appends to each span's records (keeping what they held)
/// the values `fetch` reads, none at or past the span's end, moves the
/// span's position past them and counts their bytes; a span read to its
/// end is not read; on an error the spans are as they were.
pub async fn fetch_values_reads_what_fetch_reads(log: &dyn EventLog, topic: &str) {
    log.create_topic(topic, 1).await.expect("create");
    let records: Vec<Record> = (0..5)
        .map(|i| record(Some("k"), &format!("r{i}")))
        .collect();
    log.append(topic, records).await.expect("append");
    let held = ValueRecord {
        value: Bytes::from_static(b"held"),
        timestamp_ms: 1,
        offset: 99,
    };
    // A span of the partition holding one record already.
    let span_of = |offset: u64, end: u64| ValueSpan {
        position: FetchPosition {
            topic: topic.into(),
            partition: 0,
            offset,
        },
        end,
        records: vec![held.clone()],
    };
    // Offsets 0..3 of the five: a backend may bring fewer at a time.
    let mut span = span_of(0, 3);
    let wait = Duration::from_secs(5);
    for _ in 0..10 {
        let before = span.records.len();
        let read = log
            .fetch_values(&mut [&mut span], 100, wait)
            .await
            .expect("fetch_values");
        assert_eq!(
            read.records,
            span.records.len() - before,
            "{topic}: counted"
        );
        // Key "k" and a value of two bytes.
        assert_eq!(read.bytes, 3 * read.records as u64, "{topic}: bytes");
        if span.position.offset == span.end {
            break;
        }
    }
    assert_eq!(span.records[0], held, "{topic}: what the span held is kept");
    let offsets: Vec<u64> = span.records[1..].iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        vec![0, 1, 2],
        "{topic}: from 0 to the end, once each"
    );
    for record in &span.records[1..] {
        assert_eq!(
            record.value,
            format!("r{}", record.offset).as_bytes(),
            "{topic}: at {}",
            record.offset
        );
        assert_eq!(record.timestamp_ms, 1_700_000_000_000, "{topic}: time");
    }
    assert_eq!(span.position.offset, 3, "{topic}: the position past them");
    // Read to its end: not read again, and no wait.
    let started = std::time::Instant::now();
    let read = log
        .fetch_values(&mut [&mut span], 100, Duration::from_secs(30))
        .await
        .expect("a span at its end");
    assert_eq!(read.records, 0, "{topic}: a span at its end read again");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{topic}: a span at its end waited"
    );
    // Past the log's end: an error, and the spans as they were.
    let mut past = span_of(50, 60);
    // (A span read before the one that fails: what it read is undone.)
    let mut first = span_of(0, 3);
    let before = first.clone();
    log.fetch_values(
        &mut [&mut first, &mut past],
        100,
        Duration::from_millis(100),
    )
    .await
    .expect_err("past the end");
    assert_eq!(first, before, "{topic}: a failed fetch_values moved a span");
    assert_eq!(
        past.records,
        vec![held],
        "{topic}: a failed fetch_values appended"
    );
    assert_eq!(
        past.position.offset, 50,
        "{topic}: a failed fetch_values moved a span"
    );
}
