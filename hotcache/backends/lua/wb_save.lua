-- Workbench save: compare-and-set of the session's sealed envelope, then write + index + TTL (one round trip).
-- The envelope (hash field m: version, incarnation token, owner, times, SHA-256 of the state) is built and
-- signed in Python from an envelope Python verified (the "base"). Lua cannot check signatures, so it takes
-- no decision of its own: it writes the next envelope only if the session still holds exactly the base
-- (byte for byte), or the creation envelope only if there is no session, and otherwise hands the current
-- envelope back for Python to verify and decide again.
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index (ZSET id -> hotcache clock time)
-- KEYS[3]: the recovery fence (set after a Redis outage in which sessions were saved on MongoDB)
-- ARGV: 1 state JSON, 2 base envelope, 3 next envelope ('' = none), 4 now, 5 ttl seconds, 6 session id,
--       7 fence to set ('' = none), 8 fence ttl, 9 creation envelope ('' = must not create)
-- Returns {1} the next envelope written; {2} the session created; {0, current envelope} nothing written
-- ('' = no session, '!' = a key hotcache did not write); {-2, current envelope} when the session must first be
-- checked against its MongoDB copy (a recovery fence is up).
-- '!' marks a key hotcache did not write: not a hash, or a hash without an envelope.
local function envelope(key)
  local m = redis.pcall('HGET', key, 'm')
  if type(m) == 'table' and m.err then return '!' end
  if m and m ~= '' then return m end
  if redis.call('EXISTS', key) == 1 then return '!' end
  return ''
end
local function fence_value(key)
  local f = redis.pcall('GET', key)
  if type(f) == 'table' and f.err then return '!' end
  return f
end
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[8])
end
local fence = fence_value(KEYS[3])
local cur = envelope(KEYS[1])
if fence and cur ~= '' and cur ~= '!' and redis.call('HGET', KEYS[1], 'k') ~= fence then
  return {-2, cur}
end
local written, status
if ARGV[3] ~= '' and cur == ARGV[2] then
  written, status = ARGV[3], 1
elseif ARGV[9] ~= '' and cur == '' then
  -- A new session (incarnation).
  if fence then redis.call('HSET', KEYS[1], 'k', fence) end
  written, status = ARGV[9], 2
else
  return {0, cur}
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'm', written)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
-- The index lives as long as the longest-lived session in it.
redis.call('EXPIRE', KEYS[2], ARGV[5] * 2)
return {status}
