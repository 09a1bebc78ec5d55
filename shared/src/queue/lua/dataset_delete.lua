-- Deletes a dataset and releases what it counted in its tenant's usage.
-- KEYS: dataset, dataset names, tenant usage; ARGV: name
local size = redis.call('HGET', KEYS[1], 'size')
if redis.call('DEL', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('SREM', KEYS[2], ARGV[1])
usage_release(KEYS[3], 'datasets', 1)
usage_release(KEYS[3], 'dataset_bytes', size)
return 1
