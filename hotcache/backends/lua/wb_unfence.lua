-- Workbench recovery done: lower the fence only if nobody raised it again since it was read.
-- KEYS[1]: the fence   ARGV[1]: the value read before the reconcile sweep
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
