-- Release batches the sync applied (MongoDB acknowledged them): DEL their pending keys and SREM their ids from
-- the pending set, atomically, in one bucket (the keys share its hash tag). The sync sends one call per bucket
-- in one pipeline (it replaced a MULTI, which Redis Cluster cannot span over buckets).
-- KEYS[1] pending set, then KEYS[i + 1] the pending key of batch ARGV[i]
-- ARGV: batch ids
-- Returns the number of ids that were in the set.
redis.call('DEL', unpack(KEYS, 2))
return redis.call('SREM', KEYS[1], unpack(ARGV))
