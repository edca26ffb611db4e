//! The replies of STATE.TRAIN (train the rule's dictionary from the keys SCAN finds), STATE.LIST
//! (SCAN's keys filtered to state keys) and STATE.STATS (the proxy's totals with Redis's memory
//! figures). The STATE.* replies that read a version history are in `history`.

use bytes::Bytes;
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};

use super::{Apply, bulk_of, unexpected};
use crate::protocol::frames::decode as decode_reply;
use crate::protocol::reply::{Value, error};
use crate::state::followup;

impl Apply<'_> {
    /// STATE.TRAIN: trains the rule's dictionary from its stored values.
    pub(super) async fn train(&self, key: &Bytes, samples: usize, reply: Bytes) -> Bytes {
        let (Some(rule), Some(conn)) = (self.engine.rule_for(key), self.conn) else {
            return error("ERR statecar: STATE.TRAIN needs a connection to Redis");
        };
        let Some(trainer) = self.engine.trainer(rule) else {
            return error("ERR statecar: internal error: no dictionary for the rule");
        };
        // One training at a time per rule; a background one running counts.
        let Some(work) = trainer.claim() else {
            return error(
                "ERR statecar: a dictionary is being trained for this rule right now; try again",
            );
        };
        let r = followup::train_from_keys(self.engine, rule, conn, reply, samples).await;
        trainer.done(work, r.is_ok());
        match r {
            Ok(id) => Value::Int(i64::from(id)).encode(self.proto),
            Err(e) => error(&format!("ERR statecar: {e}")),
        }
    }

    pub(super) fn list(&self, reply: Bytes) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return unexpected("SCAN");
        };
        let (Some(Some(cursor)), Some(BytesFrame::Array { data: keys, .. })) =
            (data.first().and_then(bulk_of), data.get(1))
        else {
            return unexpected("SCAN");
        };
        let keys: Vec<Value> = keys
            .iter()
            .filter_map(|k| k.as_bytes())
            .filter(|k| self.engine.rule_for(k).is_some())
            .map(|k| Value::Bulk(Bytes::copy_from_slice(k)))
            .collect();
        Value::Array(vec![Value::Bulk(cursor), Value::Array(keys)]).encode(self.proto)
    }

    pub(super) fn stats(&self, reply: Bytes) -> Bytes {
        use std::sync::atomic::Ordering::Relaxed;
        let info = decode_reply(&reply)
            .and_then(|f| {
                f.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .unwrap_or_default();
        let t = &self.engine.totals;
        let bytes_in = t.bytes_in.load(Relaxed);
        let stored = t.bytes_stored.load(Relaxed);
        let ratio = if stored > 0 {
            format!("{:.3}", bytes_in as f64 / stored as f64)
        } else {
            "0".to_string()
        };
        let mut fields = vec![
            (
                Value::text("rules"),
                Value::Int(self.engine.rules.len() as i64),
            ),
            (
                Value::text("writes"),
                Value::Int(t.writes.load(Relaxed) as i64),
            ),
            (
                Value::text("reads"),
                Value::Int(t.reads.load(Relaxed) as i64),
            ),
            (Value::text("bytes_written"), Value::Int(bytes_in as i64)),
            (Value::text("bytes_stored"), Value::Int(stored as i64)),
            (Value::text("compression_ratio"), Value::text(&ratio)),
            (
                Value::text("checksum_failures"),
                Value::Int(t.corruptions.load(Relaxed) as i64),
            ),
            (
                Value::text("previous_version_fallbacks"),
                Value::Int(t.fallbacks.load(Relaxed) as i64),
            ),
            (
                Value::text("versions_stored_as_deltas"),
                Value::Int(t.deltas.load(Relaxed) as i64),
            ),
            (
                Value::text("versions_stored_whole"),
                Value::Int(t.full_copies.load(Relaxed) as i64),
            ),
            (
                Value::text("dictionary_writes"),
                Value::Int(t.dict_writes.load(Relaxed) as i64),
            ),
            (
                Value::text("dictionaries_trained"),
                Value::Int(t.dicts_trained.load(Relaxed) as i64),
            ),
            (
                Value::text("chunk_bytes_reused"),
                Value::Int(t.chunk_bytes_reused.load(Relaxed) as i64),
            ),
            (
                Value::text("values_staged"),
                Value::Int(t.values_staged.load(Relaxed) as i64),
            ),
        ];
        for line in info.lines() {
            if let Some((k, v)) = line.trim().split_once(':')
                && matches!(
                    k,
                    "used_memory"
                        | "used_memory_human"
                        | "used_memory_peak"
                        | "used_memory_dataset"
                        | "maxmemory"
                        | "maxmemory_policy"
                        | "mem_fragmentation_ratio"
                )
            {
                let name = format!("upstream_{k}");
                let val = v
                    .parse::<i64>()
                    .map(Value::Int)
                    .unwrap_or_else(|_| Value::text(v));
                fields.push((Value::text(&name), val));
            }
        }
        Value::Map(fields).encode(self.proto)
    }
}
