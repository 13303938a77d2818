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
