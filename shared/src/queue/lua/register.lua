-- KEYS: registry, current, models, history, epoch, blob, blob-refs, then
-- optionally the tenant's model set. ARGV: 1-4 as [`COMMON`], 5 sha256,
-- 6 version JSON, 7 signature JSON ('' = unknown yet), 8 mode (`seed` |
-- `add`), 9 bytes, 10 max versions ('' = none), 11 max models ('' = none).
local sha_field = 'sha:' .. ARGV[5]
if ARGV[8] == 'seed' then
  local known = redis.call('HGET', KEYS[1], sha_field)
  local m = known and meta(known)
  if m then
    if m.status == 'ready' and not redis.call('HGET', KEYS[2], ARGV[3]) then
      set_current(known, true)
      return {known, 0, 1, ''}
    end
    return {known, 0, 0, ''}
  end
end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '')
if not count then
  -- A model registered before counts existed: count it once.
  count = 0
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.match(f, '^%d+$') then count = count + 1 end
  end
end
if ARGV[10] ~= '' and count >= tonumber(ARGV[10]) then return {0, 0, 0, 'versions'} end
if KEYS[8] then
  if ARGV[11] ~= '' and redis.call('SISMEMBER', KEYS[8], ARGV[3]) == 0
     and redis.call('SCARD', KEYS[8]) >= tonumber(ARGV[11]) then
    return {0, 0, 0, 'models'}
  end
  redis.call('SADD', KEYS[8], ARGV[3])
end
if redis.call('EXISTS', KEYS[7]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  -- Nothing was ever registered with counts or made current: no blob
  -- predates the counts.
  redis.call('HSET', KEYS[7], '.counted', 1)
end
redis.call('SET', KEYS[6], ARGV[9], 'NX')
redis.call('HINCRBY', KEYS[7], ARGV[5], 1)
local v = tostring(redis.call('HINCRBY', KEYS[1], 'seq', 1))
redis.call('HSET', KEYS[1], v, ARGV[6], 'ref:' .. v, 1, 'count', count + 1)
redis.call('HSETNX', KEYS[1], sha_field, v)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'sig:' .. v, sig_for(v, ARGV[7])) end
local promoted = 0
if ARGV[8] == 'seed' then
  local cur = redis.call('HGET', KEYS[2], ARGV[3])
  local take = not cur
  if cur then
    local m = meta(cur)
    take = (not m) or m.source == 'file'
  end
  if take then
    set_current(v, true)
    promoted = 1
  end
end
return {v, 1, promoted, ''}
