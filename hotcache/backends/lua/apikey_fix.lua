-- Repair an API key's day counters that are not integers (hotcache.apikeys: a tampered store). Values that are
-- integers are left alone, so a concurrent check's INCR is never overwritten; idempotent.
-- KEYS[1] <prefix>:{apikeys:<tag>}:use:<YYYYMMDD>; KEYS[2] <prefix>:{apikeys:<tag>}:base:<YYYYMMDD>
-- ARGV[1] floor for the counter (MongoDB's last synced copy of it); ARGV[2] the base (MongoDB's own count);
-- ARGV[3] TTL seconds. Returns the number of keys replaced.
local fixed = 0
for i = 1, 2 do
  local raw = redis.pcall('GET', KEYS[i])
  if raw ~= false then
    local digits = type(raw) == 'string' and string.match(raw, '^(%d+)$')
    if not digits or #digits > 18 then
      redis.call('SET', KEYS[i], ARGV[i], 'EX', tonumber(ARGV[3]))
      fixed = fixed + 1
    end
  end
end
return fixed
