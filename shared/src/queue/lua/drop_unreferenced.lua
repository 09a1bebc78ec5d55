-- KEYS: blob, blob-refs. ARGV: sha256.
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if n > 0 then return 0 end
return redis.call('DEL', KEYS[1])
