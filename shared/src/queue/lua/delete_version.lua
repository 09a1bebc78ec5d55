-- KEYS: registry, current, models, history, epoch, blob, blob-refs, then
-- optionally the tenant's model set. ARGV: 1-4, 5 version, 6 its sha256
-- as read before (a version rewritten since is left alone).
local v = ARGV[5]
local m = meta(v)
if not m then return 'unknown' end
if redis.call('HGET', KEYS[2], ARGV[3]) == v then return 'current' end
if m.sha256 ~= ARGV[6] then return 'changed' end
redis.call('HDEL', KEYS[1], v, 'sig:' .. v)
if redis.call('HGET', KEYS[1], 'sha:' .. ARGV[6]) == v then
  redis.call('HDEL', KEYS[1], 'sha:' .. ARGV[6])
end
redis.call('LREM', KEYS[4], 0, v)
local gone = unref(v, KEYS[6], KEYS[7], ARGV[6])
if redis.call('HEXISTS', KEYS[1], 'count') == 1 then
  local left = redis.call('HINCRBY', KEYS[1], 'count', -1)
  if left <= 0 and KEYS[8] then redis.call('SREM', KEYS[8], ARGV[3]) end
end
if gone then return 'deleted_blob' end
return 'deleted'
