-- Register a session; the user's first session makes them visible to watchers.
-- KEYS: status, sessions, due, events
-- ARGV: user, session, node, now_ms, maxlen, max_sessions (0: no cap)
-- Returns 0 when registered, 1 when the status hash is missing (hydrate first),
-- 2 when the user already holds max_sessions sessions.
local status, sessions, due, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, now = ARGV[1], tonumber(ARGV[4])
if redis.call('EXISTS', status) == 0 then
  return 1
end
local cap = tonumber(ARGV[6]) or 0
if cap > 0 and redis.call('HEXISTS', sessions, ARGV[2]) == 0
    and redis.call('HLEN', sessions) >= cap then
  return 2
end
redis.call('HSET', sessions, ARGV[2], ARGV[3])
-- Back within the grace period: the pending offline is cancelled and watchers see nothing.
if redis.call('ZREM', due, user) == 1 then
  return 0
end
local s = redis.call('HMGET', status, 'p', 't', 'a', 'on', 'g')
if s[4] == '1' then
  return 0
end
redis.call('HSET', status, 'on', '1')
if s[1] ~= 'invisible' then
  local version = redis.call('HINCRBY', status, 'v', 1)
  redis.call('HSET', status, 'ts', now)
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], '*',
    'k', 's', 'u', user, 'p', s[1], 't', s[2], 'a', s[3], 'v', version, 'ts', now, 'on', '1',
    'g', s[5] or '0')
end
return 0
