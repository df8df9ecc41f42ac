-- Give back the counts sliding_window.lua (ARGV[1] = 2) took for one group of rules, because a group of the same
-- request on another Redis Cluster slot refused it (all-or-nothing across slots; hotcache/ratelimit/slots.py).
--
-- KEYS: the counters of the group's rules (sliding_window.lua's layout: window id, even count, odd count).
-- ARGV[2*(i-1)+1 ..]: the window id the rule's cost was counted in (sliding_window.lua's reply), then the cost.
-- Returns the number of rules whose cost was given back.
--
-- Exact: the cost is taken off the count of the window it was added to, which is still held while the stored
-- window id is that window or the next one (a first write of the next window keeps it as the previous count);
-- later, the count no longer weighs in any estimate and nothing is taken. A count is never taken below zero.
-- Sent once, never re-sent after a lost reply (hotcache.backends.cluster.send_once): an unknown outcome leaves
-- the cost counted, the safe side, for at most two windows; it can never be given back twice.
--
-- Billed: one BITFIELD per rule (read the window id and take the cost in one command); a counter that is gone or
-- moved on meanwhile costs one more command to put it back as it was (DEL of what the BITFIELD created, or
-- the INCRBY undone).
local call, rpcall, tonumber = redis.call, redis.pcall, tonumber
local OFF = {[0] = '#1', [1] = '#2'}
local given = 0
local a = 1
for i = 1, #KEYS do
  local w, cost = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local off = OFF[w % 2]
  local h = rpcall('BITFIELD', KEYS[i], 'GET', 'i64', '#0', 'INCRBY', 'i64', off, -cost)
  if not h.err then
    local stored, left = h[1], h[2]
    if stored == 0 then
      call('DEL', KEYS[i]) -- gone meanwhile (or never sound): the BITFIELD created it, as if never written
    elseif stored < w or stored > w + 1 then
      call('BITFIELD', KEYS[i], 'INCRBY', 'i64', off, cost) -- that window's count is not held any more
    elseif left < 0 then
      call('BITFIELD', KEYS[i], 'INCRBY', 'i64', off, -left) -- never below zero
      if left + cost > 0 then given = given + 1 end
    else
      given = given + 1
    end
  end
  -- not ok: a key of another type (WRONGTYPE): nothing was counted there, nothing to give back
end
return given
