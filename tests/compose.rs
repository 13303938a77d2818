//! The docker-compose stack, without Docker.
//!
//! `docker-compose config` (docker-compose 1.29 from PyPI, installed by
//! `./infra/test.sh`) validates `docker-compose.yml` against the compose
//! schema and resolves anchors and `${VAR:-default}`s. This test reads that
//! resolved file and starts every app service's command as a local process
//! of the `lambda` binary, with that service's environment — the broker and
//! S3 hostnames mapped to a local `tansu` and `moto_server`, service hostnames
//! and ports to free loopback ports, `/data` to a temporary directory. It
//! creates the topics the `kafka-init` service names and the bucket the
//! `minio-init` service names, drives the compose file's generator service,
//! and checks the served answers against a plain fold of what the generator
//! sent. Then a third-party client (confluent-kafka, `infra/kafka-produce.py`)
//! produces to the topics: its valid events show up in the API, its bad ones
//! in `dead-letter` with a reason.
//!
//! What the test changes, and why: the batch schedule runs every 2 s instead
//! of every minute (to keep the test short); the generator gets a seed, a
//! start and a speed-up (so its lines can be regenerated and span minutes of
//! event time); the log URL gets `probe_end=true` (tansu under-reports the end
//! of a partition, see `KafkaConfig::probe_end`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lambda_ingest::generator::{Generator, GeneratorConfig};
use lambda_log::conformance::read_all;
use lambda_log::{KafkaConfig, KafkaLog};
use lambda_testkit::{KillOnDrop, Moto, Tansu, free_port};
use serde_json::{Value, json};

use crate::common::{Checked, MINUTE, check_answers, eventually, fold, get, text};

const APP_IMAGE: &str = "lambda-pipeline:latest";
const SEED: u64 = 20261122;
const SPEEDUP: f64 = 30.0;
const GENERATE_FOR: &str = "20s";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python virtualenv with docker-compose and confluent-kafka.
fn venv() -> PathBuf {
    let dir = lambda_testkit::venv();
    assert!(
        dir.join("bin/docker-compose").exists(),
        "no docker-compose in {}: run ./infra/test.sh, which installs it",
        dir.display()
    );
    dir
}

/// `docker-compose config`: validated, resolved, as JSON.
fn compose_config(venv: &Path) -> Value {
    compose_config_with(venv, &[], &[])
}

/// `docker-compose config` with `--profile`s and variables set.
fn compose_config_with(venv: &Path, profiles: &[&str], vars: &[(&str, &str)]) -> Value {
    let mut command = Command::new(venv.join("bin/docker-compose"));
    command.args(["--project-directory", ".", "-f", "docker-compose.yml"]);
    for profile in profiles {
        command.args(["--profile", profile]);
    }
    command
        .arg("config")
        .env_remove("LAMBDA_BATCH_ENGINE")
        .env_remove("COMPOSE_PROFILES")
        .envs(vars.iter().copied())
        .current_dir(manifest_dir());
    let output = command.output().expect("running docker-compose config");
    assert!(
        output.status.success(),
        "docker-compose config rejected docker-compose.yml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut python = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(&output.stdout)
        .unwrap();
    let converted = python.wait_with_output().unwrap();
    assert!(converted.status.success());
    serde_json::from_slice(&converted.stdout).expect("compose config as JSON")
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect(),
        Value::String(s) => vec![s.clone()],
        Value::Null => Vec::new(),
        other => panic!("expected a list of strings, got {other}"),
    }
}

/// The word after each `flag` in a shell script.
fn after(script: &str, flag: &str) -> Vec<String> {
    let words: Vec<&str> = script.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].to_string())
        .collect()
}

/// App services in the order their `depends_on` allow.
fn start_order(services: &serde_json::Map<String, Value>) -> Vec<String> {
    let apps: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| s["image"] == APP_IMAGE)
        .map(|(name, _)| name.clone())
        .collect();
    let mut order: Vec<String> = Vec::new();
    while order.len() < apps.len() {
        let before = order.len();
        for name in &apps {
            if order.contains(name) {
                continue;
            }
            let deps = services[name]["depends_on"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if deps
                .keys()
                .filter(|d| apps.contains(*d))
                .all(|d| order.contains(d))
            {
                order.push(name.clone());
            }
        }
        assert!(
            order.len() > before,
            "depends_on has a cycle among {apps:?}"
        );
    }
    order
}

/// The running stack: processes, their logs, their addresses.
struct Stack {
    dir: tempfile::TempDir,
    processes: Vec<(String, KillOnDrop)>,
    /// Service name → `127.0.0.1:PORT` it listens on.
    addresses: BTreeMap<String, String>,
}

impl Stack {
    fn log_of(&self, service: &str) -> PathBuf {
        self.dir.path().join(format!("{service}.log"))
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.processes {
            let text = std::fs::read_to_string(self.log_of(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {name} (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Waits until `url` answers 2xx (the stack's logs are printed if not: see `Drop`).
async fn wait_until_ok(client: &reqwest::Client, url: &str, within: Duration) {
    eventually(&format!("{url} healthy"), within, || async {
        match client.get(url).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(response.status().to_string()),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_runs_as_local_processes() {
    let venv = venv();
    let config = compose_config(&venv);
    let services = config["services"].as_object().expect("services").clone();

    // The file's shape: KRaft Kafka, MinIO with its bucket, one image, healthchecks.
    let kafka = &services["kafka"];
    assert!(kafka["image"].as_str().unwrap().starts_with("apache/kafka"));
    assert!(
        kafka["environment"]["KAFKA_PROCESS_ROLES"]
            .as_str()
            .unwrap()
            .contains("controller"),
        "Kafka runs in KRaft mode"
    );
    assert!(
        !services.keys().any(|name| name.contains("zookeeper")),
        "no ZooKeeper"
    );
    let apps: Vec<String> = start_order(&services);
    for role in [
        "ingest",
        "speed-1",
        "speed-2",
        "batch",
        "serve",
        "generator",
    ] {
        assert!(
            apps.contains(&role.to_string()),
            "service {role} runs the app image"
        );
    }
    let built: Vec<&Value> = services
        .values()
        .filter(|s| s.get("build").is_some())
        .collect();
    assert_eq!(built.len(), 1, "one service builds the one image");
    let dockerfile = built[0]["build"]["dockerfile"].as_str().unwrap();
    assert!(
        manifest_dir().join(dockerfile).exists(),
        "{dockerfile} exists"
    );
    for name in &apps {
        let service = &services[name];
        if name != "generator" {
            assert!(
                service.get("healthcheck").is_some(),
                "{name} has a healthcheck"
            );
        }
        for (dep, condition) in service["depends_on"].as_object().into_iter().flatten() {
            assert!(
                services.contains_key(dep),
                "{name} depends on a missing {dep}"
            );
            assert!(
                condition["condition"].is_string(),
                "{name} → {dep} has a condition"
            );
        }
    }
    let serve_ports = services["serve"]["ports"].to_string();
    assert!(
        serve_ports.contains("8080"),
        "the API is on port 8080: {serve_ports}"
    );

    // The init services: which topics and which bucket.
    let kafka_init = strings(&services["kafka-init"]["command"]).join("\n");
    let topics = after(&kafka_init, "--topic");
    let partitions = after(&kafka_init, "--partitions");
    assert_eq!(
        topics.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["funnel-events", "iot-events", "dead-letter"]),
        "kafka-init creates the pipeline's topics"
    );
    let minio_init = strings(&services["minio-init"]["command"]).join("\n");
    let bucket = after(&minio_init, "--ignore-existing")
        .first()
        .and_then(|target| target.strip_prefix("local/"))
        .expect("minio-init makes a bucket")
        .to_string();

    // The real servers standing in for Kafka and MinIO.
    let broker = Tansu::start();
    for (topic, n) in topics.iter().zip(&partitions) {
        broker.create_topic(topic, n.parse().unwrap());
    }
    let moto = Moto::start(&bucket);
    let moto_host = moto.endpoint.trim_start_matches("http://").to_string();

    // Every app service's address, from its LAMBDA_LISTEN.
    let mut stack = Stack {
        dir: tempfile::tempdir().unwrap(),
        processes: Vec::new(),
        addresses: BTreeMap::new(),
    };
    let mut hostnames: Vec<(String, String)> = vec![
        ("kafka:9092".into(), broker.address.clone()),
        ("minio:9000".into(), moto_host.clone()),
    ];
    for name in &apps {
        if let Some(listen) = services[name]["environment"]["LAMBDA_LISTEN"].as_str() {
            let port = listen.rsplit(':').next().unwrap();
            let local = format!("127.0.0.1:{}", free_port());
            hostnames.push((format!("{name}:{port}"), local.clone()));
            stack.addresses.insert(name.clone(), local);
        }
    }
    let translate = |text: &str| {
        hostnames
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    };

    let client = reqwest::Client::new();
    let start_ms =
        (chrono::Utc::now().timestamp_millis() - 30 * MINUTE).div_euclid(MINUTE) * MINUTE;
    let lambda = env!("CARGO_BIN_EXE_lambda");
    for name in &apps {
        let service = &services[name];
        let mut args: Vec<String> = strings(&service["command"])
            .iter()
            .map(|a| translate(a))
            .collect();
        let mut env: BTreeMap<String, String> = service["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k.clone(), translate(&v))
            })
            .collect();
        if let Some(listen) = stack.addresses.get(name) {
            env.insert("LAMBDA_LISTEN".into(), listen.clone());
        }
        let data = stack.dir.path().join(name);
        env.insert("LAMBDA_DATA_DIR".into(), data.display().to_string());
        if let Some(url) = env.get_mut("LAMBDA_LOG_URL") {
            url.push_str("?probe_end=true");
        }
        if env.contains_key("LAMBDA_BATCH_SCHEDULE") {
            env.insert("LAMBDA_BATCH_SCHEDULE".into(), "*/2 * * * * *".into());
        }
        if args.first().map(String::as_str) == Some("generate") {
            args.extend(
                [
                    "--seed",
                    &SEED.to_string(),
                    "--start",
                    &start_ms.to_string(),
                    "--speedup",
                    &SPEEDUP.to_string(),
                    "--duration",
                    GENERATE_FOR,
                ]
                .map(String::from),
            );
        }
        let log = std::fs::File::create(stack.log_of(name)).unwrap();
        let mut command = Command::new(lambda);
        for (key, _) in std::env::vars() {
            if key.starts_with("LAMBDA_") || key.starts_with("AWS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(&args)
            .envs(&env)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        stack.processes.push((name.clone(), KillOnDrop(child)));
        if let Some(address) = stack.addresses.get(name) {
            let url = format!("http://{address}/healthz");
            wait_until_ok(&client, &url, Duration::from_secs(60)).await;
        }
    }

    // The generator runs for its duration and reports what it sent.
    let generator_log = stack.log_of("generator");
    let sent_line = eventually(
        "the generator finishing",
        Duration::from_secs(120),
        || async {
            let text = std::fs::read_to_string(&generator_log).unwrap_or_default();
            match text.lines().find(|l| l.starts_with("sent ")) {
                Some(line) => Ok(line.to_string()),
                None => Err(stack.logs()),
            }
        },
    )
    .await;
    let number_after = |word: &str| -> usize {
        let words: Vec<&str> = sent_line.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| w.trim_end_matches([',', ':']) == word)
            .unwrap();
        words[i - 1].parse().unwrap()
    };
    let (sent, rejected) = (number_after("lines"), number_after("rejected"));
    assert!(sent > 1000, "{sent_line}");

    // The same lines, regenerated here.
    let rate: f64 = services["generator"]["environment"]["LAMBDA_RATE"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut generator = Generator::new(GeneratorConfig {
        seed: SEED,
        start_ms,
        rate: rate / SPEEDUP,
        ..GeneratorConfig::default()
    });
    let lines: Vec<Vec<u8>> = (0..sent).map(|_| generator.next_line().bytes).collect();
    let (_, _, max_ts) = fold(&lines);
    let boundary = (max_ts - 60_000).div_euclid(MINUTE) * MINUTE;

    // Wait for the speed layer and a batch run to have everything.
    let base = format!("http://{}", stack.addresses["serve"]);
    let status = caught_up(&client, &base, &stack).await;
    // Two speed instances in one group, found by serving in the store,
    // each owning some partitions.
    let members = status["speed_group"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{status}");
    for member in members {
        assert_eq!(member["ok"], true, "{status}");
        assert!(member["partitions"].as_u64() > Some(0), "{status}");
    }
    assert_eq!(
        status["batch"]["boundary"].as_i64(),
        Some(boundary),
        "B after the last batch run"
    );
    assert!(
        status["batch"]["runs_ok"].as_u64().unwrap() > 0,
        "the runner's status reaches serve"
    );
    // The batch service's engine is auto; without the spark profile
    // (spark-connect does not resolve here) its runs compute on DuckDB.
    assert_eq!(
        status["batch"]["last_run"]["engine"], "duckdb",
        "{}",
        status["batch"]
    );

    let (from, to) = (start_ms - 15 * MINUTE, start_ms + 30 * MINUTE);
    let range = format!("from={from}&to={to}");
    let Checked {
        funnel,
        batch_buckets,
        speed_buckets,
        ..
    } = check_answers(&client, &base, &lines, from, to).await;
    assert!(
        batch_buckets > 3 && speed_buckets >= 1,
        "both layers answered: {batch_buckets} batch, {speed_buckets} speed"
    );
    eprintln!(
        "compose: {sent} lines sent, {rejected} rejected; B = {boundary}; {batch_buckets} batch and {speed_buckets} speed buckets equal the fold"
    );
    let ingest_metrics = text(
        &client,
        format!("http://{}/metrics", stack.addresses["ingest"]),
    )
    .await;
    assert!(
        ingest_metrics.contains(&format!(
            "lambda_ingest_lines_total{{outcome=\"rejected\"}} {rejected}"
        )),
        "{ingest_metrics}"
    );

    check_monitoring(&venv, &services, &stack.addresses, &client).await;

    // Interop: a third-party Kafka client writes to the topics directly.
    let newest = funnel["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|b| b["clicks"].as_u64().unwrap() > 0)
        .expect("a bucket with clicks")
        .clone();
    let at = newest["start"].as_i64().unwrap() + 1_000;
    assert!(at >= boundary, "the new clicks land on the speed side");
    let good: Vec<String> = (0..3)
        .map(|i| {
            json!({"event_id": format!("kcat-click-{i}"), "event_type": "click", "ts": at,
                   "user_id": format!("third-party-{i}"), "campaign_id": "interop"})
            .to_string()
        })
        .chain(std::iter::once(
            json!({"event_id": "kcat-temp-0", "event_type": "sensor_reading", "ts": at,
                   "device_id": "dev-third-party", "sensor": "temperature", "value": 21.5})
            .to_string(),
        ))
        .collect();
    let bad = [
        "{\"event_id\": \"kcat-bad-0\", \"event_type\": \"click\"".to_string(), // cut short
        json!({"event_id": "kcat-bad-1", "event_type": "purchase", "ts": at, "user_id": "u"})
            .to_string(), // no amount_cents
        json!({"event_id": "kcat-bad-2", "event_type": "alarm", "ts": at, "device_id": "d",
               "alarm": "overheat", "severity": "high"})
        .to_string(), // an IoT event on the funnel topic
    ];
    produce(&venv, &broker.address, &good, false);
    produce(&venv, &broker.address, &bad, true);

    eventually(
        "the third-party events counted",
        Duration::from_secs(30),
        || async {
            let body = get(
                &client,
                format!("{base}/api/v1/funnel?{range}&step=1m&campaign_id=interop"),
            )
            .await;
            let clicks: u64 = body["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["clicks"].as_u64().unwrap())
                .sum();
            let iot = get(
                &client,
                format!("{base}/api/v1/iot?{range}&step=1m&device_id=dev-third-party"),
            )
            .await;
            let readings: u64 = iot["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| b["sensors"].as_array().unwrap().iter())
                .map(|s| s["count"].as_u64().unwrap())
                .sum();
            assert!(
                clicks <= 3 && readings <= 1,
                "counted more than was produced: {clicks} clicks, {readings} readings"
            );
            if clicks == 3 && readings == 1 {
                Ok(())
            } else {
                Err(format!("{clicks} clicks, {readings} readings"))
            }
        },
    )
    .await;

    // The bad ones are in dead-letter, each with its reason and where it came from.
    let log = KafkaLog::open(
        KafkaConfig::from_url_tail(&format!("{}?probe_end=true", broker.address)).unwrap(),
    )
    .unwrap();
    let dead = eventually(
        "the bad records in dead-letter",
        Duration::from_secs(30),
        || async {
            let dead = read_all(&log, "dead-letter").await;
            let from_topic: Vec<(String, String, String)> = dead
                .iter()
                .filter_map(|r| {
                    let source = String::from_utf8_lossy(r.record.header("source")?).to_string();
                    source.starts_with("funnel-events/").then(|| {
                        (
                            String::from_utf8_lossy(&r.record.value).to_string(),
                            String::from_utf8_lossy(r.record.header("reason").unwrap_or_default())
                                .to_string(),
                            source,
                        )
                    })
                })
                .collect();
            if from_topic.len() >= bad.len() {
                Ok(from_topic)
            } else {
                Err(format!("{from_topic:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        dead.len(),
        bad.len(),
        "one dead letter per bad record: {dead:?}"
    );
    // Each holds the original bytes and a reason naming the problem.
    for (line, expected) in bad.iter().zip(["json", "amount_cents", "iot-events"]) {
        let (_, reason, source) = dead
            .iter()
            .find(|(value, _, _)| value == line)
            .unwrap_or_else(|| panic!("{line} is not in dead-letter: {dead:?}"));
        assert!(reason.contains(expected), "{line}: {reason} ({source})");
    }
    drop(stack);
}

/// Runs `infra/kafka-produce.py` with `lines` on stdin.
fn produce(venv: &Path, bootstrap: &str, lines: &[String], raw: bool) {
    let mut command = Command::new(venv.join("bin/python"));
    command
        .arg(manifest_dir().join("infra/kafka-produce.py"))
        .args(["--bootstrap", bootstrap]);
    if raw {
        command.arg("--raw");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running infra/kafka-produce.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kafka-produce.py failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["produced"].as_u64(), Some(lines.len() as u64));
}

/// Waits until the speed layer has consumed everything and a batch run has
/// compacted everything, as serving's status tells.
async fn caught_up(client: &reqwest::Client, base: &str, stack: &Stack) -> Value {
    eventually(
        "the layers catching up",
        Duration::from_secs(120),
        || async {
            let status = get(client, format!("{base}/api/v1/status")).await;
            let all_caught_up = |section: &str| {
                status[section]["partitions"]
                    .as_array()
                    .is_some_and(|ps| !ps.is_empty() && ps.iter().all(|p| p["lag"] == 0))
            };
            if all_caught_up("speed") && all_caught_up("batch") {
                Ok(status)
            } else {
                Err(format!("{status}\n{}", stack.logs()))
            }
        },
    )
    .await
}

/// Where a service mounts the stack's named volumes (the top-level `volumes`),
/// in either of the forms `docker-compose config` writes: `NAME:TARGET[:MODE]`
/// or `{type: volume, source: NAME, target: TARGET}`.
fn named_volume_targets(config: &Value, service: &str) -> Vec<String> {
    let named = config["volumes"].as_object().cloned().unwrap_or_default();
    let mut targets = Vec::new();
    for mount in config["services"][service]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let (source, target) = match mount {
            Value::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default().to_string();
                (source, parts.next().unwrap_or_default().to_string())
            }
            long => (
                long["source"].as_str().unwrap_or_default().to_string(),
                long["target"].as_str().unwrap_or_default().to_string(),
            ),
        };
        if named.contains_key(&source) {
            targets.push(target.trim_end_matches('/').to_string());
        }
    }
    targets
}

/// What survives a re-created container, and what comes back by itself:
/// Kafka's log dirs lie in its named volume (the image's default,
/// `/tmp/kraft-combined-logs`, does not, and the speed and batch volumes keep
/// offsets into that log); every long-running service restarts unless
/// stopped, and the init jobs other services wait for to complete do not.
#[test]
fn the_compose_file_keeps_kafkas_log_and_restarts_long_running_services() {
    let config = compose_config(&venv());
    let services = config["services"].as_object().expect("services");

    let kafka_volumes = named_volume_targets(&config, "kafka");
    assert!(
        !kafka_volumes.is_empty(),
        "kafka mounts no named volume: {}",
        services["kafka"]["volumes"]
    );
    let log_dirs = services["kafka"]["environment"]["KAFKA_LOG_DIRS"]
        .as_str()
        .expect("kafka sets KAFKA_LOG_DIRS (the image's default is outside any volume)");
    for dir in log_dirs.split(',').map(|d| d.trim().trim_end_matches('/')) {
        assert!(
            kafka_volumes
                .iter()
                .any(|target| dir == target || dir.starts_with(&format!("{target}/"))),
            "kafka's log dir {dir} is not in a named volume (mounted at {kafka_volumes:?})"
        );
    }

    let init_jobs: BTreeSet<&str> = services
        .values()
        .filter_map(|s| s["depends_on"].as_object())
        .flatten()
        .filter(|(_, dep)| dep["condition"] == "service_completed_successfully")
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        init_jobs.contains("kafka-init") && init_jobs.contains("minio-init"),
        "the init jobs are waited for: {init_jobs:?}"
    );
    for (name, service) in services {
        let restart = service["restart"].as_str();
        if init_jobs.contains(name.as_str()) {
            assert!(
                matches!(restart, None | Some("no")),
                "{name} runs once, but restarts: {restart:?}"
            );
        } else {
            assert_eq!(
                restart,
                Some("unless-stopped"),
                "{name} runs for good and must restart unless stopped"
            );
        }
    }
}

/// `--profile spark` adds a Spark master, two workers and a Connect server
/// (the official image) wired to each other and to MinIO, which the default
/// stack leaves out; the batch service's engine is `auto` (Spark when the
/// profile's Connect server answers, DuckDB when it does not), with
/// settings `lambda batch` accepts; `LAMBDA_BATCH_ENGINE` still chooses.
#[test]
fn the_spark_profile_adds_a_cluster_the_batch_service_uses() {
    let venv = venv();
    let spark_services = [
        "spark-master",
        "spark-worker-1",
        "spark-worker-2",
        "spark-connect",
    ];
    // Only the Spark services belong to the profile (docker-compose 1.29's
    // `config` lists every service, with its profiles).
    let plain = compose_config(&venv);
    for (name, service) in plain["services"].as_object().expect("services") {
        let profiles = strings(&service["profiles"]);
        if spark_services.contains(&name.as_str()) {
            assert_eq!(profiles, ["spark"], "{name}");
        } else {
            assert!(
                profiles.is_empty(),
                "{name} is left out of the default stack: {profiles:?}"
            );
        }
    }
    // The batch service's engine is auto: the profile alone moves its
    // views to Spark (without it, spark-connect does not resolve and runs
    // use DuckDB — the stack test below runs it so).
    assert_eq!(
        plain["services"]["batch"]["environment"]["LAMBDA_BATCH_ENGINE"],
        "auto"
    );

    let config = compose_config_with(&venv, &["spark"], &[]);
    let services = config["services"].as_object().expect("services");
    for name in spark_services {
        let image = services[name]["image"].as_str().unwrap_or_default();
        assert!(
            image.starts_with("apache/spark:4."),
            "{name}: image {image}"
        );
    }
    let command = |name: &str| strings(&services[name]["command"]).join(" ");
    assert!(command("spark-master").contains("org.apache.spark.deploy.master.Master"));
    for worker in ["spark-worker-1", "spark-worker-2"] {
        assert!(
            command(worker).contains("deploy.worker.Worker")
                && command(worker).ends_with("spark://spark-master:7077"),
            "{worker}: {}",
            command(worker)
        );
    }
    let connect = command("spark-connect");
    for part in [
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master spark://spark-master:7077",
        "spark.connect.grpc.binding.port=15002",
        "org.apache.hadoop:hadoop-aws:",
        "spark.hadoop.fs.s3a.endpoint=http://minio:9000",
        "spark.hadoop.fs.s3a.path.style.access=true",
    ] {
        assert!(
            connect.contains(part),
            "spark-connect lacks {part}: {connect}"
        );
    }
    let env = &services["batch"]["environment"];
    assert_eq!(env["LAMBDA_BATCH_ENGINE"], "auto");
    let url = env["LAMBDA_SPARK_URL"].as_str().expect("LAMBDA_SPARK_URL");
    assert_eq!(url, "sc://spark-connect:15002");
    // The batch service's settings are ones the batch layer accepts, and
    // its lake is one Spark reads (s3:// as s3a://).
    assert_eq!(
        lambda_batch::BatchEngine::from_flags("auto", Some(url)).unwrap(),
        lambda_batch::BatchEngine::Auto(lambda_batch::spark::SparkConfig::new(url))
    );
    // LAMBDA_BATCH_ENGINE still chooses (spark: required).
    let required = compose_config_with(&venv, &["spark"], &[("LAMBDA_BATCH_ENGINE", "spark")]);
    assert_eq!(
        required["services"]["batch"]["environment"]["LAMBDA_BATCH_ENGINE"],
        "spark"
    );
    let lake = env["LAMBDA_LAKE_URL"].as_str().expect("LAMBDA_LAKE_URL");
    assert!(lake.starts_with("s3://"), "{lake}");
}

/// The topics the compose stack creates before the pipeline starts carry
/// the contract's settings (the pipeline's own creation is skipped for a
/// topic that exists): the record limit with its headroom on every topic,
/// and `dead-letter`'s own retention.
#[test]
fn the_compose_topics_carry_the_record_limit_and_dead_letters_retention() {
    use lambda_events::limits;
    let config = compose_config(&venv());
    let command: String = match &config["services"]["kafka-init"]["command"] {
        Value::Array(parts) => parts.iter().filter_map(Value::as_str).collect(),
        other => other.as_str().unwrap_or_default().to_string(),
    };
    let line = |topic: &str| {
        command
            .lines()
            .find(|l| l.contains(&format!("--topic {topic} ")))
            .unwrap_or_else(|| panic!("kafka-init creates {topic}: {command}"))
            .to_string()
    };
    let max_message = format!(
        "--config max.message.bytes={}",
        limits::MAX_RECORD_BYTES + 64 * 1024
    );
    for topic in ["funnel-events", "iot-events", "dead-letter"] {
        assert!(
            line(topic).contains(&max_message),
            "{topic}: {}",
            line(topic)
        );
    }
    let dead_letter = line("dead-letter");
    for setting in [
        format!("--config retention.ms={}", limits::DEAD_LETTER_RETENTION_MS),
        format!(
            "--config retention.bytes={}",
            limits::DEAD_LETTER_RETENTION_BYTES
        ),
    ] {
        assert!(dead_letter.contains(&setting), "{setting} in {dead_letter}");
    }
}

/// The image's build copies every workspace member's manifest for its
/// dependency layer; a member missing there breaks `docker compose build`.
#[test]
fn the_dockerfile_copies_every_workspace_member() {
    let cargo = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).unwrap();
    let members_line = cargo
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("workspace members");
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 6);
    let dockerfile = std::fs::read_to_string(manifest_dir().join("infra/Dockerfile")).unwrap();
    for member in members {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "infra/Dockerfile does not copy {member}/Cargo.toml"
        );
        assert!(
            dockerfile.lines().any(|l| l.contains("for crate in")
                && l.split_whitespace()
                    .any(|w| w == member || w == format!("{member};"))),
            "infra/Dockerfile does not stub {member}'s sources"
        );
    }
}

/// A YAML file as JSON (PyYAML, in the tests' virtualenv with docker-compose).
fn yaml(venv: &Path, file: &Path) -> Value {
    let output = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The metric names in a Prometheus exposition.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Prometheus scrapes every app service the compose file runs, at the port
/// it listens on; Grafana's provisioned dashboard asks only for metrics those
/// services expose (from the role a panel names, when it names one), through
/// the provisioned data source.
async fn check_monitoring(
    venv: &Path,
    services: &serde_json::Map<String, Value>,
    addresses: &BTreeMap<String, String>,
    client: &reqwest::Client,
) {
    let root = manifest_dir();
    let prometheus = yaml(venv, &root.join("infra/prometheus/prometheus.yml"));
    let mut by_role: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        for group in job["static_configs"].as_array().unwrap() {
            let role = group["labels"]["role"].as_str().unwrap().to_string();
            for target in group["targets"].as_array().unwrap() {
                let (host, port) = target.as_str().unwrap().split_once(':').unwrap();
                let listen = services[host]["environment"]["LAMBDA_LISTEN"]
                    .as_str()
                    .unwrap_or_else(|| panic!("prometheus scrapes {host}, which listens nowhere"));
                assert!(
                    listen.ends_with(&format!(":{port}")),
                    "{host} listens on {listen}, scraped on {port}"
                );
                let exposition = text(client, format!("http://{}{path}", addresses[host])).await;
                by_role
                    .entry(role.clone())
                    .or_default()
                    .extend(metric_names(&exposition));
            }
        }
    }
    for role in ["ingest", "speed", "batch", "serve"] {
        assert!(
            by_role.contains_key(role),
            "prometheus does not scrape {role}"
        );
    }
    let compose_grafana = &services["grafana"];
    let datasources = yaml(
        venv,
        &root.join("infra/grafana/provisioning/datasources/prometheus.yml"),
    );
    let uid = datasources["datasources"][0]["uid"].as_str().unwrap();
    assert!(
        compose_grafana["volumes"]
            .to_string()
            .contains("infra/grafana/provisioning")
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("infra/grafana/dashboards/lambda-pipeline.json"))
            .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("lambda_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let after = &rest[at + name.len()..];
                let role = after
                    .strip_prefix("{")
                    .and_then(|labels| labels.split_once("role=\""))
                    .map(|(_, r)| r.split('"').next().unwrap().to_string());
                let exposed = match &role {
                    Some(role) => by_role[role].contains(&name),
                    None => by_role.values().any(|names| names.contains(&name)),
                };
                assert!(
                    exposed,
                    "panel {:?} asks for {name} (role {role:?}), which no scraped service exposes",
                    panel["title"]
                );
                rest = after;
            }
        }
    }
}
