-- Workbench end: the session leaves the hot store and is queued for history, atomically.
-- The hash is renamed to an ended key of its own (immutable from now on), so the id is free for a new
-- session at once and the persister never races an editor on it. Python verifies the envelope returned.
-- KEYS[1]: the session hash  KEYS[2]: the last-seen index  KEYS[3]: the ended queue (ZSET member -> time)
-- KEYS[4]: the ended key for this end call   KEYS[5]: the recovery fence
-- KEYS[6]: the session's ended record ("gone" hash: queue member -> the envelope ended), read by the recovery
--          check so that a durable copy of an ended incarnation, written late by another process, is never
--          brought back (see _durable.py)
-- ARGV: 1 now, 2 ttl of the ended key, 3 queue member ("<session id>:<end token>"), 4 session id,
--       5 fence to set ('' = none), 6 fence ttl, 7 the sealed end record (hash field e of the ended key),
--       8 '1' = write the ended record (durable saves on), '' = not
-- Returns {1, envelope, state} ended (Python verifies both: what it ended must reach history); {0} no session; {-1, '!'} a key hotcache did not write (not a hash, or a
-- hash without an envelope): nothing ended; {-2, envelope} when the session must first be checked against
-- its MongoDB copy (a recovery fence is up, or the session has no field t: see wb_save.lua).
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6])
end
local row = redis.pcall('HMGET', KEYS[1], 'm', 's', 't')
if row.err then
  return {-1, '!'}
end
local cur = row[1]
if not cur or cur == '' then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
  return {-1, '!'}
end
local fence = redis.pcall('GET', KEYS[5])
if type(fence) == 'table' and fence.err then fence = '!' end
if not row[3] or (fence and redis.call('HGET', KEYS[1], 'k') ~= fence) then
  return {-2, cur}
end
redis.call('RENAME', KEYS[1], KEYS[4])
redis.call('HSET', KEYS[4], 'e', ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if ARGV[8] == '1' then
  if type(redis.pcall('HSET', KEYS[6], ARGV[3], cur)) == 'table' then
    -- Not a hash (someone else retyped it): replaced, as deleting it would.
    redis.call('DEL', KEYS[6])
    redis.call('HSET', KEYS[6], ARGV[3], cur)
  end
  redis.call('EXPIRE', KEYS[6], ARGV[2])
end
return {1, cur, row[2] or ''}
