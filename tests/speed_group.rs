//! The speed layer across hosts (issue 16): three `lambda speed --group`
//! processes share the partitions as one Kafka consumer group, with each
//! partition's state in a checkpoint store on S3 (moto). While seeded
//! traffic with late events and resends flows, one instance is killed with
//! SIGKILL and its data dir deleted; the survivors take its partitions over
//! from the store. Then it comes back, and then all three are restarted one
//! by one. After each step, every partition's views (from whichever
//! instance owns it) equal an independent fold of that partition's records,
//! and serving, which finds the owners in the store, counts every
//! acknowledged event exactly once.
//!
//! On tansu 0.6 the killed instance is not the group's leader: a leader
//! killed there leaves the group stuck — tansu keeps naming the dead member
//! as leader in every JoinGroup response and the survivors never get an
//! assignment (a leader that leaves cleanly is fine, and the rolling restart
//! restarts it). The leader's SIGKILL runs on librdkafka's mock cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lambda_events::Event;
use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::{EventLog, FetchPosition, KafkaConfig, KafkaLog, Record};
use lambda_speed::export::{Snapshot, snapshot};
use lambda_speed::group::Ownership;
use lambda_testkit::{KillOnDrop, Moto, Tansu, eventually, free_port, wait_for_port};
use serde_json::Value;

const TOPICS: [&str; 2] = ["funnel-events", "iot-events"];
const PARTITIONS: u32 = 4;

/// One `lambda speed --group` process.
struct Instance {
    name: String,
    port: u16,
    dir: PathBuf,
    process: Option<KillOnDrop>,
}

/// What every instance and serving are started with.
struct Stack {
    log_url: String,
    store_url: String,
    s3_endpoint: String,
    lake_url: String,
}

impl Stack {
    fn command(&self, dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lambda"));
        for (key, _) in std::env::vars() {
            if key.starts_with("LAMBDA_") {
                command.env_remove(key);
            }
        }
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .unwrap();
        command
            .env("LAMBDA_LOG_URL", &self.log_url)
            .env("LAMBDA_DATA_DIR", dir)
            .env("LAMBDA_LAKE_URL", &self.lake_url)
            .env("LAMBDA_PARTITIONS", PARTITIONS.to_string())
            .env("LAMBDA_S3_ENDPOINT", &self.s3_endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    fn start(&self, instance: &mut Instance) {
        let child = self
            .command(&instance.dir)
            .args(["speed", "--group", "speed-test"])
            .args(["--checkpoint-url", &self.store_url])
            .args(["--member", &instance.name])
            .args(["--listen", &format!("127.0.0.1:{}", instance.port)])
            .args(["--checkpoint-interval", "1s", "--session-timeout", "6s"])
            // Idleness depends on wall time: no partition goes idle here.
            .args(["--idle-timeout", "10m"])
            .spawn()
            .expect("starting lambda speed");
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", instance.port)).is_err() {
            let exited = child.0.try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(instance.dir.with_extension("log"));
                panic!(
                    "{} did not start ({exited:?}):\n{}",
                    instance.name,
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        instance.process = Some(child);
    }

    fn serve(&self, dir: &Path, port: u16) -> KillOnDrop {
        let child = self
            .command(dir)
            .args(["serve", "--speed-checkpoint-url", &self.store_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .expect("starting lambda serve");
        wait_for_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
        KillOnDrop(child)
    }
}

fn instances(root: &Path) -> Vec<Instance> {
    ["a", "b", "c"]
        .iter()
        .map(|name| Instance {
            name: format!("speed-{name}"),
            port: free_port(),
            dir: root.join(name),
            process: None,
        })
        .collect()
}

async fn ownership(client: &reqwest::Client, port: u16) -> Option<Ownership> {
    let url = format!("http://127.0.0.1:{port}/internal/v1/speed/partitions");
    client.get(url).send().await.ok()?.json().await.ok()
}

/// Waits until every partition has exactly one owner among the running
/// `instances` and each of `must_own` owns at least one; returns each
/// partition's owner (an index into `instances`).
async fn settled(
    client: &reqwest::Client,
    instances: &[Instance],
    must_own: &[usize],
) -> Vec<((String, u32), usize)> {
    eventually(
        "every partition owned once",
        Duration::from_secs(120),
        || async {
            let mut owners: Vec<((String, u32), usize)> = Vec::new();
            let mut counts = vec![0; instances.len()];
            for (i, instance) in instances.iter().enumerate() {
                if instance.process.is_none() {
                    continue;
                }
                let Some(owned) = ownership(client, instance.port).await else {
                    return Err(format!("{} does not answer", instance.name));
                };
                for p in owned.partitions {
                    owners.push(((p.topic, p.partition), i));
                    counts[i] += 1;
                }
            }
            owners.sort();
            let mut ids: Vec<_> = owners.iter().map(|(id, _)| id.clone()).collect();
            ids.dedup();
            let total = TOPICS.len() * PARTITIONS as usize;
            if owners.len() == total
                && ids.len() == total
                && must_own.iter().all(|i| counts[*i] > 0)
            {
                Ok(owners)
            } else {
                Err(format!("owners {owners:?}, counts {counts:?}"))
            }
        },
    )
    .await
}

/// The seeded records: late events and resends, keyed as the collector
/// keys them.
fn records(seed: u64, start_ms: i64, lines: usize) -> Vec<(String, Record)> {
    let mut generator = Generator::new(GeneratorConfig {
        seed,
        start_ms,
        rate: 20.0,
        late_fraction: 0.03,
        duplicate_fraction: 0.05,
        malformed_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    (0..lines)
        .map(|_| {
            let line = generator.next_line().bytes;
            let event = Event::from_json(&line).unwrap();
            let key = event.key().to_string();
            (
                event.topic().name().to_string(),
                Record::keyed(key, line, event.ts),
            )
        })
        .collect()
}

/// Appends `records` 100 at a time, every 100 ms (acknowledged when `append` returns).
fn feed(
    log: std::sync::Arc<KafkaLog>,
    records: Vec<(String, Record)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in records.chunks(100) {
            for topic in TOPICS {
                let batch: Vec<Record> = chunk
                    .iter()
                    .filter(|(t, _)| t == topic)
                    .map(|(_, r)| r.clone())
                    .collect();
                if !batch.is_empty() {
                    log.append(topic, batch).await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The end offset of every partition.
async fn ends(log: &KafkaLog) -> Vec<((String, u32), u64)> {
    let mut ends = Vec::new();
    for topic in TOPICS {
        for (p, range) in log.ranges(topic).await.unwrap().iter().enumerate() {
            ends.push(((topic.to_string(), p as u32), range.end));
        }
    }
    ends
}

/// An independent fold of one partition: its records read back from the
/// log, in order, folded into a state of its own with the instances'
/// settings (lateness 60 s, the default horizon).
async fn fold_partition(log: &KafkaLog, topic: &str, partition: u32, end: u64) -> Snapshot {
    let config = lambda_speed::SpeedConfig::with_data_dir(Path::new("/nonexistent"));
    let views = lambda_speed::new_views(&config);
    let mut positions = [FetchPosition {
        topic: topic.to_string(),
        partition,
        offset: 0,
    }];
    while positions[0].offset < end {
        let records = log
            .fetch(&positions, 4096, Duration::from_millis(500))
            .await
            .unwrap();
        let invalid = lambda_speed::consumer::apply(&views, &mut positions, records);
        assert!(invalid.is_empty(), "no invalid records were sent");
    }
    snapshot(&views.read(), 0, 0, 0)
}

/// What two snapshots of one partition must agree on.
fn essence(s: &Snapshot) -> Value {
    serde_json::json!({
        "windows": serde_json::to_value(&s.windows).unwrap(),
        "offsets": s.offsets,
        "late_ledger": serde_json::to_value(&s.late_ledger).unwrap(),
        "counters": s.counters,
        "watermark": s.watermark,
        "max_event_ts": s.max_event_ts,
    })
}

/// Waits until the owners have consumed every partition to its end, then
/// checks each partition's views against an independent fold, and
/// serving's counters against their sum. Returns the counters' sum.
async fn exact(
    client: &reqwest::Client,
    log: &KafkaLog,
    instances: &[Instance],
    serve_port: u16,
    acknowledged: u64,
    step: &str,
) {
    let ends = ends(log).await;
    assert_eq!(
        ends.iter().map(|(_, e)| e).sum::<u64>(),
        acknowledged,
        "{step}: every acknowledged record is in the log"
    );
    // The independent folds, then each partition's owner, whoever it is
    // when asked (a rebalance may still move one: its new owner restores it
    // and reads on, and must come to the same views).
    let mut folds = Vec::new();
    let mut sum = (0u64, 0u64, 0u64, 0u64);
    for ((topic, partition), end) in &ends {
        let mine = fold_partition(log, topic, *partition, *end).await;
        sum.0 += mine.counters.0;
        sum.1 += mine.counters.1;
        sum.2 += mine.counters.2;
        sum.3 += mine.counters.3;
        folds.push(((topic.clone(), *partition), essence(&mine)));
    }
    eventually(
        &format!("{step}: every partition's owner agrees with an independent fold"),
        Duration::from_secs(120),
        || async {
            for ((topic, partition), mine) in &folds {
                let mut owner: Option<(u64, u16)> = None;
                for instance in instances.iter().filter(|i| i.process.is_some()) {
                    if let Some(owned) = ownership(client, instance.port).await
                        && let Some(p) = owned
                            .partitions
                            .iter()
                            .find(|p| p.topic == *topic && p.partition == *partition)
                        && owner.is_none_or(|(v, _)| p.version > v)
                    {
                        owner = Some((p.version, instance.port));
                    }
                }
                let Some((_, port)) = owner else {
                    return Err(format!("{topic}/{partition}: no owner"));
                };
                let url = format!(
                    "http://127.0.0.1:{port}/internal/v1/speed/partition/{topic}/{partition}?epoch=0&since=0"
                );
                let theirs: Snapshot = match client.get(url).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.json().await.map_err(|e| e.to_string())?
                    }
                    other => return Err(format!("{topic}/{partition} from {port}: {other:?}")),
                };
                let theirs = essence(&theirs);
                if theirs != *mine {
                    return Err(format!(
                        "{topic}/{partition} on {port} differs from an independent fold:\n{theirs}\n{mine}"
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    assert_eq!(
        sum.0 + sum.1 + sum.2,
        acknowledged,
        "{step}: every record counted, a resend or late: {sum:?}"
    );
    assert!(
        sum.1 > 0 && sum.2 > 0,
        "{step}: resends and late events: {sum:?}"
    );
    // Serving finds the owners in the store and merges their partitions.
    eventually(
        &format!("{step}: serving counts every event once"),
        Duration::from_secs(60),
        || async {
            let status: Value = client
                .get(format!("http://127.0.0.1:{serve_port}/api/v1/status"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let speed = &status["speed"];
            let seen = (
                speed["events_counted"].as_u64(),
                speed["duplicates"].as_u64(),
                speed["late"].as_u64(),
            );
            if seen == (Some(sum.0), Some(sum.1), Some(sum.2)) {
                Ok(())
            } else {
                Err(format!(
                    "serving {seen:?}, folds {sum:?}\n{}",
                    status["speed_group"]
                ))
            }
        },
    )
    .await;
    eprintln!("{step}: exact ({sum:?})");
}

/// Kills `instance` with SIGKILL and deletes its data dir.
fn kill_and_wipe(instance: &mut Instance) {
    let mut process = instance.process.take().unwrap();
    process.0.kill().unwrap();
    process.0.wait().unwrap();
    std::fs::remove_dir_all(&instance.dir).unwrap();
}

/// Stops `instance` with SIGTERM (it checkpoints and leaves the group).
async fn stop(instance: &mut Instance) {
    let mut process = instance.process.take().unwrap();
    let pid = process.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while process.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{} did not stop", instance.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scenario on one broker: `victim` is the instance killed.
async fn scenario(log_url: String, victim: usize) {
    let moto = Moto::start("speed-group");
    let root = tempfile::tempdir().unwrap();
    let stack = Stack {
        log_url: log_url.clone(),
        store_url: format!("s3://{}/speed", moto.bucket),
        s3_endpoint: moto.endpoint.clone(),
        lake_url: format!("file://{}", root.path().join("lake").display()),
    };
    let log = std::sync::Arc::new(
        KafkaLog::open(
            KafkaConfig::from_url_tail(log_url.strip_prefix("kafka://").unwrap()).unwrap(),
        )
        .unwrap(),
    );
    let client = reqwest::Client::new();
    let mut instances = instances(root.path());
    // "a" first, alone: it is the group's leader.
    stack.start(&mut instances[0]);
    settled(&client, &instances, &[0]).await;
    stack.start(&mut instances[1]);
    stack.start(&mut instances[2]);
    settled(&client, &instances, &[0, 1, 2]).await;
    let serve_port = free_port();
    let _serve = stack.serve(&root.path().join("serve"), serve_port);
    // Each member's own metric families, with what it owns.
    let port = instances[1].port;
    let metrics = eventually(
        "a member's metrics saying what it owns",
        Duration::from_secs(30),
        || async {
            let owned = ownership(&client, port).await.ok_or("no ownership")?;
            let metrics = client
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let line = format!(
                "lambda_speed_group_partitions_owned {}",
                owned.partitions.len()
            );
            if metrics.contains(&line) {
                Ok(metrics)
            } else {
                Err(format!("{line} not in:\n{metrics}"))
            }
        },
    )
    .await;
    for family in [
        "lambda_speed_group_rebalances_total",
        "lambda_speed_group_checkpoint_version{",
        "lambda_speed_group_checkpoint_age_seconds{",
        "lambda_speed_events_total",
    ] {
        assert!(metrics.contains(family), "{family} in:\n{metrics}");
    }
    // A partition asked for by a bad number, or one not owned here, is
    // named in a 4xx.
    let base = format!(
        "http://127.0.0.1:{}/internal/v1/speed/partition",
        instances[0].port
    );
    for (path, status) in [
        ("funnel-events/abc", 400),
        ("funnel-events/-1", 400),
        ("funnel-events/99999999999", 400),
        ("funnel-events/0?epoch=x", 400),
        ("funnel-events/0?since=1&since=1", 400),
        ("no-such-topic/0", 404),
    ] {
        let response = client.get(format!("{base}/{path}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["parameter"].is_string(), "{path}: {body}");
    }

    // Traffic, and a SIGKILL with the data dir gone in the middle of it.
    let first = records(7, 1_767_225_600_000, 6_000);
    let feeding = feed(std::sync::Arc::clone(&log), first);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = Instant::now();
    kill_and_wipe(&mut instances[victim]);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    settled(&client, &instances, &survivors).await;
    let taken_over = killed_at.elapsed();
    feeding.await.unwrap();
    exact(
        &client,
        &log,
        &instances,
        serve_port,
        6_000,
        "after the kill",
    )
    .await;
    eprintln!(
        "failover: the killed instance's partitions owned again {} ms after the SIGKILL",
        taken_over.as_millis()
    );

    // It comes back on an empty data dir: partitions move back to it.
    stack.start(&mut instances[victim]);
    settled(&client, &instances, &[0, 1, 2]).await;
    exact(
        &client,
        &log,
        &instances,
        serve_port,
        6_000,
        "after the return",
    )
    .await;

    // A rolling restart of all three while traffic flows.
    let second = records(8, 1_767_226_200_000, 6_000);
    let feeding = feed(std::sync::Arc::clone(&log), second);
    for i in 0..3 {
        stop(&mut instances[i]).await;
        stack.start(&mut instances[i]);
        settled(&client, &instances, &[i]).await;
    }
    feeding.await.unwrap();
    exact(
        &client,
        &log,
        &instances,
        serve_port,
        12_000,
        "after the rolling restart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_s_partitions_move_to_the_others_exactly_on_tansu() {
    let _alone = crate::one_at_a_time().await;
    let broker = Tansu::start();
    for topic in TOPICS {
        broker.create_topic(topic, PARTITIONS);
    }
    // "c" is not the leader (see the module's documentation).
    scenario(broker.log_url(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_s_partitions_move_to_the_others_exactly_on_the_mock_cluster() {
    let _alone = crate::one_at_a_time().await;
    let mock = lambda_log::kafka::MockKafka::new(1).unwrap();
    // The mock has no CreateTopics: the topics as `lambda` would create them.
    for topic in TOPICS {
        mock.create_topic(topic, PARTITIONS).unwrap();
    }
    mock.create_topic("dead-letter", 1).unwrap();
    scenario(format!("kafka://{}", mock.bootstrap_servers()), 0).await;
}

/// `lambda speed --group`'s flags are checked before anything starts, at
/// both sides of each bound, naming the flag; accepted ones get as far as
/// the next check (here: no shared log was given).
#[test]
fn group_flags_are_checked_at_both_sides_of_their_bounds() {
    let run = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lambda"));
        for (key, _) in std::env::vars() {
            if key.starts_with("LAMBDA_") {
                command.env_remove(key);
            }
        }
        let output = command
            .args(["speed", "--checkpoint-url", "memory://"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let accepted = |extra: &[&str]| {
        let stderr = run(extra);
        assert!(stderr.contains("needs a shared log"), "{extra:?}: {stderr}");
    };
    let refused = |extra: &[&str], flag: &str| {
        let stderr = run(extra);
        assert!(stderr.contains(flag), "{extra:?}: {stderr}");
        assert!(
            !stderr.contains("needs a shared log"),
            "{extra:?}: {stderr}"
        );
    };
    let g = ["--group", "g"];
    accepted(&[&g[..], &["--session-timeout", "1s"]].concat());
    accepted(&[&g[..], &["--session-timeout", "5m"]].concat());
    refused(
        &[&g[..], &["--session-timeout", "999ms"]].concat(),
        "--session-timeout",
    );
    refused(
        &[&g[..], &["--session-timeout", "301s"]].concat(),
        "--session-timeout",
    );
    let (long, longer) = ("m".repeat(100), "m".repeat(101));
    accepted(&[&g[..], &["--member", &long]].concat());
    refused(&[&g[..], &["--member", &longer]].concat(), "--member");
    refused(&[&g[..], &["--member", "../x"]].concat(), "--member");
    refused(&[&g[..], &["--member", ".m"]].concat(), "--member");
    accepted(&["--group", &"g".repeat(255)]);
    refused(&["--group", &"g".repeat(256)], "--group");
    refused(&["--group", ""], "--group");
    refused(&["--group", "a b"], "--group");
}
