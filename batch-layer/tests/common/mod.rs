//! What the batch layer's test files share: generated events and putting
//! them in a log.

use std::sync::Arc;

use lambda_events::{Event, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig, LineKind};
use lambda_log::{EventLog, Record};

/// The first generated event's time: 2026-01-01T00:00:00Z.
pub(crate) const START_MS: i64 = 1_767_225_600_000;

/// Valid generated events (5 % late ones and 5 % resends), in send order,
/// `rate` a second from [`START_MS`].
pub(crate) fn events_at(seed: u64, n: usize, rate: f64) -> Vec<Event> {
    let mut generator = Generator::new(GeneratorConfig {
        seed,
        start_ms: START_MS,
        rate,
        late_fraction: 0.05,
        duplicate_fraction: 0.05,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    (0..n)
        .map(|_| generator.next_line())
        .filter(|l| l.kind != LineKind::Malformed)
        .map(|l| Event::from_json(&l.bytes).unwrap())
        .collect()
}

/// Appends `events` to their topics in `log`, keyed as ingest keys them.
pub(crate) async fn append(log: &Arc<dyn EventLog>, events: &[Event]) {
    for topic in Topic::ALL {
        let records: Vec<Record> = events
            .iter()
            .filter(|e| e.topic() == topic)
            .map(|e| Record::keyed(e.key().as_bytes(), e.to_json(), 0))
            .collect();
        log.append(topic.name(), records).await.unwrap();
    }
}
