-- Issue an MFA code in one step: resend cooldown, hourly send cap, then replace the code record.
-- KEYS[1] code record (hash: d = HMAC digest, a = attempts, iat = issue time ms, st = live|used|burned)
-- KEYS[2] resend cooldown marker    KEYS[3] sends in the current hour (counter)
-- ARGV: digest, issued_at_ms, ttl_ms, cooldown_ms, hourly_cap, hour_ms
-- Returns {1, 0} when issued, {0, retry_after_ms, 'cooldown'|'hourly_cap'} when refused.
-- Every key carries a TTL; all three share one hash tag (one slot on Redis Cluster).
local cooldown_left = redis.call('PTTL', KEYS[2])
if cooldown_left > 0 then
  return {0, cooldown_left, 'cooldown'}
end
local sends = tonumber(redis.call('GET', KEYS[3]) or '0')
if sends >= tonumber(ARGV[5]) then
  local left = redis.call('PTTL', KEYS[3])
  if left < 0 then
    -- A counter without a TTL cannot happen through this script; repair it rather than block forever.
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
    left = tonumber(ARGV[6])
  end
  return {0, left, 'hourly_cap'}
end
-- DEL first: the new record must not inherit attempts or a used/burned state from the old one.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'a', 0, 'iat', ARGV[2], 'st', 'live')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
end
if redis.call('INCR', KEYS[3]) == 1 then
  -- Fixed window from the first send of the hour.
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return {1, 0}
