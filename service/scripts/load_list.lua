-- Store the Redis copy of a list read from SQL, unless an edit raced the read.
-- KEYS: list, list_version
-- ARGV: version seen before the SQL read ('' when none), ttl_ms, the buddies joined by
-- spaces (one argument, not one each: a client packs a thousand arguments slowly).
-- The empty member marks the copy as loaded, so an empty list is cached too.
local seen = redis.call('GET', KEYS[2]) or ''
if seen ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local members = {''}
for buddy in string.gmatch(ARGV[3], '%S+') do
  members[#members + 1] = buddy
  if #members == 1000 then -- unpack() has a stack limit
    redis.call('SADD', KEYS[1], unpack(members))
    members = {}
  end
end
if #members > 0 then
  redis.call('SADD', KEYS[1], unpack(members))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
