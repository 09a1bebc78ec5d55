-- Renews the leases of entries this consumer still owns, and tells
-- whether a cancel was asked for meanwhile.
-- KEYS: stream, then each entry's job record; ARGV: group, consumer, then
-- the entry ids in the order of their records
-- Answers per entry: 0 lost, 1 held, 2 held and a cancel was asked for.
local out = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    if redis.call('HEXISTS', KEYS[i - 1], 'cancel_requested') == 1 then
      out[#out + 1] = 2
    else
      out[#out + 1] = 1
    end
  else
    out[#out + 1] = 0
  end
end
return out
