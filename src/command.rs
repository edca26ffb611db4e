//! The command table: how the session must treat each command.
//!
//! Most commands are "plain": they go to a shared connection and their reply comes back as is.
//! The others change connection state (so they need a dedicated connection or a local answer)
//! or block (so they must not hold up a shared connection).

/// What kind of handling a command needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Forward on the client's shared connection.
    Plain,
    /// May block for long: run on a leased connection.
    Blocking,
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
    /// STATE.* family.
    State,
}

/// Upper-cases a command name into a stack buffer; names longer than 32 bytes are not ours.
pub(crate) fn upper(name: &[u8], buf: &mut [u8; 32]) -> Option<usize> {
    if name.len() > buf.len() {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    Some(name.len())
}

/// Classifies a command by its arguments (XREAD is blocking only with BLOCK).
pub fn classify(args: &[bytes::Bytes]) -> Kind {
    let Some(name) = args.first() else {
        return Kind::Plain;
    };
    let mut buf = [0u8; 32];
    let Some(n) = upper(name, &mut buf) else {
        return Kind::Plain;
    };
    match &buf[..n] {
        b"GET" | b"SET" => Kind::Plain,
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BLMPOP" | b"BZPOPMIN" | b"BZPOPMAX"
        | b"BZMPOP" | b"WAIT" | b"WAITAOF" => Kind::Blocking,
        b"XREAD" | b"XREADGROUP" => {
            if args[1..].iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK")) {
                Kind::Blocking
            } else {
                Kind::Plain
            }
        }
        b"AUTH" => Kind::Local(Local::Auth),
        b"HELLO" => Kind::Local(Local::Hello),
        b"SELECT" => Kind::Local(Local::Select),
        b"QUIT" => Kind::Local(Local::Quit),
        b"RESET" => Kind::Local(Local::Reset),
        b"CLIENT" => Kind::Local(Local::Client),
        b"MULTI" => Kind::Multi,
        b"EXEC" | b"DISCARD" => Kind::EndTransaction,
        b"WATCH" => Kind::Watch,
        b"UNWATCH" => Kind::Unwatch,
        b"SUBSCRIBE" => Kind::Subscribe(SubKind::Channel),
        b"PSUBSCRIBE" => Kind::Subscribe(SubKind::Pattern),
        b"SSUBSCRIBE" => Kind::Subscribe(SubKind::Shard),
        b"UNSUBSCRIBE" => Kind::Unsubscribe(SubKind::Channel),
        b"PUNSUBSCRIBE" => Kind::Unsubscribe(SubKind::Pattern),
        b"SUNSUBSCRIBE" => Kind::Unsubscribe(SubKind::Shard),
        b"MONITOR" => Kind::Monitor,
        b"SYNC" | b"PSYNC" | b"REPLCONF" => Kind::Refused,
        n if n.starts_with(b"STATE.") => Kind::Local(Local::State),
        _ => Kind::Plain,
    }
}

/// True for the commands Redis accepts from a RESP2 client in subscribed mode.
pub fn allowed_while_subscribed(args: &[bytes::Bytes]) -> bool {
    let Some(name) = args.first() else {
        return true;
    };
    let mut buf = [0u8; 32];
    let Some(n) = upper(name, &mut buf) else {
        return false;
    };
    matches!(
        &buf[..n],
        b"SUBSCRIBE"
            | b"PSUBSCRIBE"
            | b"SSUBSCRIBE"
            | b"UNSUBSCRIBE"
            | b"PUNSUBSCRIBE"
            | b"SUNSUBSCRIBE"
            | b"PING"
            | b"QUIT"
            | b"RESET"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn k(args: &[&str]) -> Kind {
        let v: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        classify(&v)
    }

    #[test]
    fn classifies_case_insensitively() {
        assert_eq!(k(&["get", "k"]), Kind::Plain);
        assert_eq!(k(&["bLpOp", "q", "0"]), Kind::Blocking);
        assert_eq!(
            k(&["xread", "COUNT", "1", "STREAMS", "s", "0"]),
            Kind::Plain
        );
        assert_eq!(
            k(&["xread", "block", "0", "STREAMS", "s", "$"]),
            Kind::Blocking
        );
        assert_eq!(k(&["multi"]), Kind::Multi);
        assert_eq!(k(&["psubscribe", "a*"]), Kind::Subscribe(SubKind::Pattern));
        assert_eq!(k(&["state.load", "k"]), Kind::Local(Local::State));
        assert_eq!(k(&["psync", "?", "-1"]), Kind::Refused);
    }
}
