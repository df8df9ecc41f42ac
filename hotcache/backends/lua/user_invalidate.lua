-- Invalidate cached users: bump each version counter, delete each entry, in one command.
-- KEYS: pairs (entry, version) for each user. ARGV[1]: ttl of the version counter in seconds.
-- Returns how many version counters were not integer counters (reset here; Python counts them as tampered).
-- The counter is created with a TTL of a day, which outlives any entry and any in-flight load by far, so a
-- load that read it can never see it vanish and come back with the same value (which would let a stale
-- write-back through).
-- DEL comes first: a full Redis (maxmemory, noeviction) refuses a script (OOM) only at a command that may
-- grow memory issued before the script wrote anything, and DEL never grows memory; after it the script runs
-- whole. So an invalidation is not refused while every other process keeps reading the stale entry (reads
-- still succeed on a full Redis).
local ttl = tonumber(ARGV[1])
local reset = 0
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  local bumped = redis.pcall('INCR', KEYS[i + 1])
  if type(bumped) == 'table' and bumped['err'] then
    -- Not an integer (or of another type): only a write from outside hotcache makes that. Start a
    -- fresh counter (server time in microseconds) that no reader can have seen, so a load that read
    -- the bad value cannot write back either; an error here would block every later invalidation.
    local now = redis.call('TIME')
    redis.call('SET', KEYS[i + 1], now[1] .. string.format('%06d', tonumber(now[2])))
    reset = reset + 1
    redis.call('EXPIRE', KEYS[i + 1], ttl)
  elseif bumped == 1 then
    -- A new counter gets its TTL; a live one keeps the one it got then (billed: DEL + INCR, 2 commands per user,
    -- not 3). The counter can then vanish a day after it was created, in the middle of the user's life: a load
    -- that read any value before compares it with a counter that is absent or restarted at 1, and a load that
    -- read it absent ran after every earlier invalidation, so no stale write-back gets through either way.
    redis.call('EXPIRE', KEYS[i + 1], ttl)
  end
end
return reset
