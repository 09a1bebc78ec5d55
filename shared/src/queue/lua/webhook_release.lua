-- Moves the retries that are due back into the outbox, oldest first.
-- KEYS: 1 retries, 2 outbox; ARGV: 1 now ms, 2 most to move
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2])
for _, call in ipairs(due) do
  redis.call('ZREM', KEYS[1], call)
  redis.call('XADD', KEYS[2], '*', 'call', call)
end
return #due
