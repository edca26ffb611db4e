//! statecar's own clients, as Redis knows its own: what CLIENT LIST and CLIENT INFO describe,
//! what CLIENT KILL and the memory budget act on, and how a client id maps to the Redis
//! connection a client holds (CLIENT TRACKING REDIRECT, CLIENT UNBLOCK).
//!
//! Each session publishes its state here with a few relaxed atomic stores per command; the rare
//! readers (CLIENT LIST, the budget) take a consistent-enough snapshot, as Redis's own
//! CLIENT LIST is a snapshot too.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use crate::signal::Signal;
use bytes::Bytes;
use dashmap::DashMap;

use crate::upstream::lease::Returned;

/// The fixed reply buffer of a Redis client (PROTO_REPLY_CHUNK_BYTES), which `omem` leaves out.
const REPLY_BUFFER: usize = 16 * 1024;

/// Flag letters of CLIENT LIST's `flags=` field that statecar can set.
pub mod flag {
    /// Subscribed to something.
    pub const PUBSUB: u32 = 1;
    /// Inside MULTI.
    pub const MULTI: u32 = 2;
    /// Blocked in a blocking command.
    pub const BLOCKED: u32 = 4;
    /// Client tracking on.
    pub const TRACKING: u32 = 8;
    /// CLIENT NO-EVICT on: never disconnected by the memory budget.
    pub const NO_EVICT: u32 = 16;
    /// MONITOR.
    pub const MONITOR: u32 = 32;
}

/// Milliseconds since statecar started (a monotonic clock; CLIENT LIST shows differences).
fn now_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// Where a client connects from and to.
struct Place {
    addr: String,
    laddr: String,
    fd: i32,
}

/// When a client connected, last sent something, and what it last ran.
struct Activity {
    created_ms: u64,
    last_active_ms: AtomicU64,
    /// The last command's row in the command table (0: none yet).
    last_cmd: AtomicU32,
}

/// The connection state a session publishes after each command.
#[derive(Default)]
struct Published {
    db: AtomicU32,
    resp: AtomicU8,
    flags: AtomicU32,
    subs: [AtomicU32; 3],
    /// Commands queued in MULTI, or -1 outside it.
    multi: AtomicI64,
}

/// The bytes a client holds in statecar.
#[derive(Default)]
struct Held {
    /// Input buffered.
    qbuf: AtomicUsize,
    /// Replies waiting for the socket.
    omem: AtomicUsize,
    /// Their sum as last accounted in the registry's total.
    total: AtomicUsize,
}

/// One client, as the others may see it.
pub struct ClientInfo {
    /// statecar's id.
    pub id: u64,
    place: Place,
    activity: Activity,
    name: Mutex<Option<Bytes>>,
    user: Mutex<String>,
    state: Published,
    held: Held,
    /// Redis's id for the connection the client holds on its own (pinned or blocked), or -1.
    pub upstream_id: AtomicI64,
    /// Set once the client is told to go (CLIENT KILL, the memory budget).
    kill: Signal,
    killed_by_budget: AtomicBool,
    /// Another client's CLIENT TRACKING REDIRECT names the connection this client holds.
    redirect_target: AtomicBool,
    /// Wakes the client's session to take a connection of its own (see `want_pin`).
    pin_wanted: Arc<tokio::sync::Notify>,
}

impl ClientInfo {
    /// Resolves when the client has been killed (a future the session keeps, so that waiting
    /// for it costs nothing per turn of its loop).
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.kill.clone().cancelled_owned()
    }

    /// Asks the client's session to take a connection of its own, for another client's
    /// tracking to redirect to (the session sets `upstream_id` once it has one).
    pub fn want_pin(&self) {
        self.pin_wanted.notify_one();
    }

    /// Resolves at the next `want_pin`.
    pub fn pin_wanted(&self) -> tokio::sync::futures::OwnedNotified {
        self.pin_wanted.clone().notified_owned()
    }

    /// Another client's tracking now redirects to the connection this client holds.
    pub fn mark_redirect_target(&self) {
        self.redirect_target.store(true, Ordering::Relaxed);
    }

    /// How the connection this client holds goes back when it lets go: closed if some
    /// client's tracking redirects to it, so that Redis tells that client the redirect broke
    /// (as when a direct client leaves) and the connection's next user never receives its
    /// invalidations. Clears the mark: the redirect ends with the connection.
    pub fn release_as(&self, otherwise: Returned) -> Returned {
        if self.redirect_target.swap(false, Ordering::Relaxed) {
            Returned::Broken
        } else {
            otherwise
        }
    }

    /// Disconnects the client as soon as its task notices.
    pub fn kill(&self) {
        self.kill.cancel();
    }

    /// Whether the memory budget disconnected it.
    pub fn evicted(&self) -> bool {
        self.killed_by_budget.load(Ordering::Relaxed)
    }

    /// Records a command (its row in the command table).
    pub fn touch(&self, index: u32) {
        self.activity.last_cmd.store(index, Ordering::Relaxed);
    }

    /// Records that the client sent something now.
    pub fn active(&self) {
        self.activity
            .last_active_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Publishes the connection state that CLIENT LIST shows.
    pub fn publish(&self, db: u32, resp: u8, flags: u32, subs: [usize; 3], multi: i64) {
        self.state.db.store(db, Ordering::Relaxed);
        self.state.resp.store(resp, Ordering::Relaxed);
        self.state.flags.store(flags, Ordering::Relaxed);
        for (a, n) in self.state.subs.iter().zip(subs) {
            a.store(n.min(u32::MAX as usize) as u32, Ordering::Relaxed);
        }
        self.state.multi.store(multi, Ordering::Relaxed);
    }

    /// The client's name changed.
    pub fn set_name(&self, name: Option<Bytes>) {
        if let Ok(mut n) = self.name.lock() {
            *n = name;
        }
    }

    /// The client authenticated as `user`.
    pub fn set_user(&self, user: &str) {
        if let Ok(mut u) = self.user.lock() {
            user.clone_into(&mut u);
        }
    }

    /// Its user name.
    pub fn user(&self) -> String {
        self.user.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// Flag bits.
    pub fn flags(&self) -> u32 {
        self.state.flags.load(Ordering::Relaxed)
    }

    /// `host:port` of the client.
    pub fn addr(&self) -> &str {
        &self.place.addr
    }

    /// `host:port` of statecar's side.
    pub fn laddr(&self) -> &str {
        &self.place.laddr
    }

    /// Bytes the client holds in statecar (input and output buffers), as last accounted.
    pub fn memory(&self) -> usize {
        self.held.total.load(Ordering::Relaxed)
    }

    /// Whether the client has been told to go.
    pub fn is_killed(&self) -> bool {
        self.kill.is_cancelled()
    }

    /// Redis's type name for the client (CLIENT KILL TYPE, CLIENT LIST TYPE).
    pub fn kind(&self) -> &'static str {
        if self.flags() & flag::PUBSUB != 0 {
            "pubsub"
        } else {
            "normal"
        }
    }

    /// One CLIENT LIST line, in Redis 7.0's format, without the newline.
    pub fn line(&self) -> Vec<u8> {
        self.line_with(None)
    }

    /// The line, with the query buffer as the client itself sees it while its CLIENT command
    /// runs (`own_qbuf`: Redis counts the command being run in `qbuf`).
    pub fn line_with(&self, own_qbuf: Option<usize>) -> Vec<u8> {
        let now = now_ms();
        let flags = self.flags();
        let mut f = String::new();
        if flags & flag::MONITOR != 0 {
            f.push('O');
        }
        if flags & flag::PUBSUB != 0 {
            f.push('P');
        }
        if flags & flag::MULTI != 0 {
            f.push('x');
        }
        if flags & flag::BLOCKED != 0 {
            f.push('b');
        }
        if flags & flag::TRACKING != 0 {
            f.push('t');
        }
        if flags & flag::NO_EVICT != 0 {
            f.push('e');
        }
        if f.is_empty() {
            f.push('N');
        }
        let qbuf = own_qbuf.unwrap_or_else(|| self.held.qbuf.load(Ordering::Relaxed));
        // Redis's omem leaves out the client's fixed 16 KiB reply buffer: only what overflows
        // it counts. statecar's queued output is counted the same way.
        let omem = self
            .held
            .omem
            .load(Ordering::Relaxed)
            .saturating_sub(REPLY_BUFFER);
        let name = self.name.lock().ok().and_then(|n| n.clone());
        let cmd = crate::command::name_of(self.activity.last_cmd.load(Ordering::Relaxed));
        let mut out = format!(
            "id={} addr={} laddr={} fd={} name=",
            self.id, self.place.addr, self.place.laddr, self.place.fd
        )
        .into_bytes();
        if let Some(n) = name {
            out.extend_from_slice(&n);
        }
        out.extend_from_slice(
            format!(
                " age={} idle={} flags={f} db={} sub={} psub={} ssub={} multi={} qbuf={qbuf} \
                 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={omem} \
                 tot-mem={} events=r cmd={cmd} user={} redir=-1 resp={}",
                now.saturating_sub(self.activity.created_ms) / 1000,
                now.saturating_sub(self.activity.last_active_ms.load(Ordering::Relaxed)) / 1000,
                self.state.db.load(Ordering::Relaxed),
                self.state.subs[0].load(Ordering::Relaxed),
                self.state.subs[1].load(Ordering::Relaxed),
                self.state.subs[2].load(Ordering::Relaxed),
                self.state.multi.load(Ordering::Relaxed),
                qbuf.saturating_add(omem),
                self.user(),
                self.state.resp.load(Ordering::Relaxed),
            )
            .as_bytes(),
        );
        out
    }
}

/// Every connected client.
#[derive(Default)]
pub struct Registry {
    clients: DashMap<u64, Arc<ClientInfo>>,
    /// Bytes all clients hold, kept up to date by [`Registry::account`].
    total: AtomicUsize,
}

impl Registry {
    /// Adds a client; it is removed when the returned guard drops.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        fd: i32,
    ) -> Registered {
        let now = now_ms();
        let info = Arc::new(ClientInfo {
            id,
            place: Place {
                addr: peer.to_string(),
                laddr: local.map(|l| l.to_string()).unwrap_or_default(),
                fd,
            },
            activity: Activity {
                created_ms: now,
                last_active_ms: AtomicU64::new(now),
                last_cmd: AtomicU32::new(0),
            },
            name: Mutex::new(None),
            user: Mutex::new("default".into()),
            state: Published {
                resp: AtomicU8::new(2),
                multi: AtomicI64::new(-1),
                ..Published::default()
            },
            held: Held::default(),
            upstream_id: AtomicI64::new(-1),
            kill: Signal::new(),
            killed_by_budget: AtomicBool::new(false),
            redirect_target: AtomicBool::new(false),
            pin_wanted: Arc::new(tokio::sync::Notify::new()),
        });
        self.clients.insert(id, info.clone());
        Registered {
            registry: self.clone(),
            info,
        }
    }

    /// Every client, by id (Redis lists clients in the order they connected).
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<Arc<ClientInfo>> = self.clients.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// The client with this id.
    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.clients.get(&id).map(|e| e.value().clone())
    }

    /// The statecar client holding the Redis connection `upstream_id`.
    pub fn by_upstream_id(&self, upstream_id: i64) -> Option<Arc<ClientInfo>> {
        self.clients
            .iter()
            .find(|e| e.value().upstream_id.load(Ordering::Relaxed) == upstream_id)
            .map(|e| e.value().clone())
    }

    /// Bytes held by all clients together.
    pub fn memory(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Records what `c` holds now (input and output bytes); returns the new total.
    pub fn account(&self, c: &ClientInfo, qbuf: usize, omem: usize) -> usize {
        c.held.qbuf.store(qbuf, Ordering::Relaxed);
        c.held.omem.store(omem, Ordering::Relaxed);
        if c.is_killed() {
            // Already taken out of the total when it was told to go.
            return self.total.load(Ordering::Relaxed);
        }
        let now = qbuf.saturating_add(omem);
        let before = c.held.total.swap(now, Ordering::Relaxed);
        if now >= before {
            self.total.fetch_add(now - before, Ordering::Relaxed) + (now - before)
        } else {
            self.total
                .fetch_sub(before - now, Ordering::Relaxed)
                .saturating_sub(before - now)
        }
    }

    /// Takes a departing (or evicted) client's bytes out of the total.
    fn release(&self, c: &ClientInfo) {
        let held = c.held.total.swap(0, Ordering::Relaxed);
        self.total.fetch_sub(held, Ordering::Relaxed);
    }

    /// Over budget: disconnects the client holding the most (never one with NO-EVICT), as
    /// Redis's `maxmemory-clients` does, and returns it. Its bytes leave the total at once, so
    /// that the next check does not pick a second victim for the same excess.
    pub fn evict_largest(&self) -> Option<(Arc<ClientInfo>, usize)> {
        let victim = self
            .clients
            .iter()
            .filter(|e| e.value().flags() & flag::NO_EVICT == 0 && !e.value().is_killed())
            .max_by_key(|e| e.value().memory())
            .map(|e| e.value().clone())?;
        victim.killed_by_budget.store(true, Ordering::Relaxed);
        victim.kill();
        let held = victim.memory();
        self.release(&victim);
        Some((victim, held))
    }

    /// How many clients are connected.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// No client connected.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// A client's entry, removed from the registry when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    /// The entry.
    pub info: Arc<ClientInfo>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.info.id);
        self.registry.release(&self.info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn lines_follow_redis_format_and_entries_leave_with_their_guard() {
        let r = Arc::new(Registry::default());
        let a = r.register(7, addr(5000), Some(addr(6380)), 9);
        a.info.set_name(Some(Bytes::from_static(b"worker")));
        a.info.touch(
            crate::command::Command::from_args(["client", "list"])
                .entry()
                .index,
        );
        a.info
            .publish(3, 3, flag::PUBSUB | flag::MULTI, [2, 1, 0], 4);
        let line = String::from_utf8(a.info.line()).unwrap();
        assert!(line.starts_with("id=7 addr=127.0.0.1:5000 laddr=127.0.0.1:6380 fd=9 name=worker age=0 idle=0 flags=Px db=3 sub=2 psub=1 ssub=0 multi=4 "), "{line}");
        assert!(
            line.ends_with(" cmd=client|list user=default redir=-1 resp=3"),
            "{line}"
        );
        assert_eq!(a.info.kind(), "pubsub");
        let b = r.register(8, addr(5001), None, -1);
        assert_eq!(r.all().iter().map(|c| c.id).collect::<Vec<_>>(), vec![7, 8]);
        drop(b);
        assert_eq!(r.len(), 1);
        assert!(r.get(8).is_none());
    }

    #[test]
    fn the_budget_evicts_the_largest_client_but_never_a_no_evict_one() {
        let r = Arc::new(Registry::default());
        let a = r.register(1, addr(1), None, -1);
        let b = r.register(2, addr(2), None, -1);
        let c = r.register(3, addr(3), None, -1);
        r.account(&a.info, 100, 0);
        r.account(&b.info, 400, 100);
        c.info.publish(0, 2, flag::NO_EVICT, [0; 3], -1);
        assert_eq!(r.account(&c.info, 0, 900), 1500);
        assert_eq!(r.account(&a.info, 50, 0), 1450);
        let (v, held) = r.evict_largest().unwrap();
        assert_eq!((v.id, held), (2, 500));
        assert!(v.evicted());
        assert_eq!(
            r.memory(),
            950,
            "the victim's bytes leave the total at once"
        );
        // Already told to go: it is not counted again, and the next victim is another one.
        assert_eq!(r.account(&b.info, 400, 100), 950);
        assert_eq!(r.evict_largest().unwrap().0.id, 1);
        assert!(r.evict_largest().is_none());
        drop(c);
        assert_eq!(r.memory(), 0);
    }
}
