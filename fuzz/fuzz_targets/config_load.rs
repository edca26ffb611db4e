//! The configuration loader: TOML text to a validated configuration. Any text must give a
//! configuration or a one-line error naming the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecar::config::{Config, FileConfig, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Files named by the input are read, never written; keep the fuzzer off the disk.
    if text.contains("_file") {
        return;
    }
    match FileConfig::parse(text, "fuzz.toml").map(|f| Config::build(f, &Overrides::default())) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) | Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
        }
    }
});
