//! Fuzz target: any request body through the collector's parser and the
//! event decoder. Nothing may panic; an accepted event must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(lines) = lambda_events::parse_body(body) {
        for line in lines {
            if let Ok(event) = line.result {
                let again = lambda_events::Event::from_json(&event.to_json())
                    .expect("the canonical form of an accepted event is valid");
                assert_eq!(again, event);
            }
        }
    }
    let _ = lambda_events::Event::from_log_record(body, "funnel-events", 1_767_225_600_000);
});
