-- Marks a job followed by an event stream (`watched`), so that its start,
-- progress and retry PUBLISH its id as its end does, and reads its record
-- in the same step: a transition after this read is always published.
-- KEYS: job; ARGV: the record fields to read
-- Returns the fields' values, or an empty list for an unknown job (no
-- record is created).
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
redis.call('HSET', KEYS[1], 'watched', 1)
return redis.call('HMGET', KEYS[1], unpack(ARGV))
