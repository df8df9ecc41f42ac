-- Workbench end: the session leaves the hot store and is queued for history, atomically.
-- The hash is renamed to an ended key of its own (immutable from now on), so the id is free for a new
-- session at once and the persister never races an editor on it.
-- KEYS[1]: the session hash  KEYS[2]: the last-seen index  KEYS[3]: the ended queue (ZSET member -> time)
-- KEYS[4]: the ended key for this end call
-- ARGV: 1 now, 2 ttl of the ended key, 3 queue member ("<session id>:<end token>"), 4 session id
-- Returns the ended version, or 0 when there was no session.
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[4])
redis.call('HSET', KEYS[4], 'e', ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return tonumber(v)
