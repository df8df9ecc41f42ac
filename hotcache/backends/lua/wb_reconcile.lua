-- Workbench recovery (after a Redis outage) and repair (after tampering): apply to one session the action
-- Python decided from the envelope it saw, only if the session still holds exactly that envelope, so a
-- concurrent save is never undone. Python built and sealed the envelope of a 'put' from workbench_active.
-- KEYS[1]: the session hash   KEYS[2]: the last-seen index   KEYS[3]: the session's ended records (wb_end.lua)
-- ARGV: 1 action, 2 fence ('' = none), 3 the envelope Python saw ('' = none, '!' = a key hotcache did not write),
--       4 new envelope ('put'), 5 state ('put'), 6 now (also field t: the lifetime's last refresh, see
--       wb_save.lua), 7 the key's TTL, 8 session id, 9 how many ended records Python read ('put'; '' = not read):
--       a 'put' is refused if an end ran since (Python found MongoDB's copy not ended, on what it read)
-- Actions:
--   'mark' : the Redis copy is current; remember it was checked under this fence; a copy without field t
--            (flagged for this check, see _fence.py) gets it back with its lifetime refreshed.
--   'drop' : delete the Redis copy (an incarnation ended on MongoDB during the outage, or a tampered copy).
--   'put'  : replace the Redis copy (none, older, or tampered) with MongoDB's.
-- Returns 1 if the action changed Redis, else 0.
-- '!' marks a key hotcache did not write: not a hash, or a hash without an envelope.
local function envelope(key)
  local m = redis.pcall('HGET', key, 'm')
  if type(m) == 'table' and m.err then return '!' end
  if m and m ~= '' then return m end
  if redis.call('EXISTS', key) == 1 then return '!' end
  return ''
end
local cur = envelope(KEYS[1])
if cur ~= ARGV[3] then
  return 0
end
if ARGV[1] == 'drop' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[8])
  return 1
end
if ARGV[1] == 'put' then
  if ARGV[9] ~= '' then
    local n = redis.pcall('HLEN', KEYS[3])
    if type(n) == 'table' then
      redis.call('DEL', KEYS[3])  -- not a hash (retyped by someone else): no records (Python read none either)
      n = 0
    end
    if n ~= tonumber(ARGV[9]) then
      return 0
    end
  end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 's', ARGV[5], 'm', ARGV[4], 't', ARGV[6])
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'k', ARGV[2])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[7] * 2)
  return 1
end
if cur ~= '' and cur ~= '!' then
  if redis.call('HEXISTS', KEYS[1], 't') == 0 then
    redis.call('HSET', KEYS[1], 't', ARGV[6])
    redis.call('EXPIRE', KEYS[1], ARGV[7])
    redis.call('ZADD', KEYS[2], ARGV[6], ARGV[8])
    redis.call('EXPIRE', KEYS[2], ARGV[7] * 2)
  end
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'k', ARGV[2])
  end
end
return 0
