//! Fault injection: the Kafka brokers go down for ~10 s in the middle of
//! ingest. While the log cannot make events durable, ingest answers 503 with
//! `Retry-After`; after recovery every event answered 202 is in the log
//! exactly once (idempotent producer), and an event answered 503 at most once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_ingest::{IngestConfig, IngestState, router};
use lambda_log::conformance::read_all;
use lambda_log::kafka::MockKafka;
use lambda_log::{EventLog, KafkaConfig, KafkaLog};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_answers_503_and_loses_or_duplicates_no_acknowledged_event() {
    let _alone = crate::one_at_a_time().await;
    let mock = MockKafka::new(1).unwrap();
    for (topic, partitions) in [("funnel-events", 4), ("iot-events", 4), ("dead-letter", 1)] {
        mock.create_topic(topic, partitions).unwrap();
    }
    let mut config = KafkaConfig::new(mock.bootstrap_servers());
    config.request_timeout = Duration::from_secs(2);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::open(config).unwrap());
    let state = IngestState::new(
        Arc::clone(&log),
        IngestConfig {
            append_timeout: Duration::from_secs(2),
            ..IngestConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let client = reqwest::Client::new();

    let started = Instant::now();
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    let (mut went_down, mut came_up) = (false, false);
    let mut statuses = Vec::new();
    let mut batch = 0;
    while started.elapsed() < Duration::from_secs(22) {
        if !went_down && started.elapsed() >= Duration::from_secs(3) {
            mock.set_down(true).unwrap();
            went_down = true;
        }
        if !came_up && started.elapsed() >= Duration::from_secs(13) {
            mock.set_down(false).unwrap();
            came_up = true;
        }
        let ids: Vec<String> = (0..20).map(|i| format!("b{batch}-{i}")).collect();
        let body: String = ids
            .iter()
            .map(|id| format!(r#"{{"event_id":"{id}","ts":1767225600000,"event_type":"click","user_id":"u-{id}"}}"#) + "\n")
            .collect();
        let response = client
            .post(format!("http://{addr}/api/v1/events"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        match status {
            202 => acked.extend(ids),
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "503 carries Retry-After"
                );
                refused.extend(ids);
            }
            other => panic!(
                "unexpected status {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
        statuses.push((started.elapsed().as_secs_f32(), status));
        batch += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during: Vec<u16> = statuses
        .iter()
        .filter(|(t, _)| (5.0..12.0).contains(t))
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|s| *s == 503),
        "503 while the brokers are down: {statuses:?}"
    );
    if let Some((t, _)) = statuses.iter().find(|(t, s)| *t > 13.0 && *s == 202) {
        eprintln!("outage: brokers back at 13.0 s, first 202 at {t:.1} s");
    }
    let after: Vec<u16> = statuses
        .iter()
        .filter(|(t, _)| *t > 19.0)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|s| *s == 202),
        "202 again after recovery: {statuses:?}"
    );

    // Let anything still queued in the producer land, then read the topic whole.
    log.close().await.unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for stored in read_all(log.as_ref(), "funnel-events").await {
        let value: serde_json::Value = serde_json::from_slice(&stored.record.value).unwrap();
        *counts
            .entry(value["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged event {id} is in the log exactly once"
        );
    }
    for id in &refused {
        assert!(
            counts.get(id).copied().unwrap_or(0) <= 1,
            "refused event {id} is in the log at most once"
        );
    }
    assert_eq!(
        counts.len(),
        acked.len() + refused.iter().filter(|id| counts.contains_key(*id)).count()
    );
}
