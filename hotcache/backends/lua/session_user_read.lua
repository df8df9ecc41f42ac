-- The session and its user in one round trip (standalone Redis; docs/sessions.md, "The combined read").
-- KEYS[1]: the session's entry; KEYS[2]: its version counter. ARGV[1]: the key prefix.
-- Returns {entry, version, u, user entry, user version}: the session's two values as MGET gives them, and,
-- when the entry names a user key part `u` that is a plain key segment, that user's entry and version
-- (``<prefix>:{users:<u>}:u`` and ``:v``, hotcache.users' keys). Nothing is trusted here: the caller
-- verifies the session entry's seal, compares its `u` with this one, and verifies the user entry's own seal.
-- The user keys are not in KEYS (derived from the entry), so this script is for a single server only.
local values = redis.call('MGET', KEYS[1], KEYS[2])
local entry = values[1]
if not entry then
  return {false, values[2], false, false, false}
end
local ok, body = pcall(cjson.decode, string.sub(entry, 66))
local u = ok and type(body) == 'table' and body.u or nil
if type(u) ~= 'string' or not string.match(u, '^[%w_%.@%+%-]+$') or #u > 64 then
  return {entry, values[2], false, false, false}
end
local head = ARGV[1] .. ':{users:' .. u .. '}:'
local user = redis.call('MGET', head .. 'u', head .. 'v')
return {entry, values[2], u, user[1], user[2]}
