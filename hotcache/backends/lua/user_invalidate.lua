-- Invalidate cached users: bump each version counter, delete each entry, in one command.
-- KEYS: pairs (entry, version) for each user. ARGV[1]: ttl of the version counter in seconds.
-- The counter outlives any entry and any in-flight load by far (a day), so a load that read it can
-- never see it vanish and come back with the same value (which would let a stale write-back through).
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ttl)
  redis.call('DEL', KEYS[i])
end
return #KEYS / 2
