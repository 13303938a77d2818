//! The Kafka backend against a real Kafka-protocol broker process (`tansu`,
//! installed by `./infra/test.sh`), started by the test on a free loopback
//! port with in-memory storage: the same conformance suite as every backend,
//! with topics created through the admin API.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lambda_log::conformance;
use lambda_log::{KafkaConfig, KafkaLog};

/// A broker process, killed on drop.
struct Broker {
    child: Child,
    address: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker() -> Broker {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
    let broker = Broker {
        child,
        address: format!("127.0.0.1:{port}"),
    };
    for _ in 0..300 {
        if std::net::TcpStream::connect(&broker.address).is_ok() {
            return broker;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("tansu did not listen on {}", broker.address);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_backend_passes_the_conformance_suite_on_a_real_broker() {
    let broker = start_broker();
    let log = KafkaLog::open(KafkaConfig::new(broker.address.clone())).expect("kafka log");
    conformance::run_all(Arc::new(log), "broker").await;
}
