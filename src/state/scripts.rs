//! The Lua scripts that make every state write one atomic step in Redis.
//!
//! A versioned write must store the value, take the next version number, move the version it
//! replaces into the history and trim the history, with no other client in between: otherwise
//! two writers could take the same number, leave a gap, or store a delta against bytes that
//! are no longer there. Redis runs a script atomically, so each operation is one script: an
//! FCALL of statecar's function library (Redis 7), or EVALSHA/EVAL.
//!
//! The key holds the newest version, whole; it is never stored twice. The history hash holds
//! the older ones: field `last` (the newest version number), `<v>` (version v's envelope),
//! `t<v>` (its tags) and `d<v>` (the bytes of a version deleted with STATE.DELVERSION that an
//! older delta still needs). An older version is usually a *delta*: zstd against the bytes of
//! the next newer version (docs/FORMAT.md). The proxy computes it from its cache of the key's
//! current bytes and sends it with the header those bytes were read from; the script uses it
//! only if the key still holds exactly that header (same version, same CRC, same timestamp).
//! Otherwise (another writer came in between, or the proxy had nothing cached) the key's own
//! envelope moves into the history as it is, a full copy: always decodable, only larger.
//!
//! The history keeps a *window*: versions `last - max_versions + 1 ..= last`, minus any
//! deleted. Each write adds one and drops the one that left the window. Deltas point only to
//! newer versions, so trimming the oldest never takes a base away; a deleted version that an
//! older delta still needs stays (hidden, as `d<v>`) until it leaves the window. Fields below
//! the window (a lowered max_versions, the `n`/`lo` counters of statecar before 0.2) are
//! invisible to every command and removed by `tidy` every 64th version.
//!
//! Every value is read back through the same rules: the current value is the key; version v
//! is field `<v>`, decoded against its base's bytes, which come from the same walk (the
//! proxy's `state::history`).

use bytes::{Bytes, BytesMut};

use crate::protocol::encode_multibulk;

/// Helpers shared by the scripts.
const PRELUDE: &str = r#"
local SIG = '\229SCK'
local CHAIN_LIMIT = 20000
-- The version an intact envelope header names (format 1 or 2), else nil.
local function env_version(h)
  if type(h) ~= 'string' or #h < 36 or string.sub(h, 1, 4) ~= SIG then return nil end
  local f = string.byte(h, 5)
  if f ~= 1 and f ~= 2 then return nil end
  local v, c = struct.unpack('>I4>I4', h, 29)
  if v + c ~= 4294967295 then return nil end
  return v
end
-- The version a stored entry is a delta against, or nil for a self-contained one.
local function env_base(e)
  if type(e) ~= 'string' or #e < 44 or string.byte(e, 5) ~= 2 then return nil end
  local flags = struct.unpack('>I2', e, 7)
  if flags % 2 == 0 then return nil end
  local at = 37
  if math.floor(flags / 2) % 2 == 1 then at = 41 end
  return (struct.unpack('>I4', e, at))
end
local function stamp(key, v)
  redis.call('SETRANGE', key, 28, struct.pack('>I4>I4', v, 4294967295 - v))
end
local function tidy(hist, last, maxv)
  for _, f in ipairs(redis.call('HKEYS', hist)) do
    local n = tonumber(f) or tonumber(string.match(f, '^[td](%d+)$'))
    if (n ~= nil and n <= last - maxv) or f == 'n' or f == 'lo' then
      redis.call('HDEL', hist, f)
    end
  end
end
local function sync_ttl(key, hist)
  local t = redis.call('PTTL', key)
  if t == -2 then redis.call('DEL', hist)
  elseif t == -1 then redis.call('PERSIST', hist)
  else redis.call('PEXPIRE', hist, t) end
end
local function is_err(r) return type(r) == 'table' and r.err ~= nil end
-- The key's header, the version it holds (nil: no envelope) and the history's newest number.
local function current(key, hist)
  local h = redis.pcall('GETRANGE', key, 0, 35)
  if type(h) ~= 'string' then h = '' end
  local last = 0
  if hist ~= key then last = tonumber(redis.call('HGET', hist, 'last') or '0') end
  return h, env_version(h), last
end
-- val: the bytes, or {staging key} for a big value uploaded beforehand, renamed into place so
-- that Lua never copies it (Redis hashes every byte of every string a script receives).
local function set_value(key, val, tmode, tval)
  if type(val) == 'table' then
    local at = -1
    if tmode == 'KEEPTTL' then at = redis.call('PEXPIRETIME', key) end
    redis.call('RENAME', val[1], key)
    if tmode == 'PX' then redis.call('PEXPIRE', key, tval)
    elseif tmode == 'PXAT' then redis.call('PEXPIREAT', key, tval)
    elseif at > 0 then redis.call('PEXPIREAT', key, at)
    else redis.call('PERSIST', key) end
  elseif tmode == 'PX' or tmode == 'PXAT' then
    redis.call('SET', key, val, tmode, tval)
  elseif tmode == 'KEEPTTL' then
    redis.call('SET', key, val, 'KEEPTTL')
  else
    redis.call('SET', key, val)
  end
end
-- Stores one value. pre: {header, version, last} if already read. base: the header the proxy
-- made `delta` against; predicted: the version it stamped into `val` (0: none).
-- Returns the version written (0 without history), 1 if one was trimmed, 1 if the delta was used.
local function store(key, hist, val, maxv, tmode, tval, tags, base, delta, predicted, pre, old)
  if maxv == 0 then
    set_value(key, val, tmode, tval)
    return 0, 0, 0
  end
  local h, cur, last
  if pre then h, cur, last = pre[1], pre[2], pre[3] else h, cur, last = current(key, hist) end
  local n = math.max(cur or 0, last)
  local v = n + 1
  -- Version n leaves the key for the history: as the proxy's delta when the key holds
  -- exactly the bytes it was made from, else as the key's own envelope.
  local entry, used = nil, 0
  -- (With max_versions 1 version n leaves the window at once.)
  if maxv > 1 and cur ~= nil and cur == n then
    if delta ~= '' and h == base and v == predicted then
      entry, used = delta, 1
    elseif type(old) == 'string' then
      entry = old
    else
      entry = redis.call('GET', key)
    end
  end
  set_value(key, val, tmode, tval)
  local exists = true
  -- An absolute expiry in the past deletes the key at once: then there is nothing to stamp.
  if tmode == 'PXAT' then exists = redis.call('EXISTS', key) == 1 end
  if exists and v ~= predicted then stamp(key, v) end
  local trimmed = 0
  local kept = entry ~= nil or tags ~= '' or last > 0
  if kept then
    local args = {'HSET', hist, 'last', v}
    if entry ~= nil then args[#args + 1] = n; args[#args + 1] = entry end
    if tags ~= '' then args[#args + 1] = 't' .. v; args[#args + 1] = tags end
    redis.call(unpack(args))
    local gone = v - maxv
    if gone > 0 then
      if redis.call('HDEL', hist, gone, 't' .. gone, 'd' .. gone) > 0 then trimmed = 1 end
      if v % math.max(64, maxv) == 0 then tidy(hist, v, maxv) end
    end
    if tmode == 'PX' then redis.call('PEXPIRE', hist, tval)
    elseif tmode == 'PXAT' then redis.call('PEXPIREAT', hist, tval)
    elseif tmode == 'KEEPTTL' then sync_ttl(key, hist)
    else redis.call('PERSIST', hist) end
  end
  return v, trimmed, used
end
-- The version the key holds: its header's, or (a header too damaged to read) the newest
-- number, since the key always holds the newest version. nil when the key holds none.
local function holder(key, cur, top)
  if cur ~= nil then return cur end
  if top > 0 and redis.call('EXISTS', key) == 1 then return top end
  return nil
end
-- The stored entries needed to decode version `want`: `want`, then each base up to a
-- self-contained one, as {version, bytes, ...}. cur: the version the key holds.
local function chain(key, hist, want, cur)
  local out = {}
  local v = want
  while #out < CHAIN_LIMIT do
    local e
    if v == cur then e = redis.call('GET', key)
    else
      e = redis.call('HGET', hist, v)
      if not e and #out > 0 then e = redis.call('HGET', hist, 'd' .. v) end
    end
    if not e then break end
    out[#out + 1] = v
    out[#out + 1] = e
    local b = env_base(e)
    if b == nil or b <= v then break end
    v = b
  end
  return out
end
"#;

/// Writes: SET (all options), SETNX, SETEX, PSETEX, GETSET, MSET, MSETNX, STATE.SAVE, and the
/// second step of STATE.ROLLBACK.
///
/// KEYS: (key, history) pairs; history == key when the key keeps none; then, with one pair
/// only, optionally the staging key that holds the pair's value (`session/stage.rs`; the value
/// argument is then empty).
/// ARGV: mode (SET|MSETNX), cond (''|NX|XX), want_old (0|1), expected version (''|n), tags,
/// then per pair: value, max_versions (0 = none), ttl mode (''|PX|PXAT|KEEPTTL), ttl value,
/// base header (36 bytes or ''), delta envelope (or ''), predicted version (0 = none).
/// Returns {done, old value or nil, last version written, versions trimmed, {version per
/// pair}, {1 per pair whose delta was stored}}.
const WRITE: &str = r#"
local npairs = math.floor(#KEYS / 2)
local stage, staged = nil, nil
if #KEYS % 2 == 1 then
  stage = KEYS[#KEYS]
  if redis.call('EXISTS', stage) == 0 then
    return redis.error_reply('ERR statecar: the uploaded value of ' .. KEYS[1] .. ' was gone (evicted or expired) before its write ran; nothing was written, retry it')
  end
  -- Renamed into place, unless the client's ACL user may not rename it and restore the
  -- expiry: then it is read, as if it had come with the call.
  local k = KEYS[1]
  staged = {stage}
  if not (redis.acl_check_cmd('RENAME', stage, k) and redis.acl_check_cmd('PEXPIRE', k, '1')
      and redis.acl_check_cmd('PEXPIREAT', k, '1') and redis.acl_check_cmd('PERSIST', k)
      and redis.acl_check_cmd('PEXPIRETIME', k)) then
    staged = redis.call('GET', stage)
  end
end
local function write()
local mode, cond, want_old, expect, tags = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
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
local pre = nil
if expect ~= '' then
  local h, cur, last = current(KEYS[1], KEYS[2])
  pre = {h, cur, last}
  local stored = 0
  if redis.call('EXISTS', KEYS[1]) == 1 then stored = math.max(cur or 0, last) end
  if stored ~= tonumber(expect) - 1 then
    return redis.error_reply('STATEVERSION stored version of ' .. KEYS[1] .. ' is ' .. stored .. ', not ' .. (tonumber(expect) - 1))
  end
end
local ver, trimmed, versions, used = 0, 0, {}, {}
for i = 1, npairs do
  local b = 5 + 7 * (i - 1)
  local p = nil
  if i == 1 then p = pre end
  local o = nil
  if i == 1 then o = old end
  local val = ARGV[b + 1]
  if staged then val = staged end
  local v, t, u = store(KEYS[2 * i - 1], KEYS[2 * i], val, tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4], tags, ARGV[b + 5], ARGV[b + 6], tonumber(ARGV[b + 7]), p, o)
  if v > 0 then ver = v end
  trimmed = trimmed + t
  versions[i] = v
  used[i] = u
end
if old == true then old = false end
return {1, old, ver, trimmed, versions, used}
end
local r = write()
-- Renamed, the upload is gone already; otherwise (NX, XX, a version check, read instead of
-- renamed) it goes now rather than at its expiry.
if stage then redis.call('DEL', stage) end
return r
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

/// STRLEN: the header (with its extension) and the stored length, so the proxy can answer the
/// original length.
const STRLEN: &str = r#"
local h = redis.pcall('GETRANGE', KEYS[1], 0, 47)
if is_err(h) then return h end
return {h, redis.call('STRLEN', KEYS[1])}
"#;

/// STATE.LOAD: ARGV = {version or '', max_versions}. Returns {{version, bytes, ...} (the
/// entries to decode it: the version, then its bases), tags, pttl, version} or nil. A version
/// outside the window is gone, even if `tidy` has not removed it yet.
const LOAD: &str = r#"
local ver, entries
if ARGV[1] == '' then
  local env = redis.pcall('GET', KEYS[1])
  if is_err(env) then return env end
  if not env then return false end
  ver = env_version(env) or 0
  entries = {ver, env}
else
  ver = tonumber(ARGV[1])
  local h, cur, last = current(KEYS[1], KEYS[2])
  local top = math.max(cur or 0, last)
  if ver > top or ver <= top - tonumber(ARGV[2]) then return false end
  entries = chain(KEYS[1], KEYS[2], ver, holder(KEYS[1], cur, top))
  if #entries == 0 then return false end
end
local tags = ''
if KEYS[2] ~= KEYS[1] then tags = redis.call('HGET', KEYS[2], 't' .. ver) or '' end
return {entries, tags, redis.call('PTTL', KEYS[1]), ver}
"#;

/// STATE.VERSIONS: ARGV = {max_versions}. Returns {{v, header, stored length, tags}...},
/// current header, {{v, header} of each version kept only as a base (`d<v>`)}.
const VERSIONS: &str = r#"
local cur_h = redis.pcall('GETRANGE', KEYS[1], 0, 47)
if type(cur_h) ~= 'string' then cur_h = '' end
local cur = env_version(cur_h)
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local top = math.max(cur or 0, last)
local lo = math.max(1, top - tonumber(ARGV[1]) + 1)
local held = holder(KEYS[1], cur, top)
local out, kept = {}, {}
for v = lo, top do
  local tags = redis.call('HGET', KEYS[2], 't' .. v) or ''
  if v == held then
    out[#out + 1] = {v, cur_h, redis.call('STRLEN', KEYS[1]), tags}
  else
    local env = redis.call('HGET', KEYS[2], v)
    if env then out[#out + 1] = {v, string.sub(env, 1, 48), #env, tags} end
  end
  local base = redis.call('HGET', KEYS[2], 'd' .. v)
  if base then kept[#kept + 1] = {v, string.sub(base, 1, 48)} end
end
return {out, cur_h, kept}
"#;

/// STATE.DELVERSION: ARGV = {version, max_versions}. Refuses the version the key currently
/// holds; a version outside the window is already gone (0). When the next older version is a
/// delta against this one, the bytes stay (as `d<v>`) until they leave the window; a delta
/// that goes for good takes with it the kept bytes that only it needed.
const DELVERSION: &str = r#"
local v = tonumber(ARGV[1])
local h, cur, last = current(KEYS[1], KEYS[2])
if cur == v then
  return redis.error_reply('ERR version ' .. v .. ' is the current value of ' .. KEYS[1] .. '; roll back to another version first')
end
local top = math.max(cur or 0, last)
if v > top or v <= top - tonumber(ARGV[2]) then return 0 end
local e = redis.call('HGET', KEYS[2], v)
if not e then return 0 end
local needed = false
for _, f in ipairs({v - 1, 'd' .. (v - 1)}) do
  if env_base(redis.call('HGET', KEYS[2], f)) == v then needed = true end
end
if needed then
  redis.call('HSET', KEYS[2], 'd' .. v, e)
else
  local x, g = v, e
  while true do
    local b = env_base(g)
    if b ~= x + 1 then break end
    g = redis.call('HGET', KEYS[2], 'd' .. b)
    if not g then break end
    redis.call('HDEL', KEYS[2], 'd' .. b)
    x = b
  end
end
redis.call('HDEL', KEYS[2], v, 't' .. v)
return 1
"#;

/// STATE.ROLLBACK, first step (read only): ARGV = {version, max_versions}. Returns {{version,
/// bytes, ...} (version v and its bases), tags of v, the key's current envelope or nil}. The
/// proxy decodes version v and writes it as the newest version with [`WRITE`].
const ROLLBACK: &str = r#"
local want = tonumber(ARGV[1])
local h, cur, last = current(KEYS[1], KEYS[2])
local top = math.max(cur or 0, last)
local curval = false
if cur ~= nil then curval = redis.call('GET', KEYS[1]) end
local entries = {}
if want <= top and want > top - tonumber(ARGV[2]) then
  entries = chain(KEYS[1], KEYS[2], want, holder(KEYS[1], cur, top))
end
if #entries == 0 then return redis.error_reply('ERR no version ' .. ARGV[1] .. ' of ' .. KEYS[1]) end
return {entries, redis.call('HGET', KEYS[2], 't' .. want) or '', curval}
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
