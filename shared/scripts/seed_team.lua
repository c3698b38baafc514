-- Gives a team whose meta hash lacks its offset or seq (a new team, one whose Redis state
-- was lost, or a hash written before seeding existed) counters that go on after everything
-- already given out: the offsets and seqs PostgreSQL holds, the hash's own, the stream's
-- top and the messages hash. Without it a team whose state was lost would give seq 1
-- again, and the worker, which keeps the row it has for a (team, seq), would drop the new
-- message.
--
-- A team whose counters were given out before its node was promoted from a replica
-- (lineage.lua, which comes before this script) is seeded again: the promoted replica may
-- lack the last appends. It gets a new epoch (clients resuming from what they saw get
-- `recovered: false` and reload), and its seqs skip SEQ_GAP past the highest known, so a
-- message lost with the old master keeps a seq of its own in the clients that saw it.
-- The messages PostgreSQL has past the offset the replica holds were synced from the lost
-- master: their dedupe keys are set again, so a sender retrying one (its ack was lost with
-- the master) gets its first ack, not a second copy. The first call answers {'synced',
-- offset} without writing; the caller reads those messages and calls again with them.
--
-- KEYS[1] team meta hash   KEYS[2] team event stream   KEYS[3] messages hash
-- KEYS[4] the team's set of pinned seqs   KEYS[5] the shard's lineage hash
-- KEYS[6…] dedupe keys of messages synced past ARGV[4]
-- ARGV[1] newest seq in PostgreSQL   ARGV[2] newest offset in PostgreSQL
-- ARGV[3] epoch to use if the team has none   ARGV[4] the offset the messages of KEYS[6…]
-- were read past ('' for not read)   ARGV[5] dedupe TTL seconds   ARGV[6] n, the number of
-- pins that follow   ARGV[7 … 6+n] seqs PostgreSQL has pinned (the set is filled with
-- them if Redis lost it, so an unpin of one finds it pinned)   ARGV[7+n …] one dedupe
-- value ('seq offset id ts') per key of KEYS[6…]
-- Returns {status, offset}: status 0 when the team had its counters already (another
-- caller seeded it first), 1 when it wrote them, 2 when it seeded the team again after a
-- promotion, 'synced' when it needs the synced messages past ARGV[4] first; offset is
-- the newest offset Redis held of the team.

-- More messages than a team can append between a master's last replicated write and its
-- death (replication lags by milliseconds; the workers sync within about a second).
local SEQ_GAP = 1000

local meta, events, messages = KEYS[1], KEYS[2], KEYS[3]
local gen = generation(KEYS[5])
local state = redis.call('HMGET', meta, 'offset', 'seq', 'gen')
local counted = state[1] and state[2]
if counted and (state[3] or '0') == gen then return {0, state[1]} end

local seq = math.max(tonumber(ARGV[1]), tonumber(state[2]) or 0)
for _, taken in ipairs(redis.call('HKEYS', messages)) do
  seq = math.max(seq, tonumber(taken))
end
local held = tonumber(state[1]) or 0
local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
if newest then
  held = math.max(held, tonumber(string.match(newest[1], '^(%d+)')))
end
local offset = math.max(tonumber(ARGV[2]), held)
-- Integers as text: Lua 5.1 would print large numbers in exponent form.
local function int(n) return string.format('%d', n) end
if counted and ARGV[4] ~= int(held) then return {'synced', int(held)} end

local status = 1
if counted then
  status = 2
  seq = seq + SEQ_GAP
  redis.call('HSET', meta, 'epoch', ARGV[3])
  local pins = tonumber(ARGV[6])
  for i = 6, #KEYS do
    redis.call('SET', KEYS[i], ARGV[6 + pins + i - 5], 'NX', 'EX', ARGV[5])
  end
else
  redis.call('HSETNX', meta, 'epoch', ARGV[3])
end
redis.call('HSET', meta, 'offset', int(offset), 'seq', int(seq), 'gen', gen)
if tonumber(ARGV[6]) > 0 and redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('SADD', KEYS[4], unpack(ARGV, 7, 6 + tonumber(ARGV[6])))
end
return {status, int(held)}
