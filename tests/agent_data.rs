//! The test-data generators (tests/common/agent_data.rs) produce what they promise: valid
//! JSON, deterministic, of the sizes and compressibility the benchmarks and tests rely on.

mod common;

use common::agent_data::*;
use statecar::state::codec::Codec;

#[test]
fn validator_sanity() {
    assert!(is_valid_json(
        br#"{"a":[1,-2.5,"x\"y",true,null,{}],"b":{}}"#
    ));
    assert!(!is_valid_json(br#"{"a":1,}"#));
    assert!(!is_valid_json(br#"{"a":"unterminated}"#));
    assert!(!is_valid_json(br#"[1 2]"#));
}

#[test]
fn sessions_are_deterministic_valid_and_sized() {
    for seed in 0..20u64 {
        for target in [1024usize, 4096, 16 * 1024, 256 * 1024] {
            let a = agent_session_json(seed, target);
            assert_eq!(a, agent_session_json(seed, target));
            assert!(is_valid_json(&a), "seed {seed} target {target}");
            assert_eq!(a.len(), target, "seed {seed}");
        }
    }
    assert_ne!(agent_session_json(1, 4096), agent_session_json(2, 4096));
    for target in [0usize, 1, 50, 300, 700] {
        let a = agent_session_json(3, target);
        assert!(is_valid_json(&a), "target {target}");
        assert!(a.len() >= target);
    }
}

#[test]
fn sessions_have_the_expected_ingredients() {
    let doc = String::from_utf8(agent_session_json(11, 64 * 1024)).unwrap_or_default();
    for needle in [
        "\"role\":\"user\"",
        "\"role\":\"assistant\"",
        "\"role\":\"tool\"",
        "\"tool_calls\"",
        "\"arguments\":\"{\\\"",
        "\"embedding\":[",
        "\"created_at\":\"20",
    ] {
        assert!(doc.contains(needle), "missing {needle}");
    }
}

#[test]
fn session_compressibility_is_realistic() {
    // A 1 KiB document is mostly ids, timestamps and a few sentences, and LZ4 has little
    // history to match against; larger ones settle in the 2-3x range for LZ4 and 3-5x for
    // zlib, like real session JSON, rather than the 50x of repeated filler.
    for (target, lz4_min) in [(1024usize, 1.1), (16 * 1024, 2.0), (256 * 1024, 2.0)] {
        for seed in 0..3 {
            let doc = agent_session_json(seed, target);
            let ratio = |c: Codec| doc.len() as f64 / c.compress(&doc).len() as f64;
            let lz4 = ratio(Codec::Lz4);
            assert!((lz4_min..=5.0).contains(&lz4), "lz4 {lz4:.2} at {target}");
            let zlib = ratio(Codec::Zlib);
            assert!((lz4..=8.0).contains(&zlib), "zlib {zlib:.2} at {target}");
        }
    }
}

#[test]
fn iso8601_known_dates() {
    let mut s = String::new();
    iso8601(&mut s, 0);
    assert_eq!(s, "1970-01-01T00:00:00.000Z");
    s.clear();
    iso8601(&mut s, 1_709_210_096_789); // 2024-02-29, a leap day
    assert_eq!(s, "2024-02-29T12:34:56.789Z");
}

#[test]
fn checkpoints_grow_as_an_agent_session_does() {
    for seed in 0..5 {
        let mut c = Checkpoints::new(seed);
        let first = c.checkpoint();
        assert!(is_valid_json(&first));
        assert!(
            (1500..3000).contains(&first.len()),
            "step 1: {}",
            first.len()
        );
        c.advance(39);
        assert_eq!(c.step_number(), 40);
        let forty = c.checkpoint();
        assert!(is_valid_json(&forty));
        assert!(
            (60_000..90_000).contains(&forty.len()),
            "step 40: {}",
            forty.len()
        );
        let text = String::from_utf8_lossy(&forty);
        for needle in [
            "\"channel_values\":{\"messages\":[",
            "\"AIMessage\"",
            "\"ToolMessage\"",
            "\"tool_calls\":[{\"name\":",
            "\"embedding\":[",
            "\"channel_versions\":{",
            "\"metadata\":{\"source\":\"loop\",\"step\":40",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }
    // Deterministic, and each checkpoint repeats the one before (apart from a few fields).
    let run = |seed| {
        let mut c = Checkpoints::new(seed);
        c.advance(9);
        (c.checkpoint(), {
            c.step();
            c.checkpoint()
        })
    };
    assert_eq!(run(7), run(7));
    let (a, b) = run(7);
    let z = |v: &[u8]| Codec::Zstd.compress(v).len();
    let both = z(&[a.clone(), b.clone()].concat());
    assert!(
        both < z(&b) + z(&a) / 5,
        "consecutive checkpoints share almost everything"
    );
    // A bounded context keeps checkpoints level.
    let mut c = Checkpoints::new(3).keep_last(40);
    c.advance(300);
    let long = c.checkpoint();
    assert!(is_valid_json(&long));
    assert!(long.len() < 120_000, "{}", long.len());
}

#[test]
fn small_documents_are_records_of_half_to_two_kilobytes() {
    let docs: Vec<Vec<u8>> = (0..2000).map(|i| small_document(1, i)).collect();
    for (i, d) in docs.iter().enumerate() {
        assert!(is_valid_json(d), "doc {i}");
        assert!((500..=2048).contains(&d.len()), "doc {i}: {}", d.len());
    }
    assert_eq!(docs[5], small_document(1, 5));
    assert_ne!(docs[5], docs[6]);
    // On their own they compress little, as real small records do.
    let plain: usize = docs.iter().map(Vec::len).sum();
    let zstd: usize = docs.iter().map(|d| Codec::Zstd.compress(d).len()).sum();
    let r = zstd as f64 / plain as f64;
    assert!((0.45..0.8).contains(&r), "zstd alone stores {r:.2}");
}
