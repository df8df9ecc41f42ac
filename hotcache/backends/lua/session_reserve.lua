-- Reserve a session write (or invalidate a session): bump its version counter and delete its entry.
-- KEYS[1]: the session's entry; KEYS[2]: its version counter (same hash tag). ARGV[1]: ttl of the counter, s.
-- Returns {new version, reset (1 when the counter was not an integer counter and was restarted)}.
-- A save calls it inside the database transaction, after its UPDATE/INSERT holds the row: writers of one
-- session get versions in the order their database writes commit, and only the holder of the newest
-- version may publish (session_publish.lua). A delete calls it after the database delete: a fill or a
-- publish that started before can no longer write the session back.
local bumped = redis.pcall('INCR', KEYS[2])
local reset = 0
if type(bumped) == 'table' and bumped['err'] then
  -- Not an integer counter (only a write from outside hotcache makes that): restart it at the server's
  -- time in microseconds, a value no reader or writer can hold.
  local now = redis.call('TIME')
  bumped = tonumber(now[1]) * 1000000 + tonumber(now[2])
  redis.call('SET', KEYS[2], string.format('%d', bumped))
  reset = 1
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
redis.call('DEL', KEYS[1])
return {bumped, reset}
