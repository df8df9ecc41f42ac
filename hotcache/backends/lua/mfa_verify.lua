-- Verify and consume an MFA code in one atomic step.
-- KEYS[1] code record (hash, see mfa_issue.lua)    KEYS[2] the user's failures in the current window
-- ARGV: digest, max_attempts, user_failure_limit, window_ms
-- Returns {status, iat, n, d, s, bad}:
--   'capped'  n = ms until the user's failure window ends (the code is left alone)
--   'missing' no record (never issued, expired, replaced by nothing, or not a record this script wrote)
--   'used' / 'burned'  the record is a tombstone of a consumed / burned code (kept until the code's
--             own expiry so a replayed code, or an older code in MongoDB, cannot succeed)
--   'ok'      the code matched and is now consumed
--   'invalid' n = attempts left;  'burned_now' this wrong guess used the last attempt
-- d and s are the record's digest and signature: Lua cannot check an HMAC, so Python verifies s over
-- (d, iat) for every status that used the record, and undoes what this script did to a forged one.
-- bad lists what was malformed and repaired here ('fails', 'record'), so Python counts it as tampered:
-- a value written from outside hotcache never makes the script fail (that would send the call to MongoDB).
local bad = ''
local failures = 0
local ftype = redis.call('TYPE', KEYS[2])['ok']
if ftype == 'string' then
  local raw = redis.call('GET', KEYS[2])
  if string.match(raw, '^%d+$') then
    failures = tonumber(raw)
  else
    redis.call('DEL', KEYS[2])
    bad = 'fails'
  end
elseif ftype ~= 'none' then
  redis.call('DEL', KEYS[2])
  bad = 'fails'
end
local window = tonumber(ARGV[4])
if failures >= tonumber(ARGV[3]) then
  local left = redis.call('PTTL', KEYS[2])
  if left < 0 or left > window then
    -- Not a window this script started: bound it to one window.
    redis.call('PEXPIRE', KEYS[2], window)
    left = window
  end
  return {'capped', '', left, '', '', bad}
end
local rtype = redis.call('TYPE', KEYS[1])['ok']
if rtype == 'none' then
  return {'missing', '', 0, '', '', bad}
end
local rec = rtype == 'hash' and redis.call('HMGET', KEYS[1], 'd', 'a', 'iat', 'st', 's') or {}
local stored, attempts, iat, state, sig = rec[1], rec[2], rec[3], rec[4], rec[5]
if not (stored and sig and iat and string.match(iat, '^%d+$') and attempts and string.match(attempts, '^%d+$')
        and (state == 'live' or state == 'used' or state == 'burned')) then
  -- Not a record mfa_issue.lua wrote: absent. Deleted, so it cannot be counted against anyone.
  redis.call('DEL', KEYS[1])
  return {'missing', '', 0, '', '', bad .. ' record'}
end
if state ~= 'live' then
  return {state, iat, 0, stored, sig, bad}
end
-- Constant-time comparison: no early exit, no data-dependent branch per byte.
local given = ARGV[1]
local diff = math.abs(#stored - #given)
for i = 1, #given do
  diff = diff + math.abs((string.byte(stored, i) or 0) - string.byte(given, i))
end
if diff == 0 then
  -- Consume: the tombstone (digest and signature kept, so Python can still authenticate its issue
  -- time) stays until the record's TTL runs out.
  redis.call('HSET', KEYS[1], 'st', 'used')
  return {'ok', iat, 0, stored, sig, bad}
end
local tried = redis.call('HINCRBY', KEYS[1], 'a', 1)
if redis.call('INCR', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], window)
end
local left = tonumber(ARGV[2]) - tried
if left <= 0 then
  redis.call('HSET', KEYS[1], 'st', 'burned')
  return {'burned_now', iat, 0, stored, sig, bad}
end
return {'invalid', iat, left, stored, sig, bad}
