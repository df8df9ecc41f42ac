-- Take the sync lock: SET with this run's sealed value and PX, if it is free; else say what holds it.
-- KEYS[1] lock  ARGV[1] this run's value (sealed with hotcache.signing)  ARGV[2] timeout (ms)
-- ARGV[3] '' or what Python found in the lock and refused as not written by hotcache: the lock is taken
--         over only if it still holds exactly that value ('!' for a key of the wrong type), so a lock that
--         another run took in the meantime is never stolen
-- Returns {1} taken, or {0, value ('' if not a string), PTTL in ms (-1: no expiry), type}.
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' then
  local value = ''
  if t == 'string' then
    value = redis.call('GET', KEYS[1])
  end
  local refused = ARGV[3] ~= '' and ((t == 'string' and value == ARGV[3]) or (t ~= 'string' and ARGV[3] == '!'))
  if not refused then
    return {0, value, redis.call('PTTL', KEYS[1]), t}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
