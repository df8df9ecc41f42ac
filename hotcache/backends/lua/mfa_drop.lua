-- Undo what mfa_verify.lua did to a code record that Python then found forged (its signature failed),
-- or burn a record an issue whose reply was lost may have written (ARGV[2] '0': nothing to give back).
-- KEYS[1] the code record    KEYS[2] the user's failures in the current window
-- ARGV: the forged record's signature (as mfa_verify.lua returned it), 1 if the verify counted a failure
-- Deletes the record only if it still is that record (a new code issued meanwhile is kept), and gives
-- back the failure the forged record cost the user. Returns 1 if the record was deleted, else 0.
-- Runs only after tampering or a lost reply, never on the normal path.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' or redis.call('HGET', KEYS[1], 's') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' and redis.call('TYPE', KEYS[2])['ok'] == 'string' then
  local failures = tonumber(redis.call('GET', KEYS[2]) or '')
  if failures and failures > 0 then
    redis.call('DECR', KEYS[2])
  end
end
return 1
