//! `redis://[user:password@]host:port[/db]` and `rediss://` URLs.

/// A parsed upstream URL.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `rediss://`: TLS to Redis.
    pub tls: bool,
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user; `None` means the default user.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// Database index selected on every connection.
    pub db: u32,
}

impl std::fmt::Debug for UpstreamUrl {
    // Never print the password, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in \"{s}\""))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8".to_string())
}

impl UpstreamUrl {
    /// Parses a URL; the error is a short sentence suitable after the field name.
    pub fn parse(s: &str) -> Result<UpstreamUrl, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("redis://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("rediss://") {
            (true, r)
        } else {
            return Err(format!(
                "\"{}\" must start with redis:// or rediss://",
                redact_raw(s)
            ));
        };
        if rest.contains('?') || rest.contains('#') {
            return Err("query strings and fragments are not supported".into());
        }
        let (auth, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (username, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| percent_decode(u)).transpose()?,
                    Some(percent_decode(p)?),
                ),
                None => (None, Some(percent_decode(a)?)),
            },
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, d)) => (
                hp,
                d.parse::<u32>()
                    .map_err(|_| format!("database \"{d}\" is not a number"))?,
            ),
            None => (hostpart, 0),
        };
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| "unclosed [ in IPv6 host".to_string())?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (hostport.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err("host is missing".into());
        }
        check_host(&host)?;
        let port = if port.is_empty() {
            6379
        } else {
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port \"{port}\" is not a number from 1 to 65535"))?
        };
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            username,
            password,
            db,
        })
    }

    /// `host:port`, as used in errors and metrics.
    pub fn addr(&self) -> String {
        self.node().to_string()
    }

    /// The host and port alone.
    pub fn node(&self) -> Addr {
        Addr {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// The URL with the password replaced, for logs.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (None, Some(_)) => "***@".to_string(),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        };
        format!("{scheme}://{auth}{}/{}", self.addr(), self.db)
    }
}

/// A Redis node's address: cluster seeds, sentinels, and where MOVED and failovers point.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Addr {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// No DNS name or address holds whitespace or control characters; refusing them here gives a
/// clear error at start instead of a failed lookup at the first connection.
fn check_host(host: &str) -> Result<(), String> {
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "host \"{}\" contains whitespace or control characters",
            host.escape_default()
        ));
    }
    Ok(())
}

impl Addr {
    /// Parses `host:port` or `[v6]:port`; the port is required.
    pub fn parse(s: &str) -> Result<Addr, String> {
        let (host, port) = if let Some(h) = s.strip_prefix('[') {
            let (h, p) = h
                .split_once("]:")
                .ok_or_else(|| format!("\"{s}\" is not host:port"))?;
            (h, p)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| format!("\"{s}\" is not host:port"))?
        };
        if host.is_empty() {
            return Err(format!("\"{s}\" has no host"));
        }
        check_host(host)?;
        let port =
            port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!("port \"{port}\" in \"{s}\" is not a number from 1 to 65535")
            })?;
        Ok(Addr {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn redact_raw(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}***{}", &s[..a + 3], &s[b..]),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_parts() {
        let u = UpstreamUrl::parse("rediss://alice:p%40ss@redis.local:7000/5").unwrap();
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!((u.host.as_str(), u.port, u.db), ("redis.local", 7000, 5));
        assert!(!format!("{u:?}").contains("p@ss"));
        let u = UpstreamUrl::parse("redis://:secret@[::1]:6390").unwrap();
        assert_eq!(u.username, None);
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.addr(), "[::1]:6390");
        let u = UpstreamUrl::parse("redis://localhost").unwrap();
        assert_eq!((u.port, u.db), (6379, 0));
    }

    #[test]
    fn parses_node_addresses() {
        let a = Addr::parse("redis-0.redis:6379").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("redis-0.redis", 6379));
        let a = Addr::parse("[::1]:7000").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        assert_eq!(a.to_string(), "[::1]:7000");
        assert!(Addr::parse("redis-0").is_err());
        assert!(Addr::parse(":6379").is_err());
        assert!(Addr::parse("h:0").is_err());
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(UpstreamUrl::parse("http://x").is_err());
        assert!(UpstreamUrl::parse("redis://a\nb:1").is_err());
        assert!(UpstreamUrl::parse("redis://a b").is_err());
        assert!(Addr::parse("a\tb:6379").is_err());
        assert!(UpstreamUrl::parse("redis://h:99999").is_err());
        assert!(UpstreamUrl::parse("redis://h:1/x").is_err());
        assert!(UpstreamUrl::parse("redis://").is_err());
        let e = UpstreamUrl::parse("http://u:hunter2@x").unwrap_err();
        assert!(!e.contains("hunter2"));
    }
}
