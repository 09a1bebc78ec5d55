-- Library: subtracts from a usage counter, never below zero. Prepended to
-- the scripts that release usage.
local function usage_release(key, field, n)
  n = tonumber(n) or 0
  if n <= 0 then return end
  if redis.call('HINCRBY', key, field, -n) < 0 then
    redis.call('HSET', key, field, 0)
  end
end
