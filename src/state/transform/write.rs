//! The WRITE script's reply: what the client's write command answers, the version counters,
//! and the delta cache told what each versioned key now holds (or that a write did not
//! happen, so its value must not be taken for the key's).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use redis_protocol::resp3::types::BytesFrame;

use super::{Apply, CacheNote, WriteShape, bulk_of, int_of, unexpected};
use crate::protocol::frames::decode as decode_reply;
use crate::protocol::reply::Value;
use crate::state::envelope::{self, HEADER_LEN};
use crate::state::followup;

impl Apply<'_> {
    pub(super) async fn write(
        &self,
        key: &Bytes,
        shape: WriteShape,
        notes: &[(usize, CacheNote)],
        reply: Bytes,
    ) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            self.forget_notes(notes);
            return unexpected("a state write");
        };
        let done = data.first().and_then(int_of).unwrap_or(0);
        let version = data.get(2).and_then(int_of).unwrap_or(0);
        if version > 0 {
            crate::telemetry::version_written(data.get(3).and_then(int_of).unwrap_or(0));
        }
        let list = |i: usize| -> Vec<i64> {
            match data.get(i) {
                Some(BytesFrame::Array { data, .. }) => data.iter().filter_map(int_of).collect(),
                _ => Vec::new(),
            }
        };
        let (versions, used) = (list(4), list(5));
        let t = &self.engine.totals;
        for (v, u) in versions.iter().zip(&used) {
            if *u == 1 {
                t.deltas.fetch_add(1, Ordering::Relaxed);
            } else if *v > 1 {
                t.full_copies.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (i, note) in notes {
            match versions.get(*i).and_then(|v| u32::try_from(*v).ok()) {
                Some(v) if done == 1 && v > 0 => self.note_written(note, v),
                _ => self.forget_note(note),
            }
        }
        if done == 1
            && let Some(rule) = self.engine.rule_for(key)
        {
            followup::dictionary_work(self.engine, rule, self.conn);
        }
        match shape {
            WriteShape::Ok => Bytes::from_static(crate::protocol::reply::OK),
            WriteShape::OkOrNil if done == 1 => Bytes::from_static(crate::protocol::reply::OK),
            WriteShape::OkOrNil => Value::Null.encode(self.proto),
            WriteShape::Int => Value::Int(done).encode(self.proto),
            WriteShape::Version => Value::Int(version).encode(self.proto),
            WriteShape::Old => match data.get(1).and_then(bulk_of) {
                Some(Some(stored)) => match self.read(key, stored).await {
                    Ok(v) => self.bulk(Some(v)),
                    Err(e) => e,
                },
                _ => Value::Null.encode(self.proto),
            },
        }
    }

    /// A versioned write took version `v`: its value is the key's delta base from now on.
    pub(super) fn note_written(&self, note: &CacheNote, v: u32) {
        if v == note.predicted {
            return; // cached when it was planned
        }
        let Some(cache) = self
            .engine
            .rule_for(&note.key)
            .and_then(|r| self.engine.bases(r))
        else {
            return;
        };
        let mut header = note.header;
        header[envelope::VERSION_OFFSET..HEADER_LEN].copy_from_slice(&envelope::version_patch(v));
        cache.remove_if(&note.key, &note.header);
        cache.put(
            &note.key,
            crate::state::cache::Base::from_value(header, v, &note.value)
                .with_chunks(note.chunks.clone()),
        );
    }

    /// A write that did not happen: its value must not stay cached as the key's.
    pub(super) fn forget_note(&self, note: &CacheNote) {
        if let Some(cache) = self
            .engine
            .rule_for(&note.key)
            .and_then(|r| self.engine.bases(r))
        {
            cache.remove_if(&note.key, &note.header);
        }
    }

    fn forget_notes(&self, notes: &[(usize, CacheNote)]) {
        for (_, n) in notes {
            self.forget_note(n);
        }
    }
}
