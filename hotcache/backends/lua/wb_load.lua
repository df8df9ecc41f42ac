-- Workbench load: read the session and extend its idle lifetime (one round trip).
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index   KEYS[3]: the recovery fence
-- ARGV: 1 now (hotcache clock), 2 ttl seconds, 3 session id, 4 fence to set ('' = none), 5 fence ttl
-- Returns false when there is no session, else {state, envelope, check}: Python verifies the envelope (hash
-- field m, sealed) and the state against it; envelope '!' = a key hotcache did not write (not a hash, or a
-- hash without an envelope).
-- check = 1 when a recovery fence is up and this session was not compared with its MongoDB copy under it.
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
end
local row = redis.pcall('HMGET', KEYS[1], 's', 'm', 'k')
if row.err then
  return {'', '!', 0}
end
if not row[1] and not row[2] and redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local fence = redis.pcall('GET', KEYS[3])
if type(fence) == 'table' and fence.err then fence = '!' end
local check = 0
if fence and row[3] ~= fence then
  check = 1
end
-- ZADD is the first write: a full Redis (maxmemory, noeviction) refuses it, and with it the whole load, which
-- then reads the durable copy. EXPIRE first would let the load through (Redis stops a script only before its
-- first write) and serve this copy while another process's save, refused here, went to MongoDB.
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2] * 2)
if not row[2] or row[2] == '' then row[2] = '!' end
return {row[1] or '', row[2], check}
