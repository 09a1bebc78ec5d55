-- Stores or replaces a dataset and counts it in its tenant's usage, unless
-- that would go past the tenant's quota (a replacement counts the
-- difference in size). Field `size` is what the usage counts, so a delete
-- releases exactly what was added.
-- KEYS: dataset, dataset names, tenant usage
-- ARGV: csv, meta JSON, size, name, max datasets, max bytes (0 = unbounded)
local existed = redis.call('EXISTS', KEYS[1]) == 1
local old = tonumber(redis.call('HGET', KEYS[1], 'size')) or 0
local size = tonumber(ARGV[3])
local u = redis.call('HMGET', KEYS[3], 'datasets', 'dataset_bytes')
local count, bytes = tonumber(u[1]) or 0, tonumber(u[2]) or 0
local max_count, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
if not existed and max_count > 0 and count + 1 > max_count then
  return {'quota', 'datasets', tostring(count), ARGV[5]}
end
if max_bytes > 0 and bytes - old + size > max_bytes then
  return {'quota', 'dataset_bytes', tostring(bytes), ARGV[6]}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'csv', ARGV[1], 'meta', ARGV[2], 'size', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
if not existed then redis.call('HINCRBY', KEYS[3], 'datasets', 1) end
if size >= old then
  redis.call('HINCRBY', KEYS[3], 'dataset_bytes', size - old)
else
  usage_release(KEYS[3], 'dataset_bytes', old - size)
end
if existed then return {'replaced'} end
return {'created'}
