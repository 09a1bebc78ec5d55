-- Accepts a job: idempotency check, queue-depth check, tenant quota check,
-- then the record, the stream entry, the usage, the job index entry and the
-- idempotency key, all or nothing.
-- KEYS: 1 job record, 2 stream, 3 tenant's job usage (this partition),
--       4 tenant's job index bucket (this partition), 5 idempotency key
--       (optional), or for a 'next' job the previous job's record
-- ARGV: 1 job id, 2 payload, 3 kind, 4 model, 5 created_at,
--       6 deadline ('' = none), 7 max depth (0 = unbounded), 8 group,
--       9 body hash, 10 idempotency ttl, 11 id field, 12 job field,
--       13 traceparent ('' = none), 14 max unfinished jobs,
--       15 max unfinished bytes (0 = unbounded),
--       16 idempotency value this call may replace ('' = none),
--       17 when the index bucket expires (Unix seconds),
--       18 role in an atomic batch: '' (none), 'first' or 'next',
--       19 and 20 for 'first': the batch's jobs and payload bytes,
--       21 webhook subscription JSON ('' = none), 22 its event flags
--       (see WEBHOOK_QUEUE)
-- An atomic batch is sent as one pipeline of calls in one partition: the
-- first checks the bounds for the whole batch; each next one runs only if
-- the job before it was written (so if the first was refused, every one
-- is), and checks nothing else. Every call counts its own job in the usage,
-- so a pipeline cut short leaves counted only the jobs it wrote.
-- Answers: {'created', id} | {'exists', id, same body '1'|'0', value} |
--          {'full', depth} | {'quota', field, used, limit} | {'aborted'}
local role = ARGV[18]
if role == 'next' then
  if redis.call('EXISTS', KEYS[5]) == 0 then return {'aborted'} end
elseif KEYS[5] then
  local v = redis.call('GET', KEYS[5])
  if v and v ~= ARGV[16] then
    local sp = string.find(v, ' ', 1, true)
    if sp then
      local same = '0'
      if string.sub(v, sp + 1) == ARGV[9] then same = '1' end
      return {'exists', string.sub(v, 1, sp - 1), same, v}
    end
  end
end
local size = string.len(ARGV[2])
-- What this call checks the bounds for: itself, or a whole atomic batch.
local n, n_bytes = 1, size
if role == 'first' then n, n_bytes = tonumber(ARGV[19]), tonumber(ARGV[20]) end
if role ~= 'next' then
  local max = tonumber(ARGV[7])
  -- The stream holds every queued and pending entry (trimming removes only
  -- acknowledged ones), so a stream with room for n below the bound is
  -- under it: the group's lag and pending count (XINFO, costly in a
  -- script) are read only near the bound. XLEN is 0 for a missing stream.
  if max > 0 and redis.call('XLEN', KEYS[2]) + n > max then
    local depth
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
      local t = {}
      for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
      if t['name'] == ARGV[8] and t['lag'] then depth = t['lag'] + t['pending'] end
    end
    if not depth then depth = redis.call('XLEN', KEYS[2]) end
    if depth + n > max then return {'full', tostring(depth)} end
  end
  local max_jobs, max_bytes = tonumber(ARGV[14]), tonumber(ARGV[15])
  if max_jobs > 0 or max_bytes > 0 then
    local u = redis.call('HMGET', KEYS[3], 'jobs', 'bytes')
    local jobs, bytes = tonumber(u[1]) or 0, tonumber(u[2]) or 0
    if max_jobs > 0 and jobs + n > max_jobs then
      return {'quota', 'jobs', tostring(jobs), ARGV[14]}
    end
    if max_bytes > 0 and bytes + n_bytes > max_bytes then
      return {'quota', 'bytes', tostring(bytes), ARGV[15]}
    end
  end
end
-- One HSET: every call from a script costs Redis more than a field does.
local record = {'kind', ARGV[3], 'model', ARGV[4], 'status', 'queued',
  'attempts', 0, 'created_at', ARGV[5], 'bytes', size}
if ARGV[6] ~= '' then record[#record + 1] = 'deadline'; record[#record + 1] = ARGV[6] end
if ARGV[13] ~= '' then record[#record + 1] = 'traceparent'; record[#record + 1] = ARGV[13] end
if ARGV[21] ~= '' then
  record[#record + 1] = 'webhook'; record[#record + 1] = ARGV[21]
  record[#record + 1] = 'hook'; record[#record + 1] = ARGV[22]
end
redis.call('HSET', KEYS[1], unpack(record))
redis.call('XADD', KEYS[2], '*', ARGV[11], ARGV[1], ARGV[12], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'jobs', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', size)
-- Score 0: members sort by id, and a UUIDv7 sorts by its time.
redis.call('ZADD', KEYS[4], 0, ARGV[1])
redis.call('EXPIREAT', KEYS[4], ARGV[17])
if KEYS[5] and role == '' then
  redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[9], 'EX', ARGV[10])
end
return {'created', ARGV[1]}
