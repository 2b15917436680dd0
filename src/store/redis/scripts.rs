//! Lua scripts: each change to one identity's records is one script call, so it
//! is atomic and touches one Cluster slot. Records are JSON; scripts read the
//! few fields they need with cjson.
//!
//! The deadline rule here mirrors `ApiKey::record_deadline`: a key record
//! expires at the earliest of its `expire_time`, its `grace_expire_time` and its
//! identity's `expire_time`. Every script that writes a key record re-applies it,
//! so no write can clear a grace period.
//!
//! Every rule a script applies has its one home in `domain/`, which the
//! memory store calls; the script is that rule's only other copy, and each
//! says which function it mirrors (ARCHITECTURE.md lists them):
//! `domain::revision` (the revision check: UPDATE_IDENTITY, UPDATE_KEY,
//! ROLL_KEY, DELETE_IDENTITY, CHARGE_USAGE), `ApiKey::edited` and
//! `ApiKey::rolled` (a key's grace fields never change once set),
//! `TotpRecord::accept_step` and `TotpRecord::record_failure` (a code is
//! accepted once; the lockout), `TotpRecord::reseal`, and
//! `domain::usage::settle`. The records they read are `records.rs`'s.
//!
//! The deadline index mirrors `ApiKey::end`: every script that writes a key
//! record writes its entry (`index_key_end`) in the same call, and every
//! script that deletes a live key removes it (`unindex_key_end`).

use redis::Script;
use std::sync::LazyLock;

const COMMON: &str = r#"
local function earliest(d, v)
  if type(v) == 'number' and (d == nil or v < d) then return v end
  return d
end
local function expire_at(k, d)
  if d then redis.call('PEXPIREAT', k, string.format('%d', d)) else redis.call('PERSIST', k) end
end
local function key_deadline(key, identity_expire)
  return earliest(earliest(earliest(nil, key.expire_time), key.grace_expire_time), identity_expire)
end
local function holds_name(key) return type(key.rolled_to) ~= 'string' end
-- ApiKey::end: the record's deadline, and whether it is the grace period's end.
local function key_end(key, identity_expire)
  local at = key_deadline(key, identity_expire)
  if at == nil then return nil, nil end
  if key.grace_expire_time == at then return at, 'grace-ended' end
  return at, 'expired'
end
local function unindex_key_end(index, id)
  if index then redis.call('ZREM', index, 'expired:' .. id, 'grace-ended:' .. id) end
end
local function index_key_end(index, key, identity_expire)
  if not index then return end
  unindex_key_end(index, key.id)
  local at, kind = key_end(key, identity_expire)
  if at then redis.call('ZADD', index, string.format('%d', at), kind .. ':' .. key.id) end
end
local function key_name_taken(names_key, key_prefix, name, id)
  local holder = redis.call('HGET', names_key, name)
  if not holder or holder == id then return false end
  local raw = redis.call('GET', key_prefix .. holder)
  if not raw then return false end
  local other = cjson.decode(raw)
  return other.name == name and holds_name(other)
end
-- Mirrors `domain::dataset::newly_granted`: a write may newly grant only a
-- dataset that exists and carries no delete mark. KEYS from `first` on hold,
-- for each of `identity.datasets` in order, the dataset's record and its
-- delete mark; under Cluster they are in other slots and are not passed (the
-- store checks around the script). Returns the first dataset refused, or nil.
local function ungrantable_dataset(first, held, identity)
  if #KEYS < first then return nil end
  local was_held = {}
  for _, name in ipairs(held or {}) do was_held[name] = true end
  for i, name in ipairs(identity.datasets or {}) do
    if not was_held[name] then
      local record = KEYS[first + 2 * (i - 1)]
      if redis.call('EXISTS', record) == 0 or redis.call('EXISTS', KEYS[first + 2 * i - 1]) == 1 then
        return name
      end
    end
  end
  return nil
end
local function expire_identity_indexes(index_key, names_key, identity_expire, totp_key, last_use_key)
  local d = earliest(nil, identity_expire)
  expire_at(index_key, d)
  expire_at(names_key, d)
  if totp_key then expire_at(totp_key, d) end
  if last_use_key then expire_at(last_use_key, d) end
end
"#;

/// The audit tail of a change script. Callers pass the deadline index and
/// the audit stream as the last two KEYS entries, and whether to write the
/// index ('1' or '0'), the event (empty: none) and the stream's length bound
/// as the last three ARGV entries; they are taken off before the body runs,
/// so the body sees exactly its own arguments (and `key_ends`, the index or
/// nil). A change that succeeded ('OK', or 1 for deletions) appends the
/// event in the same script: the record, its index entry and its audit event
/// are written together or not at all.
const AUDIT: &str = r#"
local audit_stream = table.remove(KEYS)
local key_ends_key = table.remove(KEYS)
local audit_max = table.remove(ARGV)
local audit_event = table.remove(ARGV)
local key_ends = nil
if table.remove(ARGV) == '1' then key_ends = key_ends_key end
local function change()
%BODY%
end
local result = change()
if audit_event ~= '' and (result == 'OK' or result == 1) then
  redis.call('XADD', audit_stream, 'MAXLEN', '~', audit_max, '*', 'event', audit_event)
end
return result
"#;

/// A change script with the audit tail (see [`AUDIT`]).
fn audited(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{}", AUDIT.replace("%BODY%", body)))
}

/// KEYS: identity, key index, key names, then each dataset's record and
/// delete mark (see `ungrantable_dataset`). ARGV: key prefix, identity JSON,
/// key JSON... (then the audit arguments, as for every `audited` script).
/// Replies NODATASET:<name> for a dataset it may not grant.
pub static CREATE_IDENTITY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'EXISTS' end
local identity = cjson.decode(ARGV[2])
local refused = ungrantable_dataset(4, {}, identity)
if refused then return 'NODATASET:' .. refused end
redis.call('SET', KEYS[1], ARGV[2])
expire_at(KEYS[1], earliest(nil, identity.expire_time))
for i = 3, #ARGV do
  local key = cjson.decode(ARGV[i])
  local record = ARGV[1] .. key.id
  redis.call('SET', record, ARGV[i])
  expire_at(record, key_deadline(key, identity.expire_time))
  index_key_end(key_ends, key, identity.expire_time)
  redis.call('ZADD', KEYS[2], 0, key.id)
  if holds_name(key) then redis.call('HSET', KEYS[3], key.name, key.id) end
end
expire_identity_indexes(KEYS[2], KEYS[3], identity.expire_time)
return 'OK'
"#,
    )
});

/// KEYS: identity, key index, key names, totp, last use, usage, then each
/// dataset's record and delete mark (see `ungrantable_dataset`). ARGV: key
/// prefix, new JSON, expected revision. Replies NODATASET:<name> for a
/// dataset it may not newly grant. The revision check mirrors
/// `Identity::updated` (`domain::revision`); the Rust side stores the record
/// at the next revision.
pub static UPDATE_IDENTITY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 'NOTFOUND' end
local current = cjson.decode(raw)
if current.revision ~= tonumber(ARGV[3]) then return 'CONFLICT' end
local identity = cjson.decode(ARGV[2])
local refused = ungrantable_dataset(7, current.datasets, identity)
if refused then return 'NODATASET:' .. refused end
redis.call('SET', KEYS[1], ARGV[2])
expire_at(KEYS[1], earliest(nil, identity.expire_time))
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local record = ARGV[1] .. id
  local raw_key = redis.call('GET', record)
  if raw_key then
    local key = cjson.decode(raw_key)
    expire_at(record, key_deadline(key, identity.expire_time))
    index_key_end(key_ends, key, identity.expire_time)
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
expire_identity_indexes(KEYS[2], KEYS[3], identity.expire_time, KEYS[4], KEYS[5])
expire_at(KEYS[6], earliest(nil, identity.expire_time))
return 'OK'
"#,
    )
});

/// KEYS: identity, key index, key names, totp, last use, usage. ARGV: key
/// prefix, the revision it must be at ('' for any). Returns 1 if it existed,
/// -1 (and deletes nothing) if it is at another revision
/// (`domain::revision::admits`).
pub static DELETE_IDENTITY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw = redis.call('GET', KEYS[1])
if raw and ARGV[2] ~= '' and cjson.decode(raw).revision ~= tonumber(ARGV[2]) then return -1 end
local existed = redis.call('EXISTS', KEYS[1])
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  -- A key that already ended keeps its entry: its end is still to report.
  if redis.call('DEL', ARGV[1] .. id) == 1 then unindex_key_end(key_ends, id) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return existed
"#,
    )
});

/// KEYS: identity, key index, key names, key record. ARGV: key prefix, key JSON.
pub static CREATE_KEY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 'NOTFOUND' end
local identity = cjson.decode(raw)
if redis.call('EXISTS', KEYS[4]) == 1 then return 'CONFLICT' end
local key = cjson.decode(ARGV[2])
if holds_name(key) and key_name_taken(KEYS[3], ARGV[1], key.name, key.id) then return 'NAMETAKEN' end
redis.call('SET', KEYS[4], ARGV[2])
expire_at(KEYS[4], key_deadline(key, identity.expire_time))
index_key_end(key_ends, key, identity.expire_time)
redis.call('ZADD', KEYS[2], 0, key.id)
if holds_name(key) then redis.call('HSET', KEYS[3], key.name, key.id) end
expire_identity_indexes(KEYS[2], KEYS[3], identity.expire_time)
return 'OK'
"#,
    )
});

/// KEYS: identity, key index, key names, key record. ARGV: key prefix, new JSON,
/// expected revision. Mirrors `ApiKey::edited`: the record must be at the
/// expected revision and the edit must keep its grace fields.
pub static UPDATE_KEY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw_identity = redis.call('GET', KEYS[1])
local raw = redis.call('GET', KEYS[4])
if not raw or not raw_identity then return 'NOTFOUND' end
local current = cjson.decode(raw)
if current.revision ~= tonumber(ARGV[3]) then return 'CONFLICT' end
local key = cjson.decode(ARGV[2])
-- ApiKey::keeps_grace_of: only a roll may set these; an edit that differs
-- would move a grace deadline.
if key.grace_expire_time ~= current.grace_expire_time or key.rolled_to ~= current.rolled_to then
  return 'CONFLICT'
end
if holds_name(key) and key_name_taken(KEYS[3], ARGV[1], key.name, key.id) then return 'NAMETAKEN' end
if current.name ~= key.name and redis.call('HGET', KEYS[3], current.name) == key.id then
  redis.call('HDEL', KEYS[3], current.name)
end
if holds_name(key) then redis.call('HSET', KEYS[3], key.name, key.id) end
redis.call('SET', KEYS[4], ARGV[2])
local identity_expire = cjson.decode(raw_identity).expire_time
expire_at(KEYS[4], key_deadline(key, identity_expire))
index_key_end(key_ends, key, identity_expire)
expire_identity_indexes(KEYS[2], KEYS[3], identity_expire)
return 'OK'
"#,
    )
});

/// KEYS: key index, key names, key record, last use, usage. ARGV: key id,
/// key prefix. Returns 1 if it existed. The key's budget (its credits and
/// own rate limits) goes with it unless a key drawing on the same budget is
/// still alive; the rule and the field names are `ApiKey::budget_sharers`
/// and `domain::usage`'s.
pub static DELETE_KEY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw = redis.call('GET', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
if not raw then return 0 end
local key = cjson.decode(raw)
if redis.call('HGET', KEYS[2], key.name) == ARGV[1] then redis.call('HDEL', KEYS[2], key.name) end
redis.call('DEL', KEYS[3])
unindex_key_end(key_ends, ARGV[1])
local account = key.id
if type(key.usage_account) == 'string' then account = key.usage_account end
local shared = false
for _, other in ipairs({key.rolled_from, key.rolled_to, key.usage_account}) do
  if type(other) == 'string' and other ~= key.id and redis.call('EXISTS', ARGV[2] .. other) == 1 then
    shared = true
  end
end
if not shared then
  redis.call('HDEL', KEYS[5], 'credits:' .. account)
  for _, limit in ipairs(key.rate_limits or {}) do
    redis.call('HDEL', KEYS[5], 'rate:key:' .. account .. ':' .. limit.name)
  end
end
return 1
"#,
    )
});

/// KEYS: identity, key index, key names, old record, new record. ARGV: key
/// prefix, old key's new JSON, its expected revision, new key JSON. Mirrors
/// `ApiKey::rolled`: only a key at the expected revision that still holds its
/// name rolls, and it stays (at the next revision) only with a grace
/// deadline.
pub static ROLL_KEY: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw_identity = redis.call('GET', KEYS[1])
local raw = redis.call('GET', KEYS[4])
if not raw_identity or not raw then return 'NOTFOUND' end
local current = cjson.decode(raw)
if current.revision ~= tonumber(ARGV[3]) or not holds_name(current) then return 'CONFLICT' end
if redis.call('EXISTS', KEYS[5]) == 1 then return 'CONFLICT' end
local identity_expire = cjson.decode(raw_identity).expire_time
local old = cjson.decode(ARGV[2])
local new = cjson.decode(ARGV[4])
if type(old.grace_expire_time) == 'number' then
  redis.call('SET', KEYS[4], ARGV[2])
  expire_at(KEYS[4], key_deadline(old, identity_expire))
  index_key_end(key_ends, old, identity_expire)
else
  redis.call('DEL', KEYS[4])
  redis.call('ZREM', KEYS[2], old.id)
  unindex_key_end(key_ends, old.id)
end
redis.call('SET', KEYS[5], ARGV[4])
expire_at(KEYS[5], key_deadline(new, identity_expire))
index_key_end(key_ends, new, identity_expire)
redis.call('ZADD', KEYS[2], 0, new.id)
redis.call('HSET', KEYS[3], new.name, new.id)
expire_identity_indexes(KEYS[2], KEYS[3], identity_expire)
return 'OK'
"#,
    )
});

/// KEYS: identity names. ARGV: name, claiming id, the claim to write
/// (`<id>:<unix ms>`), and a claim judged stale (or ''). A claim is ours when
/// the name is free, already ours, or still holds exactly the stale claim.
/// Returns '' when the claim is ours, else the current claim.
pub static CLAIM_NAME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if not holder or holder == ARGV[4] or string.sub(holder, 1, #ARGV[2] + 1) == ARGV[2] .. ':' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return ''
end
return holder
"#,
    )
});

/// KEYS: identity names. ARGV: name, id. Removes the claim only if `id` holds it.
pub static RELEASE_NAME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder and string.sub(holder, 1, #ARGV[2] + 1) == ARGV[2] .. ':' then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#,
    )
});

/// KEYS: identity, totp. ARGV: record JSON. Refuses to replace a confirmed one.
pub static ENROLL_TOTP: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
local raw_identity = redis.call('GET', KEYS[1])
if not raw_identity then return 'NOTFOUND' end
local current = redis.call('GET', KEYS[2])
if current and cjson.decode(current).confirmed then return 'CONFLICT' end
redis.call('SET', KEYS[2], ARGV[1])
expire_at(KEYS[2], earliest(nil, cjson.decode(raw_identity).expire_time))
return 'OK'
"#,
    )
});

/// Redis's own clock in ms, so that the TOTP lockout does not rest on one
/// replica's clock alone (see `domain::totp::lockout_checked_at`).
const REDIS_NOW_MS: &str = r#"
local function redis_now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"#;

/// KEYS: totp. ARGV: step, confirm ('1' or '0'), now (ms). Replies OK,
/// REPLAYED, NOTENROLLED or LOCKED:<until ms>. The lockout is checked at the
/// earlier of `now` and Redis's clock. The Lua mirror of
/// `TotpRecord::accept_step` (read that first): same checks, same order.
pub static ACCEPT_TOTP_STEP: LazyLock<Script> = LazyLock::new(|| {
    audited(&format!(
        r#"{REDIS_NOW_MS}
local raw = redis.call('GET', KEYS[1])
if not raw then return 'NOTENROLLED' end
local totp = cjson.decode(raw)
if ARGV[2] ~= '1' and not totp.confirmed then return 'NOTENROLLED' end
local now = math.min(tonumber(ARGV[3]), redis_now_ms())
if type(totp.locked_until) == 'number' and totp.locked_until > now then
  return 'LOCKED:' .. string.format('%d', totp.locked_until)
end
if tonumber(ARGV[1]) <= totp.last_step then return 'REPLAYED' end
totp.last_step = tonumber(ARGV[1])
totp.failures = 0
totp.locked_until = cjson.null
if ARGV[2] == '1' then totp.confirmed = true end
redis.call('SET', KEYS[1], cjson.encode(totp), 'KEEPTTL')
return 'OK'
"#,
    ))
});

/// KEYS: totp. ARGV: the sealed seed read, the same seed re-sealed. Replaces
/// the first with the second only while it is still stored (mirrors
/// `TotpRecord::reseal`); returns 1 when it did, else 0.
pub static RESEAL_TOTP_SEED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local totp = cjson.decode(raw)
if totp.sealed_seed ~= ARGV[1] then return 0 end
totp.sealed_seed = ARGV[2]
redis.call('SET', KEYS[1], cjson.encode(totp), 'KEEPTTL')
return 1
"#,
    )
});

/// KEYS: totp. ARGV: now (ms), max failures, lockout (ms). Returns the
/// lockout's end when this failure starts one, else 0. A lockout starts at
/// the later of `now` and Redis's clock. The Lua mirror of
/// `TotpRecord::record_failure`.
pub static RECORD_TOTP_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{REDIS_NOW_MS}
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local totp = cjson.decode(raw)
totp.failures = totp.failures + 1
local locked = 0
if totp.failures >= tonumber(ARGV[2]) then
  totp.failures = 0
  locked = math.max(tonumber(ARGV[1]), redis_now_ms()) + tonumber(ARGV[3])
  totp.locked_until = locked
end
redis.call('SET', KEYS[1], cjson.encode(totp), 'KEEPTTL')
return locked
"#,
    ))
});

/// KEYS: identity, last use, key record. ARGV: key id, when (ms). Records a
/// later use of an existing key; the hash lives as long as the identity.
pub static RECORD_KEY_USE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
local deadline = redis.call('PEXPIRETIME', KEYS[1])
if deadline > 0 then redis.call('PEXPIREAT', KEYS[2], deadline) end
return 1
"#,
    )
});

/// KEYS: dataset record. ARGV: dataset JSON. Creates it unless it exists.
pub static CREATE_DATASET: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 'OK' end
return 'NAMETAKEN'
"#,
    )
});

/// KEYS: dataset record, its delete mark. Marks an existing dataset as
/// being deleted; returns 1 if it existed.
pub static BEGIN_DATASET_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], '1')
return 1
"#,
    )
});

/// KEYS: dataset record, its delete mark. Returns 1 if it existed.
pub static DELETE_DATASET: LazyLock<Script> = LazyLock::new(|| {
    audited(
        r#"
redis.call('DEL', KEYS[2])
return redis.call('DEL', KEYS[1])
"#,
    )
});

/// KEYS: identity record, usage, then the key records the charges name.
/// ARGV: the number of charges, then each charge in turn: its key record's
/// index in KEYS, the key's and the identity's revisions as read, cost,
/// credits field ('' for none), granted balance, granted_at, refill amount,
/// refill interval (0 for none), the number of limits, then each limit's
/// field, limit and duration (ms).
///
/// The Lua mirror of `domain::usage::settle` (read that first): it settles
/// Verify calls against their credits and limits atomically, at Redis's
/// clock, so replicas share one exact budget. The charges of one call are
/// several Verify calls of one identity coalesced (`store/redis/usage.rs`):
/// each is settled in turn exactly as a call of its own would be, reading
/// the states the charges before it left, at one instant. Each record and
/// each state is read once, and the changed states are written once.
/// Replies one answer per charge, in order: `{'STALE'}` when either record
/// changed since that Verify read it (nothing is charged; Verify reads
/// again), else `{status, retry_after_ms or -1, credits or -1, remaining,
/// reset_ms, ...}` with status `OK`, `RATE_LIMITED` or `USAGE_EXCEEDED`.
pub static CHARGE_USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{REDIS_NOW_MS}
-- A record's revision is its JSON's last member (records.rs's golden tests
-- and `revision_is_last` in usage.rs pin it): matched at the end, without
-- decoding the record, which would cost this hot script more than
-- everything else it does. The comparison is `domain::revision::admits`.
local function revision_of(raw)
  return raw and tonumber(string.match(string.sub(raw, -32), '"revision":(%d+)}}$')) or false
end
-- Every quantity is an integer below 2^53 (see domain::usage), so doubles
-- are exact; divmod corrects the rounding of the one division.
local function divmod(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then q = q - 1; r = r + b elseif r >= b then q = q + 1; r = r - b end
  return q, r
end
local function ceil_div(a, b)
  local q, r = divmod(a, b)
  if r > 0 then q = q + 1 end
  return q
end
-- A stored state: three numbers (a balance) or four (a limit's bucket).
local function numbers(text)
  if not text then return {{}} end
  local a, b, c, d = string.match(text, '^(%-?%d+) (%-?%d+) (%-?%d+) ?(%-?%d*)$')
  if not a then return {{}} end
  if d == '' then return {{tonumber(a), tonumber(b), tonumber(c)}} end
  return {{tonumber(a), tonumber(b), tonumber(c), tonumber(d)}}
end
local now = redis_now_ms()
local identity_revision = revision_of(redis.call('GET', KEYS[1]))
local key_revisions = {{}}
local function key_revision(index)
  local revision = key_revisions[index]
  if revision == nil then
    revision = revision_of(redis.call('GET', KEYS[index]))
    key_revisions[index] = revision
  end
  return revision
end
-- Each state is read once and then kept as its numbers: a charge sees what
-- the charges before it wrote, as it would have read it back from the map.
-- A kept state is replaced, never changed in place.
local states = {{}}
local changed, is_changed = {{}}, {{}}
local function state(field)
  local kept = states[field]
  if kept == nil then
    kept = numbers(redis.call('HGET', KEYS[2], field) or nil)
    states[field] = kept
  end
  return kept
end
local function keep(field, numbers_of)
  if not is_changed[field] then
    is_changed[field] = true
    changed[#changed + 1] = field
  end
  states[field] = numbers_of
end
-- Settles the charge whose arguments start at ARGV[at]; returns its answer
-- and where the next charge's arguments start.
local function charge(at)
  local count = tonumber(ARGV[at + 9])
  local next_at = at + 10 + 3 * count
  if key_revision(tonumber(ARGV[at])) ~= tonumber(ARGV[at + 1])
    or identity_revision ~= tonumber(ARGV[at + 2]) then
    return {{'STALE'}}, next_at
  end
  local cost = tonumber(ARGV[at + 3])
  local needed = math.max(cost, 1)
  local refusal = nil
  local retry = -1
  local attainable = true
  local balance = nil
  local credits_field = ARGV[at + 4]
  if credits_field ~= '' then
    local granted_at = tonumber(ARGV[at + 6])
    local amount, interval = tonumber(ARGV[at + 7]), tonumber(ARGV[at + 8])
    local stored = state(credits_field)
    if #stored == 3 and stored[3] >= granted_at then
      balance = {{stored[1], stored[2], stored[3]}}
    else
      balance = {{tonumber(ARGV[at + 5]), granted_at, granted_at}}
    end
    if interval > 0 and now - balance[2] >= interval then
      local periods = divmod(now - balance[2], interval)
      balance[2] = balance[2] + periods * interval
      if balance[1] < amount then balance[1] = amount end
    end
    if balance[1] < needed then
      refusal = 'USAGE_EXCEEDED'
      if interval > 0 and amount >= needed then
        retry = balance[2] + interval - now
      else
        attainable = false
      end
    end
  end
  local limits = {{}}
  for i = 0, count - 1 do
    local field = ARGV[at + 10 + 3 * i]
    local limit, duration = tonumber(ARGV[at + 11 + 3 * i]), tonumber(ARGV[at + 12 + 3 * i])
    local stored = state(field)
    local units = 0
    if #stored == 4 and stored[1] == limit and stored[2] == duration then
      units = math.max(0, (stored[3] - now) * limit + stored[4])
    end
    local capacity = limit * duration
    local wanted = units + needed * duration
    if needed > limit then attainable = false end
    if wanted > capacity and refusal ~= 'USAGE_EXCEEDED' then
      refusal = 'RATE_LIMITED'
      retry = math.max(retry, ceil_div(wanted - capacity, limit))
    end
    limits[#limits + 1] = {{field, limit, duration, units}}
  end
  if not attainable then retry = -1 end
  local reply = {{refusal or 'OK', retry, -1}}
  if balance then reply[3] = balance[1] end
  local function report(limit, units)
    reply[#reply + 1] = (divmod(math.max(0, limit[2] * limit[3] - units), limit[3]))
    reply[#reply + 1] = now + ceil_div(units, limit[2])
  end
  if refusal then
    for _, limit in ipairs(limits) do report(limit, limit[4]) end
    return reply, next_at
  end
  if balance then
    balance[1] = balance[1] - cost
    reply[3] = balance[1]
    keep(credits_field, balance)
  end
  for _, limit in ipairs(limits) do
    local after = limit[4] + cost * limit[3]
    local whole, rest = divmod(after, limit[2])
    keep(limit[1], {{limit[2], limit[3], now + whole, rest}})
    report(limit, after)
  end
  return reply, next_at
end
local replies = {{}}
local at = 2
for n = 1, tonumber(ARGV[1]) do
  replies[n], at = charge(at)
end
if #changed > 0 then
  local fresh = redis.call('EXISTS', KEYS[2]) == 0
  -- Bounded by the batch (usage.rs): far below unpack's limit.
  local writes = {{}}
  for _, field in ipairs(changed) do
    local kept = states[field]
    writes[#writes + 1] = field
    if #kept == 3 then
      writes[#writes + 1] = string.format('%d %d %d', kept[1], kept[2], kept[3])
    else
      writes[#writes + 1] = string.format('%d %d %d %d', kept[1], kept[2], kept[3], kept[4])
    end
  end
  redis.call('HSET', KEYS[2], unpack(writes))
  -- A new map lives as long as the identity (UPDATE_IDENTITY keeps it so).
  if fresh then
    local deadline = redis.call('PEXPIRETIME', KEYS[1])
    if deadline > 0 then redis.call('PEXPIREAT', KEYS[2], deadline) end
  end
end
return replies
"#,
    ))
});

/// KEYS: deadline index, audit stream. ARGV: member, its end (ms), event
/// JSON (empty under Cluster, where the caller appends it after the claim),
/// the stream's length bound. Claims the entry only if it still ends
/// exactly then, and appends the event with the claim: a replica that dies
/// between the two cannot lose the event or send it twice. Returns 1 when
/// claimed.
pub static RECORD_KEY_END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
end
return 1
"#,
    )
});

/// KEYS: deadline index, warning marker, audit stream. ARGV: member, its end
/// (ms), when the marker may go (ms), event JSON (empty under Cluster, where
/// the caller appends it), the stream's length bound. Appends the warning
/// once: only while the index still holds that end and no marker says it
/// was sent. Returns 1 when sent.
pub static RECORD_EXPIRY_WARNING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PXAT', ARGV[3]) then return 0 end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
end
return 1
"#,
    )
});

/// Under Cluster, KEYS: one identity's deadline index, its record. ARGV:
/// from, until (ms), limit. Replies {gone, due}: `due` the index's entries
/// from `from` to `until`, as member, score pairs, earliest first; `gone` 1
/// when the index is empty and the identity is gone, so that no write can
/// ever index a key of it again.
pub static IDENTITY_KEY_ENDS_DUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, ARGV[3])
local gone = 0
if #due == 0 and redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  gone = 1
end
return {gone, due}
"#,
    )
});

/// KEYS: identity, key index, deadline index. ARGV: key prefix. Writes the
/// index entry of each of the identity's live keys, exactly as a write of the
/// key would (for keys written before the index existed). Returns how many.
pub static INDEX_KEY_ENDS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{COMMON}
local raw_identity = redis.call('GET', KEYS[1])
if not raw_identity then return 0 end
local identity_expire = cjson.decode(raw_identity).expire_time
local indexed = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local raw = redis.call('GET', ARGV[1] .. id)
  if raw then
    index_key_end(KEYS[3], cjson.decode(raw), identity_expire)
    indexed = indexed + 1
  end
end
return indexed
"#,
    ))
});
