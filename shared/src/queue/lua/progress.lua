-- Writes a running job's progress, only for its current attempt.
-- KEYS: job, its partition's webhook outbox; ARGV: attempt, progress JSON,
-- channel, job id
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'hook', 'watched')
if f[1] == 'running' and f[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'progress', ARGV[2])
  webhook_queue(KEYS[2], f[3], 'p', ARGV[4], 'progress', ARGV[1], ARGV[2])
  -- Only a job an event stream follows (`watched`) tells of its progress.
  if f[4] then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
  return 1
end
return 0
