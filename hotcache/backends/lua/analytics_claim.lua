-- Claim hour counters for the sync: RENAME each live hour hash to its pending batch key, put the batch's
-- sealed marker in it and record the batch in the pending set, in one script, so a claimed batch can never
-- be orphaned (renamed but unlisted) nor exist without the marker that says which batch and hour it is.
-- KEYS[1] hour index (zset)  KEYS[2] pending set  then pairs KEYS[2i+1] live hour hash, KEYS[2i+2] pending key
-- ARGV[1] ttl, ARGV[2] the marker's field name; then triples ARGV[3i] hour label, ARGV[3i+1] batch id,
-- ARGV[3i+2] the batch's marker (sealed with hotcache.signing in Python: the script cannot verify it)
-- Returns {keys of the wrong type that were deleted, every pending batch id (this run's claims and leftovers
-- of earlier runs)}.
local ttl = tonumber(ARGV[1])
local repaired = 0
-- A key of the wrong type was not written by hotcache and would stop every sync here: delete it, report it.
local function usable(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    redis.call('DEL', key)
    repaired = repaired + 1
    return false
  end
  return t == kind
end
usable(KEYS[1], 'zset')
usable(KEYS[2], 'set')
local pairs_n = (#KEYS - 2) / 2
for i = 1, pairs_n do
  local live = KEYS[2 * i + 1]
  local pending = KEYS[2 * i + 2]
  if usable(live, 'hash') then
    redis.call('RENAME', live, pending)
    redis.call('HSET', pending, ARGV[2], ARGV[3 * i + 2])
    redis.call('EXPIRE', pending, ttl)
    redis.call('SADD', KEYS[2], ARGV[3 * i + 1])
  end
  -- A late event re-creates the live key and re-adds the hour to the index (track does both atomically).
  redis.call('ZREM', KEYS[1], ARGV[3 * i])
end
if redis.call('SCARD', KEYS[2]) > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
return {repaired, redis.call('SMEMBERS', KEYS[2])}
