-- Settle one API key check whose reply was lost (hotcache.apikeys: "checks in doubt"). Idempotent: run it
-- again (its own reply lost) and it changes nothing more.
-- KEYS[1] <prefix>:{apikeys:<digest>}:use:<YYYYMMDD> the check's day counter
-- KEYS[2] <prefix>:{apikeys:<digest>}:tok            writer -> "<seq>:<time>[:u]"
-- ARGV[1] writer id; ARGV[2] the check's sequence number; ARGV[3] '1' when the request was allowed (answered
-- from MongoDB), '0' when it was refused; ARGV[4] counter TTL seconds; ARGV[5] now; ARGV[6] writer-field TTL
-- Returns {outcome, first}: outcome is 'applied' (the check counted it: nothing to do), 'counted' (it did not:
-- counted now), 'undone' (it counted a refused request: taken back) or 'none' (not counted, not allowed);
-- first is 1 when counting now created the day's counter.
local seq = tonumber(ARGV[2])
local prev = redis.call('HGET', KEYS[2], ARGV[1])
local prev_seq = prev and tonumber(string.match(prev, '^%d+')) or -1
local mark = ARGV[2] .. ':' .. math.floor(tonumber(ARGV[5]))
local first = 0
local outcome = 'none'
if ARGV[3] == '1' then
  if prev_seq >= seq then
    return {'applied', 0}
  end
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
    first = 1
  end
  outcome = 'counted'
elseif prev_seq == seq and not string.find(prev, ':u$') then
  redis.call('DECR', KEYS[1])
  mark = mark .. ':u'
  outcome = 'undone'
elseif prev_seq >= seq then
  return {'none', 0}
end
-- Record the sequence so the lost check, should it still arrive, is refused as stale.
redis.call('HSET', KEYS[2], ARGV[1], mark)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return {outcome, first}
