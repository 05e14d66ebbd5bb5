-- The status hashes of users of one shard, in the order of KEYS; an absent hash reads
-- as an empty table. One call per shard replaces a HGETALL per user: a client parses
-- one reply instead of one per user.
-- KEYS: status keys, all in one slot
local rows = {}
for i, key in ipairs(KEYS) do
  rows[i] = redis.call('HGETALL', key)
end
return rows
