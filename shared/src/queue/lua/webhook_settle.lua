-- Settles one webhook call: removes it from the outbox, records the attempt
-- in the job's record (if the record still exists; it keeps its TTL), and
-- parks the call for a retry or dead-letters it. A call another dispatcher
-- settled first (after taking it over) is left alone.
-- KEYS: 1 outbox, 2 retries, 3 dead letters, 4 job record
-- ARGV: 1 group, 2 entry id, 3 mode (delivered|retry|dead), 4 event,
--       5 delivery state JSON, 6 call JSON, 7 due ms (retry) or error
--       (dead), 8 now ms
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then
  local t = {}
  local cur = redis.call('HGET', KEYS[4], 'webhook_deliveries')
  if cur then
    local ok, v = pcall(cjson.decode, cur)
    if ok and type(v) == 'table' then t = v end
  end
  t[ARGV[4]] = cjson.decode(ARGV[5])
  redis.call('HSET', KEYS[4], 'webhook_deliveries', cjson.encode(t))
end
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
elseif ARGV[3] == 'dead' then
  redis.call('XADD', KEYS[3], '*', 'call', ARGV[6], 'error', ARGV[7], 'failed_at', ARGV[8])
end
return 1
