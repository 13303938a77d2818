//! Fuzz target: any bytes as a speed layer checkpoint. Decoding restores a
//! state or names what is wrong; it never panics, and what it restores
//! encodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(state) = lambda_speed::checkpoint::decode(bytes, 60_000, 7_200_000) {
        let _ = lambda_speed::checkpoint::encode(&state);
    }
});
