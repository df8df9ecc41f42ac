-- Write a cached user back only if no invalidation happened since the reader looked.
-- KEYS[1]: the cached user entry; KEYS[2]: the user's version counter (same hash tag).
-- ARGV[1]: the version the reader saw ("" when the counter did not exist); ARGV[2]: entry; ARGV[3]: ttl s;
-- ARGV[4]: ttl of the version counter, s.
-- Returns {stored (1 | 0), replaced ("" | "entry:<type>" | "version:<type>")}.
-- An invalidation INCRs the counter, so a load that started before it carries an old version and is
-- dropped here: a stale write-back can never resurrect data an invalidation removed.
-- Keys of the wrong type are only made by writes from outside hotcache: the script replaces them
-- (GET would fail on them) and says so, and Python counts them as tampered.
-- Billed, warm: EVALSHA, GET (version), SET (entry): the types are learnt from the commands' own WRONGTYPE
-- errors (pcall), so TYPE runs only on a key of the wrong type.
local current = redis.pcall('GET', KEYS[2])
if type(current) == 'table' and current['err'] then
  local vtype = redis.call('TYPE', KEYS[2])['ok']
  -- A fresh counter value (server time in microseconds) that no reader can have seen.
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])), 'EX', tonumber(ARGV[4]))
  return {0, 'version:' .. vtype}
end
if (current or '') ~= ARGV[1] then
  return {0, ''}
end
-- SET ... GET refuses (WRONGTYPE, nothing written) when the entry's key holds another type.
local old = redis.pcall('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]), 'GET')
if type(old) == 'table' and old['err'] then
  local etype = redis.call('TYPE', KEYS[1])['ok']
  redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
  return {1, 'entry:' .. etype}
end
return {1, ''}
