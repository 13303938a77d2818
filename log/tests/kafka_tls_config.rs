//! The Kafka backend with the README's MSK settings (TLS and SASL/SCRAM):
//! the clients are created, which needs librdkafka built with OpenSSL
//! (rdkafka's `ssl` feature). Without it, creating any client with
//! `security.protocol=SASL_SSL` fails with `Unsupported value "SASL_SSL" for
//! configuration property "security.protocol": OpenSSL not available at build
//! time`. No broker is contacted: librdkafka connects lazily and there is no
//! broker at `b-1.example`; every open runs under a time limit so a client
//! that did wait on the network fails the test instead of hanging it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use lambda_log::{EmbeddedConfig, KafkaConfig, LogError};
use rdkafka::config::ClientConfig;

/// The README's MSK example, with a short request timeout.
const MSK_URL: &str = "kafka://b-1.example:9096?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.username=u&sasl.password=p&replication_factor=3&request_timeout_ms=1000";

/// How long creating and dropping the clients may take: they must not wait on
/// the network.
const OPEN_LIMIT: Duration = Duration::from_secs(20);

/// Opens the log `url` names (as the roles do, through `lambda_log::open`) and
/// closes it again, on a thread of its own, failing if that takes longer than
/// [`OPEN_LIMIT`].
fn open_and_drop(url: &'static str) -> Result<(), LogError> {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let opened = runtime.block_on(lambda_log::open(url, EmbeddedConfig::default()));
        // Dropping the clients is part of what must not wait on the network.
        let _ = done.send(opened.map(drop));
    });
    match outcome.recv_timeout(OPEN_LIMIT) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => {
            panic!("opening {url} took longer than {OPEN_LIMIT:?}: it waits on the network")
        }
        Err(RecvTimeoutError::Disconnected) => panic!("opening {url} panicked"),
    }
}

#[test]
fn the_msk_url_parses_into_librdkafka_properties() {
    let tail = MSK_URL.strip_prefix("kafka://").unwrap();
    let config = KafkaConfig::from_url_tail(tail).expect("the MSK url parses");
    assert_eq!(config.bootstrap_servers, "b-1.example:9096");
    assert_eq!(config.replication_factor, 3);
    assert_eq!(config.request_timeout, Duration::from_millis(1000));
    let options: Vec<(&str, &str)> = config
        .client_options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        options,
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
        ]
    );
}

#[test]
fn librdkafka_is_built_with_tls_and_scram() {
    let native = ClientConfig::new()
        .create_native_config()
        .expect("an empty librdkafka config");
    let features = native.get("builtin.features").expect("builtin.features");
    let features: Vec<&str> = features.split(',').collect();
    for needed in ["ssl", "sasl_scram"] {
        assert!(
            features.contains(&needed),
            "librdkafka lacks {needed} (builtin.features: {features:?}): build rdkafka with its ssl feature"
        );
    }
}

#[test]
fn the_msk_url_creates_the_kafka_clients() {
    if let Err(error) = open_and_drop(MSK_URL) {
        panic!(
            "the kafka backend could not create its clients with SASL_SSL and SCRAM-SHA-512: {error}"
        );
    }
}

#[test]
fn an_unknown_security_protocol_is_named_in_the_error() {
    let error = open_and_drop("kafka://b-1.example:9096?security.protocol=SASL_TLS")
        .expect_err("security.protocol=SASL_TLS is not a protocol librdkafka knows");
    let message = error.to_string();
    assert!(
        message.contains("security.protocol") && message.contains("SASL_TLS"),
        "the error names neither the property nor the value: {message}"
    );
    // A setting to fix, not a broker to wait for: no caller retries it.
    assert!(
        matches!(error, LogError::Config(_)) && !error.is_transient(),
        "{error:?}"
    );
}
