//! RESP on the wire: the one place that reads and writes the Redis protocol.
//!
//! - [`request`]: client commands, parsed once by a strict parser whose decisions and error
//!   texts are Redis's own ([`inline`] splits telnet-style lines).
//! - [`scan`]: where each reply from Redis ends, with no limit on what Redis may send.
//! - [`frames`]: taking a reply apart (array elements, bulk payloads, error lines).
//! - [`encode`]: commands statecar sends itself; [`reply`]: replies statecar builds itself.
//!
//! Nothing here knows about commands, state keys or connections: every other layer may use it.

pub mod encode;
pub mod frames;
pub mod info;
pub mod inline;
pub mod reply;
pub mod request;
pub mod scan;

pub use encode::encode_multibulk;
pub use request::{Parsed, Request, RequestParser};
pub use scan::ReplyScanner;

/// Limits on what a client may send. The defaults are Redis's.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest bulk string (Redis: proto-max-bulk-len, 512 MB).
    pub max_bulk_len: usize,
    /// Most arguments in one command (Redis: INT_MAX).
    pub max_multibulk_len: usize,
    /// Most bytes of an inline (telnet-style) command before its end is seen (Redis: 64 KB).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: i32::MAX as usize,
            max_inline_len: request::INLINE_MAX,
        }
    }
}

/// Malformed input. The bytes are what Redis itself says after `-ERR Protocol error: ` (bytes,
/// not text: Redis quotes the offending byte as it is, whatever it is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub Vec<u8>);

impl ProtocolError {
    /// An error with a fixed text.
    pub fn new(s: &[u8]) -> Self {
        ProtocolError(s.to_vec())
    }

    /// Redis's "expected '$', got 'c'".
    pub fn expected_dollar(got: u8) -> Self {
        ProtocolError([&b"expected '$', got '"[..], &[got], b"'"].concat())
    }

    /// The whole error reply a client gets: `-ERR Protocol error: ...\r\n`, on one line.
    pub fn to_reply(&self) -> bytes::Bytes {
        let mut out = b"-ERR Protocol error: ".to_vec();
        out.extend(self.0.iter().map(|&c| match c {
            b'\r' | b'\n' => b' ',
            c => c,
        }));
        out.extend_from_slice(b"\r\n");
        out.into()
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Protocol error: ")?;
        for &c in &self.0 {
            if c.is_ascii_graphic() || c == b' ' {
                write!(f, "{}", c as char)?;
            } else {
                write!(f, "{}", std::ascii::escape_default(c))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn error_replies_quote_the_byte_as_redis_does() {
        assert_eq!(
            &ProtocolError::expected_dollar(0xff).to_reply()[..],
            b"-ERR Protocol error: expected '$', got '\xff'\r\n"
        );
        assert_eq!(
            &ProtocolError::expected_dollar(b'\r').to_reply()[..],
            b"-ERR Protocol error: expected '$', got ' '\r\n"
        );
    }
}
