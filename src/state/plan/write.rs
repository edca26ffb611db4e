//! One key's part of a state write, as the WRITE script takes it: the encoded value (with the
//! delta of the version it replaces, when the proxy holds that), the history window, and the
//! expiry; and the script call that writes one or more such keys.

use bytes::Bytes;

use super::Plan;
use crate::state::StateEngine;
use crate::state::rules::Rule;
use crate::state::scripts::ScriptKind;
use crate::state::transform::{CacheNote, Transform, WriteShape};

/// One key of a write, as the WRITE script takes it.
pub(super) struct Pair {
    key: Bytes,
    hist: Bytes,
    /// value, max_versions, ttl mode, ttl value, base header, delta, predicted version.
    args: [Bytes; 7],
    note: Option<CacheNote>,
}

/// Expiry for a write, as the WRITE script takes it.
pub(super) enum Ttl {
    None,
    Px(i64),
    PxAt(i64),
    Keep,
}

/// How many version numbers the rule's history keeps (0 without versioning).
pub(crate) fn window(rule: &Rule) -> u32 {
    if rule.versioning {
        rule.max_versions
    } else {
        0
    }
}

impl StateEngine {
    /// One key's part of a write: its keys and arguments for the WRITE script, and what the
    /// reply must tell the delta cache.
    pub(super) fn write_pair(
        &self,
        rule: Option<&Rule>,
        key: &Bytes,
        value: &Bytes,
        ttl: Ttl,
    ) -> Pair {
        let maxv = rule.map_or(0, window);
        let (hist, stored, base, delta, predicted, note) = match rule {
            Some(r) if maxv > 0 => {
                let w = self.encode_write(r, key, value);
                let note = self.bases(r).map(|_| CacheNote {
                    key: key.clone(),
                    header: w.header,
                    value: value.clone(),
                    predicted: w.predicted,
                    chunks: w.chunks.clone(),
                });
                (
                    self.hist(r, key),
                    w.stored,
                    w.base_header,
                    w.delta,
                    w.predicted,
                    note,
                )
            }
            Some(r) => {
                let stored = self.encode(r, value);
                (key.clone(), stored, Bytes::new(), Bytes::new(), 0, None)
            }
            None => (
                key.clone(),
                value.clone(),
                Bytes::new(),
                Bytes::new(),
                0,
                None,
            ),
        };
        let ttl = match (ttl, rule.and_then(|r| r.default_ttl_ms)) {
            (Ttl::None, Some(d)) => Ttl::Px(d as i64),
            (t, _) => t,
        };
        let (mode, val): (&'static [u8], String) = match ttl {
            Ttl::None => (b"", String::new()),
            Ttl::Px(ms) => (b"PX", ms.to_string()),
            Ttl::PxAt(ms) => (b"PXAT", ms.to_string()),
            Ttl::Keep => (b"KEEPTTL", String::new()),
        };
        Pair {
            key: key.clone(),
            hist,
            args: [
                stored,
                Bytes::from(maxv.to_string()),
                Bytes::from_static(mode),
                Bytes::from(val),
                base,
                delta,
                Bytes::from(predicted.to_string()),
            ],
            note,
        }
    }

    // One call site per write command; a struct would only rename these arguments.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        &self,
        pairs: Vec<Pair>,
        mode: &'static [u8],
        cond: &'static [u8],
        want_old: bool,
        expect: Option<i64>,
        tags: Bytes,
        shape: WriteShape,
    ) -> Option<Plan> {
        let key = pairs.first().map(|p| p.key.clone()).unwrap_or_default();
        let mut keys = Vec::with_capacity(pairs.len() * 2);
        let mut args = vec![
            Bytes::from_static(mode),
            Bytes::from_static(cond),
            Bytes::from_static(if want_old { b"1" } else { b"0" }),
            expect
                .map(|e| Bytes::from(e.to_string()))
                .unwrap_or_default(),
            tags,
        ];
        // The first pair's value; the script can take it from a staging key when it is the
        // only one.
        let value_arg = (pairs.len() == 1).then_some(args.len());
        let mut notes = Vec::new();
        for (i, p) in pairs.into_iter().enumerate() {
            keys.push(p.key);
            keys.push(p.hist);
            args.extend(p.args);
            if let Some(n) = p.note {
                notes.push((i, n));
            }
        }
        let mut plan = self.script(
            ScriptKind::Write,
            keys,
            args,
            Transform::Write { key, shape, notes },
        )?;
        if let Plan::Script { call, .. } = &mut plan {
            call.stageable = value_arg;
        }
        Some(plan)
    }
}
