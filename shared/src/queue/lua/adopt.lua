-- KEYS: registry:{model}, blob-refs. ARGV: version, sha256, JSON as read.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end
if redis.call('HSETNX', KEYS[1], 'ref:' .. ARGV[1], 1) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return 1
