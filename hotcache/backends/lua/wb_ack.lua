-- Workbench persister, step 3 (ack), after MongoDB acknowledged the history records of these members.
-- Only members still owned by run ARGV[1] are acked (a stale claim taken over by another run is that
-- run's to ack). An ended key is deleted. An idle session is deleted only if nobody touched it since
-- the claim (it is not back in the index) and its version and token are the ones written to history:
-- a session edited or read after the claim stays hot and is persisted again later.
-- KEYS: 1 index, 2 claims ZSET, 3 owners HASH, then one data key per member (4..)
-- ARGV: 1 run id, then per member: member, kind ('e'/'i'), session id, version, token
-- Returns {acked, kept, positions (1-based, among the members) of the acked members}
local acked, kept = 0, 0
local done = {}
for i = 4, #KEYS do
  local a = 2 + (i - 4) * 5
  local m, kind, id, v, g = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if redis.call('HGET', KEYS[3], m) == ARGV[1] then
    if kind == 'e' then
      redis.call('DEL', KEYS[i])
      acked = acked + 1
      done[#done + 1] = i - 3
    else
      local row = redis.call('HMGET', KEYS[i], 'v', 'g')
      if row[1] == v and row[2] == g and not redis.call('ZSCORE', KEYS[1], id) then
        redis.call('DEL', KEYS[i])
        acked = acked + 1
        done[#done + 1] = i - 3
      else
        kept = kept + 1
      end
    end
    redis.call('ZREM', KEYS[2], m)
    redis.call('HDEL', KEYS[3], m)
  end
end
return {acked, kept, done}
