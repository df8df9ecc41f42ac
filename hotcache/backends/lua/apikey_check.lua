-- Validate an API key and count one use in one step (hotcache.apikeys.check).
-- KEYS[1] <prefix>:{apikeys:<digest>}:meta          cached key record (JSON), or 'revoked' / 'unknown'
-- KEYS[2] <prefix>:{apikeys:<digest>}:use:<YYYYMMDD> today's counter (this Redis's share of the day)
-- KEYS[3] <prefix>:{apikeys:<digest>}:base:<YYYYMMDD> uses counted on MongoDB while Redis was down
-- ARGV[1] now (epoch seconds, app clock: the same clock that names the day)
-- ARGV[2] counter TTL seconds (APIKEY_USAGE_RETENTION_DAYS days)
-- KEYS[4] <prefix>:{apikeys:<digest>}:tok           writer -> "<seq>:<now>": the last check INCRed per writer
-- ARGV[3] record to cache first ('' = none: the warm path); ARGV[4] its TTL seconds
-- ARGV[5] writer id (process nonce:thread); ARGV[6] this check's sequence number (grows per process);
-- ARGV[7] TTL seconds of the writer fields (hotcache.apikeys._TOKEN_TTL)
-- Returns {status, used, record, first}: status is miss | revoked | unknown | expired | over | stale | ok; first is 1
-- when this call created the day's counter (the caller then adds the key to the day's touched index, which
-- lives in another hash slot and so cannot be written here on Redis Cluster), else 0.
local meta = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' then
  -- A revocation tombstone wins over a record read from MongoDB before the revocation landed.
  if meta ~= 'revoked' then
    redis.call('SET', KEYS[1], ARGV[3], 'EX', tonumber(ARGV[4]))
    meta = ARGV[3]
  end
end
if not meta then
  return {'miss', 0, '', 0}
end
if meta == 'revoked' or meta == 'unknown' then
  return {meta, 0, '', 0}
end
local m = cjson.decode(meta)
local now = tonumber(ARGV[1])
if type(m.exp) == 'number' and now >= m.exp then
  return {'expired', 0, '', 0}
end
local base = tonumber(redis.call('GET', KEYS[3]) or '0')
local used = tonumber(redis.call('GET', KEYS[2]) or '0') + base
if type(m.limit) == 'number' and used >= m.limit then
  return {'over', used, meta, 0}
end
-- A check whose reply was lost is resolved later (apikey_resolve.lua); one arriving after that must not count.
local seq = tonumber(ARGV[6])
local prev = redis.call('HGET', KEYS[4], ARGV[5])
if prev and tonumber(string.match(prev, '^%d+')) >= seq then
  return {'stale', used, meta, 0}
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
return {'ok', n + base, meta, first}
