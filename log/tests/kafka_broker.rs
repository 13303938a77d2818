//! The Kafka backend against a real Kafka-protocol broker process (`tansu`,
//! installed by `./infra/test.sh`), started by the test on a free loopback
//! port with in-memory storage: the same conformance suite as every backend,
//! with topics created through the admin API.

use std::sync::Arc;

use lambda_log::{EventLog, KafkaConfig, KafkaLog, Record, conformance};
use lambda_testkit::Tansu;

fn config(broker: &Tansu) -> KafkaConfig {
    let tail = broker.log_url();
    KafkaConfig::from_url_tail(tail.strip_prefix("kafka://").unwrap()).expect("a kafka URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_passes_the_conformance_suite_on_a_real_broker() {
    let broker = Tansu::start();
    let log = KafkaLog::open(config(&broker)).expect("kafka log");
    conformance::run_all(Arc::new(log), "broker").await;
}

/// tansu reports a partition's end as the base offset of its last batch plus
/// one. With `probe_end` the ranges count every record of that batch; the
/// test first shows the broker under-reporting, so it fails if the probe
/// stops doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_count_the_whole_last_batch() {
    let broker = Tansu::start();
    broker.create_topic("batched", 1);
    let log = KafkaLog::open(config(&broker)).expect("kafka log");
    let plain = KafkaLog::open(KafkaConfig::new(broker.address.clone())).expect("kafka log");
    // One append of 200 records: the producer sends them as few batches.
    let records: Vec<Record> = (0..200)
        .map(|i| Record::keyed("k", format!("v{i}"), 1_700_000_000_000))
        .collect();
    log.append("batched", records).await.unwrap();
    let reported = plain.ranges("batched").await.unwrap()[0].end;
    assert!(
        reported < 200,
        "the broker reported {reported}: it no longer under-reports, so the probe is untested"
    );
    assert_eq!(log.ranges("batched").await.unwrap()[0].end, 200);
    // A fetch from the true end is not out of range.
    let fetched = log
        .fetch(
            &[lambda_log::FetchPosition {
                topic: "batched".into(),
                partition: 0,
                offset: 200,
            }],
            10,
            std::time::Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert!(fetched.is_empty());
}

/// tansu answers a fetch from the middle of a batch with the next batch.
/// A reader restarted at such an offset (a speed layer resuming from its
/// checkpoint) must still get every record from there on, in order: the test
/// shows a plain reader skipping, then the probing reader not skipping, for
/// offsets at, inside and at the end of batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_inside_a_batch_skips_nothing() {
    let broker = Tansu::start();
    broker.create_topic("mid-batch", 1);
    let log = KafkaLog::open(config(&broker)).expect("kafka log");
    for batch in 0..3 {
        let records: Vec<Record> = (0..20)
            .map(|i| Record::keyed("k", format!("b{batch}-r{i}"), 1_700_000_000_000))
            .collect();
        log.append("mid-batch", records).await.unwrap();
    }
    let from = |log: Arc<KafkaLog>, offset: u64| async move {
        let position = lambda_log::FetchPosition {
            topic: "mid-batch".into(),
            partition: 0,
            offset,
        };
        let mut offsets = Vec::new();
        let mut next = position;
        for _ in 0..20 {
            let fetched = log
                .fetch(
                    std::slice::from_ref(&next),
                    100,
                    std::time::Duration::from_millis(300),
                )
                .await
                .unwrap();
            if let Some(last) = fetched.last() {
                next.offset = last.offset + 1;
            }
            offsets.extend(fetched.iter().map(|r| r.offset));
            if next.offset >= 60 {
                break;
            }
        }
        offsets
    };
    let plain = Arc::new(KafkaLog::open(KafkaConfig::new(broker.address.clone())).unwrap());
    let skipped = from(plain, 5).await;
    assert_ne!(
        skipped.first(),
        Some(&5),
        "the broker no longer skips ahead, so the seek back is untested: {skipped:?}"
    );
    for offset in [0, 5, 19, 20, 21, 39, 59] {
        let log = Arc::new(KafkaLog::open(config(&broker)).unwrap());
        let got = from(log, offset).await;
        assert_eq!(got, (offset..60).collect::<Vec<_>>(), "from {offset}");
    }
}

#[test]
fn kafka_urls_carry_options() {
    let config = KafkaConfig::from_url_tail(
        "b1:9092,b2:9092?replication_factor=3&security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&probe_end=true",
    )
    .unwrap();
    assert_eq!(config.bootstrap_servers, "b1:9092,b2:9092");
    assert_eq!(config.replication_factor, 3);
    assert!(config.probe_end);
    assert_eq!(
        config.client_options,
        vec![
            ("security.protocol".to_string(), "SASL_SSL".to_string()),
            ("sasl.mechanism".to_string(), "SCRAM-SHA-512".to_string()),
        ]
    );
    let error = KafkaConfig::from_url_tail("b1:9092?replication=3")
        .unwrap_err()
        .to_string();
    assert!(error.contains("replication"), "{error}");
    assert!(KafkaConfig::from_url_tail("b1:9092?replication_factor=0").is_err());
    assert!(KafkaConfig::from_url_tail("?probe_end=true").is_err());
}

/// A topic with a retention of its own (`dead-letter`) is created with
/// `retention.ms` and `retention.bytes`, as the broker then reports them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_its_own_retention_is_created_with_it() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;

    let broker = Tansu::start();
    let mut config = config(&broker);
    config.topic_retention.insert(
        "own-retention".into(),
        lambda_log::TopicRetention {
            retention_ms: Some(604_800_000),
            retention_bytes: Some(1_073_741_824),
        },
    );
    let log = KafkaLog::open(config).expect("kafka log");
    log.create_topic("own-retention", 1).await.unwrap();
    log.create_topic("plain", 1).await.unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .create()
        .unwrap();
    let described = admin
        .describe_configs(
            [
                &ResourceSpecifier::Topic("own-retention"),
                &ResourceSpecifier::Topic("plain"),
            ],
            &AdminOptions::new().request_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await
        .unwrap();
    let value = |i: usize, key: &str| {
        let resource = described[i].as_ref().expect("described");
        resource.get(key).and_then(|e| e.value.clone())
    };
    assert_eq!(value(0, "retention.ms").as_deref(), Some("604800000"));
    assert_eq!(value(0, "retention.bytes").as_deref(), Some("1073741824"));
    assert_ne!(value(1, "retention.ms").as_deref(), Some("604800000"));
    // Every topic it creates takes a record at the limit with its headers.
    let max = (lambda_log::MAX_RECORD_BYTES + 64 * 1024).to_string();
    assert_eq!(value(0, "max.message.bytes"), Some(max.clone()));
    assert_eq!(value(1, "max.message.bytes"), Some(max));
}
