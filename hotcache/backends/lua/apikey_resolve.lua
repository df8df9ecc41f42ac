-- Settle one API key check whose reply was lost (hotcache.apikeys: "checks in doubt"). Idempotent: run it
-- again (its own reply lost) and it changes nothing more.
-- KEYS[1] <prefix>:{apikeys:<digest>}:n:<YYYYMMDD>   the check's day count (base included)
-- KEYS[2] <prefix>:{apikeys:<digest>}:w:<writer>      "<seq>:<time>[:u]": the last check the writer counted
-- KEYS[3] <prefix>:{apikeys:<digest>}:undo:<YYYYMMDD> uses taken back from the counter that day: the usage sync
--                                                     copies counter + undo and undo, so a copy taken before
--                                                     the take-back cannot keep the history one use high
-- KEYS[4] <prefix>:{apikeys:<digest>}:base:<YYYYMMDD>, KEYS[5] <prefix>:{apikeys:<digest>}:use:<YYYYMMDD> (the
--                                                     previous layout's counter): a new count starts from both,
--                                                     as in apikey_check.lua
-- ARGV[1] writer id; ARGV[2] the check's sequence number; ARGV[3] '1' when the request was allowed (answered
-- from MongoDB), '0' when it was refused; ARGV[4] counter TTL seconds; ARGV[5] now; ARGV[6] writer-field TTL
-- Returns {outcome, first, note}: outcome is 'applied' (the check counted it: nothing to do), 'counted' (it did
-- not: counted now), 'undone' (it counted a refused request: taken back) or 'none' (not counted, not allowed);
-- first is 1 when counting now created the day's counter; note names records found malformed ('use', 'tok',
-- 'undo').
-- Records of the wrong type or shape (written by someone else) are dropped, never a script error.
local note = ''
local counter = redis.pcall('GET', KEYS[1])
if counter ~= false then
  local digits = type(counter) == 'string' and string.match(counter, '^(%d+)$')
  if not digits or #digits > 18 then
    -- Not a count any more: what it counted is lost; start it again (the check script reloads a floor from MongoDB).
    redis.call('DEL', KEYS[1])
    note = 'use'
  end
end
local undo = redis.pcall('GET', KEYS[3])
if undo ~= false then
  local digits = type(undo) == 'string' and string.match(undo, '^(%d+)$')
  if not digits or #digits > 18 then
    -- Not a count: start it again (the sync treats it as absent meanwhile).
    redis.call('DEL', KEYS[3])
    note = note .. ' undo'
  end
end
local seq = tonumber(ARGV[2])
local prev = redis.pcall('GET', KEYS[2])
if type(prev) == 'table' then
  redis.call('DEL', KEYS[2])
  prev = false
  note = note .. ' tok'
end
local prev_seq = -1
if prev then
  local s = string.match(prev, '^(%d+)')
  if s and #s <= 15 then
    prev_seq = tonumber(s)
  else
    note = note .. ' tok'
  end
end
local undone = prev and string.find(prev, ':u$') ~= nil
local mark = ARGV[2] .. ':' .. math.floor(tonumber(ARGV[5]))
local first = 0
local outcome = 'none'
if ARGV[3] == '1' then
  if prev_seq >= seq then
    return {'applied', 0, note}
  end
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then
    -- A new count: from the base and the previous layout's counter (a value that is not a count adds nothing).
    local start = 0
    for i = 4, 5 do
      local v = redis.pcall('GET', KEYS[i])
      local digits = type(v) == 'string' and string.match(v, '^(%d+)$')
      if digits and #digits <= 18 then
        start = start + tonumber(v)
      end
    end
    if start > 0 then
      redis.call('INCRBY', KEYS[1], start)
      redis.call('DEL', KEYS[5])
    end
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
    first = 1
  end
  outcome = 'counted'
elseif prev_seq == seq and not undone then
  if redis.call('DECR', KEYS[1]) < 0 then
    -- The counter had gone (expired or dropped) and the DECR made a new one: never negative, and it expires.
    redis.call('SET', KEYS[1], 0, 'EX', tonumber(ARGV[4]))
  elseif redis.call('INCR', KEYS[3]) == 1 then
    redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
  end
  mark = mark .. ':u'
  outcome = 'undone'
elseif prev_seq >= seq then
  return {'none', 0, note}
end
-- Record the sequence so the lost check, should it still arrive, is refused as stale.
redis.call('SET', KEYS[2], mark, 'EX', tonumber(ARGV[6]))
return {outcome, first, note}
