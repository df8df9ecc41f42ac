-- Count one analytics event: the hour counter (event, path) and the day's distinct visitors, in one call.
-- KEYS[1] live hour hash  KEYS[2] hour index (zset)  KEYS[3] HLL of the event's day  KEYS[4] HLL of the
-- day's overflow event  KEYS[5] set of the day's events  KEYS[6] day index (zset)  KEYS[7] the writer's
-- last applied token (one string per writer: process nonce and thread)
-- ARGV: 1 field "<event>\t<path>", 2 overflow field "<event>\t(other)", 3 global overflow "(other)\t(other)",
--       4 count, 5 counter cap, 6 overflow slack, 7 ttl, 8 hour label, 9 hour start (epoch),
--       10 visitor digest ('' = none), 11 event, 12 events-per-day cap, 13 day label, 14 day start (epoch),
--       15 this call's token, sealed with hotcache.signing (only Python can make one),
--       16 '1' = resolving an in-doubt call: apply it only if KEYS[7] shows it was not applied,
--       17 the writer's previous sealed token ('' = none), 18 '1' = KEYS[7] may be missing (no previous
--       token, or it may have expired)
-- Returns {counter overflow level 0|1|2, visitor overflow 0|1, outcome, repaired, the writer key's value}
--   outcome: 0 applied, 1 skipped (the call in doubt was applied: KEYS[7] holds its token), 2 refused (KEYS[7]
--   holds neither its token nor the previous one: someone else wrote it; applied or not cannot be told)
--   repaired: bit mask of what held a value this script never writes, reset before use (Redis keeps no
--   signature on counters; Python counts each as tampered): 1, 2, 4, 8, 16, 32 KEYS[1]..KEYS[6] of the
--   wrong type (or a corrupt HyperLogLog), 64 KEYS[7] of the wrong type when resolving, 128 the counter
--   was not a positive integer
local repaired = 0
-- A key of the wrong type (hotcache never writes one) would make a command fail half-way through the
-- script, and every later call with it. The first command on each key runs with pcall: on an error the key
-- is deleted, reported in ``repaired``, and the command runs again. No extra command on the normal path.
local function first(bit, command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply['err'] then
    redis.call('DEL', key)
    repaired = repaired + bit
    reply = redis.call(command, key, ...)
  end
  return reply
end
local ttl = tonumber(ARGV[7])
if ARGV[16] == '1' then
  local cur = first(64, 'GET', KEYS[7])
  if cur == ARGV[15] then
    return {0, 0, 1, repaired, ''}
  end
  local previous = cur and ARGV[17] ~= '' and cur == ARGV[17]
  local missing = (not cur) and ARGV[18] == '1' and repaired == 0
  if not (previous or missing) then
    return {0, 0, 2, repaired, cur or ''}
  end
end
local field = ARGV[1]
local level = 0
-- Cardinality cap: a new (event, path) beyond the cap goes to the event's "(other)" path; past a small
-- slack of those, to one global overflow field. So an hour hash never holds more than cap + slack + 1 fields.
if first(1, 'HEXISTS', KEYS[1], field) == 0 then
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
local count = tonumber(ARGV[4])
local total = redis.pcall('HINCRBY', KEYS[1], field, count)
if type(total) ~= 'number' or total < count then
  -- Not an integer, about to overflow, or below zero before this call: not a value hotcache wrote.
  redis.call('HSET', KEYS[1], field, count)
  repaired = repaired + 128
end
redis.call('EXPIRE', KEYS[1], ttl)
-- The hour index lets the sync find live hours without KEYS/SCAN.
first(2, 'ZADD', KEYS[2], ARGV[9], ARGV[8])
redis.call('EXPIRE', KEYS[2], ttl)
local vover = 0
if ARGV[10] ~= '' then
  local hll = KEYS[3]
  local bit = 4
  local event = ARGV[11]
  if first(16, 'SISMEMBER', KEYS[5], event) == 0 and redis.call('SCARD', KEYS[5]) >= tonumber(ARGV[12]) then
    hll = KEYS[4]
    bit = 8
    event = '(other)'
    vover = 1
  end
  redis.call('SADD', KEYS[5], event)
  redis.call('EXPIRE', KEYS[5], ttl)
  -- Also a string that is not a HyperLogLog (or a corrupt one): the day's count of this event starts afresh.
  first(bit, 'PFADD', hll, ARGV[10])
  redis.call('EXPIRE', hll, ttl)
  first(32, 'ZADD', KEYS[6], ARGV[14], ARGV[13])
  redis.call('EXPIRE', KEYS[6], ttl)
end
-- Exactly once at the reply-lost edge: the writer's token says whether this call was applied (SET replaces
-- a value of any type).
redis.call('SET', KEYS[7], ARGV[15], 'EX', ttl)
return {level, vover, 0, repaired, ''}
