-- Add (ARGV[2] = '1') or remove (ARGV[2] = '0') a node in the interest sets of users of
-- one slot: a call per shard replaces a SADD or SREM per subject.
-- KEYS: interest sets of one slot
-- ARGV: node, '1' to add or '0' to remove
local command = 'SREM'
if ARGV[2] == '1' then command = 'SADD' end
for _, key in ipairs(KEYS) do
  redis.call(command, key, ARGV[1])
end
return #KEYS
