-- Library of the registry scripts.
-- Moves `current` to version `v` (ARGV[3] is the model), writes its
-- signature to the models hash, bumps the epoch and tells APIs and workers.
-- KEYS: registry, current, models, history, epoch. ARGV[1]/[2]: models and
-- registry channels; ARGV[4]: history length.
-- `unref(v, blob_key, refs_key, sha)` drops version v's reference to its
-- bytes, deleting them when it was the last one (and the namespace is
-- counted); returns whether the blob was deleted.
local function set_current(v, remember)
  local model = ARGV[3]
  local prev = redis.call('HGET', KEYS[2], model)
  if prev == v then return prev end
  if prev and remember then
    redis.call('LPUSH', KEYS[4], prev)
    redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
  end
  redis.call('HSET', KEYS[2], model, v)
  redis.call('INCR', KEYS[5])
  local sig = redis.call('HGET', KEYS[1], 'sig:' .. v)
  if sig then
    redis.call('HSET', KEYS[3], model, sig)
    redis.call('PUBLISH', ARGV[1], model)
  end
  redis.call('PUBLISH', ARGV[2], model)
  return prev
end
local function meta(v)
  local raw = redis.call('HGET', KEYS[1], v)
  if not raw then return nil end
  local ok, m = pcall(cjson.decode, raw)
  if ok then return m end
  return nil
end
local function sig_for(v, sig)
  return (string.gsub(sig, '"@V@"', '"' .. v .. '"', 1))
end
local function unref(v, blob_key, refs_key, sha)
  if redis.call('HDEL', KEYS[1], 'ref:' .. v) == 0 then return false end
  local n = redis.call('HINCRBY', refs_key, sha, -1)
  if n > 0 then return false end
  redis.call('HDEL', refs_key, sha)
  if redis.call('HEXISTS', refs_key, '.counted') == 1 then
    return redis.call('DEL', blob_key) == 1
  end
  return false
end
