-- Workbench save: compare-and-set of the session's sealed envelope, then write (one round trip).
-- The envelope (hash field m: version, incarnation token, owner, times, SHA-256 of the state) is built and
-- signed in Python from an envelope Python verified (the "base"). Lua cannot check signatures, so it takes
-- no decision of its own: it writes the next envelope only if the session still holds exactly the base
-- (byte for byte), or the creation envelope only if there is no session, and otherwise hands the current
-- envelope back for Python to verify and decide again.
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index (ZSET id -> hotcache clock time of the last refresh)
-- KEYS[3]: the recovery fence (set after a Redis outage in which sessions were saved on MongoDB)
-- ARGV: 1 state JSON, 2 base envelope, 3 next envelope ('' = none), 4 now, 5 the key's TTL (seconds) when
--       refreshed, 6 session id, 7 fence to set ('' = none), 8 fence ttl, 9 creation envelope ('' = must not
--       create), 10 refresh interval (seconds)
-- Returns {1} the next envelope written; {2} the session created; {0, current envelope} nothing written
-- ('' = no session, '!' = a key hotcache did not write); {-2, current envelope} when the session must first be
-- checked against its MongoDB copy (a recovery fence is up, or the session has no field t: a write of it that
-- Redis refused went to MongoDB, see _fence.py; or it was written before field t existed).
-- Billed, warm: GET (fence), HMGET, HSET; a creation adds the lifetime below (EXPIRE, ZADD, EXPIRE). The lifetime (EXPIRE, the index entry and its TTL, field t = when)
-- is refreshed only once the last refresh is ARGV[10] old:
-- the key's TTL is the idle timeout plus that interval, so a session still lives at least the idle timeout
-- after its last use, and the persister sees it idle within that interval of the truth.
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], ARGV[7], 'EX', ARGV[8])
end
local fence = redis.pcall('GET', KEYS[3])
if type(fence) == 'table' and fence.err then fence = '!' end
local row = redis.pcall('HMGET', KEYS[1], 'm', 'k', 't', 'v')
local cur
if row.err then
  cur, row = '!', {}
elseif row[1] and row[1] ~= '' then
  cur = row[1]
elseif row[1] or row[2] or row[3] or row[4] then
  cur = '!'  -- a hash without an envelope (v: the layout before envelopes, reconciled with its durable copy)
else
  -- No m, k, t or v: no session hotcache wrote (every save writes m and t, only m survives the flag of a
  -- refused write, and the layout before envelopes had v), so no EXISTS is paid on a creation. A hash holding
  -- only fields hotcache never wrote counts as no session: the creation writes s, m and t over it, as it would
  -- after that key was deleted (which signing cannot prevent either).
  cur = ''
end
if cur ~= '' and cur ~= '!' and ((fence and row[2] ~= fence) or not row[3]) then
  return {-2, cur}
end
local fields, status = {'s', ARGV[1]}, 0
if ARGV[3] ~= '' and cur == ARGV[2] then
  fields[3], fields[4], status = 'm', ARGV[3], 1
elseif ARGV[9] ~= '' and cur == '' then
  -- A new session (incarnation).
  fields[3], fields[4], status = 'm', ARGV[9], 2
  if fence then
    fields[5], fields[6] = 'k', fence
  end
else
  return {0, cur}
end
local now, t = tonumber(ARGV[4]), tonumber(row[3] or '')
if status == 1 and t and math.abs(now - t) < tonumber(ARGV[10]) then
  redis.call('HSET', KEYS[1], unpack(fields))
  return {status}
end
fields[#fields + 1] = 't'
fields[#fields + 1] = ARGV[4]
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
-- The index lives as long as the longest-lived session in it.
redis.call('EXPIRE', KEYS[2], ARGV[5] * 2)
return {status}
