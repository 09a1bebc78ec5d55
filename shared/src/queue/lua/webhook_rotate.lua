-- Rotates a tenant's signing secret: the current one stays valid (signed
-- with, beside the new one) until ARGV[3].
-- KEYS: 1 the tenant's secrets; ARGV: 1 new secret, 2 now ms, 3 old one valid until (ms)
local cur = redis.call('HGET', KEYS[1], 'current')
if cur then
  redis.call('HSET', KEYS[1], 'previous', cur, 'previous_until', ARGV[3])
end
redis.call('HSET', KEYS[1], 'current', ARGV[1], 'rotated_at', ARGV[2])
return 1
