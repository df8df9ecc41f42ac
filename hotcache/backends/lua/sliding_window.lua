-- Sliding-window counter for every rule of one request, all-or-nothing, on Redis server time.
--
-- KEYS: two per rule, in rule order: the counter of the even windows, then of the odd windows
--       (window id = floor(now_ms / window_ms)). Keys of a rule share one hash tag.
-- ARGV[1]: 1 = count this request if every rule allows it, 0 = peek only.
-- ARGV[2 + 3*(i-1) ..]: limit, window_ms, cost for rule i.
-- Returns {allowed, remaining, reset_ms, count} per rule (flat). allowed is 1/0; remaining is what is
-- left after this request; reset_ms is, when denied, how long until this cost would fit, and when
-- allowed, how long until the current window ends; count is the weighted estimate (including this
-- request's cost when it is allowed or would be over).
--
-- Why two parity keys and no window id in the key name: the names are declared in KEYS (so the script
-- is valid on Redis Cluster) without the client computing a window id from its own, possibly skewed,
-- clock. A counter written in window w expires at exactly (w + 2) * window (PXAT), so it is read as
-- "current" during w and "previous" during w + 1. Its owner window is recovered from its PTTL, which
-- guards against lazy expiry: a key whose expiry instant passed a few microseconds ago may still be
-- visible inside a script (Redis freezes key-expiry time at script start, TIME is not frozen).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local increment = ARGV[1] == '1'
local n = #KEYS / 2

local function count_in(key, window, want)
  local v = redis.call('GET', key)
  if not v then
    return 0, false
  end
  local pttl = redis.call('PTTL', key)
  if pttl < 0 then
    return 0, true -- no TTL (should not happen): treat as stale and overwrite
  end
  local owner = math.floor((now + pttl) / window + 0.5) - 2
  if owner == want then
    return tonumber(v), false
  end
  return 0, true
end

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
  local cur_key = KEYS[2 * (i - 1) + 1 + (w % 2)]
  local prev_key = KEYS[2 * (i - 1) + 1 + ((w + 1) % 2)]
  local cur, cur_stale = count_in(cur_key, window, w)
  local prev = count_in(prev_key, window, w - 1)
  -- weighted estimate, in integers scaled by window: prev * (window - elapsed) + cur * window
  local scaled = prev * (window - elapsed) + (cur + cost) * window
  local ok = scaled <= limit * window
  local estimate = math.floor((prev * (window - elapsed)) / window) + cur
  local remaining, reset, count
  if ok then
    count = estimate + cost
    remaining = math.max(0, limit - count)
    reset = window - elapsed
  else
    all_ok = false
    count = estimate + cost
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
  plan[i] = {cur_key, cur, cur_stale, cost, (w + 2) * window}
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = count
end

if increment and all_ok then
  for i = 1, n do
    local p = plan[i]
    if p[2] > 0 then
      redis.call('INCRBY', p[1], p[4])
    else
      -- first write in this window (or a stale counter from two windows ago): fresh value and expiry
      redis.call('SET', p[1], p[4], 'PXAT', p[5])
    end
  end
end
return out
