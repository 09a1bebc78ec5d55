-- KEYS: registry, current, models, history, epoch, blob, blob-refs.
-- ARGV: 1-4, 5 version, 6 the settled version JSON, 7 signature JSON
-- ('' when invalid: the bytes are dropped), 8 sha256.
local m = meta(ARGV[5])
if not m then return 'unknown' end
if m.status ~= 'validating' then return m.status end
redis.call('HSET', KEYS[1], ARGV[5], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'sig:' .. ARGV[5], sig_for(ARGV[5], ARGV[7]))
else
  unref(ARGV[5], KEYS[6], KEYS[7], ARGV[8])
end
return 'settled'
