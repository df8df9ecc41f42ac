-- Workbench recovery done, or a fence hotcache did not raise: lower the fence only if it still holds the
-- value Python read (nobody raised it again since). A fence key that is not a string is not ours: deleted.
-- KEYS[1]: the fence   ARGV[1]: the value read
local cur = redis.pcall('GET', KEYS[1])
if (type(cur) == 'table' and cur.err) or cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
