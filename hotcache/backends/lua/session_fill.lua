-- Write back a session loaded from the database after a miss, only if nothing changed since the miss.
-- KEYS[1]: the session's entry; KEYS[2]: its version counter. ARGV[1]: the version the reader saw ("" when
-- there was none); ARGV[2]: the sealed entry; ARGV[3]: its ttl, s.
-- Returns 1 when stored. A save or delete since the miss bumped the version (refused); a save that
-- published meanwhile holds the entry (NX: a fill never replaces an entry, which is always as new or newer).
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then
  return 0
end
if redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]), 'NX') then
  return 1
end
return 0
