-- Trims a stream of acknowledged entries only.
-- KEYS: stream; ARGV: group
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = {}
  for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
  if t['name'] == ARGV[1] then last = t['last-delivered-id'] end
end
if not last or last == '0-0' then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local minid = last
if tonumber(p[1]) > 0 then minid = p[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
