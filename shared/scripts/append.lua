-- Appends one durable event of a team, atomically (DESIGN.md, Data path 1).
--
-- KEYS[1] team meta hash    KEYS[2] team event stream
-- KEYS[3] shard ingest      KEYS[4] dedupe key of (team, user, client_id)
-- ARGV[1] team   ARGV[2] kind   ARGV[3] src session   ARGV[4] data (JSON)
-- ARGV[5] team stream MAXLEN (approximate)   ARGV[6] pub/sub channel
-- ARGV[7] dedupe TTL seconds   ARGV[8] epoch to use if the team has none
-- ARGV[9] message id   ARGV[10] ts (ms)
--
-- Returns {is_new, seq, offset, epoch, id, ts} as strings. A repeated client_id returns
-- the first append's values with is_new = '0' and writes nothing.
--
-- Redis does not undo a script's earlier writes when a later command fails, so the one
-- command that can fail on its input (the team-stream XADD, whose id must grow) runs
-- before any counter moves.

local meta, events, ingest, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local team, kind, src, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local first = redis.call('GET', dedupe)
if first then
  local seq, offset, id, ts = string.match(first, '^(%d+) (%d+) (%S+) (%d+)$')
  local epoch = redis.call('HGET', meta, 'epoch')
  return {'0', seq, offset, epoch or '', id, ts}
end

-- Integers as text: Lua 5.1 would print large numbers in exponent form.
local offset = string.format('%d', (tonumber(redis.call('HGET', meta, 'offset')) or 0) + 1)
local seq = string.format('%d', (tonumber(redis.call('HGET', meta, 'seq')) or 0) + 1)

redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], offset .. '-0',
  'k', kind, 'seq', seq, 'src', src, 'd', data)
redis.call('HSETNX', meta, 'epoch', ARGV[8])
local epoch = redis.call('HGET', meta, 'epoch')
redis.call('HSET', meta, 'offset', offset, 'seq', seq)
redis.call('XADD', ingest, '*',
  'team', team, 'off', offset, 'k', kind, 'seq', seq, 'd', data)
redis.call('SET', dedupe, seq .. ' ' .. offset .. ' ' .. ARGV[9] .. ' ' .. ARGV[10],
  'EX', ARGV[7])
redis.call('PUBLISH', ARGV[6],
  epoch .. '\n' .. offset .. '\n' .. kind .. '\n' .. seq .. '\n' .. src .. '\n' .. data)

return {'1', seq, offset, epoch, ARGV[9], ARGV[10]}
