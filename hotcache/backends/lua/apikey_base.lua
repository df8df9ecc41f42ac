-- Raise one API key's per-day "counted on MongoDB" base (never lower it: a stale reader cannot undo a newer value).
-- KEYS[1] <prefix>:{apikeys:<tag>}:base:<YYYYMMDD>; KEYS[2] <prefix>:{apikeys:<tag>}:n:<YYYYMMDD>, the day's count,
-- which includes the base: it is raised by as much (when it exists; a new count starts from the base).
-- ARGV[1] the MongoDB count; ARGV[2] TTL seconds.
-- A current value that is not an integer (written by someone else) is replaced: MongoDB's count is the truth.
local n = tonumber(ARGV[1])
local raw = redis.pcall('GET', KEYS[1])
local cur = 0
if raw ~= false then
  local digits = type(raw) == 'string' and string.match(raw, '^(%d+)$')
  cur = (digits and #digits <= 18) and tonumber(raw) or nil
end
if cur == nil or n > cur then
  redis.call('SET', KEYS[1], n, 'EX', tonumber(ARGV[2]))
  if redis.call('EXISTS', KEYS[2]) == 1 then
    -- Not an integer: left to the check script (badcount), which has it replaced.
    redis.pcall('INCRBY', KEYS[2], n - (cur or 0))
  end
  return 1
end
return 0
