-- Move stream entries that failed too often to the dead-letter stream, atomically.
-- KEYS: stream, dead_letters
-- ARGV: group, maxlen, then per entry: id, fields as a JSON object
-- Returns how many entries were moved.
local moved = 0
for i = 3, #ARGV, 2 do
  local fields = cjson.decode(ARGV[i + 1])
  local flat = {'_id', ARGV[i], '_group', ARGV[1]}
  for k, v in pairs(fields) do
    table.insert(flat, k)
    table.insert(flat, v)
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(flat))
  moved = moved + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
end
return moved
