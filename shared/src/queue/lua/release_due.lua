-- Moves due retries of one stream back onto it. The caller read the due ids
-- (ZRANGEBYSCORE); one that left the set meanwhile (canceled, or moved by
-- another worker) is skipped, so a job is never queued twice.
-- KEYS: 1 the stream's delayed set, 2 the stream, then each job's record
-- ARGV: 1 id field, 2 job field, then each job's id, in the order of KEYS 3..
local moved = 0
for i = 3, #KEYS do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local f = redis.call('HMGET', KEYS[i], 'status', 'payload')
    if f[1] == 'queued' and f[2] then
      redis.call('XADD', KEYS[2], '*', ARGV[1], id, ARGV[2], f[2])
      redis.call('HDEL', KEYS[i], 'payload', 'retry_at')
      moved = moved + 1
    end
  end
end
return moved
