-- Workbench load: read the session and extend its idle lifetime (one round trip).
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index   KEYS[3]: the recovery fence
-- ARGV: 1 now (hotcache clock), 2 ttl seconds, 3 session id, 4 fence to set ('' = none), 5 fence ttl
-- Returns {state, version, owner, token, created, updated, check} or false when there is no session;
-- check = 1 when a recovery fence is up and this session was not compared with its MongoDB copy under it.
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
end
local row = redis.call('HMGET', KEYS[1], 's', 'v', 'o', 'g', 'c', 'u', 'k')
if not row[2] then
  return false
end
local fence = redis.call('GET', KEYS[3])
local check = 0
if fence and row[7] ~= fence then
  check = 1
end
row[7] = check
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2] * 2)
return row
