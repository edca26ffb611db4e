//! Rewriting one field of an INFO reply (a bulk string in RESP2, a verbatim string in RESP3).

use bytes::{BufMut, Bytes, BytesMut};

/// `frame` with the value of the `name:value` line replaced by `value`, re-encoded with its new
/// length; `None` when `frame` is not a whole bulk or verbatim string holding that line.
pub fn replace_field(frame: &[u8], name: &str, value: &str) -> Option<Bytes> {
    let kind = *frame.first()?;
    if kind != b'$' && kind != b'=' {
        return None;
    }
    let header_end = frame.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(&frame[1..header_end])
        .ok()?
        .parse()
        .ok()?;
    let start = header_end + 2;
    let body = frame.get(start..start.checked_add(len)?)?;
    let prefix = format!("{name}:");
    let mut out_body = Vec::with_capacity(body.len() + value.len());
    let mut found = false;
    for line in body.split_inclusive(|&b| b == b'\n') {
        if !found && line.starts_with(prefix.as_bytes()) {
            found = true;
            out_body.extend_from_slice(prefix.as_bytes());
            out_body.extend_from_slice(value.as_bytes());
            let ending: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else if line.ends_with(b"\n") {
                b"\n"
            } else {
                b""
            };
            out_body.extend_from_slice(ending);
        } else {
            out_body.extend_from_slice(line);
        }
    }
    if !found {
        return None;
    }
    let mut out = BytesMut::with_capacity(out_body.len() + 16);
    out.put_u8(kind);
    out.put_slice(out_body.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    out.put_slice(&out_body);
    out.put_slice(b"\r\n");
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_one_field_in_bulk_and_verbatim_replies() {
        let body = "# Clients\r\nconnected_clients:8\r\ncluster_connections:0\r\n";
        let bulk = format!("${}\r\n{body}\r\n", body.len());
        let want = "# Clients\r\nconnected_clients:3\r\ncluster_connections:0\r\n";
        assert_eq!(
            replace_field(bulk.as_bytes(), "connected_clients", "3").as_deref(),
            Some(format!("${}\r\n{want}\r\n", want.len()).as_bytes())
        );
        let verbatim = format!("={}\r\ntxt:{body}\r\n", body.len() + 4);
        let r = replace_field(verbatim.as_bytes(), "connected_clients", "12").unwrap_or_default();
        let want = "txt:# Clients\r\nconnected_clients:12\r\ncluster_connections:0\r\n";
        assert_eq!(
            r.as_ref(),
            format!("={}\r\n{want}\r\n", want.len()).as_bytes()
        );
        // A section without the field, an error, a truncated frame: left alone.
        let other = "$9\r\n# Server\r\n\r\n";
        assert!(replace_field(other.as_bytes(), "connected_clients", "1").is_none());
        assert!(replace_field(b"-ERR x\r\n", "connected_clients", "1").is_none());
        assert!(
            replace_field(b"$100\r\nconnected_clients:1\r\n", "connected_clients", "1").is_none()
        );
    }
}
