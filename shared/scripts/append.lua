-- Appends one durable event of a team, atomically (DESIGN.md, Data path 1).
--
-- KEYS[1] team meta hash    KEYS[2] team event stream
-- KEYS[3] shard ingest      KEYS[4] dedupe key of (team, user, client_id), '' fields if none
-- ARGV[1] team   ARGV[2] kind   ARGV[3] src session   ARGV[4] data (JSON)
-- ARGV[5] team stream MAXLEN (approximate)   ARGV[6] pub/sub channel
-- ARGV[7] dedupe TTL seconds   ARGV[8] epoch to use if the team has none
-- ARGV[9] message id   ARGV[10] ts (ms)
--
-- Returns {is_new, seq, offset, epoch, id, ts}. A repeated client_id returns the first
-- append's values with is_new = 0 and writes nothing.

local meta, events, ingest, dedupe = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local team, kind, src, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local first = redis.call('GET', dedupe)
if first then
  local seq, offset, id, ts = string.match(first, '^(%d+) (%d+) (%S+) (%d+)$')
  local epoch = redis.call('HGET', meta, 'epoch')
  return {'0', seq, offset, epoch or '', id, ts}
end

redis.call('HSETNX', meta, 'epoch', ARGV[8])
local epoch = redis.call('HGET', meta, 'epoch')
local offset = redis.call('HINCRBY', meta, 'offset', 1)
local seq = redis.call('HINCRBY', meta, 'seq', 1)

redis.call('XADD', events, 'MAXLEN', '~', ARGV[5], offset .. '-0',
  'k', kind, 'seq', seq, 'src', src, 'd', data)
redis.call('XADD', ingest, '*',
  'team', team, 'off', offset, 'k', kind, 'seq', seq, 'd', data)
redis.call('SET', dedupe, seq .. ' ' .. offset .. ' ' .. ARGV[9] .. ' ' .. ARGV[10],
  'EX', ARGV[7])
redis.call('PUBLISH', ARGV[6],
  epoch .. '\n' .. offset .. '\n' .. kind .. '\n' .. seq .. '\n' .. src .. '\n' .. data)

return {'1', tostring(seq), tostring(offset), epoch, ARGV[9], ARGV[10]}
