//! Opening one connection to Redis: TCP, keepalive, TLS for `rediss://`, then the handshake
//! (HELLO/AUTH, SELECT).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::settings::UpstreamConfig;
use super::url::Addr;
use super::{PoolKey, UpstreamError};
use crate::fair_share::FairShare;
use crate::protocol::{ReplyScanner, encode_multibulk};

/// A byte stream to Redis; an enum so that TLS can join TCP without a trait object.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (`rediss://`); boxed because rustls's connection state is large.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// True when the peer has closed or sent something unsolicited: not safe to reuse.
    ///
    /// For TLS this looks at the socket under the TLS layer: any bytes there (a close_notify
    /// alert, a late session ticket, an unsolicited reply) make the connection stale. A stale
    /// connection is dropped, so consuming a byte of it is harmless.
    pub fn is_stale(&self) -> bool {
        let tcp = match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        let mut probe = [0u8; 1];
        !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads one whole reply frame from `stream`, buffering in `rbuf`.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    addr: &str,
) -> Result<Bytes, UpstreamError> {
    let mut share = FairShare::default();
    loop {
        if let Some(len) = scanner.scan(rbuf).map_err(|e| UpstreamError::Protocol {
            addr: addr.to_string(),
            detail: e.to_string(),
        })? {
            scanner.reset();
            return Ok(rbuf.split_to(len).freeze());
        }
        // A big reply does not hold the thread for all of it.
        share.take_turn().await;
        if rbuf.capacity() - rbuf.len() < 4096 {
            // A big reply's room at once, from its length (as the shared connection does).
            rbuf.reserve(scanner.missing(rbuf.len()).max(64 * 1024));
        }
        let n = crate::fair_share::read_buf(stream, rbuf)
            .await
            .map_err(|e| UpstreamError::io(addr, &e))?;
        if n == 0 {
            return Err(UpstreamError::Closed {
                addr: addr.to_string(),
            });
        }
        share.moved(n);
    }
}

pub use crate::protocol::frames::decode as decode_reply;

/// What the handshake learned about the server.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    /// `version` from HELLO, e.g. "7.0.15".
    pub version: String,
    /// Whether statecar's function library is loaded (see `UpstreamConfig::function_library`).
    pub functions: bool,
    /// `id` from HELLO: Redis's id for this connection.
    pub id: Option<i64>,
}

/// An open, authenticated connection on the right db and protocol.
pub struct Connected {
    /// The stream.
    pub stream: Stream,
    /// Bytes read past the handshake replies (normally empty).
    pub rbuf: BytesMut,
    /// Facts from HELLO.
    pub info: ServerInfo,
}

/// The commands that put a fresh (or RESET) connection into the state `key` asks for.
pub fn handshake_commands(cfg: &UpstreamConfig, key: &PoolKey, out: &mut BytesMut) -> usize {
    let url = &cfg.url;
    let proto = key.proto.to_string();
    let mut hello: Vec<&[u8]> = vec![b"HELLO", proto.as_bytes()];
    let creds = match &key.identity {
        Some(id) => Some((id.user.as_str(), id.password.as_str())),
        None => url
            .password
            .as_deref()
            .map(|p| (url.username.as_deref().unwrap_or("default"), p)),
    };
    if let Some((user, pass)) = creds {
        hello.push(b"AUTH");
        hello.push(user.as_bytes());
        hello.push(pass.as_bytes());
    }
    hello.push(b"SETNAME");
    hello.push(b"statecar");
    encode_multibulk(out, &hello);
    let mut n = 1;
    if key.db != 0 {
        let db = key.db.to_string();
        encode_multibulk(out, &[b"SELECT".as_slice(), db.as_bytes()]);
        n += 1;
    }
    n
}

/// Checks the handshake replies; the first error names the step.
pub fn check_handshake_reply(
    addr: &str,
    step: usize,
    frame: &Bytes,
    info: &mut ServerInfo,
) -> Result<(), UpstreamError> {
    let fail = |reply: String| UpstreamError::Handshake {
        addr: addr.to_string(),
        step: if step == 0 { "HELLO" } else { "SELECT" },
        reply,
    };
    let decoded = decode_reply(frame).ok_or_else(|| fail("unparseable reply".into()))?;
    match &decoded {
        BytesFrame::SimpleError { data, .. } => return Err(fail(data.to_string())),
        BytesFrame::BlobError { data, .. } => {
            return Err(fail(String::from_utf8_lossy(data).into_owned()));
        }
        _ => {}
    }
    if step == 0 {
        let items: Vec<&BytesFrame> = match &decoded {
            BytesFrame::Map { data, .. } => data.iter().flat_map(|(k, v)| [k, v]).collect(),
            BytesFrame::Array { data, .. } => data.iter().collect(),
            _ => Vec::new(),
        };
        for pair in items.chunks(2) {
            let [k, v] = pair else { continue };
            match k.as_bytes() {
                Some(b"version") => {
                    info.version = v
                        .as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                }
                Some(b"id") => {
                    if let BytesFrame::Number { data, .. } = v {
                        info.id = Some(*data);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Opens and prepares one connection within `connect_timeout_ms` (TCP connect, TLS handshake
/// and the HELLO/SELECT handshake all count against it).
pub async fn connect(
    cfg: &UpstreamConfig,
    node: &Addr,
    key: &PoolKey,
) -> Result<Connected, UpstreamError> {
    let addr = node.to_string();
    let deadline = Duration::from_millis(cfg.connect_timeout_ms);
    match tokio::time::timeout(deadline, connect_inner(cfg, node, key, &addr)).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Unavailable {
            addr,
            reason: format!("connect timed out after {} ms", cfg.connect_timeout_ms),
        }),
    }
}

async fn connect_inner(
    cfg: &UpstreamConfig,
    node: &Addr,
    key: &PoolKey,
    addr: &str,
) -> Result<Connected, UpstreamError> {
    let mut stream = open(cfg, node, addr).await?;
    let is_tls = matches!(stream, Stream::Tls(_));
    // With TLS 1.3 Redis checks a client certificate after our side of the handshake is done,
    // so a refusal only shows up as an alert while we read the HELLO reply.
    let tls_refusal = |e: UpstreamError| match e {
        UpstreamError::Io { addr, reason } if is_tls => {
            let hint =
                if reason.contains("certificaterequired") || reason.contains("badcertificate") {
                    " (Redis wants a client certificate it trusts: see upstream.tls.cert_file)"
                } else {
                    ""
                };
            UpstreamError::Unavailable {
                addr,
                reason: format!("TLS connection failed during HELLO: {reason}{hint}"),
            }
        }
        other => other,
    };
    let mut out = BytesMut::new();
    let n = handshake_commands(cfg, key, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| tls_refusal(UpstreamError::io(addr, &e)))?;
    let mut rbuf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::default();
    let mut info = ServerInfo::default();
    for step in 0..n {
        let frame = read_frame(&mut stream, &mut rbuf, &mut scanner, addr)
            .await
            .map_err(tls_refusal)?;
        check_handshake_reply(addr, step, &frame, &mut info)?;
    }
    if let Some(lib) = &cfg.function_library {
        // Asked first, loaded only when missing: the library is usually there already (another
        // connection loaded it), and a FUNCTION LOAD, a write, would wait out a CLIENT PAUSE
        // WRITE while this connection is needed.
        stream
            .write_all(&lib.check)
            .await
            .map_err(|e| UpstreamError::io(addr, &e))?;
        let listed = read_frame(&mut stream, &mut rbuf, &mut scanner, addr).await?;
        if library_listed(&listed) {
            info.functions = true;
            return Ok(Connected { stream, rbuf, info });
        }
        stream
            .write_all(&lib.load)
            .await
            .map_err(|e| UpstreamError::io(addr, &e))?;
        let frame = read_frame(&mut stream, &mut rbuf, &mut scanner, addr).await?;
        // The library's name back, or "already exists": loaded either way. Anything else
        // (Redis 6, an ACL without FUNCTION) means scripts go by EVALSHA/EVAL instead.
        info.functions = frame.first() == Some(&b'$')
            || (frame.starts_with(b"-ERR Library")
                && frame.windows(14).any(|w| w == b"already exists"));
        if !info.functions {
            tracing::debug!(%addr, reply = %String::from_utf8_lossy(&frame).trim(), "function library not loaded");
        }
    }
    Ok(Connected { stream, rbuf, info })
}

/// Whether a FUNCTION LIST LIBRARYNAME reply lists a library: a non-empty array (RESP2 and
/// RESP3 alike). An error (Redis 6, an ACL without FUNCTION) or an empty array is not.
fn library_listed(frame: &[u8]) -> bool {
    frame.first() == Some(&b'*') && !frame.starts_with(b"*0\r\n") && !frame.starts_with(b"*-1")
}

/// A TCP connection (with TLS for `rediss://`), before any command.
async fn open(cfg: &UpstreamConfig, node: &Addr, addr: &str) -> Result<Stream, UpstreamError> {
    let tcp = TcpStream::connect((node.host.as_str(), node.port))
        .await
        .map_err(|e| UpstreamError::Unavailable {
            addr: addr.to_string(),
            reason: e.to_string().to_lowercase(),
        })?;
    let _ = tcp.set_nodelay(true);
    if cfg.keepalive_s > 0 {
        let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(cfg.keepalive_s));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
    }
    match &cfg.tls {
        Some(tls) if cfg.url.tls => {
            tls.warn_if_insecure();
            let s = tls
                .connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(|e| UpstreamError::Unavailable {
                    addr: addr.to_string(),
                    reason: format!("TLS handshake failed: {}", tls_reason(&e)),
                })?;
            Ok(Stream::Tls(Box::new(s)))
        }
        // Config::build always attaches a connector to a rediss:// URL; never fall back to
        // plain text if some caller built an UpstreamConfig by hand.
        None if cfg.url.tls => Err(UpstreamError::Unavailable {
            addr: addr.to_string(),
            reason: "rediss:// URL but no TLS configuration".to_string(),
        }),
        _ => Ok(Stream::Tcp(tcp)),
    }
}

/// Runs `commands` (RESP, back to back) on a connection of their own that has sent nothing
/// else (no HELLO, no SELECT, no function library), and returns their `replies` reply frames.
/// For what must reach Redis whatever state it is in: checking a client's AUTH, and commands
/// that must get through while a script keeps Redis busy (SCRIPT KILL, FUNCTION KILL), for
/// which Redis answers only a few commands (AUTH among them).
pub async fn one_off(
    cfg: &UpstreamConfig,
    node: &Addr,
    commands: &[u8],
    replies: usize,
) -> Result<Vec<Bytes>, UpstreamError> {
    let addr = node.to_string();
    let work = async {
        let mut stream = open(cfg, node, &addr).await?;
        stream
            .write_all(commands)
            .await
            .map_err(|e| UpstreamError::io(&addr, &e))?;
        let mut rbuf = BytesMut::with_capacity(512);
        let mut scanner = ReplyScanner::default();
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(read_frame(&mut stream, &mut rbuf, &mut scanner, &addr).await?);
        }
        Ok(out)
    };
    let deadline = Duration::from_millis(cfg.connect_timeout_ms.saturating_add(cfg.timeout_ms));
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout {
            addr,
            ms: cfg.connect_timeout_ms.saturating_add(cfg.timeout_ms),
        }),
    }
}

/// `AUTH` with statecar's own credentials (`upstream.url`), if it has any, for [`one_off`].
pub fn auth_command(cfg: &UpstreamConfig, out: &mut BytesMut) -> usize {
    match &cfg.url.password {
        Some(p) => {
            let user = cfg.url.username.as_deref().unwrap_or("default");
            encode_multibulk(out, &[&b"AUTH"[..], user.as_bytes(), p.as_bytes()]);
            1
        }
        None => 0,
    }
}

/// The rustls error under an I/O error from the handshake, spelled for an operator.
fn tls_reason(e: &io::Error) -> String {
    use rustls::AlertDescription as A;
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => format!(
            "invalid certificate from Redis: {c} (check upstream.tls.ca_file and server_name)"
        ),
        Some(rustls::Error::AlertReceived(a @ (A::CertificateRequired | A::HandshakeFailure))) => {
            format!(
                "Redis sent TLS alert {a:?} (does it require a client certificate? \
                 see upstream.tls.cert_file)"
            )
        }
        Some(rustls::Error::AlertReceived(a)) => format!("Redis sent TLS alert {a:?}"),
        Some(other) => other.to_string(),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            "connection closed during the TLS handshake (is this port serving TLS?)".to_string()
        }
        None => e.to_string(),
    }
}
