-- Sliding-window counter for every rule of one request, all-or-nothing, on Redis server time.
--
-- KEYS: one per rule, in rule order: a 24-byte string, three big-endian signed 64-bit integers: the window
-- id of the last write, then the count of the even window and the count of the odd window.
-- ARGV[1]: 1 = count this request if every rule allows it, 0 = peek only, 2 = count as 1 and also return the
-- window ids (one group of a request whose rules span several Redis Cluster slots: ratelimit/slots.py gives
-- the counts back with sliding_window_giveback.lua when another group refuses).
-- ARGV[2 + 3*(i-1) ..]: limit, window_ms, cost for rule i.
-- Returns {allowed, remaining, reset_ms, count} per rule (flat), then one array: the 1-based indexes of
-- the rules whose counter was corrupt (see below; empty normally); with ARGV[1] = 2 one more array: per rule,
-- the window id its cost was counted in (the stored one when it is ahead of TIME). allowed is 1/0; remaining is what is
-- left after this request; reset_ms is, when denied, how long until this cost would fit, and when
-- allowed, how long until the current window ends; count is the weighted estimate (including this
-- request's cost when it is allowed or would be over).
--
-- Billed cost (every command a script runs is billed by per-command providers): TIME, then ONE command
-- per rule on the common path. A counting call adds the cost speculatively with a single BITFIELD that
-- also returns the stored window id and the other window's count (GET, GET, INCRBY in one command), then
-- decides; an admitted request in a window the counter already holds needs nothing more (1 + 1 + n
-- commands with the EVALSHA). The first write of a window rewrites the counter with SET ... PXAT (value
-- and expiry in one command); a refused request undoes its increment (BITFIELD INCRBY -cost, or DEL of a
-- counter the speculation created), so refused requests are never counted and nobody ever sees the
-- intermediate state (a script is atomic). After the first refusing rule the remaining rules are only
-- read (nothing to undo). A peek reads with BITFIELD GETs, which never create the key.
--
-- Window id = floor(now_ms / window_ms), from TIME, so clients' clocks never matter. Invariant after every
-- write in window w: the field of w's parity holds w's count and the other field w-1's count (0 when w-1
-- saw no write). The expiry is (w + 2) * window: the counter lives as long as its newest window can still
-- be the "previous" one, and never longer. Because the owner window is stored, a counter that is past its
-- expiry instant but still visible (lazy expiry; Redis freezes key expiry at script start while TIME moves
-- on) is recognised as stale by its window id and rewritten, never misread. 24 bytes per rule+identifier,
-- whatever the limit.
--
-- Corrupt counters (written by someone else): a key of another type (the BITFIELD's own WRONGTYPE error,
-- caught by pcall, so no TYPE call is needed), or a string whose window id or counts are out of range (a
-- string of another length reads as such). Such a counter counts as absent (zero counts) and is reported;
-- a counting call rewrites it (SET replaces any type), or deletes it when the request is refused. Counts in
-- range are still only counts: this script cannot tell who wrote them.
local call, pcall, tonumber, floor, char = redis.call, redis.pcall, tonumber, math.floor, string.char
local t = call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local n = #KEYS
local counting = ARGV[1] ~= '0'
local MAX = 1e15 -- bound of a sound window id or count (counts are at most 10**12 per window)
local OFF = {[0] = '#1', [1] = '#2'} -- BITFIELD offsets (in i64 units) of the even / odd window count

-- v (a whole number, 0 <= v < 2^53) as 8 big-endian bytes: what BITFIELD reads as i64 (no struct library
-- needed, which not every Redis-compatible server offers)
local function be64(v)
  local b = {}
  for k = 8, 1, -1 do
    b[k] = v % 256
    v = floor(v / 256)
  end
  return char(b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8])
end

local function sound(v)
  return type(v) == 'number' and v >= 0 and v <= MAX
end

local plan = {} -- per rule: {state, w, prev, cost, window, p}; state: see below
local out = {}
local bad = {} -- 1-based indexes of corrupt counters
local all_ok = true
local a, o = 2, 0
for i = 1, n do
  local limit, window, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local w = floor(now / window)
  local elapsed = now - w * window
  local p = w % 2
  -- speculate (add the cost) while every rule so far allows; after a refusal, only read
  local spec = counting and all_ok
  local h
  if spec then
    h = pcall('BITFIELD', KEYS[i], 'GET', 'i64', '#0', 'GET', 'i64', OFF[1 - p], 'INCRBY', 'i64', OFF[p], cost)
  else
    h = pcall('BITFIELD', KEYS[i], 'GET', 'i64', '#0', 'GET', 'i64', OFF[1 - p], 'GET', 'i64', OFF[p])
  end
  -- state: 'err' (another type: nothing written), 'bad' (corrupt string), 'none' (absent or all zero),
  -- 'ok' (sound); c[0], c[1]: the stored even / odd counts before this call
  local state, stored = 'none', nil
  local c = {[0] = 0, [1] = 0}
  if h.err then
    state = 'err'
  else
    local sw, other, mine = h[1], h[2], h[3]
    if spec then mine = mine - cost end
    if sw ~= 0 or other ~= 0 or mine ~= 0 then
      if sound(sw) and sw >= 1 and sound(other) and sound(mine) then
        state, stored = 'ok', sw
        c[p], c[1 - p] = mine, other
      else
        state = 'bad'
      end
    end
  end
  if state == 'err' or state == 'bad' then bad[#bad + 1] = i end
  local cur, prev, fresh = 0, 0, true
  if stored then
    if stored >= w then
      -- this window (or, should the server clock ever step back, a later one: keep its counts, never
      -- forget admissions)
      cur, prev = c[stored % 2], c[(stored + 1) % 2]
      fresh = false
      w = stored
    elseif stored == w - 1 then
      prev = c[stored % 2]
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
  plan[i] = {spec and state ~= 'err', state, fresh, w, prev, cost, window, p}
  out[o + 1], out[o + 2], out[o + 3], out[o + 4] = ok and 1 or 0, remaining, reset, count
  o = o + 4
end

if counting then
  for i = 1, n do
    local q = plan[i]
    local written, state, fresh, w, prev, cost, window, p = q[1], q[2], q[3], q[4], q[5], q[6], q[7], q[8]
    if all_ok then
      if fresh then
        -- first write in this window (or a rewrite of a corrupt counter): owner, both counts, expiry
        local even, odd = cost, prev
        if w % 2 == 1 then even, odd = prev, cost end
        call('SET', KEYS[i], be64(w) .. be64(even) .. be64(odd), 'PXAT', (w + 2) * window)
      elseif w % 2 ~= p then
        -- the stored window is ahead of TIME by an odd number of windows (clock stepped back): the
        -- speculative increment went to the other field; move it
        call('BITFIELD', KEYS[i], 'INCRBY', 'i64', OFF[p], -cost, 'INCRBY', 'i64', OFF[1 - p], cost)
      end
    elseif written then
      if state == 'ok' then
        call('BITFIELD', KEYS[i], 'INCRBY', 'i64', OFF[p], -cost) -- undo: refused requests are not counted
      else
        call('DEL', KEYS[i]) -- created by the speculation, or corrupt: gone, as if never written
      end
    elseif state == 'err' or state == 'bad' then
      call('DEL', KEYS[i]) -- a refused counting call still repairs a corrupt counter (zero counts, as if absent)
    end
  end
end
out[o + 1] = bad
if ARGV[1] == '2' then
  local windows = {}
  for i = 1, n do windows[i] = plan[i][4] end
  out[o + 2] = windows
end
return out
