-- Publish "MongoDB may hold live MFA codes until T" with max semantics (a smaller T never lowers it).
-- KEYS[1] the marker (a hotcache.signing record: '<signature>.<T in app-clock ms>')
-- ARGV: the sealed marker, T, ttl_ms (how long to keep the key)
-- Returns the marker's value after the call (the stored one when its T is larger, else ARGV[1]).
-- Lua cannot check the signature: Python verifies what this returns and overwrites a forged marker.
-- A value that is not '<hex>.<digits>' (or not a string) is replaced here.
local current = nil
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  current = redis.call('GET', KEYS[1])
end
local stored = current and tonumber(string.match(current, '^%x+%.(%d+)$'))
if stored and stored >= tonumber(ARGV[2]) then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return ARGV[1]
