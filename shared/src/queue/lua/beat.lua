-- One heartbeat of a worker for every model it serves.
-- KEYS: the heartbeat set of every served model; ARGV: consumer, retain ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retain = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, string.format('%.0f', now), ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', now - retain))
  redis.call('PEXPIRE', key, retain)
end
return 1
