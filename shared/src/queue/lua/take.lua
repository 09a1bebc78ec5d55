-- Takes one token from every bucket, or none if any is empty.
-- KEYS: the buckets; ARGV: for each, tokens per ms and burst
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local level = {}
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(b[1]) or burst
  local at = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
  if tokens < 1 then
    return {0, i, math.ceil((1 - tokens) / rate)}
  end
  level[i] = tokens
end
local out = {1}
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local tokens = level[i] - 1
  local full_in = math.ceil((burst - tokens) / rate)
  redis.call('HSET', key, 'tokens', tostring(tokens), 'at', now)
  redis.call('PEXPIRE', key, full_in + 1000)
  out[#out + 1] = math.floor(tokens)
  out[#out + 1] = full_in
end
return out
