-- KEYS: loading, registry:{model}, epoch. ARGV: 1 consumer, 2 marker as
-- read, 3 stale window ms, 4 version, 5 version JSON as read, 6 the
-- quarantined version JSON ('' = only drop the marker), 7 registry
-- channel, 8 model.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= ARGV[2] then return 'changed' end
local at = tonumber(string.match(cur, '(%d+)$')) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - at <= tonumber(ARGV[3]) then return 'fresh' end
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[6] == '' then return 'dropped' end
if redis.call('HGET', KEYS[2], ARGV[4]) ~= ARGV[5] then return 'dropped' end
redis.call('HSET', KEYS[2], ARGV[4], ARGV[6])
redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'quarantined'
