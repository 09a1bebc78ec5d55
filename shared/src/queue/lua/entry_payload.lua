-- Library: the `job` field of a pending entry. The entry is still in its
-- stream (trimming never touches unacknowledged entries), so the payload
-- need not travel with every start and finish; only a retry or a dead
-- letter reads it.
local function entry_payload(stream, id)
  local e = redis.call('XRANGE', stream, id, id)
  if not e[1] then return nil end
  local f = e[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'job' then return f[i + 1] end
  end
  return nil
end
