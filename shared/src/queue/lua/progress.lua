-- Writes a running job's progress, only for its current attempt.
-- KEYS: job, its partition's webhook outbox; ARGV: attempt, progress JSON,
-- job id
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'hook')
if f[1] == 'running' and f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'progress', ARGV[2])
  webhook_queue(KEYS[2], f[3], 'p', ARGV[3], 'progress', ARGV[1], ARGV[2])
  return 1
end
return 0
