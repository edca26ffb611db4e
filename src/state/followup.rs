//! Work the reply path does with further calls to Redis, on the connection the command went
//! to: loading a dictionary a value needs, looking up or training a rule's dictionary, and
//! storing a trained one.
//!
//! None of it changes what a client's own command did: a dictionary is stored in Redis
//! before any value compressed with it is written, and a value always names the dictionary
//! it needs, so any statecar (or `statecar decode`) can read it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame;

use super::dict::{self, Work};
use super::envelope::{self, Decoded, Refs};
use super::rules::Rule;
use super::{StateEngine, show_key};
use crate::protocol::encode_multibulk;
use crate::protocol::frames::decode as decode_reply;

/// The follow-ups a reply needs (a NOSCRIPT retry, a dictionary, the history read of a fallback,
/// the second step of a rollback) go to Redis on the connection the command went to. The
/// session provides this; the state layer knows commands, not connections.
pub trait FollowUp: Send + Sync {
    /// Sends one command and returns its reply frame, or the error line the client should get.
    fn call(
        &self,
        cmd: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Bytes>> + Send + '_>>;
}

/// A connection for follow-ups, shareable with background work.
pub type Link = Arc<dyn FollowUp>;

/// One command on `conn`, its reply parsed; `None` on any failure.
pub async fn ask(conn: &Link, args: &[&[u8]]) -> Option<BytesFrame> {
    let mut cmd = BytesMut::new();
    encode_multibulk(&mut cmd, args);
    let reply = conn.call(cmd.freeze()).await.ok()?;
    decode_reply(&reply)
}

fn bulk(f: &BytesFrame) -> Option<Bytes> {
    match f {
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => {
            Some(data.clone())
        }
        _ => None,
    }
}

/// Makes sure every dictionary in `ids` is loaded, fetching the missing ones from Redis.
/// Returns false if one could not be had (the read then fails as `NeedsDictionary`).
pub async fn load_dicts(conn: Option<&Link>, ids: &[u32]) -> bool {
    let mut all = true;
    for &id in ids {
        if dict::lookup(id).is_some() {
            continue;
        }
        let got = match conn {
            Some(c) => ask(c, &[b"GET", &dict::dict_key(id)]).await,
            None => None,
        };
        let loaded = got
            .as_ref()
            .and_then(bulk)
            .and_then(|raw| dict::register(id, raw));
        if loaded.is_none() {
            tracing::warn!(
                id,
                "dictionary {} is missing or damaged in Redis",
                String::from_utf8_lossy(&dict::dict_key(id))
            );
            all = false;
        }
    }
    all
}

/// The dictionaries a stored value (or chain of them) needs.
pub fn dicts_needed<'a>(stored: impl IntoIterator<Item = &'a Bytes>) -> Vec<u32> {
    let mut ids: Vec<u32> = stored
        .into_iter()
        .filter_map(|s| envelope::inspect(s).ok().flatten())
        .filter_map(|m| m.dict)
        .filter(|id| dict::lookup(*id).is_none())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Starts the background job `rule`'s dictionary wants, if any (after a write to it).
pub fn dictionary_work(engine: &Arc<StateEngine>, rule: &Rule, conn: Option<&Link>) {
    let (Some(trainer), Some(conn)) = (engine.trainer(rule), conn) else {
        return;
    };
    let Some(work) = trainer.due() else { return };
    let engine = engine.clone();
    let conn = conn.clone();
    let index = rule.index;
    tokio::spawn(async move {
        let Some(rule) = engine.rules.iter().nth(index) else {
            return;
        };
        let ok = match work {
            Work::Lookup => lookup_active(&engine, rule, &conn).await,
            Work::Train => {
                let samples = engine
                    .trainer(rule)
                    .map(|t| t.samples())
                    .unwrap_or_default();
                train_and_store(&engine, rule, &conn, samples).await.is_ok()
            }
        };
        if let Some(t) = engine.trainer(rule) {
            t.done(work, ok);
        }
    });
}

/// Loads the dictionary Redis names for `rule` (trained earlier, or by another statecar) and
/// uses it. True when Redis answered, whether or not it names one.
async fn lookup_active(engine: &StateEngine, rule: &Rule, conn: &Link) -> bool {
    let Some(reply) = ask(conn, &[b"GET", &dict::active_key(&rule.pattern)]).await else {
        return false;
    };
    let Some(id) = bulk(&reply).and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u32>().ok())
    else {
        return matches!(reply, BytesFrame::Null);
    };
    if !load_dicts(Some(conn), &[id]).await {
        return false;
    }
    if let (Some(t), Some(d)) = (engine.trainer(rule), dict::lookup(id)) {
        t.activate(d);
    }
    true
}

/// Trains a dictionary from `samples`, stores it in Redis, makes it the rule's current one and
/// starts using it. Returns its id, or why not.
pub async fn train_and_store(
    engine: &StateEngine,
    rule: &Rule,
    conn: &Link,
    samples: Vec<Bytes>,
) -> Result<u32, String> {
    let count = samples.len();
    let trained = tokio::task::spawn_blocking(move || dict::train(&samples, dict::DICT_SIZE))
        .await
        .map_err(|e| format!("training stopped: {e}"))??;
    let (id, raw) = trained;
    // Stored before any value uses it; NX: an existing dictionary with this id has the same
    // bytes (the id is a hash of them), and is never replaced.
    let key = dict::dict_key(id);
    match ask(conn, &[b"SET", &key, &raw, b"NX"]).await {
        Some(BytesFrame::SimpleString { .. } | BytesFrame::Null) => {}
        other => {
            return Err(format!(
                "could not store the dictionary in Redis ({})",
                other.map_or("no reply".into(), |f| format!("{f:?}"))
            ));
        }
    }
    let d = dict::register(id, raw).ok_or("zstd rejected the trained dictionary")?;
    let pointer = dict::active_key(&rule.pattern);
    if ask(conn, &[b"SET", &pointer, id.to_string().as_bytes()])
        .await
        .is_none()
    {
        return Err("could not record the rule's dictionary in Redis".into());
    }
    if let Some(t) = engine.trainer(rule) {
        t.activate(d);
    }
    engine.totals.dicts_trained.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        rule = rule.index,
        pattern = %show_key(&rule.pattern),
        id,
        samples = count,
        "trained a compression dictionary"
    );
    Ok(id)
}

/// STATE.TRAIN: reads up to `want` values of `rule` (SCAN from `first`'s reply on), trains a
/// dictionary from them and makes it the rule's. Returns its id, or the error for the client.
pub async fn train_from_keys(
    engine: &StateEngine,
    rule: &Rule,
    conn: &Link,
    first: Bytes,
    want: usize,
) -> Result<u32, String> {
    let mut samples: Vec<Bytes> = Vec::new();
    let mut reply = first;
    let mut rounds = 0;
    loop {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return Err("unexpected reply from Redis to SCAN".into());
        };
        let (Some(cursor), Some(BytesFrame::Array { data: keys, .. })) =
            (data.first().and_then(bulk), data.get(1))
        else {
            return Err("unexpected reply from Redis to SCAN".into());
        };
        let keys: Vec<Bytes> = keys
            .iter()
            .filter_map(bulk)
            .filter(|k| engine.rule_for(k).is_some_and(|r| r.index == rule.index))
            .collect();
        if !keys.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(keys.iter().map(|k| k.as_ref()));
            if let Some(BytesFrame::Array { data: values, .. }) = ask(conn, &args).await {
                let stored: Vec<Bytes> = values.iter().filter_map(bulk).collect();
                load_dicts(Some(conn), &dicts_needed(&stored)).await;
                for s in stored {
                    if let Some(v) = decoded(engine, &s)
                        && !v.is_empty()
                        && v.len() <= dict::MAX_DICT_VALUE
                    {
                        samples.push(v);
                    }
                }
            }
        }
        rounds += 1;
        if samples.len() >= want || cursor.as_ref() == b"0" || rounds > 100_000 {
            break;
        }
        let scan = [
            &b"SCAN"[..],
            &cursor,
            b"MATCH",
            &rule.pattern,
            b"COUNT",
            b"1000",
            b"TYPE",
            b"string",
        ];
        let mut cmd = BytesMut::new();
        encode_multibulk(&mut cmd, &scan);
        reply = conn
            .call(cmd.freeze())
            .await
            .map_err(|e| String::from_utf8_lossy(&e).trim().to_string())?;
    }
    samples.truncate(want);
    if samples.len() < 10 {
        return Err(format!(
            "not enough values to train a dictionary ({} found; at least 10, ideally {} or more)",
            samples.len(),
            dict::MIN_SAMPLES
        ));
    }
    train_and_store(engine, rule, conn, samples).await
}

/// The value a stored envelope holds (a dictionary it names must be loaded).
fn decoded(engine: &StateEngine, stored: &Bytes) -> Option<Bytes> {
    let d = envelope::inspect(stored)
        .ok()
        .flatten()
        .and_then(|m| m.dict)
        .and_then(dict::lookup);
    let refs = Refs {
        base: None,
        dict: d.as_deref().map(dict::Dictionary::ddict),
    };
    match envelope::decode_with(stored, engine.max_decoded, refs) {
        Ok(Decoded::State { value, .. }) => Some(Bytes::from(value)),
        Ok(Decoded::Plain) => Some(stored.clone()),
        Err(_) => None,
    }
}
