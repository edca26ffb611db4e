//! Redis glob patterns, as `KEYS` and `SCAN MATCH` read them: the matcher every state rule uses.
//!
//! Matching follows Redis's `stringmatchlen` exactly, quirks included, so a pattern means here
//! what it means to Redis.

/// Redis refuses to recurse deeper than this many `*` while matching (since 7.2.6/7.4.1, after
/// CVE-2024-31228); a pattern that needs more never matches there, so it never matches here.
pub(super) const MAX_STAR_NESTING: usize = 1000;

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
pub(super) fn exceeds_star_nesting(p: &[u8]) -> bool {
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
pub(super) struct Compiled {
    prefix: Vec<u8>,
    tail: Tail,
    unmatchable: bool,
}

impl Compiled {
    pub(super) fn new(p: &[u8]) -> Compiled {
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

    pub(super) fn matches(&self, pattern: &[u8], key: &[u8]) -> bool {
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

#[cfg(test)]
pub(crate) mod tests;
