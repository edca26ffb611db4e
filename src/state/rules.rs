//! State rules: which keys are state keys, and the policy for each.
//!
//! Rules are an ordered list of Redis glob patterns; the first that matches a key decides.
//! Matching follows Redis's `stringmatchlen` exactly, quirks included, so a pattern means here
//! what it means to `KEYS` and `SCAN MATCH`.

use serde::Deserialize;

use super::codec::Codec;

/// Redis refuses to recurse deeper than this many `*` while matching (since 7.2.6/7.4.1, after
/// CVE-2024-31228); a pattern that needs more never matches there, so it never matches here.
const MAX_STAR_NESTING: usize = 1000;

/// Largest accepted `max_versions`: history lives in Redis and every write trims it.
pub const MAX_VERSIONS_LIMIT: u32 = 10_000;

/// Matches `string` against a Redis glob `pattern`, with Redis's `stringmatchlen` semantics.
///
/// `*` any run of bytes, `?` one byte, `[abc]` `[^abc]` `[a-z]` classes (a reversed range is
/// swapped, `\` escapes inside a class, an unclosed `[` runs to the end of the pattern), `\x`
/// the literal `x` (a trailing `\` is a literal backslash). Quirks kept on purpose:
/// - an empty string matches only the empty pattern and `*`: `stringmatchlen("*", "")` is
///   false, but `KEYS *` and `SCAN MATCH *` skip matching and list the empty key, and this
///   follows what users see (so `**` still does not match it);
/// - `nocase` folds ASCII only, and an escaped byte inside a class is compared case-sensitively;
/// - range bounds compare as signed chars, as Redis on x86-64 does, so `[a-\xff]` covers
///   0x80..=0xff and `0x00..=a`;
/// - more than 1000 `*` groups before the last one never match (Redis's recursion cap).
///
/// Runs in O(pattern × string) time without recursion or allocation: on a mismatch it
/// backtracks to the most recent `*` only, which is enough because every other token matches
/// exactly one byte.
pub fn glob_match(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    if string.is_empty() {
        return pattern.is_empty() || pattern == b"*";
    }
    if exceeds_star_nesting(pattern) {
        return false;
    }
    match_tokens(pattern, string, nocase)
}

/// One element of a pattern. `Class` keeps the positions of its body in the pattern.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Token {
    Star,
    AnyByte,
    Literal(u8),
    Class {
        negate: bool,
        start: usize,
        end: usize,
    },
}

/// Parses the token at `at` (which must be < pattern.len()), returning it and where the next
/// starts. Token boundaries never depend on the string, which is what lets the matcher
/// re-parse freely while backtracking.
fn next_token(p: &[u8], at: usize) -> (Token, usize) {
    match p[at] {
        b'*' => {
            let mut next = at + 1;
            while p.get(next) == Some(&b'*') {
                next += 1;
            }
            (Token::Star, next)
        }
        b'?' => (Token::AnyByte, at + 1),
        b'[' => {
            let mut j = at + 1;
            let negate = p.get(j) == Some(&b'^');
            if negate {
                j += 1;
            }
            let start = j;
            loop {
                let left = p.len() - j;
                if left >= 2 && p[j] == b'\\' {
                    j += 2;
                } else if left == 0 {
                    // Unclosed: Redis treats the rest of the pattern as the class body.
                    return (
                        Token::Class {
                            negate,
                            start,
                            end: j,
                        },
                        j,
                    );
                } else if p[j] == b']' {
                    return (
                        Token::Class {
                            negate,
                            start,
                            end: j,
                        },
                        j + 1,
                    );
                } else if left >= 3 && p[j + 1] == b'-' {
                    j += 3;
                } else {
                    j += 1;
                }
            }
        }
        b'\\' if at + 1 < p.len() => (Token::Literal(p[at + 1]), at + 2),
        c => (Token::Literal(c), at + 1),
    }
}

/// C `tolower` in the C locale, applied to a value that may be a negative (signed) char.
fn lower(c: i32) -> i32 {
    if (i32::from(b'A')..=i32::from(b'Z')).contains(&c) {
        c + 32
    } else {
        c
    }
}

fn class_matches(p: &[u8], start: usize, end: usize, c: u8, nocase: bool) -> bool {
    let mut j = start;
    let mut matched = false;
    while j < end {
        // Element kinds are decided on the distance to the pattern's end, as Redis does.
        let left = p.len() - j;
        if left >= 2 && p[j] == b'\\' {
            matched |= p[j + 1] == c;
            j += 2;
        } else if left >= 3 && p[j + 1] == b'-' {
            // Redis reads pattern bytes through `char`, which is signed on x86-64.
            let (mut lo, mut hi) = (i32::from(p[j] as i8), i32::from(p[j + 2] as i8));
            let mut ch = i32::from(c as i8);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            if nocase {
                (lo, hi, ch) = (lower(lo), lower(hi), lower(ch));
            }
            matched |= lo <= ch && ch <= hi;
            j += 3;
        } else {
            matched |= if nocase {
                p[j].eq_ignore_ascii_case(&c)
            } else {
                p[j] == c
            };
            j += 1;
        }
    }
    matched
}

fn token_matches(p: &[u8], token: Token, c: u8, nocase: bool) -> bool {
    match token {
        Token::Star | Token::AnyByte => true,
        Token::Literal(l) => {
            if nocase {
                l.eq_ignore_ascii_case(&c)
            } else {
                l == c
            }
        }
        Token::Class { negate, start, end } => class_matches(p, start, end, c, nocase) != negate,
    }
}

/// True when Redis's recursion cap makes `pattern` unmatchable: a match passes every `*`
/// group, and each group except a final one recurses one level deeper.
fn exceeds_star_nesting(p: &[u8]) -> bool {
    let mut at = 0;
    let mut nested = 0usize;
    while at < p.len() {
        let (token, next) = next_token(p, at);
        if token == Token::Star && next < p.len() {
            nested += 1;
            if nested > MAX_STAR_NESTING {
                return true;
            }
        }
        at = next;
    }
    false
}

/// Plain glob matching (a `*` also matches the empty run); the empty-string and nesting quirks
/// are the caller's business.
fn match_tokens(p: &[u8], s: &[u8], nocase: bool) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // Pattern position after the latest `*`, and where in the string that `*`'s run ends.
    let mut resume: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            let (token, next) = next_token(p, pi);
            if token == Token::Star {
                resume = Some((next, si));
                pi = next;
                continue;
            }
            if token_matches(p, token, s[si], nocase) {
                pi = next;
                si += 1;
                continue;
            }
        }
        match resume {
            Some((after_star, run_end)) => {
                resume = Some((after_star, run_end + 1));
                pi = after_star;
                si = run_end + 1;
            }
            None => return false,
        }
    }
    while pi < p.len() {
        match next_token(p, pi) {
            (Token::Star, next) => pi = next,
            _ => return false,
        }
    }
    true
}

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
}

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
}

impl Rule {
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
        Ok(Rule {
            pattern: c.pattern.as_bytes().to_vec(),
            codec,
            min_size: c.min_size,
            versioning: c.versioning,
            max_versions: c.max_versions,
            default_ttl_ms,
            on_corruption,
            index,
        })
    }
}

/// What follows a rule pattern's literal prefix.
#[derive(Clone, Debug)]
enum Tail {
    /// Nothing: the pattern is a literal key.
    Nothing,
    /// A single trailing `*` group: any key with the prefix.
    AnySuffix,
    /// Anything else, matched from this pattern offset.
    Glob(usize),
}

/// A rule's pattern, pre-split so the common `prefix:*` costs one `starts_with`.
#[derive(Clone, Debug)]
struct Compiled {
    prefix: Vec<u8>,
    tail: Tail,
    unmatchable: bool,
}

impl Compiled {
    fn new(p: &[u8]) -> Compiled {
        let mut prefix = Vec::new();
        let mut at = 0;
        while at < p.len() {
            match next_token(p, at) {
                (Token::Literal(c), next) => {
                    prefix.push(c);
                    at = next;
                }
                _ => break,
            }
        }
        let tail = match next_token_at(p, at) {
            None => Tail::Nothing,
            Some((Token::Star, next)) if next == p.len() => Tail::AnySuffix,
            Some(_) => Tail::Glob(at),
        };
        Compiled {
            prefix,
            tail,
            unmatchable: p.is_empty() || exceeds_star_nesting(p),
        }
    }

    fn matches(&self, pattern: &[u8], key: &[u8]) -> bool {
        if key.is_empty() {
            return glob_match(pattern, key, false);
        }
        if self.unmatchable || !key.starts_with(&self.prefix) {
            return false;
        }
        let rest = &key[self.prefix.len()..];
        match self.tail {
            Tail::Nothing => rest.is_empty(),
            Tail::AnySuffix => true,
            Tail::Glob(at) => match_tokens(&pattern[at..], rest, false),
        }
    }
}

fn next_token_at(p: &[u8], at: usize) -> Option<(Token, usize)> {
    (at < p.len()).then(|| next_token(p, at))
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

    // Generated by running `KEYS pattern` against redis-server 7.0.15 (Debian build, which
    // carries the 7.2.6 recursion-cap fix) with every key below present: character i of each
    // string says whether KEYS listed KEYS[i].
    const KEYS: &[&[u8]] = &[
        b"a",
        b"b",
        b"ab",
        b"abc",
        b"abd",
        b"aXc",
        b"axc",
        b"a-c",
        b"a]c",
        b"a^c",
        b"a\\c",
        b"a*c",
        b"a?c",
        b"a[c",
        b"ac",
        b"abbc",
        b"ABC",
        b"Abc",
        b"session:1",
        b"session:",
        b"session:abc:x",
        b"sessionx",
        b"]",
        b"[",
        b"-",
        b"^",
        b"\\",
        b"*",
        b"?",
        b"a]",
        b"a-",
        b"x",
        b"xy",
        b"_",
        b"`",
        b"Z",
        b"z",
        b"\xe5",
        b"\x80",
        b"\x7f",
        b"a\xe5c",
        b"hello",
        b"hallo",
        b"hxllo",
        b"heeeello",
        b"hllo",
        b"a]b",
        b"ab]",
        b"abc]",
        b"a\\",
        b"",
    ];
    const EXPECTED: &[(&[u8], &str)] = &[
        (b"*", "111111111111111111111111111111111111111111111111111"),
        (b"**", "111111111111111111111111111111111111111111111111110"),
        (b"?", "110000000000000000000011111110010111111100000000000"),
        (
            b"a?c",
            "000101111111110000000000000000000000000010000000000",
        ),
        (b"a*", "101111111111111100000000000001100000000010000011110"),
        (b"*c", "000101111111111101000000000000000000000010000000000"),
        (
            b"a*c",
            "000101111111111100000000000000000000000010000000000",
        ),
        (
            b"a**c",
            "000101111111111100000000000000000000000010000000000",
        ),
        (
            b"a[bx]c",
            "000100100000000000000000000000000000000000000000000",
        ),
        (
            b"a[^b]c",
            "000001111111110000000000000000000000000010000000000",
        ),
        (
            b"a[a-c]c",
            "000100000000000000000000000000000000000000000000000",
        ),
        (
            b"a[c-a]c",
            "000100000000000000000000000000000000000000000000000",
        ),
        (
            b"a[]c",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"a[]]c",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"a[\\]]c",
            "000000001000000000000000000000000000000000000000000",
        ),
        (
            b"a[\\\\]c",
            "000000000010000000000000000000000000000000000000000",
        ),
        (
            b"a\\*c",
            "000000000001000000000000000000000000000000000000000",
        ),
        (
            b"a\\?c",
            "000000000000100000000000000000000000000000000000000",
        ),
        (
            b"a\\[c",
            "000000000000010000000000000000000000000000000000000",
        ),
        (
            b"a\\",
            "000000000000000000000000000000000000000000000000010",
        ),
        (b"\\", "000000000000000000000000001000000000000000000000000"),
        (b"a[", "000000000000000000000000000000000000000000000000000"),
        (
            b"a[b",
            "001000000000000000000000000000000000000000000000000",
        ),
        (
            b"a[bc",
            "001000000000001000000000000000000000000000000000000",
        ),
        (b"[", "000000000000000000000000000000000000000000000000000"),
        (b"[^", "110000000000000000000011111110010111111100000000000"),
        (
            b"a[^",
            "001000000000001000000000000001100000000000000000010",
        ),
        (
            b"a[a-]",
            "000000000000000000000000000001000000000000000000000",
        ),
        (
            b"a[a-]c",
            "000000000000001000000000000001000000000000000000000",
        ),
        (
            b"a[-a]c",
            "000000010000000000000000000000000000000000000000000",
        ),
        (
            b"a[^-]c",
            "000101101111110000000000000000000000000010000000000",
        ),
        (
            b"[]]",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"[]a]",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"[\\]]",
            "000000000000000000000010000000000000000000000000000",
        ),
        (
            b"[a-\\]",
            "100000000000000000000010011000000110000000000000000",
        ),
        (
            b"a[!b]c",
            "000100000000000000000000000000000000000000000000000",
        ),
        (
            b"h?llo",
            "000000000000000000000000000000000000000001110000000",
        ),
        (
            b"h*llo",
            "000000000000000000000000000000000000000001111100000",
        ),
        (
            b"h[ae]llo",
            "000000000000000000000000000000000000000001100000000",
        ),
        (
            b"h[^e]llo",
            "000000000000000000000000000000000000000000110000000",
        ),
        (
            b"h[a-b]llo",
            "000000000000000000000000000000000000000000100000000",
        ),
        (
            b"session:*",
            "000000000000000000111000000000000000000000000000000",
        ),
        (
            b"session:?*",
            "000000000000000000101000000000000000000000000000000",
        ),
        (
            b"session*",
            "000000000000000000111100000000000000000000000000000",
        ),
        (
            b"*:*",
            "000000000000000000111000000000000000000000000000000",
        ),
        (
            b"[A-z]",
            "110000000000000000000011011000010111100000000000000",
        ),
        (
            b"[a-\xff]",
            "100000000000000000000011111110000111000000000000000",
        ),
        (
            b"[\x80-\xff]",
            "000000000000000000000000000000000000011000000000000",
        ),
        (
            b"a[a-\xff]c",
            "000001011111110000000000000000000000000000000000000",
        ),
        (
            b"[\x00-\x7f]",
            "110000000000000000000011111110010111100100000000000",
        ),
        (
            b"*a*b*c*",
            "000100000000000100001000000000000000000000000000100",
        ),
        (b"?*", "111111111111111111111111111111111111111111111111110"),
        (b"*?", "111111111111111111111111111111111111111111111111110"),
        (
            b"a*b*c",
            "000100000000000100000000000000000000000000000000000",
        ),
        (
            b"\\a\\b\\c",
            "000100000000000000000000000000000000000000000000000",
        ),
        (
            b"[a]b]",
            "000000000000000000000000000000000000000000000001000",
        ),
        (
            b"a[b-]",
            "001000000000000000000000000001000000000000000000000",
        ),
        (
            b"[--0]",
            "000000000000000000000000100000000000000000000000000",
        ),
        (
            b"ab\\",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"abc\\",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"a\\b\\",
            "000000000000000000000000000000000000000000000000000",
        ),
        (
            b"[\\",
            "000000000000000000000000001000000000000000000000000",
        ),
        (
            b"[a\\]",
            "100000000000000000000010000000000000000000000000000",
        ),
    ];

    #[test]
    fn matches_what_redis_keys_answers() {
        for (pattern, expected) in EXPECTED {
            for (key, want) in KEYS.iter().zip(expected.bytes()) {
                assert_eq!(
                    glob_match(pattern, key, false),
                    want == b'1',
                    "pattern {:?} key {:?}",
                    String::from_utf8_lossy(pattern),
                    String::from_utf8_lossy(key)
                );
            }
        }
    }

    #[test]
    fn constructs() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"session:*", b"session:42", true),
            (b"session:*", b"session:", true),
            (b"session:*", b"sessions:1", false),
            (b"h?llo", b"hello", true),
            (b"h?llo", b"hllo", false),
            (b"h*llo", b"hllo", true),
            (b"h*llo", b"heeeello", true),
            (b"h[ae]llo", b"hallo", true),
            (b"h[ae]llo", b"hillo", false),
            (b"h[^e]llo", b"hallo", true),
            (b"h[^e]llo", b"hello", false),
            (b"h[a-b]llo", b"hbllo", true),
            (b"h[b-a]llo", b"hbllo", true), // reversed range is swapped
            (b"h[a-b]llo", b"hcllo", false),
            (b"a\\*c", b"a*c", true),
            (b"a\\*c", b"abc", false),
            (b"a[\\]]c", b"a]c", true),
            (b"a\\", b"a\\", true),    // trailing backslash is literal
            (b"a[bc", b"ab", true),    // unclosed class runs to the end
            (b"[", b"[", false),       // empty unclosed class matches nothing
            (b"[^", b"x", true),       // negated empty class matches anything
            (b"a[]c", b"ac", false),   // empty class
            (b"a[]]c", b"a]c", false), // `]` closes at once; then "]c" is literal
            (b"*a*b*c*", b"xxaxxbxxcxx", true),
            (b"*a*b*c*", b"xxaxxcxxbxx", false),
            (b"", b"", true),
            (b"*", b"", true),
            (b"**", b"", false),
            (b"?", b"", false),
            (b"", b"a", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(
                glob_match(p, s, false),
                *want,
                "{:?} {:?}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn nocase() {
        assert!(glob_match(b"SESSION:*", b"session:1", true));
        assert!(!glob_match(b"SESSION:*", b"session:1", false));
        assert!(glob_match(b"h[A-C]llo", b"hbllo", true));
        assert!(glob_match(b"h[ABC]llo", b"hbllo", true));
        // Escaped bytes in a class compare exactly even with nocase, as in Redis.
        assert!(!glob_match(b"h[\\B]llo", b"hbllo", true));
        // Folding is ASCII only.
        assert!(!glob_match(b"\xc3\xa9", b"\xc3\x89", true));
        // [A-z] covers `_` without folding, not with it (bounds fold to a..z).
        assert!(glob_match(b"[A-z]", b"_", false));
        assert!(!glob_match(b"[A-z]", b"_", true));
    }

    #[test]
    fn recursion_cap_matches_redis() {
        // Verified against redis-server: n = 1000 matches, 1001 does not.
        let key = [b"a".repeat(1002), b"b".to_vec()].concat();
        for (n, nontrailing, trailing) in [
            (999, true, true),
            (1000, true, true),
            (1001, false, true),
            (1002, false, false),
        ] {
            let pattern = b"a*".repeat(n);
            assert_eq!(glob_match(&pattern, &key, false), trailing, "trailing {n}");
            let pattern = [pattern, b"b".to_vec()].concat();
            assert_eq!(glob_match(&pattern, &key, false), nontrailing, "{n}");
        }
    }

    #[test]
    fn pathological_patterns_are_fast() {
        let pattern = [b"a*".repeat(30), b"b".to_vec()].concat();
        let key = b"a".repeat(5000);
        let start = std::time::Instant::now();
        assert!(!glob_match(&pattern, &key, false));
        let pattern = b"*?".repeat(400);
        assert!(!glob_match(&pattern, &b"x".repeat(300), false));
        // Exponential backtracking would take years here; quadratic takes milliseconds even
        // unoptimised. The bound is loose so a busy machine does not fail it.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
    }

    fn config(pattern: &str) -> RuleConfig {
        RuleConfig {
            pattern: pattern.to_string(),
            compression: default_compression(),
            min_size: default_min_size(),
            versioning: default_versioning(),
            max_versions: default_max_versions(),
            default_ttl_s: None,
            on_corruption: default_on_corruption(),
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
