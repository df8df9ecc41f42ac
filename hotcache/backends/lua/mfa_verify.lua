-- Verify and consume an MFA code in one atomic step.
-- KEYS[1] the user's hash for this purpose (see mfa_issue.lua): the code record and the failure window
-- ARGV: digest, max_attempts, user_failure_limit, window_ms, now (app-clock ms), ttl_ms
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
-- Billed: HMGET, then one HSET when something changes (a guess, a repair). A record past iat + ttl is
-- expired whatever the key's TTL (the key lives longer: it also holds the windows); its fields are removed.
-- A record written by the layout before (d/a/iat/st/s alone, TTL = the code's) reads the same.
local now, window = tonumber(ARGV[5]), tonumber(ARGV[4])
local bad = ''
local row = redis.pcall('HMGET', KEYS[1], 'f', 'fw', 'd', 'a', 'iat', 'st', 's')
if row.err then
  redis.call('DEL', KEYS[1])
  return {'missing', '', 0, '', '', 'record'}
end
local failures, fw = row[1], row[2]
local fix = {}
if failures or fw then
  failures = failures and string.match(failures, '^%d+$') and #failures < 16 and tonumber(failures)
  fw = fw and string.match(fw, '^%d+$') and #fw < 16 and tonumber(fw)
  if not failures or (row[2] and not fw) then
    bad, failures, fw = 'fails', 0, nil
    fix = {'f', 0, 'fw', 0}
  end
end
failures = failures or 0
if fw and fw <= now then
  failures, fw = 0, nil
elseif failures > 0 and (not fw or fw > now + window) then
  -- Not a window this script opened: bound it to one window from now.
  fw = now + window
  fix = {'f', failures, 'fw', fw}
end
if failures >= tonumber(ARGV[3]) then
  if #fix > 0 then redis.call('HSET', KEYS[1], unpack(fix)) end
  return {'capped', '', fw - now, '', '', bad}
end
local stored, attempts, iat, state, sig = row[3], row[4], row[5], row[6], row[7]
if not (stored or attempts or iat or state or sig) then
  if #fix > 0 then redis.call('HSET', KEYS[1], unpack(fix)) end
  return {'missing', '', 0, '', '', bad}
end
if not (stored and sig and iat and string.match(iat, '^%d+$') and #iat < 16 and attempts
        and string.match(attempts, '^%d+$') and (state == 'live' or state == 'used' or state == 'burned')) then
  -- Not a record mfa_issue.lua wrote: absent. Removed, so it cannot be counted against anyone.
  redis.call('HDEL', KEYS[1], 'd', 'a', 'iat', 'st', 's')
  if #fix > 0 then redis.call('HSET', KEYS[1], unpack(fix)) end
  return {'missing', '', 0, '', '', bad .. ' record'}
end
if tonumber(iat) + tonumber(ARGV[6]) <= now then
  -- The code's lifetime is over (the key may live on for its windows).
  redis.call('HDEL', KEYS[1], 'd', 'a', 'iat', 'st', 's')
  if #fix > 0 then redis.call('HSET', KEYS[1], unpack(fix)) end
  return {'missing', '', 0, '', '', bad}
end
if state ~= 'live' then
  if #fix > 0 then redis.call('HSET', KEYS[1], unpack(fix)) end
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
  -- time) stays until the code's lifetime is over.
  fix[#fix + 1] = 'st'
  fix[#fix + 1] = 'used'
  redis.call('HSET', KEYS[1], unpack(fix))
  return {'ok', iat, 0, stored, sig, bad}
end
local tried = tonumber(attempts) + 1
if not fw then fw = now + window end  -- a new failure window (the key outlives it: see mfa_issue.lua)
local left = tonumber(ARGV[2]) - tried
redis.call('HSET', KEYS[1], 'a', tried, 'f', failures + 1, 'fw', fw, 'st', left <= 0 and 'burned' or 'live')
if left <= 0 then
  return {'burned_now', iat, 0, stored, sig, bad}
end
return {'invalid', iat, left, stored, sig, bad}
