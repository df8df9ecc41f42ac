-- Add buffered meter counts to the daily hashes in one command.
-- KEYS[i]: <prefix>:meter:<YYYYMMDD>
-- ARGV[1]: ttl seconds; then for each key: n, followed by n (field, increment) pairs.
local ttl = tonumber(ARGV[1])
local pos = 2
for i = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[i], ARGV[pos], ARGV[pos + 1])
    pos = pos + 2
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
