-- Raise one API key's per-day "counted on MongoDB" base (never lower it: a stale reader cannot undo a newer value).
-- KEYS[1] <prefix>:{apikeys:<digest>}:base:<YYYYMMDD>; ARGV[1] the MongoDB count; ARGV[2] TTL seconds.
local n = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > cur then
  redis.call('SET', KEYS[1], n, 'EX', tonumber(ARGV[2]))
  return 1
end
return 0
