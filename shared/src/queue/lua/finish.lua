-- Ends attempts of one stream's jobs: a compare-and-set on the attempt,
-- then the outcome, the ack and the wake-up, atomically.
-- One call per stream finishes every job of a batch (see START).
-- KEYS: 1 stream, 2 its partition's dead letters, 3 its delayed set,
--       4 its webhook outbox, then for each job: its record, its tenant's
--       job usage
-- ARGV: group, now, channel, model, then for each job: entry, attempt,
--       mode (succeeded|failed|dead|retry|canceled), ttl, model_version,
--       result, error, job id, retry_at
local group, now, channel, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stream, dead, delayed, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function finish(job, usage, entry, attempt, mode, ttl, version, result, err, id, retry_at)
  local f = redis.call('HMGET', job, 'attempts', 'status', 'bytes', 'cancel_ttl',
    'cancel_requested', 'hook', 'watched')
  if not f[1] then
    redis.call('XACK', stream, group, entry)
    return -1
  end
  if f[1] ~= attempt or f[2] ~= 'running' then
    return 0
  end
  -- A client canceled the job while it ran: it is not retried, whatever
  -- the worker saw of the cancel before the failure.
  if mode == 'retry' and f[5] then mode = 'canceled' end
  local payload
  if mode == 'retry' or mode == 'dead' then
    payload = entry_payload(stream, entry)
    -- Without its entry (deleted by hand) a job cannot be re-queued: end it.
    if not payload then mode = 'dead' end
  end
  if mode == 'retry' then
    redis.call('HSET', job, 'status', 'queued', 'last_error', err,
      'retry_at', retry_at, 'payload', payload)
    if version ~= '' then redis.call('HSET', job, 'model_version', version) end
    redis.call('ZADD', delayed, retry_at, id)
    redis.call('XACK', stream, group, entry)
    -- A followed job (`watched`) tells of its retry; the others pay nothing.
    if f[7] then redis.call('PUBLISH', channel, id) end
    return 1
  end
  local status = 'failed'
  if mode == 'succeeded' then status = 'succeeded' elseif mode == 'canceled' then
    status = 'canceled'
    -- The TTL the API chose when the client asked.
    if f[4] then ttl = f[4] end
  end
  -- One HSET: every call from a script costs Redis more than a field does.
  local record = {'status', status, 'finished_at', now}
  if version ~= '' then record[#record + 1] = 'model_version'; record[#record + 1] = version end
  if result ~= '' then record[#record + 1] = 'result'; record[#record + 1] = result end
  if err ~= '' then record[#record + 1] = 'error'; record[#record + 1] = err end
  redis.call('HSET', job, unpack(record))
  -- Only a retry writes these (the branch above), and a retried job runs
  -- again as attempt 2 or later (a replay resets the count and deletes
  -- them), so a first attempt has none to delete: one call fewer per job.
  if attempt ~= '1' then redis.call('HDEL', job, 'payload', 'retry_at', 'last_error') end
  redis.call('EXPIRE', job, ttl)
  usage_release(usage, 'jobs', 1)
  usage_release(usage, 'bytes', f[3])
  if mode == 'dead' then
    redis.call('XADD', dead, '*', 'id', id, 'job', payload or '', 'model', model,
      'error', err, 'attempts', attempt, 'failed_at', now)
  end
  redis.call('XACK', stream, group, entry)
  redis.call('PUBLISH', channel, id)
  webhook_queue(outbox, f[6], 'c', id, 'completed', attempt)
  return 1
end

local out = {}
for i = 5, #KEYS, 2 do
  local a = 4 + (i - 5) / 2 * 9
  out[#out + 1] = finish(KEYS[i], KEYS[i + 1], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9])
end
return out
