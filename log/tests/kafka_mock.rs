//! The Kafka backend against librdkafka's in-process mock cluster: the same
//! conformance suite as the embedded log. (The mock broker has no CreateTopics
//! API, so the suite's topics are created on the mock first.)

use std::sync::Arc;

use lambda_log::conformance;
use lambda_log::{KafkaConfig, KafkaLog};
use rdkafka::mocking::MockCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_passes_the_conformance_suite_on_a_mock_cluster() {
    let mock = MockCluster::new(3).expect("mock cluster");
    for (suffix, partitions) in conformance::TOPICS {
        mock.create_topic(&format!("conf-{suffix}"), *partitions as i32, 1)
            .expect("mock topic");
    }
    let log = KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers())).expect("kafka log");
    conformance::run_all(Arc::new(log), "conf").await;
}

/// Records up to the log's limit (key and value; headers on top) pass
/// librdkafka's own `message.max.bytes`, whose default (1 000 000 bytes) is
/// below our 1 MiB limit: such a record used to be refused by the producer
/// and answered `Unavailable`, so every caller retried it forever. A record
/// the broker refuses for its size is `Refused`, which nobody retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_up_to_the_limit_are_produced_and_larger_ones_refused_for_good() {
    use lambda_log::{EventLog, LogError, MAX_RECORD_BYTES, Record};
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("big", 1, 1).expect("mock topic");
    let log = KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers())).expect("kafka log");
    let mut at_limit = Record::keyed("k", vec![b'x'; MAX_RECORD_BYTES - 1], 1);
    at_limit.headers.push(("reason".into(), vec![b'r'; 200]));
    let positions = log
        .append("big", vec![at_limit])
        .await
        .expect("a record at the limit");
    assert_eq!(positions.len(), 1);
    let past = Record::keyed("k", vec![b'x'; MAX_RECORD_BYTES], 1);
    let error = log
        .append("big", vec![past])
        .await
        .expect_err("one byte over");
    assert!(
        matches!(error, LogError::RecordTooLarge { .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
}

/// A broker refusing a produce for its size (`MESSAGE_TOO_LARGE`, Apache
/// Kafka's `message.max.bytes` below our limit) is `Refused`: not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_a_record_for_its_size_is_not_retried() {
    use lambda_log::{EventLog, LogError, Record};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic("refused", 1, 1).expect("mock topic");
    let log = KafkaLog::open(KafkaConfig::new(mock.bootstrap_servers())).expect("kafka log");
    log.append("refused", vec![Record::keyed("k", "before", 1)])
        .await
        .expect("an ordinary record");
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let error = log
        .append("refused", vec![Record::keyed("k", "x".repeat(5000), 1)])
        .await
        .expect_err("the broker refuses it");
    assert!(matches!(error, LogError::Refused(_)), "{error:?}");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("refused"), "{error}");
}
