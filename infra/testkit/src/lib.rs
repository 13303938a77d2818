//! Test support: starts the real servers the tests run against, each on a
//! free loopback port, each killed when dropped.
//!
//! - [`Tansu`]: a Kafka-protocol broker (`tansu`, in-memory storage);
//! - [`Moto`]: an S3-compatible server (`moto_server`), with a bucket.
//!
//! Both are installed by `./infra/test.sh`; a missing one is a test failure
//! that says how to install it, never a skipped test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod wait;

pub use wait::{
    POLL_INTERVAL, eventually, eventually_blocking, eventually_every, wait_blocking, wait_for_port,
};

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// The tests' Python virtualenv (docker-compose, confluent-kafka, pyarrow),
/// created by `./infra/test.sh` at `$LAMBDA_TEST_VENV` (default
/// `~/.cache/lambda-pipeline/venv`). A missing one fails the test, saying so.
pub fn venv() -> std::path::PathBuf {
    try_venv().unwrap_or_else(|missing| panic!("{missing}"))
}

/// [`venv`], or why there is none.
pub fn try_venv() -> Result<std::path::PathBuf, String> {
    let dir = match std::env::var_os("LAMBDA_TEST_VENV") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var("HOME").map_err(|_| "HOME is not set")?)
            .join(".cache/lambda-pipeline/venv"),
    };
    if !dir.join("bin/python").exists() {
        return Err(format!(
            "no Python virtualenv at {}: run ./infra/test.sh, which creates it",
            dir.display()
        ));
    }
    Ok(dir)
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `tansu` broker process.
#[derive(Debug)]
pub struct Tansu {
    _process: KillOnDrop,
    /// `127.0.0.1:PORT`, the bootstrap servers.
    pub address: String,
}

impl Tansu {
    /// Starts a broker with in-memory storage on a free port.
    pub fn start() -> Tansu {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start tansu ({e}): run ./infra/test.sh, which installs it (cargo install tansu --features dynostore)")
            });
        let tansu = Tansu {
            _process: KillOnDrop(child),
            address: format!("127.0.0.1:{port}"),
        };
        wait_for_port(&tansu.address, Duration::from_secs(30));
        tansu
    }

    /// The log URL for it. `probe_end` is on: tansu 0.6 reports the base
    /// offset of a partition's last batch as its end (see `KafkaConfig::probe_end`).
    pub fn log_url(&self) -> String {
        format!("kafka://{}?probe_end=true", self.address)
    }

    /// Creates a topic with the `tansu` CLI.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new("tansu")
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://{}", self.address))
            .args(["--partitions", &partitions.to_string(), topic])
            .stdout(Stdio::null())
            .status()
            .expect("running tansu topic create");
        assert!(status.success(), "tansu topic create {topic} failed");
    }
}

/// A `moto_server` S3 process with one bucket.
#[derive(Debug)]
pub struct Moto {
    _process: KillOnDrop,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
}

impl Moto {
    /// Starts the server on a free port and creates `bucket`.
    pub fn start(bucket: &str) -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}): run ./infra/test.sh, which installs it (pip install 'moto[server]')")
            });
        let moto = Moto {
            _process: KillOnDrop(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
        };
        let address = format!("127.0.0.1:{port}");
        eventually_blocking(
            &format!("moto_server creating bucket {bucket} on port {port}"),
            Duration::from_secs(30),
            || match put_bucket(&address, bucket) {
                Some(status) if (200..300).contains(&status) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
        moto
    }

    /// `object_store` options for an `s3://` store on this server (test
    /// credentials, plain HTTP, conditional puts).
    pub fn s3_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_conditional_put", "etag"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// `PUT /bucket` over plain HTTP/1.1; the response status, if any.
fn put_bucket(address: &str, bucket: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A Spark standalone cluster on loopback: a master, two one-core workers
/// and a Spark Connect server (client mode, executors on the workers), from
/// the `pyspark` distribution in the tests' virtualenv (Java 17). Each
/// process runs in its own process group, killed whole on drop (Spark's
/// scripts start Java under a shell).
#[derive(Debug)]
pub struct Spark {
    processes: Vec<KillGroupOnDrop>,
    /// `sc://127.0.0.1:PORT`, the Connect URL.
    pub connect_url: String,
    /// `http://127.0.0.1:PORT`, the master's web UI (`/json/` for its state).
    pub master_ui: String,
    /// The workers' web UIs, in start order.
    pub worker_uis: Vec<String>,
    /// `http://127.0.0.1:PORT`, the Connect server's application UI (its
    /// REST API under `/api/v1/applications` lists running jobs).
    pub driver_ui: String,
    /// Where each process's output goes (`master.log`, `worker-N.log`, `connect.log`).
    pub log_dir: std::path::PathBuf,
    _dir: TempDirGuard,
}

/// A process group killed (SIGKILL to the whole group) and reaped on drop.
#[derive(Debug)]
pub struct KillGroupOnDrop(pub Child);

impl KillGroupOnDrop {
    /// Kills the whole group now (a worker lost mid-job, say).
    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A directory removed on drop (no `tempfile` dependency here).
#[derive(Debug)]
struct TempDirGuard(std::path::PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Spark {
    /// The `pyspark` package directory in the tests' virtualenv: a whole
    /// Spark distribution (`bin/spark-class`, `jars/`).
    pub fn home() -> Result<std::path::PathBuf, String> {
        let venv = try_venv()?;
        let python = venv.join("bin/python");
        let out = Command::new(&python)
            .args([
                "-c",
                "import os, pyspark; print(os.path.dirname(pyspark.__file__))",
            ])
            .output()
            .map_err(|e| {
                format!(
                    "cannot run {} ({e}): run ./infra/test.sh, which makes the virtualenv",
                    python.display()
                )
            })?;
        if !out.status.success() {
            return Err(format!(
                "no pyspark in {}: run ./infra/test.sh, which installs it (pip install 'pyspark[connect]==4.3.0')",
                venv.display()
            ));
        }
        Ok(std::path::PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        ))
    }

    /// Starts the master, two workers (1 core, 1 GiB each) and the Connect
    /// server, and waits until both workers have registered and the Connect
    /// server listens (about a minute on 2 cores). Panics if it cannot (a
    /// test's way); [`Spark::try_start`] says why instead.
    pub fn start() -> Spark {
        Spark::try_start().unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// [`Spark::start`], or why the cluster could not start (no pyspark,
    /// no Java, a process that never listened: with the end of its log).
    /// Each process runs in the cluster's temporary directory (Spark
    /// writes `spark-warehouse/` and `metastore_db/` where it runs).
    pub fn try_start() -> Result<Spark, String> {
        let home = Spark::home()?;
        let dir = std::env::temp_dir().join(format!(
            "lambda-spark-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let guard = TempDirGuard(dir.clone());
        let (master_port, master_ui_port, connect_port) = (free_port(), free_port(), free_port());
        let master = format!("spark://127.0.0.1:{master_port}");
        let spawn =
            |name: &str, program: &str, args: &[String]| -> Result<KillGroupOnDrop, String> {
                use std::os::unix::process::CommandExt;
                let log_path = dir.join(format!("{name}.log"));
                let log = std::fs::File::create(&log_path)
                    .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
                let child = Command::new(home.join("bin").join(program))
                    .current_dir(&dir)
                    .args(args)
                    .env("SPARK_HOME", &home)
                    .env("SPARK_LOCAL_IP", "127.0.0.1")
                    .env("SPARK_LOG_DIR", &dir)
                    // Spark's launcher counts the Connect server as a daemon
                    // too: it gets the driver's heap (Spark refuses under 450 MB).
                    .env(
                        "SPARK_DAEMON_MEMORY",
                        if name == "connect" { "768m" } else { "256m" },
                    )
                    .env_remove("PYSPARK_PYTHON")
                    .stdout(Stdio::null())
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .map_err(|e| {
                        format!("cannot start Spark's {program} ({e}): is Java 17 installed?")
                    })?;
                Ok(KillGroupOnDrop(child))
            };
        // Waits for a process's port; a failure shows the end of its log.
        let listening = |name: &str, port: u16| {
            let log = dir.join(format!("{name}.log"));
            wait_blocking(
                &format!("Spark's {name} listening on 127.0.0.1:{port}"),
                Duration::from_secs(180),
                || match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(_) => Ok(()),
                    Err(error) => {
                        let text = std::fs::read_to_string(&log).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
                        Err(format!("{error}; the end of {}:\n{tail}", log.display()))
                    }
                },
            )
        };
        let s = |v: &str| v.to_string();
        let mut processes = vec![spawn(
            "master",
            "spark-class",
            &[
                s("org.apache.spark.deploy.master.Master"),
                s("--host"),
                s("127.0.0.1"),
                s("--port"),
                master_port.to_string(),
                s("--webui-port"),
                master_ui_port.to_string(),
            ],
        )?];
        let master_ui = format!("http://127.0.0.1:{master_ui_port}");
        listening("master", master_port)?;
        let mut worker_uis = Vec::new();
        for n in 1..=2 {
            let ui_port = free_port();
            let work = dir.join(format!("work-{n}"));
            std::fs::create_dir_all(&work)
                .map_err(|e| format!("creating {}: {e}", work.display()))?;
            processes.push(spawn(
                &format!("worker-{n}"),
                "spark-class",
                &[
                    s("org.apache.spark.deploy.worker.Worker"),
                    s("--host"),
                    s("127.0.0.1"),
                    s("--cores"),
                    s("1"),
                    s("--memory"),
                    s("1g"),
                    s("--webui-port"),
                    ui_port.to_string(),
                    s("--work-dir"),
                    work.display().to_string(),
                    master.clone(),
                ],
            )?);
            worker_uis.push(format!("http://127.0.0.1:{ui_port}"));
        }
        wait_blocking(
            "both Spark workers registered with the master",
            Duration::from_secs(180),
            || {
                let state = http_get(&format!("127.0.0.1:{master_ui_port}"), "/json/")
                    .ok_or("no answer")?;
                if state.contains("\"aliveworkers\" : 2") || state.contains("\"aliveworkers\":2") {
                    Ok(())
                } else {
                    Err("fewer than two alive workers".to_string())
                }
            },
        )?;
        let driver_ui_port = free_port();
        processes.push(spawn(
            "connect",
            "spark-submit",
            &[
                s("--class"),
                s("org.apache.spark.sql.connect.service.SparkConnectServer"),
                s("--name"),
                s("Spark Connect server"),
                s("--master"),
                master.clone(),
                s("--driver-memory"),
                s("768m"),
                s("--conf"),
                format!("spark.connect.grpc.binding.port={connect_port}"),
                s("--conf"),
                s("spark.cores.max=2"),
                s("--conf"),
                s("spark.executor.cores=1"),
                s("--conf"),
                s("spark.executor.memory=640m"),
                s("--conf"),
                s("spark.sql.shuffle.partitions=4"),
                s("--conf"),
                format!("spark.ui.port={driver_ui_port}"),
            ],
        )?);
        listening("connect", connect_port)?;
        Ok(Spark {
            processes,
            connect_url: format!("sc://127.0.0.1:{connect_port}"),
            master_ui,
            worker_uis,
            driver_ui: format!("http://127.0.0.1:{driver_ui_port}"),
            log_dir: dir.clone(),
            _dir: guard,
        })
    }

    /// Kills worker `n` (1 or 2) and its executors, as a lost host.
    pub fn kill_worker(&mut self, n: usize) {
        self.processes[n].kill();
    }

    /// Whether the Connect server's application is running a Spark job now.
    pub fn job_running(&self) -> bool {
        let address = self.driver_ui.trim_start_matches("http://");
        let Some(apps) = http_get(address, "/api/v1/applications") else {
            return false;
        };
        // [ { "id" : "app-…", …
        let Some(id) = apps
            .split('"')
            .skip_while(|t| *t != "id")
            .find(|t| t.starts_with("app-"))
        else {
            return false;
        };
        http_get(
            address,
            &format!("/api/v1/applications/{id}/jobs?status=running"),
        )
        .is_some_and(|jobs| jobs.contains("\"jobId\""))
    }

    /// The master's state (`/json/`), as text.
    pub fn master_json(&self) -> String {
        let address = self.master_ui.trim_start_matches("http://");
        http_get(address, "/json/").unwrap_or_default()
    }
}

/// `GET path` over plain HTTP/1.1: the body, if any answer came.
pub fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    // HTTP/1.0: the body whole, never chunked.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}
