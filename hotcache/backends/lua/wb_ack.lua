-- Workbench persister, step 3 (ack), after MongoDB acknowledged the history records of these members.
-- Only members still owned by run ARGV[1] are acked (a stale claim taken over by another run is that
-- run's to ack). An ended key is deleted. An idle session is deleted only if nobody touched it since
-- the claim (it is not back in the index) and it still holds the envelope Python read (the one written
-- to history, or a tampered one): a session edited or read after the claim stays hot and is persisted
-- again later. A member of another shape (not queued by hotcache) only leaves the claims.
-- KEYS: 1 index, 2 claims ZSET, 3 owners HASH, then one key per member (4..)
-- ARGV: 1 run id, then per member: member, kind ('e' ended, 'i' idle, 'x' other), session id, envelope read
--       ('' none, '!' a key hotcache did not write)
-- Returns {acked, kept, positions (1-based, among the members) of the acked members}
local acked, kept = 0, 0
local done = {}
for i = 4, #KEYS do
  local a = 2 + (i - 4) * 4
  local m, kind, id, env = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if redis.call('HGET', KEYS[3], m) == ARGV[1] then
    if kind == 'e' then
      redis.call('DEL', KEYS[i])
      acked = acked + 1
      done[#done + 1] = i - 3
    elseif kind == 'i' then
      local cur = redis.pcall('HGET', KEYS[i], 'm')
      if type(cur) == 'table' and cur.err then cur = '!' end
      if not cur or cur == '' then cur = (redis.call('EXISTS', KEYS[i]) == 1) and '!' or '' end
      if cur == env and not redis.call('ZSCORE', KEYS[1], id) then
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
