-- Puts a dead webhook call back in the outbox, once: the dead letter must
-- still exist (else someone replayed it first), and is deleted.
-- KEYS: 1 dead letters, 2 outbox; ARGV: 1 entry id, 2 call JSON (tries reset)
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'call', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
