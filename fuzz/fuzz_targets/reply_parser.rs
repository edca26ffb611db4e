//! Upstream reply parsing: the resumable scanner that finds where each RESP2/RESP3 reply ends
//! (shared and dedicated connections), redis-protocol's decoding of a complete frame, and the
//! handshake reply check.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use statecar::protocol::ReplyScanner;
use statecar::upstream::connect::{ServerInfo, check_handshake_reply, decode_reply};

/// Frame lengths found scanning `input` in `chunk`-byte growing prefixes (resuming each time),
/// and whether it ended in an error.
fn frames(input: &[u8], chunk: usize) -> (Vec<usize>, bool) {
    let mut scanner = ReplyScanner::default();
    let mut start = 0;
    let mut visible = 0;
    let mut out = Vec::new();
    while visible < input.len() {
        visible = (visible + chunk).min(input.len());
        loop {
            match scanner.scan(&input[start..visible]) {
                Ok(Some(len)) => {
                    assert!(len > 0 && start + len <= visible, "frame outside the input");
                    scanner.reset();
                    out.push(len);
                    start += len;
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let whole = frames(input, input.len().max(1));
    let pieces = frames(input, usize::from(knobs & 0x1f) + 1);
    assert_eq!(
        whole, pieces,
        "scanner result depends on how the input was split"
    );
    let mut at = 0;
    for len in whole.0 {
        let frame = Bytes::copy_from_slice(&input[at..at + len]);
        at += len;
        // Anything the scanner calls one frame is safe to hand to the decoder.
        let _ = decode_reply(&frame);
        let mut info = ServerInfo::default();
        let _ = check_handshake_reply("fuzz:1", usize::from(knobs & 1), &frame, &mut info);
    }
});
