-- Workbench recovery after a Redis outage: bring one session's Redis copy in line with its MongoDB copy.
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index
-- ARGV: 1 action, 2 fence ('' = none), 3 token, 4 version, 5 state, 6 owner, 7 created, 8 updated,
--       9 now, 10 ttl, 11 session id
-- Actions:
--   'mark' : the Redis copy is current; remember it was checked under this fence.
--   'drop' : the session was ended on MongoDB during the outage: delete the Redis copy if it is that
--            incarnation (token) at that version or older.
--   'put'  : MongoDB has a newer version of the same incarnation (or Redis has none): write it,
--            unless Redis holds a different incarnation or a version at least as new.
-- Returns 1 if the action changed Redis, else 0.
local cur = redis.call('HMGET', KEYS[1], 'v', 'g')
local function mark()
  if cur[1] and ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'k', ARGV[2])
  end
end
if ARGV[1] == 'drop' then
  if cur[1] and cur[2] == ARGV[3] and tonumber(cur[1]) <= tonumber(ARGV[4]) then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[11])
    return 1
  end
  mark()
  return 0
end
if ARGV[1] == 'put' and (not cur[1] or (cur[2] == ARGV[3] and tonumber(cur[1]) < tonumber(ARGV[4]))) then
  redis.call('HSET', KEYS[1], 's', ARGV[5], 'v', ARGV[4], 'o', ARGV[6], 'g', ARGV[3], 'c', ARGV[7], 'u', ARGV[8])
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'k', ARGV[2])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[10])
  redis.call('ZADD', KEYS[2], ARGV[9], ARGV[11])
  redis.call('EXPIRE', KEYS[2], ARGV[10] * 2)
  return 1
end
mark()
return 0
