//! SET and its options, checked as Redis checks them: Redis never sees the client's SET once
//! the value is encoded, so its option errors must come from here, with its texts.

use bytes::Bytes;

use super::write::Ttl;
use super::{Plan, expiry_ms, fail, not_int, parse_i64, upper};
use crate::state::StateEngine;
use crate::state::transform::WriteShape;

impl StateEngine {
    /// SET with Redis's option rules: repeats of the same option are allowed (the last expiry
    /// wins), conflicting ones are a syntax error, and numbers are checked only after every
    /// option has parsed.
    pub(super) fn plan_set(&self, a: &[Bytes]) -> Option<Plan> {
        let rule = a.get(1).and_then(|k| self.rule_for(k))?;
        if a.len() < 3 {
            return None;
        }
        let mut cond: &'static [u8] = b"";
        let mut get = false;
        let mut keep = false;
        // (unit, value): unit is one of EX, PX, EXAT, PXAT.
        let mut expire: Option<(Vec<u8>, &Bytes)> = None;
        let mut i = 3;
        while i < a.len() {
            let opt = upper(&a[i]);
            let unit_ok = |u: &[u8]| expire.as_ref().is_none_or(|(e, _)| e.as_slice() == u);
            match opt.as_slice() {
                b"NX" if cond != b"XX" => cond = b"NX",
                b"XX" if cond != b"NX" => cond = b"XX",
                b"GET" => get = true,
                b"KEEPTTL" if expire.is_none() => keep = true,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if !keep && unit_ok(&opt) && i + 1 < a.len() => {
                    expire = Some((opt.clone(), &a[i + 1]));
                    i += 1;
                }
                _ => return fail("ERR syntax error"),
            }
            i += 1;
        }
        let ttl = match expire {
            None if keep => Ttl::Keep,
            None => Ttl::None,
            Some((unit, v)) => {
                let Some(n) = parse_i64(v) else {
                    return not_int();
                };
                let seconds = unit.starts_with(b"E");
                let relative = !unit.ends_with(b"AT");
                let Some(ms) = expiry_ms(n, seconds, relative) else {
                    return fail("ERR invalid expire time in 'set' command");
                };
                if relative { Ttl::Px(ms) } else { Ttl::PxAt(ms) }
            }
        };
        let pair = self.write_pair(Some(rule), &a[1], &a[2], ttl);
        let shape = if get {
            WriteShape::Old
        } else {
            WriteShape::OkOrNil
        };
        self.write(vec![pair], b"SET", cond, get, None, Bytes::new(), shape)
    }
}
