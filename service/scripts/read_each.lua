-- One read command on each key of one slot, the replies in the order of KEYS: a call
-- per shard replaces a command per user, so a client parses one reply per shard.
-- KEYS: keys of one slot
-- ARGV: the command: HGETALL or HVALS (an absent hash reads as an empty table),
-- SMEMBERS, or GET (an absent key reads as false, a nil in the reply)
local readers = {HGETALL = true, HVALS = true, SMEMBERS = true, GET = true}
local command = ARGV[1]
if not readers[command] then
  return redis.error_reply('read_each reads with HGETALL, HVALS, SMEMBERS or GET only')
end
local replies = {}
for i, key in ipairs(KEYS) do
  replies[i] = redis.call(command, key)
end
return replies
