-- Verify and consume an MFA code in one atomic step.
-- KEYS[1] code record (hash, see mfa_issue.lua)    KEYS[2] the user's failures in the current window
-- ARGV: digest, max_attempts, user_failure_limit, window_ms
-- Returns {status, iat, n}:
--   'capped'  n = ms until the user's failure window ends (the code is left alone)
--   'missing' no record (never issued, expired, or replaced by nothing)
--   'used' / 'burned'  the record is a tombstone of a consumed / burned code (kept until the code's
--             own expiry so a replayed code, or an older code in MongoDB, cannot succeed)
--   'ok'      the code matched and is now consumed
--   'invalid' n = attempts left;  'burned_now' this wrong guess used the last attempt
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures >= tonumber(ARGV[3]) then
  return {'capped', '', redis.call('PTTL', KEYS[2])}
end
local rec = redis.call('HMGET', KEYS[1], 'd', 'a', 'iat', 'st')
local stored, iat, state = rec[1], rec[3], rec[4]
if not iat then
  return {'missing', '', 0}
end
if state ~= 'live' or not stored then
  return {state == 'burned' and 'burned' or 'used', iat, 0}
end
-- Constant-time comparison: no early exit, no data-dependent branch per byte.
local given = ARGV[1]
local diff = math.abs(#stored - #given)
for i = 1, #given do
  diff = diff + math.abs((string.byte(stored, i) or 0) - string.byte(given, i))
end
if diff == 0 then
  -- Consume: drop the digest, keep the tombstone until the record's TTL runs out.
  redis.call('HDEL', KEYS[1], 'd')
  redis.call('HSET', KEYS[1], 'st', 'used')
  return {'ok', iat, 0}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
if redis.call('INCR', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
local left = tonumber(ARGV[2]) - attempts
if left <= 0 then
  redis.call('HDEL', KEYS[1], 'd')
  redis.call('HSET', KEYS[1], 'st', 'burned')
  return {'burned_now', iat, 0}
end
return {'invalid', iat, left}
