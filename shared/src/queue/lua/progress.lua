-- Writes a running job's progress, only for its current attempt.
-- KEYS: job; ARGV: attempt, progress JSON
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts')
if f[1] == 'running' and f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'progress', ARGV[2])
  return 1
end
return 0
