-- Deregister a session; when it was the user's last, schedule `offline` after the grace.
-- KEYS: status, sessions, due
-- ARGV: user, session, due_at_ms
-- Returns 1 when an offline was scheduled, else 0.
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then
  return 0
end
if redis.call('HLEN', KEYS[2]) > 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'on') ~= '1' then
  return 0
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
