-- Publish "MongoDB may hold live MFA codes until T" with max semantics (a smaller T never lowers it).
-- KEYS[1] the marker (a string: T in app-clock ms)    ARGV: T, ttl_ms (how long to keep the key)
-- Returns the marker's value after the call (the larger of the stored T and ARGV[1]), as a string.
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
