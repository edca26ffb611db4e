//! The Lua scripts that make every state write one atomic step in Redis.
//!
//! A versioned write must store the value, take the next version number, record it in the
//! history and trim the history, with no other client in between: otherwise two writers could
//! take the same number or leave a gap. Redis runs a script atomically, so each operation is one
//! script, sent with EVALSHA (falling back to EVAL on NOSCRIPT).
//!
//! History hash fields: `last` (last version number handed out), `<v>` (the envelope of
//! version v), `t<v>` (its tags). The history keeps a *window*: the versions
//! `last - max_versions + 1 ..= last`, minus any deleted with STATE.DELVERSION. Each write adds
//! version v and removes version `v - max_versions` in the same step, so a write costs a fixed
//! six Redis calls, however the history looks (per-call overhead inside a function is most of
//! a state write's cost in Redis). Fields outside the window (left by a lowered max_versions,
//! or the `n`/`lo` counters of statecar before 0.2) are invisible to every command and removed
//! by [`PRELUDE`]'s `tidy` every 64th version (every max_versions-th when that is larger, so
//! its HKEYS stays a small share of the writes).
//!
//! The key's own envelope carries its version number, stamped in place with SETRANGE after the
//! SET; history entries keep the placeholder 0, since their field already names the version
//! (copying a whole value inside Lua just to change 8 bytes was the write path's largest cost).

use bytes::{Bytes, BytesMut};

use crate::protocol::encode_multibulk;

/// Helpers shared by the scripts.
const PRELUDE: &str = r#"
local function stamp(key, v)
  redis.call('SETRANGE', key, 28, struct.pack('>I4>I4', v, 4294967295 - v))
end
local function tidy(hist, last, maxv)
  for _, f in ipairs(redis.call('HKEYS', hist)) do
    local n = tonumber(f) or tonumber(string.match(f, '^t(%d+)$'))
    if (n ~= nil and n <= last - maxv) or f == 'n' or f == 'lo' then
      redis.call('HDEL', hist, f)
    end
  end
end
local function push_version(hist, env, maxv, tags)
  local v = redis.call('HINCRBY', hist, 'last', 1)
  if tags ~= nil and tags ~= '' then
    redis.call('HSET', hist, v, env, 't' .. v, tags)
  else
    redis.call('HSET', hist, v, env)
  end
  local trimmed = 0
  local old = v - maxv
  if old > 0 then
    if redis.call('HDEL', hist, old, 't' .. old) > 0 then trimmed = 1 end
    if v % math.max(64, maxv) == 0 then tidy(hist, v, maxv) end
  end
  return v, trimmed
end
local function sync_ttl(key, hist)
  local t = redis.call('PTTL', key)
  if t == -2 then redis.call('DEL', hist)
  elseif t == -1 then redis.call('PERSIST', hist)
  else redis.call('PEXPIRE', hist, t) end
end
local function is_err(r) return type(r) == 'table' and r.err ~= nil end
local function store(key, hist, val, maxv, tmode, tval, tags)
  local ver, trimmed = 0, 0
  if maxv > 0 then ver, trimmed = push_version(hist, val, maxv, tags) end
  if tmode == 'PX' or tmode == 'PXAT' then
    redis.call('SET', key, val, tmode, tval)
  elseif tmode == 'KEEPTTL' then
    redis.call('SET', key, val, 'KEEPTTL')
  else
    redis.call('SET', key, val)
  end
  -- An absolute expiry in the past deletes the key at once: then there is nothing to stamp.
  if maxv > 0 and (tmode ~= 'PXAT' or redis.call('EXISTS', key) == 1) then
    stamp(key, ver)
  end
  if hist ~= key then
    if tmode == 'PX' then redis.call('PEXPIRE', hist, tval)
    elseif tmode == 'PXAT' then redis.call('PEXPIREAT', hist, tval)
    elseif tmode == 'KEEPTTL' then sync_ttl(key, hist)
    else redis.call('PERSIST', hist) end
  end
  return ver, trimmed
end
"#;

/// Writes: SET (all options), SETNX, SETEX, PSETEX, GETSET, MSET, MSETNX, STATE.SAVE.
///
/// KEYS: (key, history) pairs; history == key when the key keeps none.
/// ARGV: mode (SET|MSETNX), cond (''|NX|XX), want_old (0|1), expected version (''|n), tags,
/// then per pair: value, max_versions (0 = none), ttl mode (''|PX|PXAT|KEEPTTL), ttl value.
/// Returns {done, old value or nil, last version written, versions trimmed}.
const WRITE: &str = r#"
local mode, cond, want_old, expect, tags = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local npairs = #KEYS / 2
local old = false
if want_old == '1' or cond ~= '' then
  local r = redis.pcall('GET', KEYS[1])
  if is_err(r) then
    if want_old == '1' then return r end
    r = true
  end
  old = r
end
if cond == 'NX' and old then return {0, old, 0} end
if cond == 'XX' and not old then return {0, false, 0} end
if mode == 'MSETNX' then
  for i = 1, npairs do
    if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then return {0, false, 0} end
  end
end
if expect ~= '' then
  local last = 0
  if redis.call('EXISTS', KEYS[1]) == 1 then
    last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
  end
  if last ~= tonumber(expect) - 1 then
    return redis.error_reply('STATEVERSION stored version of ' .. KEYS[1] .. ' is ' .. last .. ', not ' .. (tonumber(expect) - 1))
  end
end
local ver, trimmed = 0, 0
for i = 1, npairs do
  local b = 5 + 4 * (i - 1)
  local v, t = store(KEYS[2 * i - 1], KEYS[2 * i], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4], tags)
  if v > 0 then ver = v end
  trimmed = trimmed + t
end
if old == true then old = false end
return {1, old, ver, trimmed}
"#;

/// DEL / UNLINK: KEYS = the client's keys, then history keys; ARGV = {command, client key count}.
const DELETE: &str = r#"
local n = tonumber(ARGV[2])
local r = 0
for i = 1, n do r = r + redis.call(ARGV[1], KEYS[i]) end
for i = n + 1, #KEYS do redis.call(ARGV[1], KEYS[i]) end
return r
"#;

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, PERSIST, GETEX, GETDEL: run the client's command on the
/// key, then give the history the key's resulting expiry. KEYS = {key, history};
/// ARGV = {command, args after the key...}.
const KEY_THEN_SYNC: &str = r#"
local r = redis.pcall(ARGV[1], KEYS[1], unpack(ARGV, 2))
if is_err(r) then return r end
sync_ttl(KEYS[1], KEYS[2])
return r
"#;

/// STRLEN: the header and the stored length, so the proxy can answer the original length.
const STRLEN: &str = r#"
local h = redis.pcall('GETRANGE', KEYS[1], 0, 35)
if is_err(h) then return h end
return {h, redis.call('STRLEN', KEYS[1])}
"#;

/// STATE.LOAD: ARGV = {version or '', max_versions}. Returns {envelope, tags, pttl, version}
/// or nil. A version outside the window is gone, even if `tidy` has not removed it yet.
const LOAD: &str = r#"
local env
if ARGV[1] == '' then
  env = redis.pcall('GET', KEYS[1])
  if is_err(env) then return env end
else
  local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
  if tonumber(ARGV[1]) > last - tonumber(ARGV[2]) then
    env = redis.call('HGET', KEYS[2], ARGV[1])
  end
end
if not env then return false end
local ver = tonumber(ARGV[1]) or 0
if ARGV[1] == '' and #env >= 36 then ver = struct.unpack('>I4', env, 29) end
local tags = ''
if KEYS[2] ~= KEYS[1] then tags = redis.call('HGET', KEYS[2], 't' .. ver) or '' end
return {env, tags, redis.call('PTTL', KEYS[1]), ver}
"#;

/// STATE.VERSIONS: ARGV = {max_versions}. Returns {{v, header, stored length, tags}...},
/// current header.
const VERSIONS: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local lo = math.max(1, last - tonumber(ARGV[1]) + 1)
local out = {}
for v = lo, last do
  local env = redis.call('HGET', KEYS[2], v)
  if env then out[#out + 1] = {v, string.sub(env, 1, 36), #env, redis.call('HGET', KEYS[2], 't' .. v) or ''} end
end
local cur = redis.pcall('GETRANGE', KEYS[1], 0, 35)
if is_err(cur) then cur = '' end
return {out, cur}
"#;

/// STATE.DELVERSION: ARGV = {version, max_versions}. Refuses the version the key currently
/// holds; a version outside the window is already gone (0).
const DELVERSION: &str = r#"
local v = tonumber(ARGV[1])
local cur = redis.pcall('GETRANGE', KEYS[1], 0, 35)
if not is_err(cur) and #cur >= 36 and struct.unpack('>I4', cur, 29) == v then
  return redis.error_reply('ERR version ' .. v .. ' is the current value of ' .. KEYS[1] .. '; roll back to another version first')
end
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
if v <= last - tonumber(ARGV[2]) then return 0 end
local r = redis.call('HDEL', KEYS[2], v)
if r == 1 then redis.call('HDEL', KEYS[2], 't' .. v) end
return r
"#;

/// STATE.ROLLBACK: ARGV = {version, max_versions}. The old content becomes the newest version.
const ROLLBACK: &str = r#"
local maxv = tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local env
if tonumber(ARGV[1]) > last - maxv then env = redis.call('HGET', KEYS[2], ARGV[1]) end
if not env then return redis.error_reply('ERR no version ' .. ARGV[1] .. ' of ' .. KEYS[1]) end
local tags = redis.call('HGET', KEYS[2], 't' .. ARGV[1]) or ''
local v = push_version(KEYS[2], env, maxv, tags)
redis.call('SET', KEYS[1], env, 'KEEPTTL')
stamp(KEYS[1], v)
sync_ttl(KEYS[1], KEYS[2])
return v
"#;

/// A script with its SHA1, as EVALSHA needs.
pub struct Script {
    /// Full Lua source (prelude included).
    pub source: String,
    /// Hex SHA1 of the source.
    pub sha: String,
}

impl Script {
    fn new(body: &str) -> Script {
        let source = format!("{PRELUDE}{body}");
        let sha = sha1_smol::Sha1::from(source.as_bytes())
            .digest()
            .to_string();
        Script { source, sha }
    }

    /// `EVALSHA sha nkeys keys... args...`
    pub fn evalsha(&self, keys: &[Bytes], args: &[Bytes]) -> Bytes {
        self.build(self.sha.as_bytes(), b"EVALSHA", keys, args)
    }

    /// `EVAL source nkeys keys... args...` (inside MULTI, and after NOSCRIPT).
    pub fn eval(&self, keys: &[Bytes], args: &[Bytes]) -> Bytes {
        self.build(self.source.as_bytes(), b"EVAL", keys, args)
    }

    fn build(&self, body: &[u8], cmd: &[u8], keys: &[Bytes], args: &[Bytes]) -> Bytes {
        let n = keys.len().to_string();
        let mut all: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        all.push(cmd);
        all.push(body);
        all.push(n.as_bytes());
        all.extend(keys.iter().map(|k| k.as_ref()));
        all.extend(args.iter().map(|a| a.as_ref()));
        let mut out = BytesMut::with_capacity(all.iter().map(|a| a.len() + 16).sum());
        encode_multibulk(&mut out, &all);
        out.freeze()
    }
}

/// The script bodies by kind and function name, in library order.
const BODIES: [(ScriptKind, &str, &str); 8] = [
    (ScriptKind::Write, "write", WRITE),
    (ScriptKind::Delete, "delete", DELETE),
    (ScriptKind::KeyThenSync, "key_then_sync", KEY_THEN_SYNC),
    (ScriptKind::Strlen, "strlen", STRLEN),
    (ScriptKind::Load, "load", LOAD),
    (ScriptKind::Versions, "versions", VERSIONS),
    (ScriptKind::DelVersion, "delversion", DELVERSION),
    (ScriptKind::Rollback, "rollback", ROLLBACK),
];

/// All scripts, hashed once at start, and the same code as a Redis 7 function library.
///
/// With Redis 7 every state write goes as `FCALL`: no script body on the wire and no SHA1 of
/// it computed by Redis per call (what EVAL costs), and no NOSCRIPT after a SCRIPT FLUSH, so
/// writes can be pipelined freely. The library is loaded on every new upstream connection
/// (`FUNCTION LOAD`, which Redis keeps and replicates) and its name carries a hash of the code,
/// so two statecar versions never replace each other's functions. Redis 6.2 (no functions)
/// gets EVALSHA/EVAL as before.
pub struct Scripts {
    /// See [`WRITE`].
    pub write: Script,
    /// See [`DELETE`].
    pub delete: Script,
    /// See [`KEY_THEN_SYNC`].
    pub key_then_sync: Script,
    /// See [`STRLEN`].
    pub strlen: Script,
    /// See [`LOAD`].
    pub load: Script,
    /// See [`VERSIONS`].
    pub versions: Script,
    /// See [`DELVERSION`].
    pub delversion: Script,
    /// See [`ROLLBACK`].
    pub rollback: Script,
    /// `statecar_<hash>`: the library and the prefix of its function names.
    pub library_name: String,
    /// `FUNCTION LOAD <library>`, ready to send.
    pub function_load: Bytes,
    /// `<library_name>_<name>` of each script, in `BODIES` order.
    function_names: Vec<String>,
}

impl Default for Scripts {
    fn default() -> Self {
        let mut all = String::from(PRELUDE);
        for (_, _, body) in BODIES {
            all.push_str(body);
        }
        let hash = sha1_smol::Sha1::from(all.as_bytes()).digest().to_string();
        let library_name = format!("statecar_{}", &hash[..12]);
        let mut lib = format!("#!lua name={library_name}\n{PRELUDE}");
        for (_, name, body) in BODIES {
            lib.push_str(&format!(
                "redis.register_function('{library_name}_{name}', function(KEYS, ARGV)\n{body}\nend)\n"
            ));
        }
        let mut function_load = BytesMut::new();
        encode_multibulk(
            &mut function_load,
            &[b"FUNCTION".as_slice(), b"LOAD", lib.as_bytes()],
        );
        let function_names = BODIES
            .iter()
            .map(|(_, name, _)| format!("{library_name}_{name}"))
            .collect();
        Scripts {
            function_names,
            library_name,
            function_load: function_load.freeze(),
            write: Script::new(WRITE),
            delete: Script::new(DELETE),
            key_then_sync: Script::new(KEY_THEN_SYNC),
            strlen: Script::new(STRLEN),
            load: Script::new(LOAD),
            versions: Script::new(VERSIONS),
            delversion: Script::new(DELVERSION),
            rollback: Script::new(ROLLBACK),
        }
    }
}

/// Names the scripts, so a call can be rebuilt later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptKind {
    /// [`WRITE`]
    Write,
    /// [`DELETE`]
    Delete,
    /// [`KEY_THEN_SYNC`]
    KeyThenSync,
    /// [`STRLEN`]
    Strlen,
    /// [`LOAD`]
    Load,
    /// [`VERSIONS`]
    Versions,
    /// [`DELVERSION`]
    DelVersion,
    /// [`ROLLBACK`]
    Rollback,
}

impl Scripts {
    /// `FCALL statecar_<hash>_<name> nkeys keys... args...`
    pub fn fcall(&self, k: ScriptKind, keys: &[Bytes], args: &[Bytes]) -> Bytes {
        // Names are built once: this runs for every state write.
        let name = BODIES
            .iter()
            .position(|(kind, _, _)| *kind == k)
            .and_then(|i| self.function_names.get(i))
            .map_or(&b""[..], |n| n.as_bytes());
        self.get(k).build(name, b"FCALL", keys, args)
    }

    /// The script of a kind.
    pub fn get(&self, k: ScriptKind) -> &Script {
        match k {
            ScriptKind::Write => &self.write,
            ScriptKind::Delete => &self.delete,
            ScriptKind::KeyThenSync => &self.key_then_sync,
            ScriptKind::Strlen => &self.strlen,
            ScriptKind::Load => &self.load,
            ScriptKind::Versions => &self.versions,
            ScriptKind::DelVersion => &self.delversion,
            ScriptKind::Rollback => &self.rollback,
        }
    }
}
