//! Replies the proxy builds itself (errors, HELLO, STATE.*), encoded for the client's protocol.
//!
//! Replies from Redis are forwarded as raw bytes and never pass through here.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Resp2;
use redis_protocol::resp3::types::{BytesFrame as Resp3, FrameMap};

/// A reply value, independent of protocol version.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (the text includes the error code).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3 foo`
    Bulk(Bytes),
    /// `$-1` in RESP2, `_` in RESP3.
    Null,
    /// `*n`
    Array(Vec<Value>),
    /// A map in RESP3; a flat key, value, key, value array in RESP2.
    Map(Vec<(Value, Value)>),
    /// A RESP3 push; an array in RESP2.
    Push(Vec<Value>),
}

impl Value {
    /// A bulk string from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Value {
        Value::Bulk(b.into())
    }

    /// A bulk string from text.
    pub fn text(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn to_resp2(&self) -> Resp2 {
        match self {
            Value::Simple(s) => Resp2::SimpleString(Bytes::copy_from_slice(s.as_bytes())),
            Value::Error(s) => Resp2::Error(clean(s).into()),
            Value::Int(i) => Resp2::Integer(*i),
            Value::Bulk(b) => Resp2::BulkString(b.clone()),
            Value::Null => Resp2::Null,
            Value::Array(v) | Value::Push(v) => {
                Resp2::Array(v.iter().map(Value::to_resp2).collect())
            }
            Value::Map(kv) => Resp2::Array(
                kv.iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> Resp3 {
        match self {
            Value::Simple(s) => Resp3::SimpleString {
                data: Bytes::copy_from_slice(s.as_bytes()),
                attributes: None,
            },
            Value::Error(s) => Resp3::SimpleError {
                data: clean(s).into(),
                attributes: None,
            },
            Value::Int(i) => Resp3::Number {
                data: *i,
                attributes: None,
            },
            Value::Bulk(b) => Resp3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Value::Null => Resp3::Null,
            Value::Array(v) => Resp3::Array {
                data: v.iter().map(Value::to_resp3).collect(),
                attributes: None,
            },
            Value::Push(v) => Resp3::Push {
                data: v.iter().map(Value::to_resp3).collect(),
                attributes: None,
            },
            Value::Map(kv) => {
                let mut m = FrameMap::new();
                for (k, v) in kv {
                    m.insert(k.to_resp3(), v.to_resp3());
                }
                Resp3::Map {
                    data: m,
                    attributes: None,
                }
            }
        }
    }

    /// Appends the encoded value to `out`.
    pub fn encode_into(&self, proto: u8, out: &mut BytesMut) {
        let res = if proto >= 3 {
            redis_protocol::resp3::encode::complete::extend_encode(out, &self.to_resp3(), false)
                .map(|_| ())
        } else {
            redis_protocol::resp2::encode::extend_encode(out, &self.to_resp2(), false).map(|_| ())
        };
        if let Err(e) = res {
            // Only reachable with a value we built wrongly; say so rather than send garbage.
            out.extend_from_slice(
                format!("-ERR statecar: cannot encode reply: {e}\r\n").as_bytes(),
            );
        }
    }

    /// The encoded value.
    pub fn encode(&self, proto: u8) -> Bytes {
        let mut out = BytesMut::new();
        self.encode_into(proto, &mut out);
        out.freeze()
    }
}

/// Error text must stay on one line.
fn clean(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// `+OK\r\n`
pub const OK: &[u8] = b"+OK\r\n";

/// An error reply from its text (which starts with the code, e.g. `ERR ...`).
pub fn error(msg: &str) -> Bytes {
    Bytes::from(format!("-{}\r\n", clean(msg)))
}

/// Redis's wording for a wrong argument count.
pub fn wrong_arity(cmd: &str) -> Bytes {
    error(&format!(
        "ERR wrong number of arguments for '{}' command",
        cmd.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_is_flat_in_resp2_and_a_map_in_resp3() {
        let v = Value::Map(vec![
            (Value::text("a"), Value::Int(1)),
            (Value::text("b"), Value::Null),
        ]);
        assert_eq!(
            &v.encode(2)[..],
            b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$-1\r\n"
        );
        assert_eq!(&v.encode(3)[..], b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n_\r\n");
    }

    #[test]
    fn errors_stay_on_one_line() {
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
    }
}
