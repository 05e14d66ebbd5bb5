-- Remove everything Redis holds of a user; watchers see them offline at once.
-- KEYS: status, sessions, list, list_version, rate, due, events, ended
-- ARGV: user, now_ms, maxlen, ended_ttl_ms
-- Returns {offline item fields as a JSON object or '', nodes holding the user's sessions,
-- the life that ended, when it ended}. `ended` keeps that moment for a while, so that
-- neither a SQL read nor a SQL write begun before the deletion can bring the user back.
local status, sessions, events = KEYS[1], KEYS[2], KEYS[7]
local user, now = ARGV[1], tonumber(ARGV[2])
local nodes, seen = {}, {}
for _, node in ipairs(redis.call('HVALS', sessions)) do
  if not seen[node] then seen[node] = true; table.insert(nodes, node) end
end
local gone = ''
local s = redis.call('HMGET', status, 'p', 't', 'a', 'v', 'g')
local life = s[5] or '0'
if s[4] then
  local version = tonumber(s[4]) + 1
  gone = cjson.encode({user = user, presence = 'offline', text = '', avatar = cjson.null,
    version = version, updated_at = now})
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*',
    'k', 's', 'u', user, 'p', s[1], 't', '', 'a', '', 'v', version, 'ts', now, 'on', '0',
    'g', life)
end
redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*',
  'k', 'x', 'u', user, 'n', cjson.encode(nodes))
redis.call('DEL', status, sessions, KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[6], user)
local clock = redis.call('TIME')
local ended_at = string.format('%.0f', tonumber(clock[1]) * 1000000 + tonumber(clock[2]))
redis.call('SET', KEYS[8], ended_at, 'PX', ARGV[4])
return {gone, cjson.encode(nodes), life, ended_at}
