-- Remove everything Redis holds of a user; watchers see them offline at once.
-- KEYS: status, sessions, list, list_version, rate, due, events
-- ARGV: user, now_ms, maxlen
-- Returns {offline item fields as a JSON object or '', nodes holding the user's sessions}.
local status, sessions, events = KEYS[1], KEYS[2], KEYS[7]
local user, now = ARGV[1], tonumber(ARGV[2])
local nodes, seen = {}, {}
for _, node in ipairs(redis.call('HVALS', sessions)) do
  if not seen[node] then seen[node] = true; table.insert(nodes, node) end
end
local gone = ''
local s = redis.call('HMGET', status, 'p', 't', 'a', 'v')
if s[4] then
  local version = tonumber(s[4]) + 1
  gone = cjson.encode({user = user, presence = 'offline', text = '', avatar = cjson.null,
    version = version, updated_at = now})
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*',
    'k', 's', 'u', user, 'p', s[1], 't', '', 'a', '', 'v', version, 'ts', now, 'on', '0')
end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*',
  'k', 'x', 'u', user, 'n', cjson.encode(nodes))
redis.call('DEL', status, sessions, KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], user)
return {gone, cjson.encode(nodes)}
