-- Sliding-window counter for every rule of one request, all-or-nothing, on Redis server time.
--
-- KEYS: one per rule, in rule order: a hash holding the rule+identifier's two most recent windows.
-- ARGV[1]: 1 = count this request if every rule allows it, 0 = peek only.
-- ARGV[2 + 3*(i-1) ..]: limit, window_ms, cost for rule i.
-- Returns {allowed, remaining, reset_ms, count} per rule (flat), then one array: the 1-based indexes of
-- the rules whose hash was corrupt (see below; empty normally). allowed is 1/0; remaining is what is
-- left after this request; reset_ms is, when denied, how long until this cost would fit, and when
-- allowed, how long until the current window ends; count is the weighted estimate (including this
-- request's cost when it is allowed or would be over).
--
-- Layout: field "w" is the window id of the last write (window id = floor(now_ms / window_ms), from
-- TIME, so clients' clocks never matter); field "0"/"1" is the count of the even/odd window. Invariant
-- after every write in window w: field w%2 holds w's count and field (w-1)%2 holds w-1's count (0 when
-- w-1 saw no write). Reading is one HMGET; a write is one HINCRBY, or, for the first write of a window,
-- one HSET of all three fields plus PEXPIREAT (w + 2) * window: the hash lives as long as its newest
-- window can still be the "previous" one, and never longer. Because the owner window is stored, a hash
-- that is past its expiry instant but still visible (lazy expiry; Redis freezes key expiry at script
-- start while TIME moves on) is recognised as stale by its "w" and rewritten, never misread. Storage is
-- three small fields per rule+identifier, whatever the limit.
--
-- Corrupt hashes (written by someone else): every field must be canonical decimal digits, as HSET and
-- HINCRBY write them, and all three present. Anything else (a wrong key type, a missing field, "nan",
-- "-5", "1e9", "0x10", non-ASCII) would make the arithmetic non-finite or HINCRBY fail, so such a hash
-- counts as absent (zero counts) and is reported; a counting call deletes and rewrites it (with its
-- TTL). Valid digits are still only counts: this script cannot tell who wrote them.
local call, tonumber, floor, find = redis.call, tonumber, math.floor, string.find
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local n = #KEYS
local FIELD = {[0] = '0', [1] = '1'}

-- a stored field as a number when it is canonical digits (what HSET / HINCRBY write), else nil
local function digits(v)
  if v and #v <= 15 and (v == '0' or find(v, '^[1-9]%d*$')) then
    return tonumber(v)
  end
  return nil
end

local plan = {} -- per rule: first write of the window?, window id, prev count, cost, window_ms
local out = {}
local bad = {} -- 1-based indexes of corrupt hashes
local all_ok = true
local a, o = 2, 0
for i = 1, n do
  local limit, window, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local w = floor(now / window)
  local elapsed = now - w * window
  local h = redis.pcall('HMGET', KEYS[i], 'w', '0', '1')
  local stored, c0, c1
  if h.err then
    bad[#bad + 1] = i -- not a hash
  elseif h[1] or h[2] or h[3] then
    stored, c0, c1 = digits(h[1]), digits(h[2]), digits(h[3])
    if not (stored and c0 and c1) then
      stored = nil
      bad[#bad + 1] = i
    end
  end
  local cur, prev, fresh = 0, 0, true
  if stored then
    if stored >= w then
      -- this window (or, should the server clock ever step back, a later one: keep its counts, never
      -- forget admissions)
      if stored % 2 == 0 then cur, prev = c0, c1 else cur, prev = c1, c0 end
      fresh = false
      w = stored
    elseif stored == w - 1 then
      if stored % 2 == 0 then prev = c0 else prev = c1 end
    end
  end
  -- weighted estimate, in integers scaled by window: prev * (window - elapsed) + cur * window
  local weighted = prev * (window - elapsed)
  local ok = weighted + (cur + cost) * window <= limit * window
  local estimate = floor(weighted / window) + cur
  local count = estimate + cost
  local remaining, reset
  if ok then
    remaining = limit - count
    if remaining < 0 then remaining = 0 end
    reset = window - elapsed
  else
    all_ok = false
    remaining = limit - estimate
    if remaining < 0 then remaining = 0 end
    if cost > limit then
      reset = window -- can never fit; retry after a window
    elseif cur + cost <= limit then
      -- fits once the previous window's weight has decayed enough, inside this window
      -- need prev * (window - e) <= (limit - cost - cur) * window
      local e = window - floor(((limit - cost - cur) * window) / prev)
      reset = e - elapsed
      if reset < 1 then reset = 1 end
    else
      -- fits only in the next window, once this window's count (then previous) has decayed
      local e2 = window - floor(((limit - cost) * window) / cur)
      if e2 < 0 then e2 = 0 end
      reset = (window - elapsed) + e2
      if reset < 1 then reset = 1 end
    end
  end
  local p = 5 * (i - 1)
  plan[p + 1], plan[p + 2], plan[p + 3], plan[p + 4], plan[p + 5] = fresh, w, prev, cost, window
  out[o + 1], out[o + 2], out[o + 3], out[o + 4] = ok and 1 or 0, remaining, reset, count
  o = o + 4
end

if ARGV[1] == '1' then
  -- a counting call repairs corrupt hashes (zero counts, as if absent), whether or not it is admitted
  for j = 1, #bad do
    call('DEL', KEYS[bad[j]])
  end
end
if all_ok and ARGV[1] == '1' then
  for i = 1, n do
    local p = 5 * (i - 1)
    local w = plan[p + 2]
    if plan[p + 1] then
      -- first write in this window: both count fields and the owner, then the expiry
      call('HSET', KEYS[i], 'w', w, FIELD[w % 2], plan[p + 4], FIELD[(w + 1) % 2], plan[p + 3])
      call('PEXPIREAT', KEYS[i], (w + 2) * plan[p + 5])
    else
      call('HINCRBY', KEYS[i], FIELD[w % 2], plan[p + 4])
    end
  end
end
out[o + 1] = bad
return out
