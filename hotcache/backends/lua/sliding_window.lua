-- Sliding-window counter for every rule of one request, all-or-nothing, on Redis server time.
--
-- KEYS: one per rule, in rule order: a hash holding the rule+identifier's two most recent windows.
-- ARGV[1]: 1 = count this request if every rule allows it, 0 = peek only.
-- ARGV[2 + 3*(i-1) ..]: limit, window_ms, cost for rule i.
-- Returns {allowed, remaining, reset_ms, count} per rule (flat). allowed is 1/0; remaining is what is
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
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local increment = ARGV[1] == '1'
local n = #KEYS

local plan = {}
local out = {}
local all_ok = true
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local limit = tonumber(ARGV[base])
  local window = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 2])
  local w = math.floor(now / window)
  local elapsed = now - w * window
  local h = redis.call('HMGET', KEYS[i], 'w', '0', '1')
  local stored = tonumber(h[1])
  local cur, prev, fresh = 0, 0, true
  if stored then
    if stored >= w then
      -- this window (or, should the server clock ever step back, a later one: keep its counts, never
      -- forget admissions)
      cur = tonumber(h[2 + (stored % 2)]) or 0
      prev = tonumber(h[2 + ((stored + 1) % 2)]) or 0
      fresh = false
      w = stored
    elseif stored == w - 1 then
      prev = tonumber(h[2 + (stored % 2)]) or 0
    end
  end
  -- weighted estimate, in integers scaled by window: prev * (window - elapsed) + cur * window
  local scaled = prev * (window - elapsed) + (cur + cost) * window
  local ok = scaled <= limit * window
  local estimate = math.floor((prev * (window - elapsed)) / window) + cur
  local remaining, reset, count
  count = estimate + cost
  if ok then
    remaining = math.max(0, limit - count)
    reset = window - elapsed
  else
    all_ok = false
    remaining = math.max(0, limit - estimate)
    if cost > limit then
      reset = window -- can never fit; retry after a window
    elseif cur + cost <= limit then
      -- fits once the previous window's weight has decayed enough, inside this window
      -- need prev * (window - e) <= (limit - cost - cur) * window
      local e = window - math.floor(((limit - cost - cur) * window) / prev)
      reset = math.max(1, e - elapsed)
    else
      -- fits only in the next window, once this window's count (then previous) has decayed
      local e2 = window - math.floor(((limit - cost) * window) / cur)
      reset = (window - elapsed) + math.max(0, e2)
      if reset < 1 then reset = 1 end
    end
  end
  plan[i] = {fresh, w, cur, prev, cost, window}
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = count
end

if increment and all_ok then
  for i = 1, n do
    local p = plan[i]
    local w = p[2]
    if p[1] then
      -- first write in this window: both count fields and the owner, then the expiry
      redis.call('HSET', KEYS[i], 'w', w, tostring(w % 2), p[5], tostring((w + 1) % 2), p[4])
      redis.call('PEXPIREAT', KEYS[i], (w + 2) * p[6])
    else
      redis.call('HINCRBY', KEYS[i], tostring(w % 2), p[5])
    end
  end
end
return out
