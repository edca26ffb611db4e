//! Reading versions out of a history: a version stored as a delta is decoded against the bytes
//! of its base version, which may itself be a delta, up to a self-contained version (the key's
//! current value, a full copy in the history, or a periodic full version).
//!
//! The proxy (STATE.LOAD, STATE.ROLLBACK, the `previous_version` fallback) and the offline
//! tools (`statecar decode`, `statecar verify`) read through here, so both follow the same
//! rules. Every step checks the base's CRC32 against the one the delta recorded and the
//! decoded bytes against their own CRC32: a broken chain is an error, never wrong bytes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use super::dict::Dictionary;
use super::envelope::{self, Decoded, EnvelopeError, Meta, Refs};

/// Finds a trained dictionary by id (the proxy's registry, or the ones `statecar decode`
/// fetched).
pub type DictLookup<'a> = &'a dyn Fn(u32) -> Option<Arc<Dictionary>>;

/// Why a version could not be decoded: which version, and what went wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {version}: {error}")]
pub struct ChainError {
    /// The stored version that failed (the one asked for, or one of its bases).
    pub version: u32,
    /// The failure.
    pub error: EnvelopeError,
}

/// A decoded version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// What the client wrote.
    pub value: Vec<u8>,
    /// The header of the stored entry (a delta's own header for a delta).
    pub meta: Meta,
}

/// Decodes one stored entry whose base (if it is a delta) is `base`.
pub fn decode_entry(
    version: u32,
    stored: &[u8],
    base: Option<&[u8]>,
    max: usize,
    dicts: DictLookup<'_>,
) -> Result<Option<Version>, ChainError> {
    let fail = |error| ChainError { version, error };
    let meta = match envelope::inspect(stored) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(e) => return Err(fail(e)),
    };
    let dict = match meta.dict {
        Some(id) => Some(dicts(id).ok_or(fail(EnvelopeError::NeedsDictionary(id)))?),
        None => None,
    };
    let refs = Refs {
        base,
        dict: dict.as_deref().map(Dictionary::ddict),
    };
    match envelope::decode_with(stored, max, refs) {
        Ok(Decoded::State { value, meta }) => Ok(Some(Version { value, meta })),
        Ok(Decoded::Plain) => Ok(None),
        Err(e) => Err(fail(e)),
    }
}

/// Decodes the first of `entries` (a version followed by its bases, as the LOAD and ROLLBACK
/// scripts return them). `Ok(None)`: the version holds a plain (pre-statecar) value.
pub fn decode_chain(
    entries: &[(u32, Bytes)],
    max: usize,
    dicts: DictLookup<'_>,
) -> Result<Option<Version>, ChainError> {
    let Some((want, _)) = entries.first() else {
        return Err(ChainError {
            version: 0,
            error: EnvelopeError::NeedsBase(0),
        });
    };
    // From the self-contained end back to the version asked for.
    let mut below: Option<Version> = None;
    for (i, (version, stored)) in entries.iter().enumerate().rev() {
        let base = match envelope::inspect(stored) {
            Ok(Some(Meta { base: Some(b), .. })) => {
                // The entry after this one must be the version it names.
                let named = entries.get(i + 1).map(|(v, _)| *v);
                if named != Some(b.version) || below.is_none() {
                    return Err(ChainError {
                        version: *version,
                        error: EnvelopeError::NeedsBase(b.version),
                    });
                }
                below.as_ref().map(|v| v.value.as_slice())
            }
            _ => None,
        };
        let decoded = decode_entry(*version, stored, base, max, dicts)?;
        match decoded {
            Some(v) => below = Some(v),
            // A plain value can only be the version asked for, never a base.
            None if i == 0 => return Ok(None),
            None => {
                return Err(ChainError {
                    version: *want,
                    error: EnvelopeError::NeedsBase(*version),
                });
            }
        }
    }
    Ok(below)
}

/// Every version of a history, decoded: the entries of the history hash (`<v>` fields, and
/// `d<v>` fields kept as bases) and the key's current envelope. Versions are decoded from the
/// newest down, each delta against its already decoded base, and a decoded value is dropped as
/// soon as nothing older needs it, so memory stays at a few versions. Returns each listed
/// version (the `live` ones and the current one) with its outcome, oldest first.
pub fn decode_all(
    live: &BTreeMap<u32, Bytes>,
    kept: &BTreeMap<u32, Bytes>,
    current: Option<(u32, &Bytes)>,
    max: usize,
    dicts: DictLookup<'_>,
) -> Vec<(u32, Result<Option<Version>, ChainError>)> {
    let lookup = |v: u32| -> Option<&Bytes> {
        match current {
            Some((c, bytes)) if c == v => Some(bytes),
            _ => live.get(&v).or_else(|| kept.get(&v)),
        }
    };
    let mut all: Vec<u32> = live.keys().chain(kept.keys()).copied().collect();
    if let Some((c, _)) = current {
        all.push(c);
    }
    all.sort_unstable();
    all.dedup();
    // How many entries still need each version as their base.
    let base_of = |v: u32| -> Option<u32> {
        lookup(v)
            .and_then(|b| envelope::inspect(b).ok().flatten())
            .and_then(|m| m.base)
            .map(|b| b.version)
    };
    let mut wanted: HashMap<u32, usize> = HashMap::new();
    for &v in &all {
        if let Some(b) = base_of(v) {
            *wanted.entry(b).or_default() += 1;
        }
    }
    let mut decoded: HashMap<u32, Result<Option<Version>, ChainError>> = HashMap::new();
    let mut out = Vec::new();
    for &v in all.iter().rev() {
        let Some(stored) = lookup(v) else { continue };
        let base = base_of(v);
        let r = match base {
            Some(b) => match decoded.get(&b) {
                Some(Ok(Some(bv))) => decode_entry(v, stored, Some(&bv.value), max, dicts),
                Some(Err(e)) => Err(ChainError {
                    version: v,
                    error: e.error.clone(),
                }),
                _ => Err(ChainError {
                    version: v,
                    error: EnvelopeError::NeedsBase(b),
                }),
            },
            None => decode_entry(v, stored, None, max, dicts),
        };
        if let Some(b) = base
            && let Some(n) = wanted.get_mut(&b)
        {
            *n -= 1;
            if *n == 0 {
                wanted.remove(&b);
                decoded.remove(&b);
            }
        }
        let listed = live.contains_key(&v) || current.is_some_and(|(c, _)| c == v);
        if listed {
            out.push((v, r.clone()));
        }
        if wanted.contains_key(&v) {
            decoded.insert(v, r);
        }
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::codec::Codec;
    use crate::state::sample::Checkpoints;

    const MAX: usize = 64 << 20;

    fn no_dicts(_: u32) -> Option<Arc<Dictionary>> {
        None
    }

    /// A history as the write path builds it: each version a delta against the next newer.
    fn history(n: u32) -> (Vec<Vec<u8>>, BTreeMap<u32, Bytes>, Bytes) {
        let mut c = Checkpoints::new(9);
        let values: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                if i > 0 {
                    c.step();
                }
                c.checkpoint()
            })
            .collect();
        let mut live = BTreeMap::new();
        for v in 1..n {
            let i = (v - 1) as usize;
            let d = envelope::encode_delta(&values[i], &values[i + 1], v + 1, 1, 5, v)
                .map(Bytes::from)
                .unwrap_or_default();
            live.insert(v, d);
        }
        let cur = Bytes::from(envelope::encode(
            &values[n as usize - 1],
            Codec::Zstd,
            0,
            5,
            n,
        ));
        (values, live, cur)
    }

    #[test]
    fn every_version_decodes_through_its_chain() {
        let (values, live, cur) = history(12);
        for want in 1..=12u32 {
            let mut entries: Vec<(u32, Bytes)> =
                (want..12).map(|v| (v, live[&v].clone())).collect();
            entries.push((12, cur.clone()));
            let got = decode_chain(&entries, MAX, &no_dicts).map(|v| v.map(|v| v.value));
            assert_eq!(got, Ok(Some(values[want as usize - 1].clone())), "v{want}");
        }
        let all = decode_all(&live, &BTreeMap::new(), Some((12, &cur)), MAX, &no_dicts);
        assert_eq!(all.len(), 12);
        for (v, r) in all {
            assert_eq!(
                r.map(|x| x.map(|x| x.value)),
                Ok(Some(values[v as usize - 1].clone()))
            );
        }
    }

    #[test]
    fn a_broken_chain_is_an_error_never_wrong_bytes() {
        let (_, live, cur) = history(5);
        // Base missing (the next entry is another version).
        let entries = vec![(2, live[&2].clone()), (4, cur.clone())];
        assert!(matches!(
            decode_chain(&entries, MAX, &no_dicts),
            Err(ChainError {
                error: EnvelopeError::NeedsBase(3),
                ..
            })
        ));
        // Wrong base bytes (another version's): the CRC recorded in the delta catches it.
        let other = Bytes::from(envelope::encode(b"not the base", Codec::None, 0, 1, 3));
        let entries = vec![(2, live[&2].clone()), (3, other)];
        assert!(matches!(
            decode_chain(&entries, MAX, &no_dicts),
            Err(ChainError {
                version: 2,
                error: EnvelopeError::BaseMismatch { .. }
            })
        ));
        // A damaged base damages what depends on it, and decode_all says so per version.
        let mut bad = cur.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let bad = Bytes::from(bad);
        let all = decode_all(&live, &BTreeMap::new(), Some((5, &bad)), MAX, &no_dicts);
        assert!(all.iter().all(|(_, r)| r.is_err()), "{all:?}");
        // A kept base (a deleted version) still serves the version below it.
        let mut live2 = live.clone();
        let kept: BTreeMap<u32, Bytes> = [(3, live2.remove(&3).unwrap_or_default())].into();
        let all = decode_all(&live2, &kept, Some((5, &cur)), MAX, &no_dicts);
        let listed: Vec<u32> = all.iter().map(|(v, _)| *v).collect();
        assert_eq!(listed, vec![1, 2, 4, 5]);
        assert!(all.iter().all(|(_, r)| matches!(r, Ok(Some(_)))));
    }
}
