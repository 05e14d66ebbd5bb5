-- Apply a committed list edit to the Redis copy of the owner's list, and tell the
-- owner's connected sessions.
-- KEYS: list, list_version, sessions, events
-- ARGV: owner, added (JSON array), removed (JSON array), gone (JSON object), maxlen
-- Returns 1 when an event was emitted (the owner has sessions), else 0.
local list, list_version, sessions, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local added, removed = cjson.decode(ARGV[2]), cjson.decode(ARGV[3])
-- A loader that read SQL before this edit sees the bump and does not write a stale copy.
redis.call('INCR', list_version)
if redis.call('EXISTS', list) == 1 then
  for _, buddy in ipairs(added) do redis.call('SADD', list, buddy) end
  for _, buddy in ipairs(removed) do redis.call('SREM', list, buddy) end
end
if redis.call('HLEN', sessions) == 0 then
  return 0
end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*',
  'k', 'l', 'u', ARGV[1], 'add', ARGV[2], 'rm', ARGV[3], 'gone', ARGV[4])
return 1
