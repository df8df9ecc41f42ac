-- Workbench persister, step 1 (claim): take up to ARGV[5] sessions for run ARGV[4], atomically.
-- First stale claims of crashed or failed runs (claimed before ARGV[3]), then ended sessions, then
-- sessions idle since before ARGV[2]. A claimed member sits in the claims ZSET (score = claim time)
-- with its owner run in the owners hash; it leaves the ended queue / the index in the same script,
-- so a claim is never orphaned and two runs never hold the same member.
-- KEYS: 1 index, 2 ended queue, 3 claims ZSET, 4 owners HASH
-- ARGV: 1 now, 2 idle cutoff, 3 stale-claim cutoff, 4 run id, 5 limit, 6 ttl for the queue keys
-- Members returned: "e:<id>:<token>" (ended) and "i:<id>" (idle).
local limit = tonumber(ARGV[5])
local out = {}
local function take(m)
  redis.call('ZADD', KEYS[3], ARGV[1], m)
  redis.call('HSET', KEYS[4], m, ARGV[4])
  out[#out + 1] = m
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, limit)) do
  take(m)
end
if #out < limit then
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '+inf', 'LIMIT', 0, limit - #out)) do
    redis.call('ZREM', KEYS[2], m)
    take('e:' .. m)
  end
end
if #out < limit then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, limit - #out)) do
    redis.call('ZREM', KEYS[1], id)
    take('i:' .. id)
  end
end
if #out > 0 then
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
end
return out
