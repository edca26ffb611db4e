//! Reading state straight from Redis, without the proxy: `statecar decode` and `statecar verify`.
//!
//! If the sidecar is ever gone, nobody's data is locked in its format: these commands connect
//! to Redis directly, decode and verify values and their histories, and print them.

use std::io::Write;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use tokio::io::AsyncWriteExt;

use crate::config::{Config, Mode};
use crate::protocol::{ReplyScanner, encode_multibulk};
use std::collections::BTreeMap;

use crate::state::envelope::{self, Meta};
use crate::state::keys::{history_key, is_reserved};
use crate::state::{dict, history};
use crate::upstream::connect::{self, Stream, decode_reply, read_frame};
use crate::upstream::url::Addr;
use crate::upstream::{PoolKey, UpstreamError, cluster, sentinel};

/// A plain request/response connection to Redis.
struct Direct {
    stream: Stream,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    addr: String,
}

/// The servers to read: the standalone server, the primary the sentinels name, or the
/// cluster primaries (only the one serving `key`'s slot when a key is given).
async fn servers(cfg: &Config, key: Option<&[u8]>) -> Result<Vec<Addr>, String> {
    match &cfg.upstream.mode {
        Mode::Standalone => Ok(vec![cfg.upstream.url.node()]),
        Mode::Sentinel {
            sentinels,
            master_name,
            password,
        } => {
            let mut last = String::from("no sentinel configured");
            for s in sentinels {
                let ask = sentinel::primary_of(s, master_name, password.as_deref());
                let wait = std::time::Duration::from_millis(cfg.upstream.connect_timeout_ms);
                match tokio::time::timeout(wait, ask).await {
                    Ok(Ok(a)) => return Ok(vec![a]),
                    Ok(Err(e)) => last = format!("sentinel {s}: {e}"),
                    Err(_) => last = format!("sentinel {s}: no answer"),
                }
            }
            Err(last)
        }
        Mode::Cluster { seeds } => {
            let mut last = String::from("no cluster node configured");
            for s in seeds {
                match cluster::load_slots(&cfg.upstream, s).await {
                    Ok((masters, slots)) => {
                        return Ok(match key {
                            None => masters,
                            Some(k) => slots
                                .get(crate::route::slot(k) as usize)
                                .and_then(|&i| masters.get(i as usize))
                                .cloned()
                                .into_iter()
                                .collect(),
                        });
                    }
                    Err(e) => last = format!("{s}: {e}"),
                }
            }
            Err(last)
        }
    }
}

impl Direct {
    async fn open(cfg: &Config, node: &Addr) -> Result<Direct, UpstreamError> {
        let key = PoolKey {
            identity: None,
            db: cfg.upstream.url.db,
            proto: 2,
        };
        let c = connect::connect(&cfg.upstream, node, &key).await?;
        Ok(Direct {
            stream: c.stream,
            rbuf: c.rbuf,
            scanner: ReplyScanner::default(),
            addr: node.to_string(),
        })
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<BytesFrame, String> {
        let mut out = BytesMut::new();
        encode_multibulk(&mut out, args);
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| UpstreamError::io(&self.addr, &e).to_string())?;
        let frame = read_frame(
            &mut self.stream,
            &mut self.rbuf,
            &mut self.scanner,
            &self.addr,
        )
        .await
        .map_err(|e| e.to_string())?;
        match decode_reply(&frame) {
            Some(BytesFrame::SimpleError { data, .. }) => Err(data.to_string()),
            Some(f) => Ok(f),
            None => Err("unparseable reply".into()),
        }
    }
}

fn bulk(f: &BytesFrame) -> Option<Bytes> {
    match f {
        BytesFrame::BlobString { data, .. } => Some(data.clone()),
        _ => None,
    }
}

fn describe(meta: &Meta) -> String {
    let mut s = format!(
        "version {} created_ms {} size {} stored {} codec {} crc32 {:08x}",
        meta.version,
        meta.timestamp_ms,
        meta.original_len,
        meta.stored_len,
        meta.codec.name(),
        meta.crc32
    );
    if let Some(b) = meta.base {
        s.push_str(&format!(" delta_of {}", b.version));
    }
    if let Some(id) = meta.dict {
        s.push_str(&format!(" dictionary {id}"));
    }
    s
}

/// A key's history as stored: the version fields, the kept bases of deleted versions (`d<v>`),
/// and the newest version number (`last`, 0 when the key has no history hash).
struct Stored {
    live: BTreeMap<u32, Bytes>,
    kept: BTreeMap<u32, Bytes>,
    last: u32,
}

async fn history(d: &mut Direct, key: &[u8]) -> Result<Stored, String> {
    let f = d.call(&[b"HGETALL", &history_key(key)]).await?;
    let mut out = Stored {
        live: BTreeMap::new(),
        kept: BTreeMap::new(),
        last: 0,
    };
    let BytesFrame::Array { data, .. } = f else {
        return Ok(out);
    };
    for pair in data.chunks(2) {
        let [k, v] = pair else { continue };
        let (Some(k), Some(v)) = (bulk(k), bulk(v)) else {
            continue;
        };
        let name = String::from_utf8_lossy(&k);
        if name == "last" {
            out.last = String::from_utf8_lossy(&v).parse().unwrap_or(0);
        } else if let Ok(n) = name.parse::<u32>() {
            out.live.insert(n, v);
        } else if let Some(n) = name.strip_prefix('d').and_then(|n| n.parse().ok()) {
            out.kept.insert(n, v);
        }
    }
    Ok(out)
}

/// Fetches the trained dictionaries `stored` values name that this process has not loaded.
async fn load_dicts<'a>(d: &mut Direct, stored: impl IntoIterator<Item = &'a Bytes>) {
    for id in crate::state::followup::dicts_needed(stored) {
        if let Ok(f) = d.call(&[b"GET", &dict::dict_key(id)]).await
            && let Some(raw) = bulk(&f)
        {
            dict::register(id, raw);
        }
    }
}

/// The key's value, when it is an envelope (its version and bytes).
fn current_of(stored: Option<&Bytes>) -> Option<(u32, &Bytes)> {
    let s = stored?;
    let meta = envelope::inspect(s).ok().flatten()?;
    Some((meta.version, s))
}

/// `statecar decode KEY [--version N] [--versions]`: prints the decoded value (raw bytes to
/// stdout, metadata to stderr) or the list of versions. Returns the process exit code.
pub async fn decode(cfg: &Config, key: &str, version: Option<u64>, list: bool) -> i32 {
    let node = match servers(cfg, Some(key.as_bytes())).await {
        Ok(n) if !n.is_empty() => n[0].clone(),
        Ok(_) => {
            eprintln!("statecar decode: no cluster node serves the key's slot");
            return 2;
        }
        Err(e) => {
            eprintln!("statecar decode: {e}");
            return 2;
        }
    };
    let mut d = match Direct::open(cfg, &node).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("statecar decode: {e}");
            return 2;
        }
    };
    let key = key.as_bytes();
    let current = match d.call(&[b"GET", key]).await {
        Ok(f) => bulk(&f),
        Err(e) if list || version.is_some() => {
            eprintln!("statecar decode: {e}");
            return 2;
        }
        Err(_) => None,
    };
    let max = cfg.max_decoded_size;
    if list || version.is_some() {
        let h = match history(&mut d, key).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("statecar decode: {e}");
                return 2;
            }
        };
        load_dicts(
            &mut d,
            h.live.values().chain(h.kept.values()).chain(&current),
        )
        .await;
        let cur = current_of(current.as_ref());
        let all = history::decode_all(&h.live, &h.kept, cur, max, &dict::lookup);
        if list {
            let mut bad = 0;
            for (n, r) in all {
                match r {
                    Ok(Some(mut v)) => {
                        // Entries written before format 2 are numbered by their field.
                        v.meta.version = n;
                        println!("{n}: ok {}", describe(&v.meta));
                    }
                    Ok(None) => println!("{n}: plain value"),
                    Err(e) => {
                        bad += 1;
                        println!("{n}: DAMAGED {}", e.error);
                    }
                }
            }
            return i32::from(bad > 0);
        }
        let want = u32::try_from(version.unwrap_or(0)).unwrap_or(u32::MAX);
        return match all.into_iter().find(|(n, _)| *n == want) {
            None => {
                eprintln!("statecar decode: no such key or version");
                1
            }
            Some((_, Ok(Some(mut v)))) => {
                v.meta.version = want;
                eprintln!("{}", describe(&v.meta));
                let _ = std::io::stdout().write_all(&v.value);
                0
            }
            Some((_, Ok(None))) => {
                eprintln!("statecar decode: version {want} is a plain value");
                1
            }
            Some((_, Err(e))) => {
                eprintln!("statecar decode: version {want} is damaged: {e}");
                1
            }
        };
    }
    let Some(stored) = current else {
        eprintln!("statecar decode: no such key or version");
        return 1;
    };
    load_dicts(&mut d, [&stored]).await;
    match history::decode_entry(0, &stored, None, max, &dict::lookup) {
        Ok(Some(v)) => {
            eprintln!("{}", describe(&v.meta));
            let _ = std::io::stdout().write_all(&v.value);
            0
        }
        Ok(None) => {
            eprintln!(
                "plain value (not written by statecar), {} bytes",
                stored.len()
            );
            let _ = std::io::stdout().write_all(&stored);
            0
        }
        Err(e) => {
            eprintln!("statecar decode: value is damaged: {}", e.error);
            1
        }
    }
}

/// `statecar verify`: checks every state key (current value and history: every version
/// decodes, deltas through their bases) and that each history is numbered without gaps up to
/// the current version. Returns the exit code.
pub async fn verify(cfg: &Config, pattern: Option<&str>) -> i32 {
    let nodes = match servers(cfg, None).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("statecar verify: {e}");
            return 2;
        }
    };
    let mut totals = Totals::default();
    for node in &nodes {
        let mut d = match Direct::open(cfg, node).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("statecar verify: {e}");
                return 2;
            }
        };
        if let Err(e) = verify_node(cfg, pattern, &mut d, &mut totals).await {
            eprintln!("statecar verify: {node}: {e}");
            return 2;
        }
    }
    let Totals {
        keys,
        versions,
        problems,
    } = totals;
    println!("{keys} state keys, {versions} versions checked, {problems} problems");
    i32::from(problems > 0)
}

#[derive(Default)]
struct Totals {
    keys: u64,
    versions: u64,
    problems: u64,
}

async fn verify_node(
    cfg: &Config,
    pattern: Option<&str>,
    d: &mut Direct,
    t: &mut Totals,
) -> Result<(), String> {
    let mut cursor = b"0".to_vec();
    let (keys, versions, problems) = (&mut t.keys, &mut t.versions, &mut t.problems);
    loop {
        let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor, b"COUNT", b"500"];
        if let Some(p) = pattern {
            args.extend([&b"MATCH"[..], p.as_bytes()]);
        }
        let f = d.call(&args).await?;
        let BytesFrame::Array { data, .. } = f else {
            return Err("unexpected reply to SCAN".into());
        };
        let (Some(next), Some(BytesFrame::Array { data: batch, .. })) =
            (data.first().and_then(bulk), data.get(1))
        else {
            return Err("unexpected reply to SCAN".into());
        };
        for k in batch.iter().filter_map(|k| k.as_bytes()) {
            if is_reserved(k) {
                continue;
            }
            let Some(rule) = cfg.rules.match_key(k) else {
                continue;
            };
            *keys += 1;
            let shown = String::from_utf8_lossy(k);
            let current = match d.call(&[b"GET", k]).await {
                Ok(f) => bulk(&f),
                Err(_) => None,
            };
            let max = cfg.max_decoded_size;
            if !rule.versioning {
                if let Some(stored) = &current {
                    load_dicts(d, [stored]).await;
                    if let Err(e) = history::decode_entry(0, stored, None, max, &dict::lookup) {
                        *problems += 1;
                        println!("{shown}: current value DAMAGED: {}", e.error);
                    }
                }
                continue;
            }
            let Ok(h) = history(d, k).await else {
                continue;
            };
            load_dicts(d, h.live.values().chain(h.kept.values()).chain(&current)).await;
            let cur = current_of(current.as_ref());
            if let Some(stored) = &current
                && cur.is_none()
                && let Err(e) = envelope::inspect(stored)
            {
                *problems += 1;
                println!("{shown}: current value DAMAGED: {e}");
            }
            let all = history::decode_all(&h.live, &h.kept, cur, max, &dict::lookup);
            for (n, r) in &all {
                *versions += 1;
                if let Err(e) = r {
                    *problems += 1;
                    let what = if cur.is_some_and(|(c, _)| c == *n) {
                        "current value".to_string()
                    } else {
                        format!("version {n}")
                    };
                    println!("{shown}: {what} DAMAGED: {}", e.error);
                }
            }
            let last = u64::from(h.last);
            if let Some((cv, _)) = cur
                && last > 0
                && u64::from(cv) != last
            {
                *problems += 1;
                println!("{shown}: current value is version {cv} but the history's last is {last}");
            }
            let top = cur.map_or(last, |(c, _)| u64::from(c).max(last));
            if let Some(&(first, _)) = all.first() {
                let expected = top.saturating_sub(u64::from(first)) + 1;
                if all.len() as u64 != expected {
                    println!(
                        "{shown}: history has {} versions between {first} and {top} (deleted with STATE.DELVERSION?)",
                        all.len()
                    );
                }
            }
        }
        cursor = next.to_vec();
        if cursor == b"0" {
            break;
        }
    }
    Ok(())
}
