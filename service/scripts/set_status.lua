-- Commit a status change in one step: rate limit, bump the version, write, XADD.
-- KEYS: status, events, rate
-- ARGV: user, now_ms, request_id, rate_per_s (0 = unlimited), burst, maxlen,
--       has_presence, presence, has_text, text, has_avatar, avatar
-- Returns {code, presence, text, avatar, version, updated_at, visible}:
--   code 0 committed (or a retry of the same request), 1 status missing (hydrate first),
--   2 rate limited.
local status, events, rate = KEYS[1], KEYS[2], KEYS[3]
local user, now = ARGV[1], tonumber(ARGV[2])

if redis.call('EXISTS', status) == 0 then
  return {1}
end

local function current()
  local s = redis.call('HMGET', status, 'p', 't', 'a', 'v', 'ts', 'on')
  return {0, s[1], s[2], s[3], tonumber(s[4]), tonumber(s[5]), s[6]}
end

-- A client-side retry of a request already committed must not bump the version twice.
if ARGV[3] ~= '' and redis.call('HGET', status, 'rq') == ARGV[3] then
  return current()
end

local per_s, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
if per_s > 0 then
  local bucket = redis.call('HMGET', rate, 'tokens', 'ts')
  local tokens, last = tonumber(bucket[1]) or burst, tonumber(bucket[2]) or now
  if now > last then
    tokens = math.min(burst, tokens + (now - last) * per_s / 1000)
  end
  if tokens < 1 then
    redis.call('HSET', rate, 'tokens', tostring(tokens), 'ts', now)
    return {2}
  end
  redis.call('HSET', rate, 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', rate, math.ceil(burst / per_s * 1000) + 1000)
end

if ARGV[7] == '1' then redis.call('HSET', status, 'p', ARGV[8]) end
if ARGV[9] == '1' then redis.call('HSET', status, 't', ARGV[10]) end
if ARGV[11] == '1' then redis.call('HSET', status, 'a', ARGV[12]) end
local version = redis.call('HINCRBY', status, 'v', 1)
redis.call('HSET', status, 'ts', now, 'rq', ARGV[3])

local s = redis.call('HMGET', status, 'p', 't', 'a', 'on', 'g')
redis.call('XADD', events, 'MAXLEN', '~', ARGV[6], '*',
  'k', 's', 'u', user, 'p', s[1], 't', s[2], 'a', s[3], 'v', version, 'ts', now, 'on', s[4],
  'g', s[5] or '0')
return {0, s[1], s[2], s[3], version, now, s[4]}
