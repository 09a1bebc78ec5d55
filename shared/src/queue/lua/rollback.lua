-- KEYS: registry, current, models, history, epoch. ARGV: 1-4.
local cur = redis.call('HGET', KEYS[2], ARGV[3])
while true do
  local p = redis.call('LPOP', KEYS[4])
  if not p then return {'none'} end
  if p ~= cur then
    local m = meta(p)
    if m and m.status == 'ready' then
      set_current(p, false)
      return {'ok', cur or '', p}
    end
  end
end
