-- The state a room:join reports: the team's epoch (created on first use), the offset of its
-- newest durable event and its newest message seq.
--
-- KEYS[1] team meta hash    ARGV[1] epoch to use if the team has none
-- Returns {epoch, offset, seq}, with '0' for an offset or seq not yet taken.

redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'seq')
return {state[1], state[2] or '0', state[3] or '0'}
