-- Validate an API key and count one use in one step (hotcache.apikeys.check).
-- KEYS[1] <prefix>:{apikeys:<tag>}:meta          cached value, sealed by hotcache.signing: '<64 hex>.<body>' with
--                                                body a JSON key record, 'revoked' (tombstone) or 'unknown'
-- KEYS[2] <prefix>:{apikeys:<tag>}:n:<YYYYMMDD>   the day's count: this Redis's uses plus the base (below)
-- KEYS[3] <prefix>:{apikeys:<tag>}:w:<writer>     "<seq>:<now>[:u]": the last check this writer counted on the key
-- KEYS[4] <prefix>:{apikeys:<tag>}:base:<YYYYMMDD> uses counted on MongoDB while Redis was down (apikey_base.lua
--                                                adds what it raises to KEYS[2]; read here only when KEYS[2] is new)
-- KEYS[5] <prefix>:{apikeys:<tag>}:use:<YYYYMMDD> the previous layout's counter (uses only): folded into KEYS[2]
--                                                when KEYS[2] is new, then deleted
-- ARGV[1] now (epoch seconds, app clock: the same clock that names the day)
-- ARGV[2] counter TTL seconds (APIKEY_USAGE_RETENTION_DAYS days)
-- ARGV[3] value to cache first ('' = none: the warm path); ARGV[4] its TTL seconds
-- ARGV[5] writer id (process nonce:thread, also in KEYS[3]); ARGV[6] this check's sequence number (grows per
-- process); ARGV[7] TTL seconds of KEYS[3] (hotcache.apikeys._TOKEN_TTL)
-- ARGV[8] (optional) a value Python found unsigned: a tombstone equal to it is replaced by ARGV[3] as well
-- Returns {status, used, meta, first, note, time}: status is miss | revoked | unknown | expired | over | stale | ok |
-- old (a record past its 'u', the Redis time until which it may be used: a replay) | bad (the cached value is
-- unreadable) | badcount (a counter is not an integer: nothing was done); meta is the
-- cached value the decision used ('' when there is none or it is over 4096 bytes); first is 1 when this call
-- created the day's counter (the caller then adds the key to the day's touched index, which lives in another
-- hash slot and so cannot be written here on Redis Cluster), else 0; note names records found malformed
-- ('use' / 'base' / 'old' with badcount, 'tok' when a malformed writer record was dropped); time is Redis's clock
-- (seconds) when this call read it (statuses miss, bad, old and records near their 'u'), else 0.
-- Billed, warm: GET meta, INCR, SET ... GET (the writer record's old value): 3 commands plus the EVALSHA. The
-- writes' own errors (WRONGTYPE, not an integer), caught by pcall, stand in for type and shape guards.
-- Lua cannot check an HMAC: Python verifies the returned meta and corrects what this script did under a value
-- it did not sign. Every read tolerates values of any type or shape (never a script error, never a partial write).
local MAX_META = 4096
local SKEW = 60 -- seconds: a record whose 'u' is this close on the app clock is compared on Redis's clock (TIME)
local rnow = nil
local note = ''

local function redis_time()
  if not rnow then
    rnow = tonumber(redis.call('TIME')[1])
  end
  return rnow
end

local function reply(status, used, meta, first)
  return {status, used, meta, first, note, rnow or 0}
end

-- A count as stored: 0 when absent, nil when it is not a whole number of at most 18 digits.
local function parsed(v)
  if v == false then
    return 0
  end
  local digits = type(v) == 'string' and string.match(v, '^(%d+)$')
  if not digits or #digits > 18 then
    return nil
  end
  return tonumber(v)
end

-- An error a write's pcall caught: the key's type or value (someone else's record: false is returned, the
-- caller treats the record as malformed) or the server refusing the write (out of memory, read-only: raised,
-- as redis.call would have, so the caller falls back as on any outage and nothing is reported as tampered).
local function record_error(e)
  if type(e) ~= 'table' then
    return false
  end
  local msg = tostring(e.err)
  if string.sub(msg, 1, 9) == 'WRONGTYPE' or string.find(msg, 'not an integer', 1, true)
      or string.find(msg, 'overflow', 1, true) then
    return true
  end
  error(e)
end

local function tombstone(v)
  return type(v) == 'string' and #v == 72 and string.sub(v, 65) == '.revoked'
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
  redis_time()
  return reply('miss', 0, '', 0)
end
if not meta or #meta > MAX_META or string.sub(meta, 65, 65) ~= '.' then
  redis_time()
  return reply('bad', 0, (meta and #meta <= MAX_META) and meta or '', 0)
end
local body = string.sub(meta, 66)
if body == 'revoked' or body == 'unknown' then
  return reply(body, 0, meta, 0)
end
local decoded, m = pcall(cjson.decode, body)
if not decoded or type(m) ~= 'table' then
  redis_time()
  return reply('bad', 0, meta, 0)
end
local now = tonumber(ARGV[1])
-- Redis's TTL drops a record at least SKEW seconds before its 'u' (on Redis's clock): one read that close to it
-- (or past it) on the app clock is checked on Redis's clock; past it there, it was written back (or its TTL changed).
if type(m.u) == 'number' and m.u <= now + SKEW and m.u <= redis_time() then
  return reply('old', 0, meta, 0)
end
if type(m.exp) == 'number' and now >= m.exp then
  return reply('expired', 0, meta, 0)
end

-- Count first: the script is atomic, so an INCR taken back below is never seen by anyone.
local n = redis.pcall('INCR', KEYS[2])
record_error(n)
if type(n) ~= 'number' or n < 1 then
  -- Not an integer (or not a string), or negative (hotcache never leaves one so): nothing was done.
  if type(n) == 'number' then
    redis.call('DECR', KEYS[2])
  end
  note = 'use'
  return reply('badcount', 0, '', 0)
end
local first = 0
if n == 1 then
  -- A new day's count: it starts from the base and from the previous layout's counter (an upgrade).
  local base, old = parsed(redis.pcall('GET', KEYS[4])), parsed(redis.pcall('GET', KEYS[5]))
  if not base or not old then
    redis.call('DEL', KEYS[2])
    note = (base and '' or 'base ') .. (old and '' or 'old')
    return reply('badcount', 0, '', 0)
  end
  if base + old > 0 then
    n = redis.call('INCRBY', KEYS[2], base + old)
  end
  if old > 0 then
    redis.call('DEL', KEYS[5])
  end
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  first = 1
end
if type(m.limit) == 'number' and n > m.limit then
  redis.call('DECR', KEYS[2])
  return reply('over', n - 1, meta, 0)
end

-- A check whose reply was lost is resolved later (apikey_resolve.lua); one arriving after that must not count.
local seq = tonumber(ARGV[6])
local tok_ttl = tonumber(ARGV[7])
local prev = redis.pcall('SET', KEYS[3], ARGV[6] .. ':' .. math.floor(now), 'EX', tok_ttl, 'GET')
if record_error(prev) then
  -- Not a string: nothing of ours is in it.
  redis.call('DEL', KEYS[3])
  redis.call('SET', KEYS[3], ARGV[6] .. ':' .. math.floor(now), 'EX', tok_ttl)
  prev = false
  note = 'tok'
end
if prev then
  local s = string.match(prev, '^(%d+)')
  if s and #s <= 15 and tonumber(s) >= seq then
    redis.call('SET', KEYS[3], prev, 'EX', tok_ttl)
    redis.call('DECR', KEYS[2])
    return reply('stale', 0, '', 0)
  end
  if not s or #s > 15 then
    note = 'tok'
  end
end
return reply('ok', n, meta, first)
