-- Issue an MFA code in one step: resend cooldown, hourly send cap, then replace the code record.
-- KEYS[1] code record (hash: d = HMAC digest, a = attempts, iat = issue time ms, st = live|used|burned,
--         s = hotcache.signing signature of d and iat, made in Python)
-- KEYS[2] resend cooldown marker    KEYS[3] sends in the current hour (counter)
-- ARGV: digest, issued_at_ms, ttl_ms, cooldown_ms, hourly_cap, hour_ms, signature
-- Returns {1, 0, '', bad} when issued, {0, retry_after_ms, 'cooldown'|'hourly_cap', bad} when refused;
-- bad is 'sends' when the send counter was not an integer counter (reset here; Python counts it as
-- tampered), else ''.
-- Every key carries a TTL; all three share one hash tag (one slot on Redis Cluster). No value read
-- here can make the script fail or hold a send back for longer than the configured windows.
local cooldown_ms, hour_ms = tonumber(ARGV[4]), tonumber(ARGV[6])
local bad = ''
local cooldown_left = redis.call('PTTL', KEYS[2])
if cooldown_left > cooldown_ms then
  -- Longer than any cooldown this script sets (a lowered setting, or a write from outside): cap it.
  redis.call('PEXPIRE', KEYS[2], math.max(cooldown_ms, 1))
  cooldown_left = cooldown_ms
end
if cooldown_left > 0 then
  return {0, cooldown_left, 'cooldown', bad}
end
local sends = 0
local stype = redis.call('TYPE', KEYS[3])['ok']
if stype == 'string' then
  local raw = redis.call('GET', KEYS[3])
  if string.match(raw, '^%d+$') then
    sends = tonumber(raw)
  else
    redis.call('DEL', KEYS[3])
    bad = 'sends'
  end
elseif stype ~= 'none' then
  redis.call('DEL', KEYS[3])
  bad = 'sends'
end
if sends >= tonumber(ARGV[5]) then
  local left = redis.call('PTTL', KEYS[3])
  if left < 0 or left > hour_ms then
    -- A counter without a TTL (or a longer one) cannot come from this script; repair it rather than block forever.
    redis.call('PEXPIRE', KEYS[3], hour_ms)
    left = hour_ms
  end
  return {0, left, 'hourly_cap', bad}
end
-- DEL first: the new record must not inherit attempts or a used/burned state from the old one.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'a', 0, 'iat', ARGV[2], 'st', 'live', 's', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if cooldown_ms > 0 then
  redis.call('SET', KEYS[2], '1', 'PX', cooldown_ms)
end
if redis.call('INCR', KEYS[3]) == 1 or redis.call('PTTL', KEYS[3]) < 0 then
  -- Fixed window from the first send of the hour.
  redis.call('PEXPIRE', KEYS[3], hour_ms)
end
return {1, 0, '', bad}
