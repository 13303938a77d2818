//! Fuzz target: any bytes as the only segment of a partition of the
//! embedded log. Opening either recovers (a torn tail is cut) or refuses with
//! an error naming the file and offset; it never panics, and whatever it
//! recovers can be read back.
#![no_main]

use lambda_log::{EmbeddedConfig, EmbeddedLog, EventLog, FetchPosition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let partition = dir.path().join("fuzz").join("0");
    std::fs::create_dir_all(&partition).unwrap();
    std::fs::write(dir.path().join("fuzz").join("topic.json"), br#"{"partitions":1}"#).unwrap();
    std::fs::write(partition.join(format!("{:020}.log", 0)), bytes).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
