-- Count analytics events: hour counters (event, path) and the day's distinct visitors, for one event (track)
-- or a process's batch of an interval (ANALYTICS_BATCH_SECONDS), in one call, exactly once per writer token.
-- Billed cost on the warm path: HINCRBY per counter, PFADD per (hour, event) with visitors (+ the marks' HINCRBY
-- the first time a writer sends that (hour, event)), one SET.
-- What only a new field, hour or day needs (cap check, TTLs, indexes, the day's event set) runs only then, and
-- once per call and hour for a batch's many new fields (one HLEN, one EXPIRE, one index ZADD).
-- KEYS[1] hour index (zset)  KEYS[2] day index (zset)  KEYS[3] the writer's last applied token (one string per
-- writer)  KEYS[4..] the keys the items below name by index: hour hashes, visitor marks of an hour (hash:
-- event -> 2 per call, odd once the event's visitors of that hour go to the day's overflow HyperLogLog),
-- the day's HyperLogLogs (the event's and the overflow's), the day's event set.
-- ARGV: 1 ttl, 2 counter cap per hour, 3 overflow slack, 4 events-per-day cap, 5 this call's token (sealed by
--       hotcache.signing: only Python can make one), 6 '1' = resolving an in-doubt call: apply it only if
--       KEYS[3] shows it was not applied, 7 the writer's previous sealed token ('' = none), 8 '1' = KEYS[3] may
--       be missing, 9 number of counter items, 10 number of visitor items; then counter items of 7:
--       hour key index, hour label, hour start, field "<event>\t<path>", "<event>\t(other)", "(other)\t(other)",
--       count; then visitor items of 8 + n: marks key index, event HLL index, overflow HLL index, day's event
--       set index, event, day label, day start, n, then n visitor digests.
-- Returns {counters that overflowed, visitor items that overflowed, outcome, repaired, the writer key's value,
--   and, when applied, per visitor item 1 if its visitors went to the overflow HyperLogLog else 0 (the parity
--   of the hour's marks: the writer remembers it and sends the item's marks key index as 0 / -1 from then on,
--   so a warm event with visitors costs no HINCRBY of the marks)}
--   outcome: 0 applied, 1 skipped (the call in doubt was applied: KEYS[3] holds its token), 2 refused (KEYS[3]
--   holds neither its token nor the previous one: someone else wrote it; applied or not cannot be told)
--   repaired: flat list of (key index, what): 1 the key had the wrong type (or was a corrupt HyperLogLog) and
--   was deleted, 2 a counter was not a positive integer and was reset (Python counts each as tampered)
local repaired = {}
local function mark(k, what)
  repaired[#repaired + 1] = k
  repaired[#repaired + 1] = what
end
-- A key of the wrong type (hotcache never writes one) would make a command fail half-way through the
-- script, and every later call with it. The first command on each key runs with pcall: on an error the key
-- is deleted, reported in ``repaired``, and the command runs again. No extra command on the normal path.
local function first(k, command, ...)
  local reply = redis.pcall(command, KEYS[k], ...)
  if type(reply) == 'table' and reply['err'] then
    redis.call('DEL', KEYS[k])
    mark(k, 1)
    reply = redis.call(command, KEYS[k], ...)
  end
  return reply
end
-- Per hour hash (key index), within this call: its field count once HLEN has read it (then kept up to date by
-- the HINCRBYs that add a field and the HDELs below, so a batch of many new fields reads it once), and whether
-- its TTL and hour-index entry were already written (once per call, not once per new field: the script is
-- atomic, so a second EXPIRE or ZADD of the same values would change nothing).
local fields, renewed = {}, {}
-- HINCRBY of a counter; true as second value when the field is new (its total is this call's count).
local function incr(k, f, n)
  local total = redis.pcall('HINCRBY', KEYS[k], f, n)
  if type(total) == 'table' and total['err'] then
    if string.find(total['err'], 'WRONGTYPE', 1, true) then
      redis.call('DEL', KEYS[k])
      fields[k], renewed[k] = nil, nil
      mark(k, 1)
      return redis.call('HINCRBY', KEYS[k], f, n), true
    end
    -- Not an integer, or about to overflow: not a value hotcache wrote.
    redis.call('HSET', KEYS[k], f, n)
    mark(k, 2)
    return n, false
  end
  if total < n then
    -- Below zero before this call.
    redis.call('HSET', KEYS[k], f, n)
    mark(k, 2)
    return n, false
  end
  return total, total == n
end
local ttl = tonumber(ARGV[1])
if ARGV[6] == '1' then
  local cur = first(3, 'GET')
  if cur == ARGV[5] then
    return {0, 0, 1, repaired, ''}
  end
  local previous = cur and ARGV[7] ~= '' and cur == ARGV[7]
  local missing = (not cur) and ARGV[8] == '1' and #repaired == 0
  if not (previous or missing) then
    return {0, 0, 2, repaired, cur or ''}
  end
end
local cap = tonumber(ARGV[2])
local slack = tonumber(ARGV[3])
local levels = 0
local pos = 11
for _ = 1, tonumber(ARGV[9]) do
  local k, n = tonumber(ARGV[pos]), tonumber(ARGV[pos + 6])
  local f = ARGV[pos + 3]
  local _, new = incr(k, f, n)
  if new then
    -- Cardinality cap: a new (event, path) beyond the cap goes to the event's "(other)" path; past a small
    -- slack of those, to one global overflow field. So an hour hash never holds more than cap + slack + 1
    -- fields. Only a new field is checked: the warm path pays nothing for it.
    local len = fields[k]
    if len then
      len = len + 1
    else
      len = redis.call('HLEN', KEYS[k])
    end
    local now = len
    if len > cap then
      redis.call('HDEL', KEYS[k], f)
      now = now - 1
      f = ARGV[pos + 4]
      levels = levels + 1
      _, new = incr(k, f, n)
      if new then now = now + 1 end
      if new and len > cap + slack then
        redis.call('HDEL', KEYS[k], f)
        now = now - 1
        f = ARGV[pos + 5]
        local _, added = incr(k, f, n)
        if added then now = now + 1 end
      end
    end
    fields[k] = now
    -- A new field (the hash's first one included) renews the hour's TTL and indexes the hour, so the sync
    -- finds live hours without KEYS/SCAN (a claim removes the hour: a late event re-adds it here); once per
    -- call and hour.
    if not renewed[k] then
      renewed[k] = true
      redis.call('EXPIRE', KEYS[k], ttl)
      if first(1, 'ZADD', ARGV[pos + 2], ARGV[pos + 1]) == 1 then
        redis.call('EXPIRE', KEYS[1], ttl)
      end
    end
  end
  pos = pos + 7
end
local vover = 0
local events_cap = tonumber(ARGV[4])
local odd = {} -- per visitor item: 1 when its visitors went to the overflow HyperLogLog, else 0
for v = 1, tonumber(ARGV[10]) do
  local km, kh, ko, ke = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  local event, n = ARGV[pos + 4], tonumber(ARGV[pos + 7])
  -- km 0 / -1: the writer already knows the marks' parity for this (hour, event) from an earlier reply (even /
  -- odd), which never changes once the hour's first visitor settled it (calls add 2): no HINCRBY.
  local marks = 0
  if km > 0 then
    marks = first(km, 'HINCRBY', event, 2)
  elseif km < 0 then
    marks = 1
  end
  local hll = kh
  odd[v] = 0
  if marks % 2 == 1 then
    hll = ko
    odd[v] = 1
    vover = vover + 1
  end
  if marks == 2 then
    -- The event's first visitor of this hour: the per-day work (its cap, TTLs, indexes) runs once per hour.
    redis.call('EXPIRE', KEYS[km], ttl)
    local listed = event
    if first(ke, 'SISMEMBER', event) == 0 and redis.call('SCARD', KEYS[ke]) >= events_cap then
      redis.call('HINCRBY', KEYS[km], event, 1) -- odd: this hour's later visitors of the event go to overflow
      hll = ko
      odd[v] = 1
      listed = '(other)'
      vover = vover + 1
    end
    redis.call('SADD', KEYS[ke], listed)
    redis.call('EXPIRE', KEYS[ke], ttl)
    -- Also a string that is not a HyperLogLog (or a corrupt one): the day's count of this event starts afresh.
    first(hll, 'PFADD', unpack(ARGV, pos + 8, pos + 7 + n))
    redis.call('EXPIRE', KEYS[hll], ttl)
    if first(2, 'ZADD', ARGV[pos + 6], ARGV[pos + 5]) == 1 then
      redis.call('EXPIRE', KEYS[2], ttl)
    end
  else
    first(hll, 'PFADD', unpack(ARGV, pos + 8, pos + 7 + n))
  end
  pos = pos + 8 + n
end
-- Exactly once at the reply-lost edge: the writer's token says whether this call was applied (SET replaces
-- a value of any type).
redis.call('SET', KEYS[3], ARGV[5], 'EX', ttl)
return {levels, vover, 0, repaired, '', odd}
