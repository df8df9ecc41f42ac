-- Workbench load: read the session and extend its idle lifetime (one round trip).
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index
-- ARGV: 1 now (hotcache clock), 2 ttl seconds, 3 session id
-- Returns {state, version, owner, token, created, updated} or false when there is no session.
local row = redis.call('HMGET', KEYS[1], 's', 'v', 'o', 'g', 'c', 'u')
if not row[2] then
  return false
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2] * 2)
return row
