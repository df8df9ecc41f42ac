-- Publish a saved session: store its entry only if no later write or delete reserved the session since.
-- KEYS[1]: the session's entry; KEYS[2]: its version counter. ARGV[1]: the version session_reserve.lua
-- gave this save; ARGV[2]: the sealed entry; ARGV[3]: its ttl, s (the session's expiry age).
-- Returns 1 when stored, 0 when a newer write or a delete owns the session (its entry stays absent or newer).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
