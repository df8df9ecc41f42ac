-- Workbench save: version check + write + index update + TTL, atomically (one round trip).
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index (ZSET session id -> hotcache clock time)
-- KEYS[3]: the recovery fence (set after a Redis outage in which sessions were saved on MongoDB)
-- ARGV: 1 state JSON, 2 expected version ('' = any; '0' = must not exist), 3 owner ('' = keep),
--       4 now (hotcache clock), 5 ttl seconds, 6 new incarnation token, 7 session id,
--       8 fence to set ('' = none), 9 fence ttl
-- Returns {new version, created (1/0), token, created time, owner} or {-1, current version} on a version
-- conflict, or {-2, current version} when the session must first be checked against its MongoDB copy.
if ARGV[8] ~= '' then
  redis.call('SET', KEYS[3], ARGV[8], 'EX', ARGV[9])
end
local fence = redis.call('GET', KEYS[3])
local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if fence and cur > 0 and redis.call('HGET', KEYS[1], 'k') ~= fence then
  return {-2, cur}
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= cur then
  return {-1, cur}
end
local nv = cur + 1
if cur == 0 then
  -- A new incarnation: its token keys the history record, so a reused id never collides with an old one.
  redis.call('HSET', KEYS[1], 'g', ARGV[6], 'c', ARGV[4], 'o', ARGV[3])
  if fence then redis.call('HSET', KEYS[1], 'k', fence) end
elseif ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'o', ARGV[3])
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', nv, 'u', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[7])
-- The index lives as long as the longest-lived session in it.
redis.call('EXPIRE', KEYS[2], ARGV[5] * 2)
local row = redis.call('HMGET', KEYS[1], 'g', 'c', 'o')
if cur == 0 then return {nv, 1, row[1], row[2], row[3]} end
return {nv, 0, row[1], row[2], row[3]}
