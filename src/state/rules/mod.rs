//! State rules: which keys are state keys, and the policy for each.
//!
//! Rules are an ordered list of Redis glob patterns (`state::glob`); the first that matches a key
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

/// Writes of a zstd or zlib rule (or with a delta history) with a value at least this long are
/// encoded off the async threads ([`Rule::heavy_from`]): from 16 KiB a versioned write's two
/// compressions take tens of microseconds, which would delay every other client served by the
/// same thread, and on the pool several clients' writes compress at once on every core (38 KB
/// checkpoints from 8 clients: 0.20x-0.23x of a plain SET's rate against 0.16x-0.18x when they
/// were encoded on the one async thread).
pub const HEAVY_VALUE: usize = 16 * 1024;

/// The same for lz4 and uncompressed rules without a delta history, whose encoding costs
/// about a copy: from here it takes over half a millisecond.
pub const HEAVY_FAST_VALUE: usize = 256 * 1024;

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
    /// How older versions are stored.
    pub delta: Delta,
    /// Train and use a zstd dictionary.
    pub dictionary: bool,
}

/// A versioned rule's delta history: its settings, kept even when deltas are off.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Delta {
    /// Older versions are stored as deltas (versioned rules only).
    pub on: bool,
    /// Longest run of deltas a read follows (see [`RuleConfig::delta_chain`]).
    pub chain: u32,
    /// Bytes of delta bases the proxy keeps for this rule.
    pub cache_bytes: usize,
}

impl Rule {
    /// From how many bytes a write's value is encoded off the async threads: zstd and zlib
    /// (and a delta history, which is zstd whatever the codec) cost tens of microseconds from
    /// [`HEAVY_VALUE`]; lz4 and no compression are several times cheaper, and a hand-off to
    /// the pool pays for itself only from [`HEAVY_FAST_VALUE`].
    pub fn heavy_from(&self) -> usize {
        match self.codec {
            Codec::Zstd | Codec::Zlib => HEAVY_VALUE,
            Codec::Lz4 | Codec::None if self.delta.on => HEAVY_VALUE,
            Codec::Lz4 | Codec::None => HEAVY_FAST_VALUE,
        }
    }

    /// Whether version `n`, on leaving the key, is kept whole rather than as a delta: every
    /// `delta_chain`-th version when the history is longer than that, so no read follows more
    /// than `delta_chain - 1` deltas (with a shorter history the window bounds every chain).
    pub fn full_version(&self, n: u32) -> bool {
        self.max_versions > self.delta.chain && n.is_multiple_of(self.delta.chain)
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
            delta: Delta {
                on: delta,
                chain: delta_chain,
                cache_bytes: usize::try_from(cache_mb << 20).unwrap_or(usize::MAX),
            },
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
mod tests;
