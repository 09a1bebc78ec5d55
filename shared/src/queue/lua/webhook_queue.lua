-- Queues a webhook call in the partition's outbox when the job's
-- subscription (its record's `hook` flags, written at submit: s start,
-- p progress, c completed) asks for `flag`. A job without a webhook has
-- no `hook` field: it costs one more field in a read the caller does anyway.
local function webhook_queue(outbox, hook, flag, id, event, attempt, progress)
  if not hook or not string.find(hook, flag, 1, true) then return end
  if progress then
    redis.call('XADD', outbox, '*', 'id', id, 'event', event, 'attempt', attempt,
      'progress', progress)
  else
    redis.call('XADD', outbox, '*', 'id', id, 'event', event, 'attempt', attempt)
  end
end
