-- Workbench end: the session leaves the hot store and is queued for history, atomically.
-- The hash is renamed to an ended key of its own (immutable from now on), so the id is free for a new
-- session at once and the persister never races an editor on it.
-- KEYS[1]: the session hash  KEYS[2]: the last-seen index  KEYS[3]: the ended queue (ZSET member -> time)
-- KEYS[4]: the ended key for this end call   KEYS[5]: the recovery fence
-- ARGV: 1 now, 2 ttl of the ended key, 3 queue member ("<session id>:<end token>"), 4 session id,
--       5 fence to set ('' = none), 6 fence ttl
-- Returns {ended version, token}, {0} when there was no session, or {-2} when the session must first be
-- checked against its MongoDB copy (a recovery fence is up).
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6])
end
local row = redis.call('HMGET', KEYS[1], 'v', 'g', 'k')
local v = row[1]
if not v then
  return {0}
end
local fence = redis.call('GET', KEYS[5])
if fence and row[3] ~= fence then
  return {-2}
end
redis.call('RENAME', KEYS[1], KEYS[4])
redis.call('HSET', KEYS[4], 'e', ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return {tonumber(v), row[2]}
