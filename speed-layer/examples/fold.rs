//! The speed layer's per-record path — decode, fold, offsets, eviction — over
//! records already in memory, with no log and no runtime around it: what to
//! point a profiler at. `lambda bench speed` is the benchmark (the log
//! included, beside a decode ceiling measured in the same run); this harness
//! exists so that a profile shows the fold and nothing else:
//!
//! ```text
//! cargo build --release -p lambda-speed --example fold
//! valgrind --tool=callgrind --callgrind-out-file=fold.out \
//!     $CARGO_TARGET_DIR/release/examples/fold 100000
//! callgrind_annotate --inclusive=yes fold.out | head -60
//! ```

use std::time::Instant;

use lambda_events::decode::TypedBaseline;
use lambda_events::{Event, EventRef, Topic};
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{Bytes, FetchPosition, Record, StoredRecord};
use lambda_speed::SpeedConfig;

/// Records per call of `apply`, as the speed layer fetches them.
const BATCH: usize = 4096;
const PARTITIONS: u32 = 4;

fn main() {
    let events: usize = std::env::args().nth(1).map_or(100_000, |n| {
        n.parse().expect("the first argument: how many events")
    });
    let mut generator = Generator::new(GeneratorConfig {
        seed: 1,
        start_ms: 1_767_225_600_000,
        rate: 200.0,
        users: 5_000,
        devices: 50,
        late_fraction: 0.01,
        duplicate_fraction: 0.01,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    let mut next_offset = [[0u64; PARTITIONS as usize]; 2];
    // Every line in one buffer, and each record a slice of it: as records
    // read from the embedded log share the chunk they were read into.
    let mut all = Vec::new();
    let mut made = Vec::with_capacity(events);
    for _ in 0..events {
        let line = generator.next_line().bytes;
        let event = Event::from_json(&line).expect("the generator makes valid lines");
        made.push((event, all.len()..all.len() + line.len()));
        all.extend_from_slice(&line);
    }
    let all = Bytes::from(all);
    let mut batches: Vec<Vec<StoredRecord>> = Vec::new();
    let topics = Topic::ALL.map(|topic| std::sync::Arc::<str>::from(topic.name()));
    for (i, (event, range)) in made.into_iter().enumerate() {
        let topic = event.topic();
        let partition = (i as u32) % PARTITIONS;
        let offset = &mut next_offset[topic as usize][partition as usize];
        let key = event
            .user_id
            .clone()
            .or(event.device_id.clone())
            .unwrap_or_default();
        if batches.last().is_none_or(|b| b.len() == BATCH) {
            batches.push(Vec::with_capacity(BATCH));
        }
        batches.last_mut().expect("pushed").push(StoredRecord {
            topic: std::sync::Arc::clone(&topics[topic as usize]),
            partition,
            offset: *offset,
            record: Record::keyed(key, all.slice(range), event.ts),
        });
        *offset += 1;
    }
    let mut positions: Vec<FetchPosition> = Topic::ALL
        .iter()
        .flat_map(|topic| {
            (0..PARTITIONS).map(|partition| FetchPosition {
                topic: topic.name().to_string(),
                partition,
                offset: 0,
            })
        })
        .collect();

    // The typed-decode ceiling over the same bytes (see `lambda bench speed`).
    let started = Instant::now();
    let decoded = batches
        .iter()
        .flatten()
        .filter(|stored| TypedBaseline::decode(&stored.record.value).is_ok())
        .count();
    let ceiling = started.elapsed();
    assert_eq!(decoded, events);
    // Our decoder over the same bytes (what `apply` calls per record).
    let started = Instant::now();
    let decoded = batches
        .iter()
        .flatten()
        .filter(|stored| EventRef::from_record(&stored.record.value, &stored.topic).is_ok())
        .count();
    let ours = started.elapsed();
    assert_eq!(decoded, events);
    let bytes: usize = batches.iter().flatten().map(|s| s.record.value.len()).sum();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let views = lambda_speed::new_views(&SpeedConfig::with_data_dir(dir.path()));
    let started = Instant::now();
    for batch in batches {
        let invalid = lambda_speed::consumer::apply(&views, &mut positions, batch);
        assert!(invalid.is_empty(), "the generator makes valid lines");
    }
    let elapsed = started.elapsed();
    let state = views.read();
    let counters = state.counters();
    println!(
        "{:.0} bytes per record; typed decode (ceiling): {:.0} records/s; our decoder: {:.0} records/s; fold: {events} records in {:.3} s: {:.0} records/s ({:.2}x the ceiling); counted {}, late {}, duplicates {}, windows {}",
        bytes as f64 / events as f64,
        events as f64 / ceiling.as_secs_f64(),
        events as f64 / ours.as_secs_f64(),
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        ceiling.as_secs_f64() / elapsed.as_secs_f64(),
        counters.counted,
        counters.late,
        counters.duplicates,
        state.windows().len()
    );
}
