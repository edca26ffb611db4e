//! statecar's columns of the command table: how each command must be handled behind a pool of
//! shared connections. Read once, when the table is built; nothing matches names afterwards.
//!
//! Most commands are plain: they go on the client's shared connection and their reply comes
//! back as is. The others keep state on the connection (so they need a dedicated one, or are
//! answered by the session itself), block, or must reach Redis even while it is busy.

use super::spec::Flags;

/// What kind of handling a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Forward on the client's shared connection.
    Plain,
    /// May block for long: run on a leased connection.
    Blocking,
    /// Blocks only when given the BLOCK option (XREAD, XREADGROUP); resolved per command.
    BlockingWithOption,
    /// Answered or emulated by the session itself.
    Local(Local),
    /// Starts a transaction: pins a leased connection.
    Multi,
    /// Ends a transaction (EXEC, DISCARD).
    EndTransaction,
    /// WATCH: pins a leased connection.
    Watch,
    /// UNWATCH.
    Unwatch,
    /// Subscribes to something.
    Subscribe(SubKind),
    /// Unsubscribes.
    Unsubscribe(SubKind),
    /// MONITOR: the connection becomes a stream.
    Monitor,
    /// Must reach Redis while it runs a busy script (SCRIPT KILL, FUNCTION KILL, SHUTDOWN):
    /// sent on a connection of its own, never queued behind other clients' commands.
    OutOfBand,
    /// Cannot work through a proxy (replication handshakes).
    Refused,
}

/// Channel, pattern or shard-channel subscriptions (counted separately by Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubKind {
    /// SUBSCRIBE / UNSUBSCRIBE
    Channel,
    /// PSUBSCRIBE / PUNSUBSCRIBE
    Pattern,
    /// SSUBSCRIBE / SUNSUBSCRIBE
    Shard,
}

/// Commands the session answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// AUTH [user] password
    Auth,
    /// HELLO [protover [AUTH u p] [SETNAME n]]
    Hello,
    /// SELECT db
    Select,
    /// QUIT
    Quit,
    /// RESET
    Reset,
    /// CLIENT subcommands (some emulated, some pinning, some forwarded).
    Client,
    /// INFO: Redis's answer, with statecar's own client count.
    Info,
    /// STATE.* family.
    State,
}

/// statecar's handling of the command Redis calls `name` (lower case, `container|sub`).
pub(super) fn kind(name: &str) -> Kind {
    let (base, _) = name.split_once('|').unwrap_or((name, ""));
    match name {
        "auth" => return Kind::Local(Local::Auth),
        "hello" => return Kind::Local(Local::Hello),
        "select" => return Kind::Local(Local::Select),
        "quit" => return Kind::Local(Local::Quit),
        "reset" => return Kind::Local(Local::Reset),
        "info" => return Kind::Local(Local::Info),
        "multi" => return Kind::Multi,
        "exec" | "discard" => return Kind::EndTransaction,
        "watch" => return Kind::Watch,
        "unwatch" => return Kind::Unwatch,
        "subscribe" => return Kind::Subscribe(SubKind::Channel),
        "psubscribe" => return Kind::Subscribe(SubKind::Pattern),
        "ssubscribe" => return Kind::Subscribe(SubKind::Shard),
        "unsubscribe" => return Kind::Unsubscribe(SubKind::Channel),
        "punsubscribe" => return Kind::Unsubscribe(SubKind::Pattern),
        "sunsubscribe" => return Kind::Unsubscribe(SubKind::Shard),
        "monitor" => return Kind::Monitor,
        "sync" | "psync" | "replconf" => return Kind::Refused,
        "xread" | "xreadgroup" => return Kind::BlockingWithOption,
        "script|kill" | "function|kill" => return Kind::OutOfBand,
        _ => {}
    }
    if base == "client" {
        return Kind::Local(Local::Client);
    }
    let flags = super::table::COMMANDS
        .iter()
        .find(|s| s.name == base)
        .and_then(|s| {
            if s.name == name {
                Some(s)
            } else {
                s.subcommands.iter().find(|c| c.name == name)
            }
        })
        .map(|s| s.flags)
        .unwrap_or_default();
    if flags.has(Flags(super::spec::BLOCKING.0)) {
        return Kind::Blocking;
    }
    Kind::Plain
}

/// Commands Redis 7.0 flags `MAY_REPLICATE` (in its command JSON files; COMMAND INFO does not
/// show the flag). With the write commands, they are what `CLIENT PAUSE ... WRITE` holds.
pub(super) fn may_replicate(name: &str) -> bool {
    matches!(
        name,
        "eval" | "evalsha" | "fcall" | "pfcount" | "publish" | "spublish"
    )
}

/// How the replies of a command sent to several cluster primaries become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Integers added up (DEL, EXISTS, DBSIZE, ...).
    Sum,
    /// `+OK` when every part says so (MSET, FLUSHALL, SCRIPT FLUSH).
    AllOk,
    /// One array per key, put back in the client's key order (MGET).
    Positional,
    /// Arrays concatenated (KEYS).
    Concat,
    /// Arrays of 0/1 combined element-wise with AND (SCRIPT EXISTS).
    And,
    /// The first part's reply, unless some part failed (SCRIPT LOAD, FUNCTION LOAD).
    First,
}

/// Where a command goes in a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// To the node of its keys (any node when it has none); CROSSSLOT if they span slots.
    ByKeys,
    /// Keys spanning slots are split per slot and the replies joined; `step` is 1 for a key
    /// list and 2 for key/value pairs.
    Split {
        /// How the parts' replies are joined.
        merge: Merge,
        /// Arguments per key.
        step: usize,
    },
    /// To every primary.
    All(Merge),
    /// SCAN: the primaries one after another.
    Scan,
}

/// statecar's cluster routing of `name`: what cluster-aware clients do with these commands.
pub(super) fn routing(name: &str) -> Routing {
    match name {
        "mget" => Routing::Split {
            merge: Merge::Positional,
            step: 1,
        },
        "del" | "unlink" | "exists" | "touch" => Routing::Split {
            merge: Merge::Sum,
            step: 1,
        },
        "mset" => Routing::Split {
            merge: Merge::AllOk,
            step: 2,
        },
        "dbsize" => Routing::All(Merge::Sum),
        "flushall" | "flushdb" | "script|flush" => Routing::All(Merge::AllOk),
        "keys" => Routing::All(Merge::Concat),
        "scan" => Routing::Scan,
        "script|exists" => Routing::All(Merge::And),
        "script|load" | "function|load" | "function|delete" | "function|flush"
        | "function|restore" => Routing::All(Merge::First),
        _ => Routing::ByKeys,
    }
}

/// Whether a state key among the command's arguments changes how it runs: the commands
/// `state::plan` knows how to rewrite (or must refuse, so an encoded value is never misread).
pub(super) fn state(name: &str) -> bool {
    matches!(
        name,
        "get"
            | "set"
            | "setex"
            | "psetex"
            | "setnx"
            | "getset"
            | "getdel"
            | "getex"
            | "mget"
            | "mset"
            | "msetnx"
            | "strlen"
            | "append"
            | "setrange"
            | "getrange"
            | "substr"
            | "incr"
            | "incrby"
            | "incrbyfloat"
            | "decr"
            | "decrby"
            | "setbit"
            | "getbit"
            | "bitcount"
            | "bitfield"
            | "bitfield_ro"
            | "bitop"
            | "bitpos"
            | "lcs"
            | "del"
            | "unlink"
            | "expire"
            | "pexpire"
            | "expireat"
            | "pexpireat"
            | "persist"
            | "rename"
            | "renamenx"
            | "copy"
            | "move"
            | "dump"
            | "restore"
            | "object|encoding"
            | "object|freq"
            | "object|idletime"
            | "object|refcount"
            | "type"
            | "scan"
    )
}
