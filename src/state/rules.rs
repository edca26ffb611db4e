//! State rules: which keys are state keys, and the policy for each.
//!
//! Rules are an ordered list of Redis glob patterns (`glob.rs`); the first that matches a key
//! decides.

use serde::Deserialize;

use super::codec::{Codec, ZSTD_RULE_LEVEL};
use super::glob::{Compiled, MAX_STAR_NESTING, exceeds_star_nesting};

/// Largest accepted `max_versions`: history lives in Redis and every write trims it.
pub const MAX_VERSIONS_LIMIT: u32 = 10_000;

fn default_compression() -> String {
    "lz4".to_string()
}
fn default_min_size() -> usize {
    64
}
fn default_versioning() -> bool {
    true
}
fn default_max_versions() -> u32 {
    10
}
fn default_on_corruption() -> String {
    "error".to_string()
}

/// One `[[state]]` table of the configuration file, as written.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Redis glob pattern for the keys this rule covers.
    pub pattern: String,
    /// Codec name: lz4, zlib, zstd or none.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Values shorter than this are stored uncompressed.
    #[serde(default = "default_min_size")]
    pub min_size: usize,
    /// Whether writes keep a history of versions.
    #[serde(default = "default_versioning")]
    pub versioning: bool,
    /// How many versions the history keeps.
    #[serde(default = "default_max_versions")]
    pub max_versions: u32,
    /// Expiry applied when a write gives none, in seconds.
    #[serde(default)]
    pub default_ttl_s: Option<u64>,
    /// What a read does when the value fails verification: error or previous_version.
    #[serde(default = "default_on_corruption")]
    pub on_corruption: String,
    /// zstd level (-7 to 22); default [`ZSTD_RULE_LEVEL`].
    #[serde(default)]
    pub compression_level: Option<i32>,
    /// Keep older versions as deltas against their newer neighbour; default on for versioned
    /// zstd rules with `on_corruption = "error"`.
    #[serde(default)]
    pub delta: Option<bool>,
    /// At most this many deltas are read to decode any version: with a longer history every
    /// `delta_chain`-th version is kept whole. Default [`DEFAULT_DELTA_CHAIN`].
    #[serde(default)]
    pub delta_chain: Option<u32>,
    /// Memory for the current values the proxy keeps as delta bases, in MiB; default
    /// [`DEFAULT_DELTA_CACHE_MB`].
    #[serde(default)]
    pub delta_cache_mb: Option<u64>,
    /// "none" (default) or "auto": train a zstd dictionary from the rule's values.
    #[serde(default)]
    pub dictionary: Option<String>,
}

/// Default `delta_chain`: reading the oldest of 1,000 versions of a 70 KB checkpoint then
/// applies at most 63 deltas (docs/BENCHMARKS.md has the measured time).
pub const DEFAULT_DELTA_CHAIN: u32 = 64;
/// Default `delta_cache_mb`.
pub const DEFAULT_DELTA_CACHE_MB: u64 = 64;

/// What a read of a damaged value answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnCorruption {
    /// An error naming the key.
    Error,
    /// The newest version from the history that verifies.
    PreviousVersion,
}

impl OnCorruption {
    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            OnCorruption::Error => "error",
            OnCorruption::PreviousVersion => "previous_version",
        }
    }
}

/// A validated rule.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rule {
    /// Redis glob pattern.
    pub pattern: Vec<u8>,
    /// Codec for values at least `min_size` long.
    pub codec: Codec,
    /// Values shorter than this are stored uncompressed.
    pub min_size: usize,
    /// Whether writes keep a history.
    pub versioning: bool,
    /// History length (meaningful only with versioning).
    pub max_versions: u32,
    /// Expiry applied when a write gives none, in milliseconds.
    pub default_ttl_ms: Option<u64>,
    /// What a read of a damaged value answers.
    pub on_corruption: OnCorruption,
    /// Position in the `[[state]]` list, 0-based; used in messages and metric labels.
    pub index: usize,
    /// zstd level.
    pub level: i32,
    /// Older versions are stored as deltas (versioned rules only).
    pub delta: bool,
    /// Longest run of deltas a read follows (see [`RuleConfig::delta_chain`]).
    pub delta_chain: u32,
    /// Bytes of delta bases the proxy keeps for this rule.
    pub delta_cache_bytes: usize,
    /// Train and use a zstd dictionary.
    pub dictionary: bool,
}

impl Rule {
    /// Whether version `n`, on leaving the key, is kept whole rather than as a delta: every
    /// `delta_chain`-th version when the history is longer than that, so no read follows more
    /// than `delta_chain - 1` deltas (with a shorter history the window bounds every chain).
    pub fn full_version(&self, n: u32) -> bool {
        self.max_versions > self.delta_chain && n.is_multiple_of(self.delta_chain)
    }

    /// Validates a configuration table; the error is one line naming the field, as
    /// `state[1].compression: unknown codec "lz5" (expected lz4, zlib, zstd or none)`.
    pub fn from_config(index: usize, c: &RuleConfig) -> Result<Rule, String> {
        let field = |name: &str| format!("state[{index}].{name}");
        if c.pattern.is_empty() {
            return Err(format!("{}: must not be empty", field("pattern")));
        }
        if exceeds_star_nesting(c.pattern.as_bytes()) {
            return Err(format!(
                "{}: more than {MAX_STAR_NESTING} '*' groups, which Redis never matches",
                field("pattern")
            ));
        }
        let codec = Codec::parse(&c.compression).ok_or_else(|| {
            format!(
                "{}: unknown codec {:?} (expected lz4, zlib, zstd or none)",
                field("compression"),
                c.compression
            )
        })?;
        if c.versioning && !(1..=MAX_VERSIONS_LIMIT).contains(&c.max_versions) {
            return Err(format!(
                "{}: {} is out of range (expected 1 to {MAX_VERSIONS_LIMIT})",
                field("max_versions"),
                c.max_versions
            ));
        }
        let default_ttl_ms = match c.default_ttl_s {
            None => None,
            Some(0) => {
                return Err(format!(
                    "{}: must be greater than 0 (leave it out for no expiry)",
                    field("default_ttl_s")
                ));
            }
            // Redis keeps expiry times as signed 64-bit milliseconds.
            Some(s) => Some(
                s.checked_mul(1000)
                    .filter(|ms| i64::try_from(*ms).is_ok())
                    .ok_or_else(|| format!("{}: {s} is too large", field("default_ttl_s")))?,
            ),
        };
        let on_corruption = match c.on_corruption.as_str() {
            "error" => OnCorruption::Error,
            "previous_version" => OnCorruption::PreviousVersion,
            other => {
                return Err(format!(
                    "{}: unknown value {other:?} (expected error or previous_version)",
                    field("on_corruption")
                ));
            }
        };
        if on_corruption == OnCorruption::PreviousVersion && !c.versioning {
            return Err(format!(
                "{}: previous_version needs versioning = true",
                field("on_corruption")
            ));
        }
        let level = c.compression_level.unwrap_or(ZSTD_RULE_LEVEL);
        if !(-7..=22).contains(&level) {
            return Err(format!(
                "{}: {level} is out of range (expected -7 to 22)",
                field("compression_level")
            ));
        }
        if c.compression_level.is_some() && codec != Codec::Zstd {
            return Err(format!(
                "{}: only zstd has levels (compression = {:?})",
                field("compression_level"),
                codec.name()
            ));
        }
        // Deltas are read through their newer neighbour, so a damaged newest value takes the
        // versions that depend on it along: previous_version could not serve them.
        let delta = match c.delta {
            Some(true) if !c.versioning => {
                return Err(format!("{}: needs versioning = true", field("delta")));
            }
            Some(true) if on_corruption == OnCorruption::PreviousVersion => {
                return Err(format!(
                    "{}: cannot be combined with on_corruption = \"previous_version\" (older \
                     versions are read through the newest one); set delta = false",
                    field("delta")
                ));
            }
            Some(d) => d,
            None => c.versioning && codec == Codec::Zstd && on_corruption == OnCorruption::Error,
        };
        let delta_chain = c.delta_chain.unwrap_or(DEFAULT_DELTA_CHAIN);
        if !(1..=MAX_VERSIONS_LIMIT).contains(&delta_chain) {
            return Err(format!(
                "{}: {delta_chain} is out of range (expected 1 to {MAX_VERSIONS_LIMIT})",
                field("delta_chain")
            ));
        }
        let cache_mb = c.delta_cache_mb.unwrap_or(DEFAULT_DELTA_CACHE_MB);
        if !(1..=65_536).contains(&cache_mb) {
            return Err(format!(
                "{}: {cache_mb} is out of range (expected 1 to 65536)",
                field("delta_cache_mb")
            ));
        }
        let dictionary = match c.dictionary.as_deref() {
            None | Some("none") => false,
            Some("auto") if codec == Codec::Zstd => true,
            Some("auto") => {
                return Err(format!(
                    "{}: auto needs compression = \"zstd\"",
                    field("dictionary")
                ));
            }
            Some(other) => {
                return Err(format!(
                    "{}: unknown value {other:?} (expected none or auto)",
                    field("dictionary")
                ));
            }
        };
        Ok(Rule {
            pattern: c.pattern.as_bytes().to_vec(),
            codec,
            min_size: c.min_size,
            versioning: c.versioning,
            max_versions: c.max_versions,
            default_ttl_ms,
            on_corruption,
            index,
            level,
            delta,
            delta_chain,
            delta_cache_bytes: usize::try_from(cache_mb << 20).unwrap_or(usize::MAX),
            dictionary,
        })
    }
}

/// The ordered rule list.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    compiled: Vec<Compiled>,
}

impl Rules {
    /// Builds the list; order matters, the first matching rule wins.
    pub fn new(rules: Vec<Rule>) -> Rules {
        let compiled = rules.iter().map(|r| Compiled::new(&r.pattern)).collect();
        Rules { rules, compiled }
    }

    /// True when there are no rules (statecar is then a transparent proxy).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The first rule whose pattern matches `key` (case-sensitive, as in Redis).
    pub fn match_key(&self, key: &[u8]) -> Option<&Rule> {
        self.rules
            .iter()
            .zip(&self.compiled)
            .find(|(rule, c)| c.matches(&rule.pattern, key))
            .map(|(rule, _)| rule)
    }

    /// The rules in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Rule> {
        self.rules.iter()
    }
}

impl<'a> IntoIterator for &'a Rules {
    type Item = &'a Rule;
    type IntoIter = std::slice::Iter<'a, Rule>;
    fn into_iter(self) -> Self::IntoIter {
        self.rules.iter()
    }
}

#[cfg(test)]
mod tests {
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
                delta: false,
                delta_chain: DEFAULT_DELTA_CHAIN,
                delta_cache_bytes: 64 << 20,
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
            (r.delta, r.level, r.delta_chain, r.dictionary),
            (true, 1, 64, false)
        );
        assert_eq!(r.delta_cache_bytes, 64 << 20);
        let lz4 = Rule::from_config(0, &config("s:*")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!lz4.delta);
        assert!(!zstd("versioning = false").map(|r| r.delta).unwrap_or(true));
        assert!(
            !zstd("on_corruption = \"previous_version\"")
                .map(|r| r.delta)
                .unwrap_or(true)
        );
        let r = zstd("delta = false\ncompression_level = 7\ndelta_chain = 8\ndelta_cache_mb = 2\ndictionary = \"auto\"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.delta, r.level, r.delta_chain, r.dictionary),
            (false, 7, 8, true)
        );
        assert_eq!(r.delta_cache_bytes, 2 << 20);
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
                delta: false,
                delta_chain: DEFAULT_DELTA_CHAIN,
                delta_cache_bytes: 1 << 20,
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
}
