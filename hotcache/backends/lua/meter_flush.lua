-- Add buffered meter counts to the daily hashes, count this flush itself, and publish this process's MongoDB
-- pool: per day one HGET and one HSET of the day's counts as JSON (field ARGV[3]), whatever the number of
-- fields; EXPIRE only when the day's counts are new. Billed: EVALSHA + 2 per day (+1 for a new day).
-- KEYS[1..n]: <prefix>:{meter:usage}:<YYYYMMDD>, KEYS[1] today's (it also gets this flush's own cost)
-- ARGV[1] ttl seconds, ARGV[2] n, ARGV[3] the JSON field, ARGV[4..6] this flush's billed, command and round-trip
-- fields (billed:meter, cmd:meter, rt:meter), ARGV[7] this process's pool field ('' = none), ARGV[8] its JSON
-- figures, ARGV[9] this process's meter writer, ARGV[10] this flush's token (a number rising per writer); then
-- for each day key: m, followed by m (field, increment) pairs.
-- Exactly once (docs/design/lost-replies.md): today's JSON keeps, under "~w", each writer's last applied token. A
-- flush re-sent after a lost reply whose token is already there adds only its own cost (HSET of today alone).
-- Returns {billed commands this flush wrote for itself (EVALSHA included), records reset as not hotcache's,
-- 1 if the batch had already been applied (skipped) else 0}
local ttl = tonumber(ARGV[1])
local days = tonumber(ARGV[2])
local ran, reset = 0, 0
local counts, new = {}, {}
for i = 1, days do
  local raw = redis.pcall('HGET', KEYS[i], ARGV[3])
  ran = ran + 1
  if type(raw) == 'table' and raw['err'] then
    -- Not a hash: not written by hotcache; deleted, so the meter keeps counting.
    redis.call('DEL', KEYS[i])
    ran = ran + 1
    reset = reset + 1
    raw = false
  end
  local t = {}
  if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' then
      t = decoded
    else
      reset = reset + 1
    end
  end
  counts[i] = t
  new[i] = not raw
end
local writer, token = ARGV[9], tonumber(ARGV[10])
local applied = type(counts[1]['~w']) == 'table' and (tonumber(counts[1]['~w'][writer]) or 0) >= token
if type(counts[1]['~w']) ~= 'table' then
  counts[1]['~w'] = {}
end
local written = days
if applied then
  written = 1
else
  counts[1]['~w'][writer] = token
end
local pos = 11
for i = 1, (applied and 0 or days) do
  local t = counts[i]
  local m = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, m do
    t[ARGV[pos]] = (tonumber(t[ARGV[pos]]) or 0) + tonumber(ARGV[pos + 1])
    pos = pos + 2
  end
end
-- This flush's own cost, counted before it is written: EVALSHA, what ran so far, an HSET per day written, an
-- EXPIRE per new day written.
local own = 1 + ran + written
for i = 1, written do
  if new[i] then
    own = own + 1
  end
end
local t = counts[1]
t[ARGV[4]] = (tonumber(t[ARGV[4]]) or 0) + own
t[ARGV[5]] = (tonumber(t[ARGV[5]]) or 0) + 1
t[ARGV[6]] = (tonumber(t[ARGV[6]]) or 0) + 1
for i = 1, written do
  if i == 1 and ARGV[7] ~= '' then
    redis.call('HSET', KEYS[i], ARGV[3], cjson.encode(counts[i]), ARGV[7], ARGV[8])
  else
    redis.call('HSET', KEYS[i], ARGV[3], cjson.encode(counts[i]))
  end
  if new[i] then
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
return {own, reset, applied and 1 or 0}
