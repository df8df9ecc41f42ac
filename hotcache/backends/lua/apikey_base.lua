-- Raise one API key's per-day "counted on MongoDB" base (never lower it: a stale reader cannot undo a newer value).
-- KEYS[1] <prefix>:{apikeys:<digest>}:base:<YYYYMMDD>; ARGV[1] the MongoDB count; ARGV[2] TTL seconds.
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
  return 1
end
return 0
