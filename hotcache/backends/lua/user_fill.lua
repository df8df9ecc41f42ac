-- Write a cached user back only if no invalidation happened since the reader looked.
-- KEYS[1]: the cached user entry; KEYS[2]: the user's version counter (same hash tag).
-- ARGV[1]: the version the reader saw ("" when the counter did not exist); ARGV[2]: entry; ARGV[3]: ttl s.
-- An invalidation INCRs the counter, so a load that started before it carries an old version and is
-- dropped here: a stale write-back can never resurrect data an invalidation removed.
local current = redis.call('GET', KEYS[2]) or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
