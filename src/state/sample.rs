//! A deterministic, realistic state value for tests and benchmarks: an AI agent session as JSON.
//!
//! Compression results on toy data (all zeros, one repeated string) say nothing about real
//! sessions, which mix repetitive JSON structure, natural-language text and high-entropy numbers
//! (ids, embeddings). This generator mixes the same ingredients so LZ4 lands around 2-5x.

use std::fmt::Write;

/// xorshift64*; tiny, deterministic across platforms, and good enough for synthetic text.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so seeds 0, 1, 2 ... give unrelated streams and 0 is not a
        // fixed point of xorshift.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..=hi` (modulo bias is irrelevant here).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn hex(&mut self, out: &mut String, digits: usize) {
        for _ in 0..digits {
            let d = (self.next() >> 60) as u32;
            out.push(char::from_digit(d, 16).unwrap_or('0'));
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "of",
    "and",
    "in",
    "for",
    "is",
    "on",
    "that",
    "with",
    "it",
    "as",
    "be",
    "this",
    "you",
    "we",
    "can",
    "will",
    "not",
    "are",
    "your",
    "from",
    "at",
    "by",
    "if",
    "or",
    "have",
    "an",
    "should",
    "would",
    "could",
    "then",
    "when",
    "after",
    "before",
    "because",
    "order",
    "refund",
    "account",
    "customer",
    "invoice",
    "payment",
    "subscription",
    "plan",
    "annual",
    "monthly",
    "shipping",
    "address",
    "delivery",
    "tracking",
    "number",
    "warehouse",
    "deployment",
    "cluster",
    "service",
    "request",
    "latency",
    "timeout",
    "error",
    "retry",
    "database",
    "query",
    "index",
    "cache",
    "memory",
    "session",
    "token",
    "user",
    "agent",
    "tool",
    "result",
    "document",
    "policy",
    "summary",
    "report",
    "search",
    "ticket",
    "issue",
    "priority",
    "status",
    "pending",
    "resolved",
    "escalated",
    "approved",
    "declined",
    "update",
    "check",
    "confirm",
    "review",
    "explain",
    "suggest",
    "schedule",
    "cancel",
    "restart",
    "upgrade",
    "configure",
    "verify",
    "compare",
    "analyze",
    "first",
    "next",
    "previous",
    "latest",
    "new",
    "old",
    "large",
    "small",
    "quick",
    "slow",
    "important",
    "possible",
    "available",
    "missing",
    "correct",
    "wrong",
    "yesterday",
    "today",
    "tomorrow",
    "week",
    "month",
    "hour",
    "minutes",
    "seconds",
    "three",
    "two",
    "five",
    "ten",
    "several",
    "most",
    "all",
    "some",
    "any",
    "each",
    "other",
    "same",
    "only",
    "also",
    "still",
    "already",
    "just",
    "please",
    "thanks",
    "sure",
    "here",
    "there",
    "what",
    "which",
    "how",
    "why",
    "where",
    "who",
];

const TOOLS: &[&str] = &[
    "search_docs",
    "get_order",
    "run_sql",
    "create_ticket",
    "http_get",
    "get_customer",
];

const MODELS: &[&str] = &[
    "gpt-4o-2024-08-06",
    "claude-3-5-sonnet-20241022",
    "llama-3.1-70b-instruct",
    "mistral-large-2411",
];

const AGENTS: &[&str] = &[
    "support-assistant",
    "sre-copilot",
    "billing-agent",
    "research-agent",
];

/// Sentence shapes: `#` is replaced by a noun, `%` by a state, `&` by a verb. Real assistant
/// text repeats phrases a lot, which is much of why sessions compress; a bag of random words
/// would not.
const SENTENCES: &[&str] = &[
    "I checked the # and the # is still %.",
    "Let me look up the # for your #.",
    "Could you confirm the # on the #?",
    "The # was updated yesterday and should be % now.",
    "I found three results for the # in the # index.",
    "Based on the #, the next step is to & the #.",
    "Thanks, I will & the # and get back to you.",
    "There is a problem with the #, so I opened a ticket.",
    "The # returned an error after 30 seconds.",
    "According to the # policy, a # can be % within 14 days.",
    "I have & the # and the # looks %.",
    "Please & the # before the # is %.",
    "Here is a summary of the # and the #.",
    "The # is % because the # has not been %.",
    "What is the status of the #?",
    "We should & the # first, then & the #.",
    "It looks like the # is % for this #.",
    "I could not find a # for that #.",
];

const NOUNS: &[&str] = &[
    "order",
    "refund",
    "account",
    "invoice",
    "payment",
    "subscription",
    "plan",
    "shipping address",
    "delivery",
    "tracking number",
    "deployment",
    "cluster",
    "service",
    "request",
    "database",
    "query",
    "cache",
    "session",
    "token",
    "customer",
    "document",
    "policy",
    "report",
    "ticket",
    "warehouse",
    "API key",
    "webhook",
    "pipeline",
    "dashboard",
    "alert",
];

const STATES: &[&str] = &[
    "pending",
    "resolved",
    "escalated",
    "approved",
    "declined",
    "active",
    "expired",
    "healthy",
    "degraded",
    "missing",
    "correct",
    "available",
    "delayed",
    "closed",
];

const VERBS: &[&str] = &[
    "check",
    "confirm",
    "review",
    "update",
    "cancel",
    "restart",
    "upgrade",
    "configure",
    "verify",
    "compare",
    "analyze",
    "escalate",
    "schedule",
    "refund",
];

/// Appends English-like text of exactly `len` bytes (ASCII, nothing that needs JSON escaping).
fn text(rng: &mut Rng, out: &mut String, len: usize) {
    let start = out.len();
    while out.len() - start < len {
        if out.len() > start {
            out.push(' ');
        }
        if rng.range(0, 5) == 0 {
            // Some free-form words too, so the text is not only templates.
            for i in 0..rng.range(4, 10) {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(rng.pick(WORDS));
            }
            out.push('.');
        } else {
            let sentence = rng.pick(SENTENCES);
            for c in sentence.chars() {
                match c {
                    '#' => out.push_str(rng.pick(NOUNS)),
                    '%' => out.push_str(rng.pick(STATES)),
                    '&' => out.push_str(rng.pick(VERBS)),
                    c => out.push(c),
                }
            }
        }
    }
    out.truncate(start + len);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for ms since the Unix epoch (proleptic Gregorian, UTC).
fn iso8601(out: &mut String, ms: u64) {
    let days = (ms / 86_400_000) as i64;
    let rem = ms % 86_400_000;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    );
}

fn embedding(rng: &mut Rng, out: &mut String) {
    out.push_str(",\"embedding\":[");
    for i in 0..rng.range(8, 32) {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{:.6}", rng.unit());
    }
    out.push(']');
}

/// Tool arguments as an escaped JSON string, the way chat APIs carry them.
fn tool_arguments(rng: &mut Rng, out: &mut String, tool: &str) {
    out.push_str("\"{");
    match tool {
        "search_docs" => {
            out.push_str("\\\"query\\\":\\\"");
            let n = rng.range(20, 60) as usize;
            text(rng, out, n);
            let _ = write!(out, "\\\",\\\"top_k\\\":{}", rng.range(3, 10));
        }
        "get_order" | "get_customer" => {
            let _ = write!(out, "\\\"id\\\":{}", rng.range(100_000, 9_999_999));
        }
        "run_sql" => {
            let _ = write!(
                out,
                "\\\"query\\\":\\\"SELECT id, status, total FROM orders WHERE customer_id = {} \
                 ORDER BY created_at DESC LIMIT {}\\\"",
                rng.range(1000, 99_999),
                rng.range(5, 50)
            );
        }
        "create_ticket" => {
            out.push_str("\\\"title\\\":\\\"");
            let n = rng.range(20, 50) as usize;
            text(rng, out, n);
            let _ = write!(
                out,
                "\\\",\\\"priority\\\":\\\"{}\\\"",
                rng.pick(&["low", "medium", "high"])
            );
        }
        _ => {
            out.push_str("\\\"url\\\":\\\"https://api.example.com/v2/items/");
            rng.hex(out, 12);
            out.push_str("\\\"");
        }
    }
    out.push_str("}\"");
}

/// Appends one message object (without a leading comma).
fn message(
    rng: &mut Rng,
    out: &mut String,
    n: usize,
    clock_ms: &mut u64,
    pending_call: &mut Option<(String, &'static str)>,
) {
    *clock_ms += rng.range(400, 45_000);
    let _ = write!(out, "{{\"id\":\"msg_{n:04}\",\"created_at\":\"");
    iso8601(out, *clock_ms);
    out.push('"');
    if let Some((call_id, tool)) = pending_call.take() {
        let _ = write!(
            out,
            ",\"role\":\"tool\",\"tool_call_id\":\"{call_id}\",\"name\":\"{tool}\",\"content\":\"{{\\\"ok\\\":true,\\\"items\\\":["
        );
        for i in 0..rng.range(1, 4) {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\\\"id\\\":{},\\\"score\\\":{:.4},\\\"snippet\\\":\\\"",
                rng.range(1, 99_999),
                rng.unit().abs()
            );
            let len = rng.range(40, 160) as usize;
            text(rng, out, len);
            out.push_str("\\\"}");
        }
        let _ = write!(
            out,
            "]}}\",\"latency_ms\":{:.1}}}",
            rng.range(5, 2500) as f64 / 1.7
        );
        return;
    }
    let role = if n.is_multiple_of(2) {
        "user"
    } else {
        "assistant"
    };
    let _ = write!(out, ",\"role\":\"{role}\",\"content\":\"");
    let len = match rng.range(0, 9) {
        0 => rng.range(600, 1800),
        1..=3 => rng.range(150, 600),
        _ => rng.range(20, 150),
    } as usize;
    text(rng, out, len);
    let _ = write!(out, "\",\"tokens\":{}", len / 4 + rng.range(0, 9) as usize);
    if role == "assistant" && rng.range(0, 2) == 0 {
        let tool = rng.pick(TOOLS);
        let mut call_id = String::from("call_");
        rng.hex(&mut call_id, 24);
        let _ = write!(
            out,
            ",\"tool_calls\":[{{\"id\":\"{call_id}\",\"type\":\"function\",\"function\":{{\"name\":\"{tool}\",\"arguments\":"
        );
        tool_arguments(rng, out, tool);
        out.push_str("}}]");
        *pending_call = Some((call_id, tool));
    }
    if rng.range(0, 3) == 0 {
        embedding(rng, out);
    }
    out.push('}');
}

/// A JSON document resembling an AI agent's session, deterministic for `seed`, with length
/// `target_len` exactly when `target_len` is at least about 600 bytes (the smallest complete
/// document; smaller targets get that document).
pub fn agent_session_json(seed: u64, target_len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(target_len + 64);
    let mut clock_ms = 1_735_689_600_000 + rng.range(0, 365 * 86_400_000);

    out.push_str("{\"session_id\":\"sess_");
    rng.hex(&mut out, 20);
    let _ = write!(
        out,
        "\",\"agent\":\"{}\",\"model\":\"{}\",\"created_at\":\"",
        rng.pick(AGENTS),
        rng.pick(MODELS)
    );
    iso8601(&mut out, clock_ms);
    out.push_str("\",\"user\":{\"id\":\"user_");
    rng.hex(&mut out, 12);
    let _ = write!(
        out,
        "\",\"locale\":\"{}\",\"plan\":\"{}\"}},\"settings\":{{\"temperature\":{:.2},\"top_p\":{:.2},\"max_tokens\":{}}},\"messages\":[",
        rng.pick(&["en-US", "en-GB", "de-DE", "fr-FR"]),
        rng.pick(&["free", "pro", "team", "enterprise"]),
        rng.range(0, 100) as f64 / 100.0,
        rng.range(80, 100) as f64 / 100.0,
        rng.pick(&["1024", "2048", "4096", "8192"])
    );

    // The tail holds the usage block and a free-text summary whose length absorbs the
    // difference to target_len, which is what makes the output length exact.
    let mut tail = String::new();
    let _ = write!(
        tail,
        "],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"cost_usd\":{:.6}}},\"summary\":\"",
        rng.range(1000, 90_000),
        rng.range(100, 9000),
        rng.unit().abs() / 10.0
    );
    let tail_end = "\"}";
    let fixed = tail.len() + tail_end.len();

    let mut pending_call = None;
    let mut scratch = String::new();
    let mut n = 0;
    loop {
        scratch.clear();
        let mut probe_rng = Rng(rng.0);
        let mut probe_clock = clock_ms;
        let mut probe_pending = pending_call.clone();
        message(
            &mut probe_rng,
            &mut scratch,
            n,
            &mut probe_clock,
            &mut probe_pending,
        );
        let comma = usize::from(n > 0);
        if out.len() + comma + scratch.len() + fixed > target_len {
            break;
        }
        if n > 0 {
            out.push(',');
        }
        out.push_str(&scratch);
        rng = probe_rng;
        clock_ms = probe_clock;
        pending_call = probe_pending;
        n += 1;
    }
    let summary_len = target_len.saturating_sub(out.len() + fixed);
    out.push_str(&tail);
    text(&mut rng, &mut out, summary_len);
    out.push_str(tail_end);
    out.into_bytes()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state::codec::Codec;

    /// A minimal JSON validator, enough to prove the generator's output parses.
    pub(crate) fn is_valid_json(s: &[u8]) -> bool {
        fn ws(s: &[u8], i: &mut usize) {
            while matches!(s.get(*i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
                *i += 1;
            }
        }
        fn string(s: &[u8], i: &mut usize) -> bool {
            if s.get(*i) != Some(&b'"') {
                return false;
            }
            *i += 1;
            loop {
                match s.get(*i) {
                    None => return false,
                    Some(b'"') => {
                        *i += 1;
                        return true;
                    }
                    Some(b'\\') => match s.get(*i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => *i += 2,
                        Some(b'u') => *i += 6,
                        _ => return false,
                    },
                    Some(c) if *c < 0x20 => return false,
                    Some(_) => *i += 1,
                }
            }
        }
        fn number(s: &[u8], i: &mut usize) -> bool {
            let start = *i;
            if s.get(*i) == Some(&b'-') {
                *i += 1;
            }
            let digits = |i: &mut usize| {
                let d = *i;
                while s.get(*i).is_some_and(u8::is_ascii_digit) {
                    *i += 1;
                }
                *i > d
            };
            if !digits(i) {
                return false;
            }
            if s.get(*i) == Some(&b'.') {
                *i += 1;
                if !digits(i) {
                    return false;
                }
            }
            *i > start
        }
        fn value(s: &[u8], i: &mut usize, depth: usize) -> bool {
            if depth > 64 {
                return false;
            }
            ws(s, i);
            let ok = match s.get(*i) {
                Some(b'{') => {
                    *i += 1;
                    ws(s, i);
                    if s.get(*i) == Some(&b'}') {
                        *i += 1;
                        true
                    } else {
                        loop {
                            ws(s, i);
                            if !string(s, i) {
                                break false;
                            }
                            ws(s, i);
                            if s.get(*i) != Some(&b':') {
                                break false;
                            }
                            *i += 1;
                            if !value(s, i, depth + 1) {
                                break false;
                            }
                            match s.get(*i) {
                                Some(b',') => *i += 1,
                                Some(b'}') => {
                                    *i += 1;
                                    break true;
                                }
                                _ => break false,
                            }
                        }
                    }
                }
                Some(b'[') => {
                    *i += 1;
                    ws(s, i);
                    if s.get(*i) == Some(&b']') {
                        *i += 1;
                        true
                    } else {
                        loop {
                            if !value(s, i, depth + 1) {
                                break false;
                            }
                            match s.get(*i) {
                                Some(b',') => *i += 1,
                                Some(b']') => {
                                    *i += 1;
                                    break true;
                                }
                                _ => break false,
                            }
                        }
                    }
                }
                Some(b'"') => string(s, i),
                Some(b't') if s[*i..].starts_with(b"true") => {
                    *i += 4;
                    true
                }
                Some(b'f') if s[*i..].starts_with(b"false") => {
                    *i += 5;
                    true
                }
                Some(b'n') if s[*i..].starts_with(b"null") => {
                    *i += 4;
                    true
                }
                _ => number(s, i),
            };
            ws(s, i);
            ok
        }
        let mut i = 0;
        value(s, &mut i, 0) && i == s.len()
    }

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
    fn deterministic_valid_and_sized() {
        for seed in 0..20u64 {
            for target in [1024usize, 4096, 16 * 1024, 256 * 1024] {
                let a = agent_session_json(seed, target);
                assert_eq!(a, agent_session_json(seed, target));
                assert!(is_valid_json(&a), "seed {seed} target {target}");
                assert_eq!(a.len(), target, "seed {seed}");
            }
        }
        assert_ne!(agent_session_json(1, 4096), agent_session_json(2, 4096));
    }

    #[test]
    fn tiny_targets_still_give_valid_json() {
        for target in [0usize, 1, 50, 300, 700] {
            let a = agent_session_json(3, target);
            assert!(is_valid_json(&a), "target {target}");
            assert!(a.len() >= target);
        }
    }

    #[test]
    fn has_the_expected_ingredients() {
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
    fn compressibility_is_realistic() {
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
}
