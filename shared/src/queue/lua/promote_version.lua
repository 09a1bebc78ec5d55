-- KEYS: registry, current, models, history, epoch. ARGV: 1-4, 5 version.
local m = meta(ARGV[5])
if not m then return {'unknown'} end
if m.status ~= 'ready' then return {'not_ready', m.status} end
local prev = set_current(ARGV[5], true)
return {'ok', prev or ''}
