-- Store the Redis copy of a list read from SQL, unless an edit raced the read.
-- KEYS: list, list_version
-- ARGV: version seen before the SQL read ('' when none), ttl_ms, buddies...
-- The empty member marks the copy as loaded, so an empty list is cached too.
local seen = redis.call('GET', KEYS[2]) or ''
if seen ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], '')
for i = 3, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
