-- Claim hour counters for the sync: RENAME each live hour hash to its pending batch key and record the
-- batch in the pending set, in one script, so a claimed batch can never be orphaned (renamed but unlisted).
-- KEYS[1] hour index (zset)  KEYS[2] pending set  then pairs KEYS[2i+1] live hour hash, KEYS[2i+2] pending key
-- ARGV[1] ttl; then pairs ARGV[2i] hour label, ARGV[2i+1] batch id
-- Returns every pending batch id (this run's claims and leftovers of earlier runs).
local ttl = tonumber(ARGV[1])
local pairs_n = (#KEYS - 2) / 2
for i = 1, pairs_n do
  local live = KEYS[2 * i + 1]
  local pending = KEYS[2 * i + 2]
  if redis.call('EXISTS', live) == 1 then
    redis.call('RENAME', live, pending)
    redis.call('EXPIRE', pending, ttl)
    redis.call('SADD', KEYS[2], ARGV[2 * i + 1])
  end
  -- A late event re-creates the live key and re-adds the hour to the index (track does both atomically).
  redis.call('ZREM', KEYS[1], ARGV[2 * i])
end
if redis.call('SCARD', KEYS[2]) > 0 then
  redis.call('EXPIRE', KEYS[2], ttl)
end
return redis.call('SMEMBERS', KEYS[2])
