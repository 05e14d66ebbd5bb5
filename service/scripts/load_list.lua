-- Store the Redis copies of lists of one slot read from SQL, each unless an edit raced
-- its read.
-- KEYS: list and list_version of each owner, in pairs
-- ARGV: ttl_ms, then for each owner: the version seen before the SQL read ('' when none)
-- and the buddies joined by spaces (one argument, not one each: a client packs a
-- thousand arguments slowly).
-- The empty member marks a copy as loaded, so an empty list is cached too.
-- Returns, for each owner, 1 when its copy was stored, 0 when an edit raced the read.
local stored = {}
for i = 1, #KEYS / 2 do
  local list, version = KEYS[2 * i - 1], KEYS[2 * i]
  stored[i] = 0
  if (redis.call('GET', version) or '') == ARGV[2 * i] then
    redis.call('DEL', list)
    local members = {''}
    for buddy in string.gmatch(ARGV[2 * i + 1], '%S+') do
      members[#members + 1] = buddy
      if #members == 1000 then -- unpack() has a stack limit
        redis.call('SADD', list, unpack(members))
        members = {}
      end
    end
    if #members > 0 then
      redis.call('SADD', list, unpack(members))
    end
    redis.call('PEXPIRE', list, ARGV[1])
    stored[i] = 1
  end
end
return stored
