-- Add buffered meter counts to the daily hashes in one command, and publish this process's MongoDB pool.
-- KEYS[1..n]: <prefix>:{meter:usage}:<YYYYMMDD>; KEYS[n+1] (optional): <prefix>:{meter:usage}:pools
-- ARGV[1]: ttl seconds; ARGV[2]: n; then for each day key: m, followed by m (field, increment) pairs;
-- then, with a pools key: the process's field and its JSON figures.
local ttl = tonumber(ARGV[1])
local days = tonumber(ARGV[2])
local pos = 3
for i = 1, days do
  local m = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, m do
    redis.call('HINCRBY', KEYS[i], ARGV[pos], ARGV[pos + 1])
    pos = pos + 2
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
if #KEYS > days then
  redis.call('HSET', KEYS[days + 1], ARGV[pos], ARGV[pos + 1])
  redis.call('EXPIRE', KEYS[days + 1], 86400)
end
return days
