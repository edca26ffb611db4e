//! Deterministic, realistic state values for tests and benchmarks: what AI agents keep in Redis.
//!
//! Compression results on toy data (all zeros, one repeated string) say nothing about real
//! sessions, which mix repetitive JSON structure, natural-language text and high-entropy numbers
//! (ids, embeddings). Three generators mix the same ingredients:
//!
//! - [`agent_session_json`]: one session document of an exact length (LZ4 around 2-5x);
//! - [`Checkpoints`]: a growing LangGraph-style checkpoint, one per agent step, each repeating
//!   everything before it (about 1.9 KB at step 1 and 71 KB at step 40), which is what a
//!   versioned history of agent state holds;
//! - [`small_document`]: 0.5-2 KB JSON records (memories, profiles, tool results) that share
//!   their structure but little text, which is where a trained dictionary pays.
//!
//! This file is not part of the library: tests include it as `common::agent_data`, the
//! benchmarks and the library's own unit tests by `#[path]`. It depends on nothing but std.

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
pub fn iso8601(out: &mut String, ms: u64) {
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

/// LangGraph-style agent checkpoints: the whole graph state after each step, as JSON.
///
/// A LangGraph checkpointer saves, after every step of an agent, the full state: every message
/// so far (LangChain's serialized message objects: system prompt, user turns, model replies
/// with tool calls and usage figures, tool results), the channels' version counters, what each
/// node has seen, and the step's metadata (which repeats the step's writes). Consecutive
/// checkpoints therefore share almost everything and differ in a few counters, ids and
/// timestamps near the top, plus the messages appended at the end. Some steps retrieve
/// documents and keep their embedding vectors (high-entropy floats) in a `memory` channel.
///
/// `checkpoint()` after `step()` gives the next one: about 1.9 KB at step 1, 71 KB at step 40
/// and 190 KB at step 100 (growth is linear on average, with text of varying length). Steps
/// only append to an internal buffer, so a long session (thousands of steps, megabytes) is
/// cheap to build; each `checkpoint()` costs one copy of its size.
pub struct Checkpoints {
    rng: Rng,
    step: u64,
    clock_ms: u64,
    thread: String,
    /// Serialized messages so far, each comma-separated run one step's (the inside of the
    /// messages array, in pieces).
    messages: Vec<String>,
    /// Keep only this many most recent steps' messages (an agent that trims its context).
    keep: usize,
    /// Serialized memory entries so far (the inside of `memory.documents`, in pieces).
    memory: Vec<String>,
    /// The last step's new messages, which the metadata's `writes` repeats.
    last_writes: String,
    counters: [u64; 5],
    run_id: String,
}

impl Checkpoints {
    /// A new session; the seed decides everything (model, user, tools used, text).
    pub fn new(seed: u64) -> Checkpoints {
        let mut rng = Rng::new(seed ^ 0x5eed_c4ec_0000_0001);
        let clock_ms = 1_735_689_600_000 + rng.range(0, 365 * 86_400_000);
        let mut thread = String::from("thread-");
        rng.hex(&mut thread, 16);
        let mut run_id = String::new();
        uuid(&mut rng, &mut run_id);
        let mut c = Checkpoints {
            rng,
            step: 0,
            clock_ms,
            thread,
            messages: Vec::new(),
            keep: usize::MAX,
            memory: Vec::new(),
            last_writes: String::new(),
            counters: [1, 1, 1, 1, 1],
            run_id,
        };
        // Step 1 holds the system prompt and the user's first request.
        // Its writes are the input: the user's message.
        let mut first = String::new();
        c.system_message(&mut first);
        first.push(',');
        let mut input = String::new();
        c.human_message(&mut input);
        first.push_str(&input);
        c.messages.push(first);
        c.last_writes = input;
        c.step = 1;
        c
    }

    /// The step the next `checkpoint()` describes (1 after `new`).
    pub fn step_number(&self) -> u64 {
        self.step
    }

    /// Advances by one agent step: a model reply (usually with a tool call), the tool's result,
    /// now and then a retrieved document with its embedding, and now and then a new user turn.
    pub fn step(&mut self) {
        self.step += 1;
        let mut new = String::new();
        let roll = self.rng.range(0, 9);
        let call = self.ai_message(&mut new, roll < 7);
        if let Some((id, tool)) = call {
            new.push(',');
            self.tool_message(&mut new, &id, tool);
        }
        if roll == 8 {
            new.push(',');
            self.human_message(&mut new);
        }
        if self.rng.range(0, 3) == 0 {
            self.remember();
        }
        self.counters[0] += 1;
        self.counters[1 + (self.step % 4) as usize] += 1;
        self.messages.push(new.clone());
        if self.messages.len() > self.keep {
            self.messages.remove(0);
        }
        self.last_writes = new;
    }

    /// From now on checkpoints hold only the last `steps` steps' messages, so their size stays
    /// level (about 70 KB for 40) while the session goes on: an agent with a bounded context.
    pub fn keep_last(mut self, steps: usize) -> Checkpoints {
        self.keep = steps.max(1);
        while self.messages.len() > self.keep {
            self.messages.remove(0);
        }
        while self.memory.len() > self.keep / 3 + 1 {
            self.memory.remove(0);
        }
        self
    }

    /// Advances `n` steps.
    pub fn advance(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    /// The checkpoint after the current step.
    pub fn checkpoint(&mut self) -> Vec<u8> {
        let mlen: usize = self.messages.iter().map(|m| m.len() + 1).sum();
        let dlen: usize = self.memory.iter().map(|m| m.len() + 1).sum();
        let mut out = String::with_capacity(mlen + dlen + 2048);
        let rng = &mut self.rng;
        self.clock_ms += rng.range(300, 20_000);
        out.push_str("{\"v\":1,\"ts\":\"");
        iso8601(&mut out, self.clock_ms);
        out.push_str("\",\"id\":\"");
        uuid(rng, &mut out);
        out.push_str("\",\"channel_values\":{\"messages\":[");
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(m);
        }
        out.push_str("],\"memory\":{\"documents\":[");
        for (i, m) in self.memory.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(m);
        }
        let _ = write!(
            out,
            "]}},\"next\":\"{}\",\"remaining_steps\":{}}},\"channel_versions\":{{",
            rng.pick(&["agent", "tools"]),
            100u64.saturating_sub(self.step)
        );
        for (i, name) in ["__start__", "messages", "agent", "tools", "memory"]
            .iter()
            .enumerate()
        {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "\"{name}\":\"{:032}.{:.16}\"",
                self.counters[i],
                rng.unit().abs()
            );
        }
        out.push_str("},\"versions_seen\":{\"__input__\":{},\"__start__\":{\"__start__\":\"");
        let _ = write!(out, "{:032}.{:.16}", 1, rng.unit().abs());
        let _ = write!(
            out,
            "\"}},\"agent\":{{\"messages\":\"{:032}.{:.16}\",\"tools\":\"{:032}.{:.16}\"}},\"tools\":{{\"agent\":\"{:032}.{:.16}\"}}}},\"pending_sends\":[],",
            self.counters[1],
            rng.unit().abs(),
            self.counters[3],
            rng.unit().abs(),
            self.counters[2],
            rng.unit().abs()
        );
        let _ = write!(
            out,
            "\"metadata\":{{\"source\":\"loop\",\"step\":{},\"writes\":{{\"agent\":{{\"messages\":[",
            self.step
        );
        out.push_str(&self.last_writes);
        let _ = write!(
            out,
            "]}}}},\"parents\":{{}},\"thread_id\":\"{}\",\"run_id\":\"{}\",\"langgraph_step\":{}}}}}",
            self.thread, self.run_id, self.step
        );
        out.into_bytes()
    }

    fn message_head(&mut self, out: &mut String, class: &str, kind: &str) {
        let _ = write!(
            out,
            "{{\"lc\":1,\"type\":\"constructor\",\"id\":[\"langchain\",\"schema\",\"messages\",\"{class}\"],\"kwargs\":{{\"type\":\"{kind}\",\"id\":\""
        );
        uuid(&mut self.rng, out);
        out.push_str("\",\"content\":\"");
    }

    fn system_message(&mut self, out: &mut String) {
        self.message_head(out, "SystemMessage", "system");
        let _ = write!(
            out,
            "You are {}, a support assistant. Look things up with the tools before answering. ",
            self.rng.pick(AGENTS)
        );
        let n = self.rng.range(20, 120) as usize;
        text(&mut self.rng, out, n);
        out.push_str("\",\"additional_kwargs\":{},\"response_metadata\":{}}}");
    }

    fn human_message(&mut self, out: &mut String) {
        self.message_head(out, "HumanMessage", "human");
        let n = match self.rng.range(0, 4) {
            0 => self.rng.range(200, 500),
            _ => self.rng.range(40, 200),
        } as usize;
        text(&mut self.rng, out, n);
        out.push_str("\",\"additional_kwargs\":{},\"response_metadata\":{},\"example\":false}}");
    }

    /// A model reply; with `tool` it calls a tool and returns the call id and tool name.
    fn ai_message(&mut self, out: &mut String, tool: bool) -> Option<(String, &'static str)> {
        self.message_head(out, "AIMessage", "ai");
        let content_len = if tool {
            self.rng.range(0, 120)
        } else {
            self.rng.range(150, 900)
        } as usize;
        text(&mut self.rng, out, content_len);
        out.push('"');
        let call = tool.then(|| {
            let name = self.rng.pick(TOOLS);
            let mut id = String::from("call_");
            self.rng.hex(&mut id, 24);
            (id, name)
        });
        match &call {
            Some((id, name)) => {
                let _ = write!(
                    out,
                    ",\"additional_kwargs\":{{\"tool_calls\":[{{\"id\":\"{id}\",\"function\":{{\"arguments\":"
                );
                tool_arguments(&mut self.rng, out, name);
                let _ = write!(
                    out,
                    ",\"name\":\"{name}\"}},\"type\":\"function\"}}],\"refusal\":null}},\"tool_calls\":[{{\"name\":\"{name}\",\"args\":{{\"q\":\""
                );
                let n = self.rng.range(10, 40) as usize;
                text(&mut self.rng, out, n);
                let _ = write!(
                    out,
                    "\"}},\"id\":\"{id}\",\"type\":\"tool_call\"}}],\"invalid_tool_calls\":[]"
                );
            }
            None => out.push_str(",\"additional_kwargs\":{\"refusal\":null},\"tool_calls\":[],\"invalid_tool_calls\":[]"),
        }
        let input = self.rng.range(800, 40_000);
        let output = self.rng.range(20, 900);
        let _ = write!(
            out,
            ",\"response_metadata\":{{\"token_usage\":{{\"completion_tokens\":{output},\"prompt_tokens\":{input},\"total_tokens\":{},\"completion_tokens_details\":{{\"reasoning_tokens\":0}},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}},\"model_name\":\"{}\",\"system_fingerprint\":\"fp_",
            input + output,
            self.rng.range(0, input / 128) * 128,
            self.rng.pick(MODELS)
        );
        self.rng.hex(out, 10);
        let _ = write!(
            out,
            "\",\"finish_reason\":\"{}\",\"logprobs\":null}},\"usage_metadata\":{{\"input_tokens\":{input},\"output_tokens\":{output},\"total_tokens\":{}}}}}}}",
            if call.is_some() { "tool_calls" } else { "stop" },
            input + output
        );
        call
    }

    fn tool_message(&mut self, out: &mut String, call_id: &str, tool: &str) {
        self.message_head(out, "ToolMessage", "tool");
        out.push_str("{\\\"ok\\\":true,\\\"items\\\":[");
        for i in 0..self.rng.range(1, 3) {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\\\"id\\\":{},\\\"score\\\":{:.4},\\\"updated\\\":\\\"",
                self.rng.range(1, 999_999),
                self.rng.unit().abs()
            );
            iso8601(out, self.clock_ms - self.rng.range(0, 90 * 86_400_000));
            out.push_str("\\\",\\\"text\\\":\\\"");
            let n = self.rng.range(50, 260) as usize;
            text(&mut self.rng, out, n);
            out.push_str("\\\"}");
        }
        let _ = write!(
            out,
            "]}}\",\"additional_kwargs\":{{}},\"response_metadata\":{{}},\"name\":\"{tool}\",\"tool_call_id\":\"{call_id}\",\"artifact\":null,\"status\":\"success\"}}}}"
        );
    }

    /// A retrieved document kept in the memory channel, with its embedding.
    fn remember(&mut self) {
        let mut doc = String::new();
        let out = &mut doc;
        let _ = write!(
            out,
            "{{\"doc_id\":\"doc-{}\",\"title\":\"",
            self.rng.range(1, 99_999)
        );
        let n = self.rng.range(20, 60) as usize;
        text(&mut self.rng, out, n);
        out.push_str("\",\"embedding\":[");
        for i in 0..48 {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{:.6}", self.rng.unit());
        }
        let _ = write!(out, "],\"step\":{}}}", self.step);
        self.memory.push(doc);
        // A bounded context keeps about one document per three steps it keeps.
        if self.memory.len() > self.keep / 3 + 1 {
            self.memory.remove(0);
        }
    }
}

/// A version-4-style UUID from the generator.
fn uuid(rng: &mut Rng, out: &mut String) {
    rng.hex(out, 8);
    out.push('-');
    rng.hex(out, 4);
    out.push_str("-4");
    rng.hex(out, 3);
    out.push('-');
    out.push(
        rng.pick(&["8", "9", "a", "b"])
            .chars()
            .next()
            .unwrap_or('8'),
    );
    rng.hex(out, 3);
    out.push('-');
    rng.hex(out, 12);
}

/// One small JSON record (0.5-2 KB), deterministic for `(seed, i)`: what an agent keeps per
/// user or per fact in a long-term store (a LangGraph `Store` item: namespace, key, a value
/// with text, tags and provenance, timestamps), now and then with a short embedding. Records
/// share their field names and vocabulary but not their ids, numbers or sentences.
pub fn small_document(seed: u64, i: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i));
    let mut out = String::with_capacity(2048);
    let created = 1_735_689_600_000 + rng.range(0, 365 * 86_400_000);
    let kind = rng.pick(&["preference", "fact", "episode", "profile", "instruction"]);
    out.push_str("{\"namespace\":[\"memories\",\"user-");
    rng.hex(&mut out, 8);
    let _ = write!(out, "\"],\"key\":\"");
    uuid(&mut rng, &mut out);
    let _ = write!(out, "\",\"value\":{{\"kind\":\"{kind}\",\"text\":\"");
    let len = match rng.range(0, 3) {
        0 => rng.range(500, 1400),
        _ => rng.range(150, 600),
    } as usize;
    text(&mut rng, &mut out, len);
    out.push_str("\",\"tags\":[");
    for t in 0..rng.range(1, 4) {
        if t > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{}\"", rng.pick(NOUNS));
    }
    let _ = write!(
        out,
        "],\"confidence\":{:.3},\"source\":{{\"thread_id\":\"thread-",
        rng.unit().abs()
    );
    rng.hex(&mut out, 16);
    out.push_str("\",\"message_id\":\"");
    uuid(&mut rng, &mut out);
    let _ = write!(
        out,
        "\",\"agent\":\"{}\",\"model\":\"{}\"}}",
        rng.pick(AGENTS),
        rng.pick(MODELS)
    );
    if rng.range(0, 3) == 0 {
        out.push_str(",\"embedding\":[");
        for e in 0..16 {
            if e > 0 {
                out.push(',');
            }
            let _ = write!(out, "{:.5}", rng.unit());
        }
        out.push(']');
    }
    out.push_str("},\"created_at\":\"");
    iso8601(&mut out, created);
    out.push_str("\",\"updated_at\":\"");
    iso8601(&mut out, created + rng.range(0, 30 * 86_400_000));
    let _ = write!(out, "\",\"score\":null,\"version\":{}}}", rng.range(1, 6));
    // Records land between 0.5 and 2 KB: pad short ones with more text in a note field.
    if out.len() < 512 {
        out.pop();
        out.push_str(",\"note\":\"");
        let n = 520 - out.len();
        text(&mut rng, &mut out, n);
        out.push_str("\"}");
    }
    if out.len() > 2048 {
        // Only the text field can make it this long; cut it and close the document again.
        let text_start = out.find("\"text\":\"").map_or(0, |p| p + 8);
        let over = out.len() - 2040;
        out.replace_range(text_start..text_start + over, "");
    }
    out.into_bytes()
}

/// A minimal JSON validator, enough to prove the generators' output parses.
pub fn is_valid_json(s: &[u8]) -> bool {
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
