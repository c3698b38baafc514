-- Gives a team whose meta hash lacks its offset or seq (a new team, one whose Redis state
-- was lost, or a hash written before seeding existed) counters that go on after everything
-- already given out: the offsets and seqs PostgreSQL holds, the hash's own, the stream's
-- top and the messages hash. Without it a team whose state was lost would give seq 1
-- again, and the worker, which keeps the row it has for a (team, seq), would drop the new
-- message.
--
-- KEYS[1] team meta hash   KEYS[2] team event stream   KEYS[3] messages hash
-- KEYS[4] the team's set of pinned seqs
-- ARGV[1] newest seq in PostgreSQL   ARGV[2] newest offset in PostgreSQL
-- ARGV[3] epoch to use if the team has none   ARGV[4…] seqs PostgreSQL has pinned (the
-- set is filled with them if Redis lost it, so an unpin of one finds it pinned)
-- Returns 1 when it wrote the counters, 0 when the team had them already (another
-- gateway seeded it first).

local meta, events, messages = KEYS[1], KEYS[2], KEYS[3]
local state = redis.call('HMGET', meta, 'offset', 'seq')
if state[1] and state[2] then return 0 end

local seq = math.max(tonumber(ARGV[1]), tonumber(state[2]) or 0)
for _, taken in ipairs(redis.call('HKEYS', messages)) do
  seq = math.max(seq, tonumber(taken))
end
local offset = math.max(tonumber(ARGV[2]), tonumber(state[1]) or 0)
local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
if newest then
  offset = math.max(offset, tonumber(string.match(newest[1], '^(%d+)')))
end

redis.call('HSETNX', meta, 'epoch', ARGV[3])
-- Integers as text: Lua 5.1 would print large numbers in exponent form.
redis.call('HSET', meta, 'offset', string.format('%d', offset), 'seq', string.format('%d', seq))
if #ARGV > 3 and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SADD', KEYS[4], unpack(ARGV, 4))
end
return 1
