-- Workbench persister, on a failed run: make this run's claims stale at once (score 0), so the next run
-- recovers them without waiting for the claim timeout. Claims owned by another run are left alone.
-- KEYS: 1 claims ZSET, 2 owners HASH      ARGV: 1 run id, then members
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 0, ARGV[i])
    n = n + 1
  end
end
return n
