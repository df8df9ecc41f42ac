-- Count one analytics event: the hour counter (event, path) and the day's distinct visitors, in one call.
-- KEYS[1] live hour hash  KEYS[2] hour index (zset)  KEYS[3] HLL of the event's day  KEYS[4] HLL of the
-- day's overflow event  KEYS[5] set of the day's events  KEYS[6] day index (zset)  KEYS[7] the writer's
-- last applied token (one string per writer: process nonce and thread)
-- ARGV: 1 field "<event>\t<path>", 2 overflow field "<event>\t(other)", 3 global overflow "(other)\t(other)",
--       4 count, 5 counter cap, 6 overflow slack, 7 ttl, 8 hour label, 9 hour start (epoch),
--       10 visitor digest ('' = none), 11 event, 12 events-per-day cap, 13 day label, 14 day start (epoch),
--       15 this call's token, 16 '1' = resolving an in-doubt call: apply only if KEYS[7] does not hold the token
-- Returns {counter overflow level 0|1|2, visitor overflow 0|1, 1 if skipped as already applied else 0}.
local ttl = tonumber(ARGV[7])
if ARGV[16] == '1' and redis.call('GET', KEYS[7]) == ARGV[15] then
  return {0, 0, 1}
end
local field = ARGV[1]
local level = 0
-- Cardinality cap: a new (event, path) beyond the cap goes to the event's "(other)" path; past a small
-- slack of those, to one global overflow field. So an hour hash never holds more than cap + slack + 1 fields.
if redis.call('HEXISTS', KEYS[1], field) == 0 then
  local n = redis.call('HLEN', KEYS[1])
  local cap = tonumber(ARGV[5])
  if n >= cap then
    field = ARGV[2]
    level = 1
    if redis.call('HEXISTS', KEYS[1], field) == 0 and n >= cap + tonumber(ARGV[6]) then
      field = ARGV[3]
      level = 2
    end
  end
end
redis.call('HINCRBY', KEYS[1], field, ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
-- The hour index lets the sync find live hours without KEYS/SCAN.
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[8])
redis.call('EXPIRE', KEYS[2], ttl)
local vover = 0
if ARGV[10] ~= '' then
  local hll = KEYS[3]
  local event = ARGV[11]
  if redis.call('SISMEMBER', KEYS[5], event) == 0 and redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[12]) then
    hll = KEYS[4]
    event = '(other)'
    vover = 1
  end
  redis.call('SADD', KEYS[5], event)
  redis.call('EXPIRE', KEYS[5], ttl)
  redis.call('PFADD', hll, ARGV[10])
  redis.call('EXPIRE', hll, ttl)
  redis.call('ZADD', KEYS[6], ARGV[14], ARGV[13])
  redis.call('EXPIRE', KEYS[6], ttl)
end
-- Exactly once at the reply-lost edge: the writer's token says whether this call was applied.
redis.call('SET', KEYS[7], ARGV[15], 'EX', ttl)
return {level, vover, 0}
