-- Re-create a user's status hash from SQL when Redis has none (first use, or data loss).
-- KEYS: status, sessions
-- ARGV: presence, text, avatar, version, updated_at
-- Returns 1 when written, 0 when a copy already existed (it wins: it is newer or equal).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local on = '0'
if redis.call('HLEN', KEYS[2]) > 0 then on = '1' end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 't', ARGV[2], 'a', ARGV[3], 'v', ARGV[4],
  'ts', ARGV[5], 'on', on, 'rq', '')
return 1
