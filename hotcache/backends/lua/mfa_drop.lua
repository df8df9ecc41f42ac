-- Undo what mfa_verify.lua did to a code record that Python then found forged (its signature failed),
-- or burn a record an issue whose reply was lost may have written (ARGV[2] '0': nothing to give back).
-- KEYS[1] the user's hash for this purpose (see mfa_issue.lua)
-- ARGV: the forged record's signature (as mfa_verify.lua returned it), 1 if the verify counted a failure
-- Removes the record's fields only if it still is that record (a new code issued meanwhile is kept; the
-- cooldown and send window stay), and gives back the failure the forged record cost the user.
-- Returns 1 if the record was removed, else 0. Runs only after tampering or a lost reply, never on the normal path.
local sig = redis.pcall('HGET', KEYS[1], 's')
if type(sig) ~= 'string' or sig ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[1], 'd', 'a', 'iat', 'st', 's')
if ARGV[2] == '1' then
  local failures = tonumber(redis.call('HGET', KEYS[1], 'f') or '')
  if failures and failures > 0 then
    redis.call('HSET', KEYS[1], 'f', failures - 1)
  end
end
return 1
