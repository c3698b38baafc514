-- Appends durable events of a shard's teams, each atomically and in order (group commit:
-- the gateway sends what queued for the shard while its previous call was in flight, so
-- the call's cost is paid per batch; docs/architecture.md, Data path). Each event has 10
-- KEYS and 20 ARGV, event i's at KEYS[10*i+1 ..] and ARGV[20*i+1 ..], described below as
-- KEYS[1..10] and ARGV[1..20]; the answer is an array of one answer per event, in order.
-- lineage.lua comes before this script (its `generation`).
--
-- KEYS[1] team meta hash     KEYS[2] team event stream     KEYS[3] shard ingest stream
-- KEYS[4] dedupe key of (team, user, client_id) for messages; for edits and deletes the
-- tombstone of a deleted message the messages hash no longer holds; for pins and unpins
-- the team's set of pinned seqs; any key of the team otherwise
-- KEYS[5] messages hash: seq -> "author \t id" ("author \t id \t r" for a thread reply),
-- with "~" before it once deleted; it holds
-- the newest ARGV[16] messages only (the stream's retention), older ones are looked up in
-- PostgreSQL by the caller
-- KEYS[6] receipts hash: user -> seq read up to
-- KEYS[7] the shard's credits per user (and their total, '#total')
-- KEYS[8] the tombstone of the message ARGV[10] names (edit, delete, pin, reply's parent)
-- KEYS[9] the reactions hash of the message ARGV[10] names: 'user \t emoji' -> 1,
-- '\t emoji' -> count, '#' -> distinct emojis. While the message is in the messages hash
-- it has no TTL and a missing one means no reactions; once the message leaves the hash
-- (or for an older message, loaded from PostgreSQL) it lives ARGV[6] seconds after its
-- last change, and a missing one is loaded from PostgreSQL (ARGV[19]). The key of another
-- seq is this one with its seq replaced (same hash tag, so the same cluster slot).
-- KEYS[10] the shard's lineage hash (lineage.lua)
-- ARGV[1] team   ARGV[2] kind (message|edit|delete|receipt|pin|unpin|react|unreact)   ARGV[3] src session
-- ARGV[4] data (JSON)   ARGV[5] channel
-- ARGV[6] dedupe TTL seconds   ARGV[7] epoch to use if the team has none
-- ARGV[8] message id (message)   ARGV[9] ts (ms)   ARGV[10] target seq (edit, delete,
-- receipt; for a message, its thread's parent, '0' for none)   ARGV[11] user   ARGV[12] '1' if the user may delete anyone's message
-- ARGV[13] credit cost   ARGV[14] the user's credit limit ('' for none)
-- ARGV[15] credits the user used on other shards (for the limit)
-- ARGV[16] how many of the newest messages the messages hash keeps
-- ARGV[17] for an edit or delete of a message (or a reply to a parent) the hash does not
-- hold: its entry as PostgreSQL has it ('' when not looked up yet)
-- ARGV[18] the emoji (react, unreact)
-- ARGV[19] for a reaction with ARGV[17]: the message's reactions as PostgreSQL has them,
-- 'user \t emoji' lines; '-' when not loaded
-- ARGV[20] how the event is published on ARGV[5]: 'PUBLISH', or 'SPUBLISH' on a Redis
-- Cluster (the channel has the shard's hash tag: published on its shard's node only)
--
-- An event's answer: {'1', seq, offset, epoch, id, ts} for an appended event; {'0', …} with the first
-- append's values for a repeated client_id (not charged again); {'err', code} for a
-- refused one (nothing written); {'ignored'} for a receipt not above the user's last;
-- {'unchanged', id} for a pin of a pinned message or an unpin of one that is not, or a
-- reaction the user already has (or a removal of one they have not) (nothing written);
-- {'unseeded'} for a team whose counters seed_team.lua must set first, or set again on a
-- promoted replica (nothing written);
-- {'lookup'} for an edit, delete, pin or reaction of a message (or a reply to a parent)
-- older than the hash holds: call again with its entry from PostgreSQL in ARGV[17]
-- (nothing written); {'reactions'} for a reaction to such a message whose reactions Redis
-- no longer holds: call again with them in ARGV[19] too (nothing written).
--
-- Redis does not undo a script's earlier writes when a later command fails, so every check
-- comes first, and the one command that can fail on its input (the team-stream XADD,
-- whose id must grow) runs before any counter moves; should it fail all the same, that
-- event answers {'failed', error} and the batch goes on.

-- Integers as text: Lua 5.1 would print large numbers in exponent form.
local function int(n) return string.format('%d', n) end
-- The most distinct emojis one message may carry (../shared/PROTOCOL.md, "Chat model").
local MAX_EMOJIS = 50

-- One event: KEYS and ARGV are its 10 keys and 20 arguments.
local function append(KEYS, ARGV)
  local meta, events, ingest, dedupe, messages, receipts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
  local user_credits = KEYS[7]
  local team, kind, src, data = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
  local id, ts, user = ARGV[8], ARGV[9], ARGV[11]

  -- Each redis.call costs about as much as the command it runs: the meta hash is read once
  -- and written once.
  local state = redis.call('HMGET', meta, 'seq', 'offset', 'epoch', 'gen')
  -- A new team, or one whose meta hash was lost, or whose counters were given out before
  -- this node was promoted: its counters must first be set after what was given out
  -- before (seed_team.lua, with what PostgreSQL holds).
  if not (state[1] and state[2]) or (state[4] or '0') ~= generation(KEYS[10]) then
    return {'unseeded'}
  end
  local top_seq = tonumber(state[1])
  local epoch = state[3]
  local seq, entry, from_db
  local reply = ''
  local reactions, member, emoji_count = KEYS[9], '', ''

  -- A message's entry in the hash (or as PostgreSQL has it, in ARGV[17]); nil and an error
  -- when there is none to act on.
  local function known(target)
    local found = redis.call('HGET', messages, target)
    if found then return found, false end
    -- Older than the hash holds (or the hash was lost): PostgreSQL knows the message.
    local n = tonumber(target)
    if n < 1 or n > top_seq then return nil, {'err', 'not_found'} end
    -- Deleted, and PostgreSQL does not show it yet.
    if redis.call('EXISTS', KEYS[8]) == 1 then return nil, {'err', 'not_found'} end
    if ARGV[17] == '' then return nil, {'lookup'} end
    return ARGV[17], true
  end

  if kind == 'message' then
    local first = redis.call('GET', dedupe)
    if first then
      local f_seq, f_offset, f_id, f_ts = string.match(first, '^(%d+) (%d+) (%S+) (%d+)$')
      return {'0', f_seq, f_offset, epoch or '', f_id, f_ts}
    end
    seq = int(top_seq + 1)
    if ARGV[10] ~= '0' then
      -- A thread reply: its parent exists, is not deleted, and is not a reply itself.
      local parent, refused = known(ARGV[10])
      if not parent then return refused end
      if string.sub(parent, 1, 1) == '~' then return {'err', 'not_found'} end
      if string.find(parent, '\t[^\t]*\t') then return {'err', 'bad_request'} end
      reply = '\tr'
    end
  elseif kind == 'edit' or kind == 'delete' then
    seq = ARGV[10]
    local found, looked_up = known(seq)
    if not found then return looked_up end
    entry, from_db = found, looked_up
    if string.sub(entry, 1, 1) == '~' then return {'err', 'not_found'} end
    local author, message_id = string.match(entry, '^([^\t]*)\t([^\t]*)')
    if author ~= user and not (kind == 'delete' and ARGV[12] == '1') then
      return {'err', 'forbidden'}
    end
    id = message_id
  elseif kind == 'pin' or kind == 'unpin' then
    seq = ARGV[10]
    local found, looked_up = known(seq)
    if not found then return looked_up end
    if string.sub(found, 1, 1) == '~' then return {'err', 'not_found'} end
    id = string.match(found, '^[^\t]*\t([^\t]*)')
    local pinned = redis.call('SISMEMBER', dedupe, seq) == 1
    if pinned == (kind == 'pin') then return {'unchanged', id} end
  elseif kind == 'react' or kind == 'unreact' then
    seq = ARGV[10]
    local found, looked_up = known(seq)
    if not found then return looked_up end
    if string.sub(found, 1, 1) == '~' then return {'err', 'not_found'} end
    id = string.match(found, '^[^\t]*\t([^\t]*)')
    from_db = looked_up
    if from_db and redis.call('EXISTS', reactions) == 0 then
      -- Not changed for ARGV[6] seconds, long synced: PostgreSQL's reactions are the truth.
      -- (Only a cache is written before the checks below: what it holds is true either way.)
      if ARGV[19] == '-' then return {'reactions'} end
      redis.call('HSET', reactions, '#', 0)
      for pair in string.gmatch(ARGV[19], '[^\n]+') do
        redis.call('HSET', reactions, pair, 1)
        if redis.call('HINCRBY', reactions, '\t' .. string.match(pair, '\t(.*)$'), 1) == 1 then
          redis.call('HINCRBY', reactions, '#', 1)
        end
      end
      redis.call('EXPIRE', reactions, ARGV[6])
    end
    member, emoji_count = user .. '\t' .. ARGV[18], '\t' .. ARGV[18]
    local has = redis.call('HEXISTS', reactions, member) == 1
    if has == (kind == 'react') then return {'unchanged', id} end
    if kind == 'react' and redis.call('HEXISTS', reactions, emoji_count) == 0
        and (tonumber(redis.call('HGET', reactions, '#')) or 0) >= MAX_EMOJIS then
      return {'err', 'too_large'}
    end
  elseif kind == 'receipt' then
    seq = ARGV[10]
    if tonumber(seq) > top_seq then return {'err', 'bad_request'} end
    local last = tonumber(redis.call('HGET', receipts, user))
    if last and tonumber(seq) <= last then return {'ignored'} end
  else
    return {'err', 'bad_request'}
  end

  local cost = tonumber(ARGV[13])
  if ARGV[14] ~= '' and cost > 0 then
    local used = (tonumber(redis.call('HGET', user_credits, user)) or 0) + tonumber(ARGV[15])
    if used + cost > tonumber(ARGV[14]) then return {'err', 'quota_exceeded'} end
  end

  -- The next offset follows the meta hash. Should the stream be ahead of it all the same
  -- (the hash written by hand, say), the XADD is refused (its id must grow) and the offset
  -- follows the stream's top instead: appends then go on instead of failing for good.
  local offset = int((tonumber(state[2]) or 0) + 1)
  local function add_event()
    return redis.pcall('XADD', events, offset .. '-0',
      'k', kind, 'seq', seq, 'src', src, 'd', data, 'c', ARGV[13])
  end
  local added = add_event()
  if type(added) == 'table' and added.err then
    local newest = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)[1]
    if not newest then return {'failed', added.err} end
    offset = int(tonumber(string.match(newest[1], '^(%d+)')) + 1)
    added = add_event()
    if type(added) == 'table' and added.err then return {'failed', added.err} end
  end

  local meta_fields = {'offset', offset}
  if not epoch then
    epoch = ARGV[7]
    table.insert(meta_fields, 'epoch')
    table.insert(meta_fields, epoch)
  end
  if kind == 'message' then
    table.insert(meta_fields, 'seq')
    table.insert(meta_fields, seq)
    redis.call('HSET', messages, seq, user .. '\t' .. id .. reply)
    -- The hash keeps the newest messages only: the one falling out of the window goes.
    local oldest = tonumber(seq) - tonumber(ARGV[16])
    if oldest > 0 then
      redis.call('HDEL', messages, int(oldest))
      -- Its reactions are read from PostgreSQL once they have long been synced.
      redis.call('EXPIRE', (string.gsub(reactions, '%d+$', int(oldest))), ARGV[6])
    end
    redis.call('SET', dedupe, seq .. ' ' .. offset .. ' ' .. id .. ' ' .. ts, 'EX', ARGV[6])
  elseif kind == 'delete' then
    redis.call('DEL', reactions)
    if not from_db then
      redis.call('HSET', messages, seq, '~' .. entry)
    else
      -- Until the worker stored the delete, PostgreSQL still shows the message: the
      -- tombstone refuses a second edit or delete meanwhile.
      redis.call('SET', dedupe, '1', 'EX', ARGV[6])
    end
  elseif kind == 'receipt' then
    redis.call('HSET', receipts, user, seq)
  elseif kind == 'pin' then
    redis.call('SADD', dedupe, seq)
  elseif kind == 'unpin' then
    redis.call('SREM', dedupe, seq)
  elseif kind == 'react' then
    redis.call('HSET', reactions, member, 1)
    if redis.call('HINCRBY', reactions, emoji_count, 1) == 1 then
      redis.call('HINCRBY', reactions, '#', 1)
    end
    if from_db then redis.call('EXPIRE', reactions, ARGV[6]) end
  elseif kind == 'unreact' then
    redis.call('HDEL', reactions, member)
    if redis.call('HINCRBY', reactions, emoji_count, -1) <= 0 then
      redis.call('HDEL', reactions, emoji_count)
      redis.call('HINCRBY', reactions, '#', -1)
    end
    if from_db then redis.call('EXPIRE', reactions, ARGV[6]) end
  end
  redis.call('HSET', meta, unpack(meta_fields))

  if cost > 0 then
    redis.call('HINCRBY', user_credits, user, cost)
    -- The shard's total, under a name no user id can take (ids have no '#').
    redis.call('HINCRBY', user_credits, '#total', cost)
  end
  redis.call('XADD', ingest, '*',
    'team', team, 'off', offset, 'k', kind, 'seq', seq, 'c', ARGV[13], 'd', data)
  redis.call(ARGV[20], ARGV[5],
    epoch .. '\n' .. offset .. '\n' .. kind .. '\n' .. seq .. '\n' .. src .. '\n' .. data)

  return {'1', seq, offset, epoch, id, ts}
end

local answers = {}
for i = 0, #KEYS / 10 - 1 do
  local keys, args = {}, {}
  for k = 1, 10 do keys[k] = KEYS[10 * i + k] end
  for a = 1, 20 do args[a] = ARGV[20 * i + a] end
  answers[i + 1] = append(keys, args)
end
return answers
