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

pub use wait::{POLL_INTERVAL, eventually, eventually_blocking, eventually_every, wait_for_port};

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
    let dir = std::env::var_os("LAMBDA_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
                .join(".cache/lambda-pipeline/venv")
        });
    assert!(
        dir.join("bin/python").exists(),
        "no Python virtualenv at {}: run ./infra/test.sh, which creates it",
        dir.display()
    );
    dir
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
