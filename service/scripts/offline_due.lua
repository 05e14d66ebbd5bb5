-- Emit `offline` for a user whose grace ran out with no session back.
-- KEYS: status, sessions, due, events
-- ARGV: user, now_ms, maxlen
-- Returns 1 when the user went offline, else 0.
local status, sessions, due, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local user, now = ARGV[1], tonumber(ARGV[2])
local score = redis.call('ZSCORE', due, user)
if not score or tonumber(score) > now then
  return 0
end
redis.call('ZREM', due, user)
if redis.call('HLEN', sessions) > 0 then
  return 0
end
local s = redis.call('HMGET', status, 'p', 't', 'a', 'on', 'g')
if s[4] ~= '1' then
  return 0
end
redis.call('HSET', status, 'on', '0')
if s[1] ~= 'invisible' then
  local version = redis.call('HINCRBY', status, 'v', 1)
  redis.call('HSET', status, 'ts', now)
  redis.call('XADD', events, 'MAXLEN', '~', ARGV[3], '*',
    'k', 's', 'u', user, 'p', s[1], 't', s[2], 'a', s[3], 'v', version, 'ts', now, 'on', '0',
    'g', s[5] or '0')
end
return 1
