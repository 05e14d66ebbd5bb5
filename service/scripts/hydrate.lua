-- Re-create a user's status hash from SQL when Redis has none (first use, or data loss).
-- KEYS: status, sessions, ended
-- ARGV: has_row ('1' when SQL has the user), presence, text, avatar, version, updated_at, life
-- Returns 1 when written, 0 when a copy already existed (it wins: it is newer or equal).
-- A user never seen, or deleted lately (`ended` holds when), starts a new life at version
-- 0: a SQL row read before the deletion must not bring the deleted user back.
local status, sessions, ended = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', status) == 1 then
  return 0
end
local on = '0'
if redis.call('HLEN', sessions) > 0 then on = '1' end
local ended_at = redis.call('GET', ended)
if ARGV[1] == '1' and not ended_at then
  redis.call('HSET', status, 'p', ARGV[2], 't', ARGV[3], 'a', ARGV[4], 'v', ARGV[5],
    'ts', ARGV[6], 'on', on, 'rq', '', 'g', ARGV[7])
  return 1
end
local now = redis.call('TIME')
local life = tonumber(now[1]) * 1000000 + tonumber(now[2])
if ended_at and tonumber(ended_at) >= life then
  life = tonumber(ended_at) + 1
end
redis.call('HSET', status, 'p', 'online', 't', '', 'a', '', 'v', 0, 'ts', 0, 'on', on,
  'rq', '', 'g', string.format('%.0f', life))
return 1
