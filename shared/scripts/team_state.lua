-- The state a room:join reports: the team's epoch (created on first use), the offset of its
-- newest durable event, its newest message seq, and every user's read receipt.
--
-- KEYS[1] team meta hash    KEYS[2] receipts hash (user -> seq)
-- KEYS[3] the shard's lineage hash (lineage.lua, which comes before this script)
-- ARGV[1] epoch to use if the team has none
-- Returns {epoch, offset, seq, user1, seq1, user2, seq2, …}; {'unseeded'} for a team whose
-- counters seed_team.lua must set first (or set again, on a promoted replica).

local state = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'seq', 'gen')
if not (state[2] and state[3]) or (state[4] or '0') ~= generation(KEYS[3]) then
  return {'unseeded'}
end
if not state[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
  state[1] = ARGV[1]
end
local reply = {state[1], state[2], state[3]}
for _, field in ipairs(redis.call('HGETALL', KEYS[2])) do
  table.insert(reply, field)
end
return reply
