-- Workbench import: bring a session saved on MongoDB during a Redis outage back into Redis, only if Redis
-- has no session under that id (a session created in Redis meanwhile wins; the MongoDB copy stays for history).
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index
-- ARGV: 1 state, 2 version, 3 owner, 4 token, 5 created, 6 updated, 7 now, 8 ttl, 9 session id
-- Returns 1 if imported, 0 if Redis already held a session.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', ARGV[2], 'o', ARGV[3], 'g', ARGV[4], 'c', ARGV[5], 'u', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[8] * 2)
return 1
