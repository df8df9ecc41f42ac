-- Validate an API key and count one use in one step (hotcache.apikeys.check).
-- KEYS[1] <prefix>:{apikeys:<tag>}:meta          cached value, sealed by hotcache.signing: '<64 hex>.<body>' with
--                                                body a JSON key record, 'revoked' (tombstone) or 'unknown'
-- KEYS[2] <prefix>:{apikeys:<tag>}:use:<YYYYMMDD> today's counter (this Redis's share of the day)
-- KEYS[3] <prefix>:{apikeys:<tag>}:base:<YYYYMMDD> uses counted on MongoDB while Redis was down
-- KEYS[4] <prefix>:{apikeys:<tag>}:tok           writer -> "<seq>:<now>": the last check INCRed per writer
-- ARGV[1] now (epoch seconds, app clock: the same clock that names the day)
-- ARGV[2] counter TTL seconds (APIKEY_USAGE_RETENTION_DAYS days)
-- ARGV[3] value to cache first ('' = none: the warm path); ARGV[4] its TTL seconds
-- ARGV[5] writer id (process nonce:thread); ARGV[6] this check's sequence number (grows per process);
-- ARGV[7] TTL seconds of the writer fields (hotcache.apikeys._TOKEN_TTL)
-- ARGV[8] (optional) a value Python found unsigned: a tombstone equal to it is replaced by ARGV[3] as well
-- Returns {status, used, meta, first, note, time}: status is miss | revoked | unknown | expired | over | stale | ok |
-- old (a record past its 'u', the Redis time until which it may be used: a replay) | bad (the cached value is
-- unreadable) | badcount (a counter is not an integer: nothing was done); meta is the
-- cached value the decision used ('' when there is none or it is over 4096 bytes); first is 1 when this call
-- created the day's counter (the caller then adds the key to the day's touched index, which lives in another
-- hash slot and so cannot be written here on Redis Cluster), else 0; note names records found malformed
-- ('use' / 'base' with badcount, 'tok' when a malformed writer record was dropped); time is Redis's clock
-- (seconds), from which Python dates the 'u' of the record it caches next.
-- Lua cannot check an HMAC: Python verifies the returned meta and corrects what this script did under a value
-- it did not sign. Every read tolerates values of any type or shape (never a script error, never a partial write).
local MAX_META = 4096
local rnow = tonumber(redis.call('TIME')[1])
local note = ''

local function reply(status, used, meta, first)
  return {status, used, meta, first, note, rnow}
end

-- A counter's value: 0 when absent, nil when it is not a whole number of at most 18 digits (so INCR cannot
-- overflow; hotcache never leaves one negative).
local function count(key)
  local v = redis.pcall('GET', key)
  if v == false then
    return 0
  end
  local digits = type(v) == 'string' and string.match(v, '^(%d+)$')
  if not digits or #digits > 18 then
    return nil
  end
  return tonumber(v)
end

local function tombstone(v)
  return type(v) == 'string' and #v == 72 and string.sub(v, 65) == '.revoked'
end

local use, base = count(KEYS[2]), count(KEYS[3])
if not use or not base then
  note = (use and '' or 'use ') .. (base and '' or 'base')
  return reply('badcount', 0, '', 0)
end

-- A check whose reply was lost is resolved later (apikey_resolve.lua); one arriving after that must not count.
local seq = tonumber(ARGV[6])
local prev = redis.pcall('HGET', KEYS[4], ARGV[5])
if type(prev) == 'table' then
  -- Not a hash: nothing of ours is left in it.
  redis.call('DEL', KEYS[4])
  prev = false
  note = 'tok'
end
if prev then
  local s = string.match(prev, '^(%d+)')
  if s and #s <= 15 and tonumber(s) >= seq then
    return reply('stale', 0, '', 0)
  end
  if not s or #s > 15 then
    note = 'tok'
  end
end

local stored = redis.pcall('GET', KEYS[1])
local meta = nil
if type(stored) == 'string' then
  meta = stored
end
if ARGV[3] ~= '' and (not tombstone(meta) or meta == ARGV[8]) then
  -- A revocation tombstone wins over a record read from MongoDB before the revocation landed.
  redis.call('SET', KEYS[1], ARGV[3], 'EX', tonumber(ARGV[4]))
  meta = ARGV[3]
  stored = meta
end
if stored == false then
  return reply('miss', 0, '', 0)
end
if not meta or #meta > MAX_META or string.sub(meta, 65, 65) ~= '.' then
  return reply('bad', 0, (meta and #meta <= MAX_META) and meta or '', 0)
end
local body = string.sub(meta, 66)
if body == 'revoked' or body == 'unknown' then
  return reply(body, 0, meta, 0)
end
local decoded, m = pcall(cjson.decode, body)
if not decoded or type(m) ~= 'table' then
  return reply('bad', 0, meta, 0)
end
if type(m.u) == 'number' and m.u <= rnow then
  -- Redis's TTL drops a record before its 'u': this one was written back after that (or its TTL was changed).
  return reply('old', 0, meta, 0)
end
local now = tonumber(ARGV[1])
if type(m.exp) == 'number' and now >= m.exp then
  return reply('expired', 0, meta, 0)
end
local used = use + base
if type(m.limit) == 'number' and used >= m.limit then
  return reply('over', used, meta, 0)
end
local n = redis.call('INCR', KEYS[2])
local first = 0
if n == 1 then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  first = 1
end
local tok_ttl = tonumber(ARGV[7])
if redis.call('HSET', KEYS[4], ARGV[5], ARGV[6] .. ':' .. math.floor(now)) == 1 and redis.call('HLEN', KEYS[4]) > 32 then
  -- A new writer: drop the fields of writers silent for longer than their TTL (processes gone, threads ended).
  local all = redis.call('HGETALL', KEYS[4])
  for i = 1, #all, 2 do
    local t = tonumber(string.match(all[i + 1], '^%d+:(%d+)'))
    if t and t < now - tok_ttl then
      redis.call('HDEL', KEYS[4], all[i])
    end
  end
end
redis.call('EXPIRE', KEYS[4], tok_ttl)
return reply('ok', n + base, meta, first)
