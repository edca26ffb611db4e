//! What Redis keeps per connection and statecar keeps per client instead, because the client's
//! commands travel over connections it shares with others: database, protocol, name,
//! authentication, reply mode.

use bytes::Bytes;

use crate::upstream::PoolKey;

/// `CLIENT REPLY` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    /// Replies are sent.
    On,
    /// Replies are dropped until `CLIENT REPLY ON`.
    Off,
    /// The next command's reply is dropped.
    Skip,
}

/// Modes a client is in, as CLIENT LIST's `flags=` shows them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Modes {
    /// CLIENT NO-EVICT ON: the memory budget never picks this client.
    pub no_evict: bool,
    /// MONITOR is on.
    pub monitor: bool,
    /// CLIENT TRACKING is on.
    pub tracking: bool,
    /// CLIENT TRACKING ... REDIRECT: the statecar client the invalidations go to.
    pub redirect: Option<u64>,
    /// Waiting in a blocking command.
    pub blocked: bool,
}

/// One client's connection state.
#[derive(Debug)]
pub struct ClientState {
    /// statecar's id for the client (CLIENT ID, HELLO).
    pub id: u64,
    /// RESP version the client speaks.
    pub proto: u8,
    /// Selected database.
    pub db: u32,
    /// CLIENT SETNAME.
    pub name: Option<Bytes>,
    /// Whether the client may run commands (statecar's own password, when it has one).
    pub authed: bool,
    /// CLIENT REPLY.
    pub reply_mode: ReplyMode,
    /// No more input is read: the connection closes once every reply is written (QUIT, a
    /// protocol error, a lost dedicated connection, shutdown).
    pub closing: bool,
    /// Modes CLIENT LIST shows as flags.
    pub modes: Modes,
    /// Who Redis knows the client as, when Redis checked its AUTH (statecar has no password
    /// of its own); None: statecar's upstream credentials.
    pub identity: Option<std::sync::Arc<crate::upstream::Identity>>,
}

impl ClientState {
    /// A new client on database `db`.
    pub fn new(id: u64, db: u32, authed: bool) -> ClientState {
        ClientState {
            id,
            proto: 2,
            db,
            name: None,
            authed,
            reply_mode: ReplyMode::On,
            closing: false,
            modes: Modes::default(),
            identity: None,
        }
    }

    /// The pool of shared connections that matches this client's database, protocol and
    /// identity.
    pub fn key(&self) -> PoolKey {
        PoolKey {
            db: self.db,
            proto: self.proto,
            identity: self.identity.clone(),
        }
    }

    /// Whether this command's reply is to be dropped (`CLIENT REPLY OFF/SKIP`); a SKIP applies
    /// to one command only.
    pub fn take_discard(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_drops_one_reply_and_off_drops_all() {
        let mut c = ClientState::new(1, 0, true);
        assert!(!c.take_discard());
        c.reply_mode = ReplyMode::Skip;
        assert!(c.take_discard());
        assert!(!c.take_discard());
        c.reply_mode = ReplyMode::Off;
        assert!(c.take_discard());
        assert!(c.take_discard());
        assert_eq!(c.key(), PoolKey::new(0, 2));
    }
}
