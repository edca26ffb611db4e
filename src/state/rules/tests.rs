//! Rules as configured: the TOML shape and its defaults, one-line validation errors naming the
//! field, and first-match-wins matching that agrees with the glob matcher.

use super::*;
use crate::state::glob::glob_match;
use crate::state::glob::tests::{EXPECTED, KEYS};

fn config(pattern: &str) -> RuleConfig {
    RuleConfig {
        pattern: pattern.to_string(),
        compression: default_compression(),
        min_size: default_min_size(),
        versioning: default_versioning(),
        max_versions: default_max_versions(),
        default_ttl_s: None,
        on_corruption: default_on_corruption(),
        compression_level: None,
        delta: None,
        delta_chain: None,
        delta_cache_mb: None,
        dictionary: None,
    }
}

#[derive(Deserialize)]
struct File {
    state: Vec<RuleConfig>,
}

#[test]
fn toml_shape_parses() {
    let text = r#"
[[state]]
pattern = "session:*"
compression = "lz4"      # lz4 | zlib | none | zstd
min_size = 64
versioning = true
max_versions = 10
default_ttl_s = 3600

[[state]]
pattern = "agent:*"
"#;
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    let rules: Vec<Rule> = file
        .state
        .iter()
        .enumerate()
        .map(|(i, c)| Rule::from_config(i, c))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rules[0],
        Rule {
            pattern: b"session:*".to_vec(),
            codec: Codec::Lz4,
            min_size: 64,
            versioning: true,
            max_versions: 10,
            default_ttl_ms: Some(3_600_000),
            on_corruption: OnCorruption::Error,
            index: 0,
            level: ZSTD_RULE_LEVEL,
            delta: Delta {
                on: false,
                chain: DEFAULT_DELTA_CHAIN,
                cache_bytes: 64 << 20,
            },
            dictionary: false,
        }
    );
    // Defaults.
    assert_eq!(file.state[1], config("agent:*"));
    assert_eq!(rules[1].default_ttl_ms, None);

    let unknown = toml::from_str::<File>("[[state]]\npattern = \"a\"\ncompresion = \"lz4\"\n");
    assert!(unknown.is_err(), "unknown fields must be rejected");
}

#[test]
fn validation_errors_name_the_field() {
    let check = |c: RuleConfig, want: &str| {
        assert_eq!(Rule::from_config(1, &c), Err(want.to_string()));
    };
    check(
        RuleConfig {
            compression: "lz5".into(),
            ..config("s:*")
        },
        "state[1].compression: unknown codec \"lz5\" (expected lz4, zlib, zstd or none)",
    );
    check(config(""), "state[1].pattern: must not be empty");
    check(
        RuleConfig {
            max_versions: 0,
            ..config("s:*")
        },
        "state[1].max_versions: 0 is out of range (expected 1 to 10000)",
    );
    check(
        RuleConfig {
            max_versions: 10_001,
            ..config("s:*")
        },
        "state[1].max_versions: 10001 is out of range (expected 1 to 10000)",
    );
    check(
        RuleConfig {
            default_ttl_s: Some(0),
            ..config("s:*")
        },
        "state[1].default_ttl_s: must be greater than 0 (leave it out for no expiry)",
    );
    check(
        RuleConfig {
            default_ttl_s: Some(u64::MAX / 100),
            ..config("s:*")
        },
        &format!("state[1].default_ttl_s: {} is too large", u64::MAX / 100),
    );
    check(
        RuleConfig {
            on_corruption: "ignore".into(),
            ..config("s:*")
        },
        "state[1].on_corruption: unknown value \"ignore\" (expected error or previous_version)",
    );
    check(
        RuleConfig {
            on_corruption: "previous_version".into(),
            versioning: false,
            ..config("s:*")
        },
        "state[1].on_corruption: previous_version needs versioning = true",
    );
    check(
        config(&"x*".repeat(1002)),
        "state[1].pattern: more than 1000 '*' groups, which Redis never matches",
    );
    // max_versions is irrelevant without versioning.
    let ok = Rule::from_config(
        0,
        &RuleConfig {
            versioning: false,
            max_versions: 0,
            compression: "ZSTD".into(),
            ..config("s:*")
        },
    );
    assert_eq!(ok.map(|r| r.codec), Ok(Codec::Zstd));
}

#[test]
fn delta_and_dictionary_options() {
    let zstd = |extra: &str| {
        let c: RuleConfig = toml::from_str(&format!(
            "pattern = \"s:*\"\ncompression = \"zstd\"\n{extra}"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        Rule::from_config(2, &c)
    };
    // Defaults: zstd versioned rules keep deltas at level 1; other codecs do not.
    let r = zstd("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.delta.on, r.level, r.delta.chain, r.dictionary),
        (true, 1, 64, false)
    );
    assert_eq!(r.delta.cache_bytes, 64 << 20);
    let lz4 = Rule::from_config(0, &config("s:*")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!lz4.delta.on);
    assert!(
        !zstd("versioning = false")
            .map(|r| r.delta.on)
            .unwrap_or(true)
    );
    assert!(
        !zstd("on_corruption = \"previous_version\"")
            .map(|r| r.delta.on)
            .unwrap_or(true)
    );
    let r = zstd("delta = false\ncompression_level = 7\ndelta_chain = 8\ndelta_cache_mb = 2\ndictionary = \"auto\"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.delta.on, r.level, r.delta.chain, r.dictionary),
        (false, 7, 8, true)
    );
    assert_eq!(r.delta.cache_bytes, 2 << 20);
    for (extra, want) in [
        (
            "compression_level = 23",
            "state[2].compression_level: 23 is out of range (expected -7 to 22)",
        ),
        (
            "delta = true\nversioning = false",
            "state[2].delta: needs versioning = true",
        ),
        (
            "delta = true\non_corruption = \"previous_version\"",
            "state[2].delta: cannot be combined with on_corruption = \"previous_version\" (older versions are read through the newest one); set delta = false",
        ),
        (
            "delta_chain = 0",
            "state[2].delta_chain: 0 is out of range (expected 1 to 10000)",
        ),
        (
            "delta_cache_mb = 0",
            "state[2].delta_cache_mb: 0 is out of range (expected 1 to 65536)",
        ),
        (
            "dictionary = \"yes\"",
            "state[2].dictionary: unknown value \"yes\" (expected none or auto)",
        ),
    ] {
        assert_eq!(zstd(extra), Err(want.to_string()), "{extra}");
    }
    let c: RuleConfig =
        toml::from_str("pattern = \"s:*\"\ncompression = \"lz4\"\ndictionary = \"auto\"")
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        Rule::from_config(0, &c),
        Err("state[0].dictionary: auto needs compression = \"zstd\"".to_string())
    );
    let c: RuleConfig = toml::from_str("pattern = \"s:*\"\ncompression_level = 3")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(Rule::from_config(0, &c).is_err(), "levels are zstd's");
    // Whole versions every delta_chain-th version, only when the history is longer.
    let r = zstd("max_versions = 100\ndelta_chain = 16").unwrap_or_else(|e| panic!("{e}"));
    assert!(r.full_version(32) && !r.full_version(33));
    let r = zstd("max_versions = 16\ndelta_chain = 16").unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.full_version(32), "the window already bounds every chain");
}

fn rules(patterns: &[&str]) -> Rules {
    Rules::new(
        patterns
            .iter()
            .enumerate()
            .map(|(i, p)| Rule::from_config(i, &config(p)).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
    )
}

#[test]
fn first_match_wins() {
    let r = rules(&[
        "session:admin:*",
        "session:*",
        "agent:[0-9]*",
        "exact",
        "*:state",
    ]);
    let idx = |k: &[u8]| r.match_key(k).map(|rule| rule.index);
    assert_eq!(idx(b"session:admin:1"), Some(0));
    assert_eq!(idx(b"session:user:1"), Some(1));
    assert_eq!(idx(b"session:"), Some(1));
    assert_eq!(idx(b"agent:7x"), Some(2));
    assert_eq!(idx(b"agent:x7"), None);
    assert_eq!(idx(b"exact"), Some(3));
    assert_eq!(idx(b"exactly"), None);
    assert_eq!(idx(b"foo:state"), Some(4));
    assert_eq!(idx(b"other"), None);
    assert_eq!(idx(b""), None);
    assert_eq!(r.len(), 5);
    assert!(!r.is_empty());
    assert_eq!(r.iter().count(), 5);
    assert!(Rules::new(Vec::new()).is_empty());
    assert_eq!(rules(&["*"]).match_key(b"").map(|r| r.index), Some(0));
}

/// The prefix fast path must agree with glob_match on every table case.
#[test]
fn compiled_rules_agree_with_glob_match() {
    for (pattern, _) in EXPECTED {
        let rule = Rule {
            pattern: pattern.to_vec(),
            codec: Codec::None,
            min_size: 0,
            versioning: false,
            max_versions: 1,
            default_ttl_ms: None,
            on_corruption: OnCorruption::Error,
            index: 0,
            level: ZSTD_RULE_LEVEL,
            delta: Delta {
                on: false,
                chain: DEFAULT_DELTA_CHAIN,
                cache_bytes: 1 << 20,
            },
            dictionary: false,
        };
        let r = Rules::new(vec![rule]);
        for key in KEYS
            .iter()
            .copied()
            .chain([&b"session:abc"[..], b"abcabc", b"a\\c"])
        {
            assert_eq!(
                r.match_key(key).is_some(),
                glob_match(pattern, key, false),
                "{:?} {:?}",
                String::from_utf8_lossy(pattern),
                String::from_utf8_lossy(key)
            );
        }
    }
}
