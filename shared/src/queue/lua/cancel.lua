-- Cancels a job: queued → canceled at once; running → cancel_requested,
-- which the worker's lease renewal sees.
-- KEYS: 1 job record, 2 delayed set of its stream, 3 tenant's job usage,
--       4 its partition's webhook outbox
-- ARGV: 1 now, 2 ttl, 3 channel, 4 job id
local f = redis.call('HMGET', KEYS[1], 'status', 'hook', 'attempts')
local st = f[1]
if not st then return {'missing'} end
local tag
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  -- A job waiting out a retry back-off must not be put back on its stream.
  redis.call('HDEL', KEYS[1], 'payload', 'retry_at')
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  usage_release(KEYS[3], 'jobs', 1)
  usage_release(KEYS[3], 'bytes', redis.call('HGET', KEYS[1], 'bytes'))
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  webhook_queue(KEYS[4], f[2], 'c', ARGV[4], 'completed', f[3] or '0')
  tag = 'canceled'
elseif st == 'running' then
  if redis.call('HSETNX', KEYS[1], 'cancel_requested', ARGV[1]) == 1 then
    redis.call('HSET', KEYS[1], 'cancel_ttl', ARGV[2])
  end
  tag = 'requested'
else
  return {'not_cancelable', st}
end
local r = redis.call('HGETALL', KEYS[1])
table.insert(r, 1, tag)
return r
