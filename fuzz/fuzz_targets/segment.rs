//! Fuzz target: any bytes as the only segment of a partition of the
//! embedded log. Opening either recovers (a torn tail is cut) or refuses with
//! an error naming the file and offset; it never panics, and whatever it
//! recovers can be read back.
#![no_main]

use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog, FetchPosition};
use libfuzzer_sys::fuzz_target;

// The harness's own set-up (a temporary directory, its files, a runtime)
// fails only with the machine (a full /tmp), never with the input: it stops
// the run with the reason rather than report a finding.
const SETUP: &str = "fuzz harness set-up (temporary dir, files, runtime) needs a working /tmp";

fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect(SETUP);
    let partition = dir.path().join("fuzz").join("0");
    std::fs::create_dir_all(&partition).expect(SETUP);
    std::fs::write(dir.path().join("fuzz").join("topic.json"), br#"{"partitions":1}"#)
        .expect(SETUP);
    std::fs::write(partition.join(format!("{:020}.log", 0)), bytes).expect(SETUP);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect(SETUP);
    runtime.block_on(async {
        if let Ok(log) = EmbeddedLog::open(dir.path(), EmbeddedConfig::default()).await {
            let position = FetchPosition {
                topic: "fuzz".into(),
                partition: 0,
                offset: 0,
            };
            let _ = log
                .fetch(&[position], 1024, std::time::Duration::from_millis(1))
                .await;
            let _ = log.close().await;
        }
    });
});
