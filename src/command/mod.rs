//! The command table: everything statecar knows about a command, looked up once per command.
//!
//! Redis's own facts (arity, flags, ACL categories, key positions, cluster tips) come from
//! [`table`], generated from Redis's `COMMAND INFO` and checked against a real redis-server by
//! tests/command_table.rs. statecar's handling of each command (which connection it needs,
//! whether state keys can be involved) is in [`policy`], written once. Both are merged at start
//! into one [`Entry`] per command and subcommand; a [`Command`] is a parsed request holding its
//! entry, so routing, pinning, the deny-list, local handling and state planning all read the same
//! row and no layer matches command names again.

pub mod keys;
mod policy;
pub mod spec;
pub mod table;

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;

use crate::protocol::Request;
pub use policy::{Kind, Local, Merge, Routing, SubKind};
use spec::{Flags, Spec};

/// One command's row: Redis's facts and statecar's handling.
#[derive(Debug)]
pub struct Entry {
    /// What Redis says (for STATE.* and unknown commands, statecar's own description).
    pub spec: &'static Spec,
    /// Which connection or local handler it needs.
    pub kind: Kind,
    /// Whether a state key among its arguments changes how it runs (see `state::plan`).
    pub state: bool,
    /// Where it goes in a Redis Cluster.
    pub routing: Routing,
    /// Whether it is one of statecar's own commands (`STATE.*`).
    pub statecar: bool,
    /// A container whose subcommand was not found: Redis answers "unknown subcommand".
    pub unknown_sub: bool,
    /// Its label in the per-command metrics (0: "other").
    pub metric: u16,
    /// Its number among all rows ([`name_of`] gives its name back).
    pub index: u32,
}

impl Entry {
    /// The command is not known to Redis.
    pub fn is_unknown(&self) -> bool {
        std::ptr::eq(self, &*UNKNOWN)
    }

    /// Shorthand for a Redis flag.
    pub fn has(&self, f: Flags) -> bool {
        self.spec.flags.has(f)
    }

    /// Whether Redis holds it during `CLIENT PAUSE ... WRITE` (see [`policy::may_replicate`]).
    pub fn held_by_write_pause(&self) -> bool {
        self.has(spec::WRITE) || policy::may_replicate(self.spec.name)
    }
}

/// What an unknown command gets: forwarded, so Redis answers it (an error, or a module's reply).
static UNKNOWN_SPEC: Spec = Spec {
    name: "",
    arity: 0,
    flags: Flags(0),
    acl: spec::Acl(0),
    tips: spec::Tips::NONE,
    keys: &[],
    subcommands: &[],
};
static UNKNOWN: LazyLock<Entry> = LazyLock::new(|| Entry {
    spec: &UNKNOWN_SPEC,
    kind: Kind::Plain,
    state: false,
    routing: Routing::ByKeys,
    statecar: false,
    unknown_sub: false,
    metric: 0,
    index: 0,
});
static STATE_SPEC: Spec = Spec {
    name: "state",
    arity: -1,
    flags: Flags(0),
    acl: spec::Acl(0),
    tips: spec::Tips::NONE,
    keys: &[],
    subcommands: &[],
};
static STATE: LazyLock<Entry> = LazyLock::new(|| Entry {
    spec: &STATE_SPEC,
    kind: Kind::Local(Local::State),
    state: false,
    routing: Routing::ByKeys,
    statecar: true,
    unknown_sub: false,
    metric: 0,
    index: 0,
});

/// A map of the table's names. The table is fixed before the first client connects and only
/// read after, so client input cannot flood a bucket: a fast hash (foldhash) serves where
/// SipHash, std's default, took 2.5% of the proxy's CPU at pipeline 16 (one lookup a command).
type Names = HashMap<Box<[u8]>, &'static Entry, foldhash::fast::FixedState>;

/// Entries by upper-cased name ("GET", "CLIENT|KILL").
struct Index {
    by_name: Names,
    /// Every row's name as Redis reports it, by [`Entry::index`] (0: "NULL").
    names: Vec<&'static str>,
    /// Containers' "unknown subcommand" rows, by container name.
    unknown_sub: Names,
}

static INDEX: LazyLock<Index> = LazyLock::new(|| {
    let mut by_name = Names::default();
    let mut unknown_sub = Names::default();
    let mut names = vec!["NULL"];
    let mut add = |spec: &'static Spec| {
        names.push(spec.name);
        let entry: &'static Entry = Box::leak(Box::new(Entry {
            index: (names.len() - 1) as u32,
            spec,
            kind: policy::kind(spec.name),
            state: policy::state(spec.name),
            routing: policy::routing(spec.name),
            statecar: false,
            unknown_sub: false,
            // Containers are labelled by their own name (CLIENT, CONFIG, ...).
            metric: crate::telemetry::command_id(
                spec.name.split('|').next().unwrap_or_default().as_bytes(),
            ),
        }));
        by_name.insert(spec.name.to_ascii_uppercase().into_bytes().into(), entry);
        entry
    };
    for spec in table::COMMANDS {
        let container = add(spec);
        for sub in spec.subcommands {
            add(sub);
        }
        if !spec.subcommands.is_empty() {
            let e: &'static Entry = Box::leak(Box::new(Entry {
                spec,
                kind: container.kind,
                state: false,
                routing: Routing::ByKeys,
                statecar: false,
                unknown_sub: true,
                metric: container.metric,
                index: container.index,
            }));
            unknown_sub.insert(spec.name.to_ascii_uppercase().into_bytes().into(), e);
        }
    }
    Index {
        by_name,
        names,
        unknown_sub,
    }
});

/// The name of row `index` as Redis reports it (`get`, `client|list`), "NULL" for none.
pub fn name_of(index: u32) -> &'static str {
    INDEX.names.get(index as usize).copied().unwrap_or("NULL")
}

/// Longest name (or `container|sub`) looked up without allocating; longer ones are unknown.
const NAME_MAX: usize = 48;

/// Upper-cases `parts` joined by '|' into `buf`; None if too long.
fn upper_into<'a>(buf: &'a mut [u8; NAME_MAX], parts: &[&[u8]]) -> Option<&'a [u8]> {
    let mut n = 0;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            *buf.get_mut(n)? = b'|';
            n += 1;
        }
        let dst = buf.get_mut(n..n + p.len())?;
        for (d, s) in dst.iter_mut().zip(p.iter()) {
            *d = s.to_ascii_uppercase();
        }
        n += p.len();
    }
    Some(&buf[..n])
}

/// The row for a command, as Redis's `lookupCommand` finds it: by name, then (for a container
/// given a second argument) by subcommand.
pub fn lookup(name: &[u8], sub: Option<&[u8]>) -> &'static Entry {
    let idx = &*INDEX;
    let mut buf = [0u8; NAME_MAX];
    let Some(upper) = upper_into(&mut buf, &[name]) else {
        return &UNKNOWN;
    };
    if upper.starts_with(b"STATE.") {
        return &STATE;
    }
    let Some(base) = idx.by_name.get(upper) else {
        return &UNKNOWN;
    };
    let Some(sub) = sub.filter(|_| !base.spec.subcommands.is_empty()) else {
        return base;
    };
    let mut buf2 = [0u8; NAME_MAX];
    match upper_into(&mut buf2, &[name, sub]).and_then(|full| idx.by_name.get(full)) {
        Some(e) => e,
        None => idx.unknown_sub.get(upper).copied().unwrap_or(&UNKNOWN),
    }
}

/// A client command: its bytes and arguments, and its row in the table.
#[derive(Debug, Clone)]
pub struct Command {
    req: Request,
    entry: &'static Entry,
}

impl Command {
    /// Looks the parsed request up in the table (once).
    pub fn new(req: Request) -> Command {
        let entry = lookup(req.name(), req.arg(1));
        Command { req, entry }
    }

    /// Builds a command from arguments (commands statecar sends itself).
    pub fn from_args<I, A>(args: I) -> Command
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        Command::new(Request::from_args(args))
    }

    /// Its row in the table.
    pub fn entry(&self) -> &'static Entry {
        self.entry
    }

    /// Its label in the per-command metrics.
    pub fn metric(&self) -> u16 {
        if self.entry.statecar {
            crate::telemetry::command_id(self.name())
        } else {
            self.entry.metric
        }
    }

    /// How statecar handles it, given its arguments (XREAD blocks only with BLOCK).
    pub fn kind(&self) -> Kind {
        match self.entry.kind {
            Kind::BlockingWithOption => {
                if self
                    .req
                    .args()
                    .skip(1)
                    .any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
                {
                    Kind::Blocking
                } else {
                    Kind::Plain
                }
            }
            k => k,
        }
    }

    /// The command exactly as it goes upstream.
    pub fn raw(&self) -> &Bytes {
        self.req.raw()
    }

    /// The parsed request.
    pub fn request(&self) -> &Request {
        &self.req
    }

    /// Number of arguments, the name included.
    pub fn argc(&self) -> usize {
        self.req.argc()
    }

    /// Argument `i` (0 is the name).
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.req.arg(i)
    }

    /// Argument `i` as a shared slice of the command's bytes.
    pub fn arg_bytes(&self, i: usize) -> Option<Bytes> {
        self.req.arg_bytes(i)
    }

    /// Every argument, the name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.req.args()
    }

    /// Every argument as shared slices.
    pub fn args_bytes(&self) -> Vec<Bytes> {
        self.req.args_bytes()
    }

    /// The name as the client spelled it.
    pub fn name(&self) -> &[u8] {
        self.req.name()
    }

    /// The name as Redis reports it in errors and CLIENT LIST: lower case, `container|sub`.
    pub fn full_name(&self) -> String {
        if self.entry.spec.name.is_empty() || self.entry.statecar {
            String::from_utf8_lossy(self.name()).to_ascii_lowercase()
        } else {
            self.entry.spec.name.to_string()
        }
    }

    /// Whether Redis accepts it from a RESP2 client in subscribed mode.
    pub fn allowed_while_subscribed(&self) -> bool {
        matches!(
            self.entry.spec.name,
            "ping"
                | "subscribe"
                | "ssubscribe"
                | "unsubscribe"
                | "sunsubscribe"
                | "psubscribe"
                | "punsubscribe"
                | "quit"
                | "reset"
        )
    }

    /// Redis's answer when the table says the command cannot run as given: unknown command,
    /// unknown subcommand or wrong arity (`commandCheckExistence`, `commandCheckArity`). None
    /// when it may run. Commands Redis does not know are normally forwarded (a module may
    /// know them); this is for the places where statecar must answer for Redis.
    pub fn rejection(&self) -> Option<Bytes> {
        let e = self.entry;
        if e.statecar {
            return None;
        }
        if e.is_unknown() {
            return Some(unknown_command(&self.req));
        }
        if e.unknown_sub {
            let sub = self.arg(1).unwrap_or_default();
            let mut msg = b"-ERR unknown subcommand '".to_vec();
            msg.extend(c_str(sub).iter().take(128));
            msg.extend_from_slice(b"'. Try ");
            msg.extend(self.name().to_ascii_uppercase());
            msg.extend_from_slice(b" HELP.");
            return Some(finish_error(msg));
        }
        if !e.spec.arity_ok(self.argc()) {
            return Some(crate::protocol::reply::wrong_arity(e.spec.name));
        }
        None
    }
}

/// A C string's view of bytes: up to the first NUL (Redis formats arguments with `%s`).
fn c_str(b: &[u8]) -> &[u8] {
    &b[..memchr::memchr(0, b).unwrap_or(b.len())]
}

/// Ends an error line, with CR and LF turned into spaces as Redis does.
fn finish_error(mut msg: Vec<u8>) -> Bytes {
    for c in msg.iter_mut().skip(1) {
        if *c == b'\r' || *c == b'\n' {
            *c = b' ';
        }
    }
    msg.extend_from_slice(b"\r\n");
    msg.into()
}

/// Redis's "unknown command" error, with its "args beginning with" list.
pub fn unknown_command(req: &Request) -> Bytes {
    let mut args: Vec<u8> = Vec::new();
    for a in req.args().skip(1) {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        args.push(b'\'');
        args.extend(c_str(a).iter().take(room));
        args.extend_from_slice(b"' ");
    }
    let mut msg = b"-ERR unknown command '".to_vec();
    msg.extend(c_str(req.name()).iter().take(128));
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend(args);
    finish_error(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Command {
        Command::from_args(args)
    }

    #[test]
    fn looks_up_commands_and_subcommands_case_insensitively() {
        assert_eq!(cmd(&["get", "k"]).entry().spec.name, "get");
        assert_eq!(
            cmd(&["Client", "kIll", "ID", "1"]).entry().spec.name,
            "client|kill"
        );
        assert_eq!(cmd(&["client"]).entry().spec.name, "client");
        assert!(cmd(&["nosuch"]).entry().is_unknown());
        assert!(cmd(&["client", "nosuch"]).entry().unknown_sub);
        assert!(cmd(&["state.load", "k"]).entry().statecar);
        assert_eq!(cmd(&["bLpOp", "q", "0"]).kind(), Kind::Blocking);
        assert_eq!(
            cmd(&["xread", "COUNT", "1", "STREAMS", "s", "0"]).kind(),
            Kind::Plain
        );
        assert_eq!(
            cmd(&["xread", "block", "0", "STREAMS", "s", "$"]).kind(),
            Kind::Blocking
        );
        assert_eq!(cmd(&["multi"]).kind(), Kind::Multi);
        assert_eq!(
            cmd(&["psubscribe", "a*"]).kind(),
            Kind::Subscribe(SubKind::Pattern)
        );
        assert_eq!(cmd(&["state.load", "k"]).kind(), Kind::Local(Local::State));
        assert_eq!(cmd(&["psync", "?", "-1"]).kind(), Kind::Refused);
        assert_eq!(cmd(&["script", "kill"]).kind(), Kind::OutOfBand);
    }

    #[test]
    fn rejections_are_redis_words() {
        assert_eq!(
            cmd(&["get"]).rejection().unwrap(),
            Bytes::from_static(b"-ERR wrong number of arguments for 'get' command\r\n")
        );
        assert_eq!(
            cmd(&["client", "kill"]).rejection().unwrap(),
            Bytes::from_static(b"-ERR wrong number of arguments for 'client|kill' command\r\n")
        );
        assert_eq!(
            cmd(&["client", "nosuch"]).rejection().unwrap(),
            Bytes::from_static(b"-ERR unknown subcommand 'nosuch'. Try CLIENT HELP.\r\n")
        );
        assert_eq!(
            cmd(&["foo", "a\r\nb", "c\0d"]).rejection().unwrap(),
            Bytes::from_static(
                b"-ERR unknown command 'foo', with args beginning with: 'a  b' 'c' \r\n"
            )
        );
        assert_eq!(cmd(&["get", "k"]).rejection(), None);
        assert_eq!(cmd(&["state.whatever"]).rejection(), None);
    }
}
