//! What Redis says about each of its commands (`COMMAND INFO`): arity, flags, ACL categories,
//! key specifications and cluster tips. The data itself is in [`super::table`], generated from
//! Redis 7.0.15; these are its types.

/// Redis's command flags (`COMMAND INFO`'s third field), one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u32);

/// Redis's ACL categories (`@read`, `@dangerous`, ...), one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acl(pub u32);

/// A key specification's flags (`RO`, `RW`, `access`, ...), one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyFlags(pub u16);

macro_rules! bits {
    ($ty:ident: $($name:ident = $bit:expr, $text:expr;)*) => {
        $(#[doc = concat!("`", $text, "`")] pub const $name: $ty = $ty(1 << $bit);)*
        impl $ty {
            /// Every flag with its name, as Redis spells it.
            pub const ALL: &'static [($ty, &'static str)] = &[$(($name, $text)),*];
            /// Whether every bit of `other` is set.
            pub const fn has(self, other: $ty) -> bool {
                self.0 & other.0 == other.0
            }
            /// The flag named `text` (case-insensitively), if there is one.
            pub fn named(text: &str) -> Option<$ty> {
                Self::ALL.iter().find(|(_, t)| t.eq_ignore_ascii_case(text)).map(|(f, _)| *f)
            }
            /// The names of the flags set, in Redis's order.
            pub fn names(self) -> Vec<&'static str> {
                Self::ALL.iter().filter(|(f, _)| self.has(*f)).map(|(_, t)| *t).collect()
            }
        }
        impl std::ops::BitOr for $ty {
            type Output = $ty;
            fn bitor(self, o: $ty) -> $ty {
                $ty(self.0 | o.0)
            }
        }
    };
}

bits! { Flags:
    WRITE = 0, "write";
    READONLY = 1, "readonly";
    DENYOOM = 2, "denyoom";
    MODULE = 3, "module";
    ADMIN = 4, "admin";
    PUBSUB = 5, "pubsub";
    NOSCRIPT = 6, "noscript";
    BLOCKING = 7, "blocking";
    LOADING = 8, "loading";
    STALE = 9, "stale";
    SKIP_MONITOR = 10, "skip_monitor";
    SKIP_SLOWLOG = 11, "skip_slowlog";
    ASKING = 12, "asking";
    FAST = 13, "fast";
    NO_AUTH = 14, "no_auth";
    MAY_REPLICATE = 15, "may_replicate";
    NO_MANDATORY_KEYS = 16, "no_mandatory_keys";
    NO_ASYNC_LOADING = 17, "no_async_loading";
    NO_MULTI = 18, "no_multi";
    MOVABLEKEYS = 19, "movablekeys";
    ALLOW_BUSY = 20, "allow_busy";
}

bits! { Acl:
    KEYSPACE = 0, "keyspace";
    READ = 1, "read";
    WRITE_CAT = 2, "write";
    SET = 3, "set";
    SORTEDSET = 4, "sortedset";
    LIST = 5, "list";
    HASH = 6, "hash";
    STRING = 7, "string";
    BITMAP = 8, "bitmap";
    HYPERLOGLOG = 9, "hyperloglog";
    GEO = 10, "geo";
    STREAM = 11, "stream";
    PUBSUB_CAT = 12, "pubsub";
    ADMIN_CAT = 13, "admin";
    FAST_CAT = 14, "fast";
    SLOW = 15, "slow";
    BLOCKING_CAT = 16, "blocking";
    DANGEROUS = 17, "dangerous";
    CONNECTION = 18, "connection";
    TRANSACTION = 19, "transaction";
    SCRIPTING = 20, "scripting";
}

bits! { KeyFlags:
    RO = 0, "RO";
    RW = 1, "RW";
    OW = 2, "OW";
    RM = 3, "RM";
    ACCESS = 4, "access";
    UPDATE = 5, "update";
    INSERT = 6, "insert";
    DELETE = 7, "delete";
    NOT_KEY = 8, "not_key";
    INCOMPLETE = 9, "incomplete";
    VARIABLE_FLAGS = 10, "variable_flags";
}

/// Where a key specification starts looking for keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// At this argument.
    Index(i32),
    /// After this keyword, searched from `startfrom` (backwards when negative).
    Keyword {
        /// The keyword (compared case-insensitively).
        keyword: &'static str,
        /// Where the search starts.
        startfrom: i32,
    },
    /// Redis cannot say (the command's own code finds the keys).
    Unknown,
}

/// How a key specification finds its keys from where it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    /// Keys up to `lastkey` (relative; negative counts from the end), every `step`-th.
    Range {
        /// Last key, relative to the first (negative: from the end of the arguments).
        lastkey: i32,
        /// Arguments per key.
        step: i32,
        /// With `lastkey` -1: only a `1/limit` share of what follows holds keys.
        limit: i32,
    },
    /// A key count at `keynumidx`, the keys from `firstkey`, every `step`-th.
    Keynum {
        /// Where the count is (relative to the begin).
        keynumidx: i32,
        /// Where the first key is (relative to the begin).
        firstkey: i32,
        /// Arguments per key.
        step: i32,
    },
    /// Redis cannot say.
    Unknown,
}

/// One of a command's key specifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// How the keys are used.
    pub flags: KeyFlags,
    /// Where the search begins.
    pub begin: Begin,
    /// How the keys are found.
    pub find: Find,
}

/// Which nodes of a cluster a keyless or multi-key command is meant for (`request_policy` tip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Request {
    /// Not said: by its keys, or any node.
    #[default]
    Default,
    /// Every node, replicas included.
    AllNodes,
    /// Every primary.
    AllShards,
    /// Split by key across the primaries that hold them.
    MultiShard,
    /// Needs its own handling.
    Special,
}

/// How the replies of a command sent to several nodes become one (`response_policy` tip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Response {
    /// Not said.
    #[default]
    Default,
    /// One success is enough.
    OneSucceeded,
    /// Every node must succeed.
    AllSucceeded,
    /// Element-wise AND of arrays of 0/1.
    AggLogicalAnd,
    /// Element-wise OR.
    AggLogicalOr,
    /// The smallest integer.
    AggMin,
    /// The largest integer.
    AggMax,
    /// The sum of the integers.
    AggSum,
    /// Needs its own handling.
    Special,
}

/// Redis's hints for cluster clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tips {
    /// Where it goes.
    pub request: Request,
    /// How replies combine.
    pub response: Response,
    /// `nondeterministic_output`.
    pub nondeterministic: bool,
    /// `nondeterministic_output_order`.
    pub unordered: bool,
}

impl Tips {
    /// No tips.
    pub const NONE: Tips = Tips {
        request: Request::Default,
        response: Response::Default,
        nondeterministic: false,
        unordered: false,
    };
}

/// One Redis command or subcommand, as `COMMAND INFO` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Lower case; subcommands as `container|sub`.
    pub name: &'static str,
    /// Exact argument count (name included) when positive; the minimum, negated, otherwise.
    pub arity: i16,
    /// Command flags.
    pub flags: Flags,
    /// ACL categories.
    pub acl: Acl,
    /// Cluster tips.
    pub tips: Tips,
    /// Key specifications.
    pub keys: &'static [KeySpec],
    /// Subcommands of a container command (`CLIENT`, `CONFIG`, ...).
    pub subcommands: &'static [Spec],
}

impl Spec {
    /// Whether `argc` arguments (name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let a = self.arity as i64;
        let n = argc as i64;
        (a > 0 && n == a) || (a < 0 && n >= -a) || a == 0
    }
}
