-- Repair an API key's day counters that are not integers (hotcache.apikeys: a tampered store). Values that are
-- integers are left alone, so a concurrent check's INCR is never overwritten; idempotent.
-- KEYS[1] <prefix>:{apikeys:<tag>}:n:<YYYYMMDD> (the day's count, base included);
-- KEYS[2] <prefix>:{apikeys:<tag>}:base:<YYYYMMDD>; KEYS[3] <prefix>:{apikeys:<tag>}:use:<YYYYMMDD> (the previous
-- layout's counter: when it is not an integer, deleted and KEYS[1] created from the floor if absent)
-- ARGV[1] floor of this Redis's uses (MongoDB's last synced copy of them); ARGV[2] the base (MongoDB's own count);
-- ARGV[3] TTL seconds. Returns the names of the keys replaced ('use', 'base', 'old').
local function bad(key)
  local raw = redis.pcall('GET', key)
  if raw == false then
    return false
  end
  local digits = type(raw) == 'string' and string.match(raw, '^(%d+)$')
  return not digits or #digits > 18
end
local fixed = {}
local ttl = tonumber(ARGV[3])
if bad(KEYS[2]) then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ttl)
  fixed[#fixed + 1] = 'base'
end
if bad(KEYS[1]) then
  redis.call('SET', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), 'EX', ttl)
  fixed[#fixed + 1] = 'use'
end
if bad(KEYS[3]) then
  -- The previous layout's uses restart from MongoDB's copy of them, in a new count (when there is none yet).
  redis.call('DEL', KEYS[3])
  redis.call('SET', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), 'EX', ttl, 'NX')
  fixed[#fixed + 1] = 'old'
end
return fixed
