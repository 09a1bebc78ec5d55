-- Puts a dead letter back on its work stream, atomically: the dead-letter
-- entry must still exist (else someone replayed it first and nothing is
-- written), the job must not be queued or running already (a job
-- dead-lettered twice has two entries; replaying both would run it twice),
-- then the record is reset to a fresh `queued` job that no longer expires,
-- the original `id` and `job` bytes are appended to the model's stream, and
-- the dead-letter entry is deleted. Retry bookkeeping of the worker
-- (`payload`, `retry_at`, `last_error`, the delayed set) is cleared so the
-- job cannot come back a second way.
-- KEYS: dead-letter stream, job record, work stream, delayed set, tenant usage
-- ARGV: dead-letter entry id, job id, payload, kind, model, created_at, group
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return {'gone'}
end
local st = redis.call('HGET', KEYS[2], 'status')
if st == 'queued' or st == 'running' then
  return {'active', st}
end
local g = redis.pcall('XGROUP', 'CREATE', KEYS[3], ARGV[7], '0', 'MKSTREAM')
if type(g) == 'table' and g.err and not string.find(g.err, 'BUSYGROUP', 1, true) then
  return redis.error_reply(g.err)
end
redis.call('HSETNX', KEYS[2], 'kind', ARGV[4])
redis.call('HSETNX', KEYS[2], 'model', ARGV[5])
redis.call('HSETNX', KEYS[2], 'created_at', ARGV[6])
redis.call('HSET', KEYS[2], 'status', 'queued', 'attempts', 0, 'bytes', string.len(ARGV[3]))
redis.call('HDEL', KEYS[2], 'result', 'error', 'started_at', 'finished_at',
  'model_version', 'worker', 'payload', 'retry_at', 'last_error', 'progress',
  'cancel_requested', 'cancel_ttl')
-- Unfinished again: counted against its tenant until it ends (see usage).
redis.call('HINCRBY', KEYS[5], 'jobs', 1)
redis.call('HINCRBY', KEYS[5], 'bytes', string.len(ARGV[3]))
redis.call('PERSIST', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[2])
local id = redis.call('XADD', KEYS[3], '*', 'id', ARGV[2], 'job', ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[1])
return {'replayed', id}
