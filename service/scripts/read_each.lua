-- One read command on each key of one slot, the replies in the order of KEYS: a call
-- per shard replaces a command per user, so a client parses one reply per shard.
-- KEYS: keys of one slot
-- ARGV: the command, HGETALL (an absent hash reads as an empty table) or SMEMBERS
local command = ARGV[1]
if command ~= 'HGETALL' and command ~= 'SMEMBERS' then
  return redis.error_reply('read_each reads with HGETALL or SMEMBERS only')
end
local replies = {}
for i, key in ipairs(KEYS) do
  replies[i] = redis.call(command, key)
end
return replies
