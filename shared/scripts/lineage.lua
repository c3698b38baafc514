-- A shard's lineage, put before the scripts that give out or report a team's counters.
--
-- Redis replicates asynchronously: a replica promoted after its master died may lack the
-- master's last appends, whose seqs clients (and PostgreSQL) may have seen. The shard's
-- lineage hash records the replication id of the node that gave out its counters and a
-- generation; a team's meta hash records the generation its counters belong to. When the
-- node holding the shard now is a replica promoted from that node (its master_replid2 is
-- the recorded id), the generation moves on, and every team of the shard is seeded again
-- (seed_team.lua) before its next append or join: a new epoch, seqs past any lost one.
local lineages = {}
local function generation(lineage)
  local known = lineages[lineage]
  if known then return known end
  local recorded = redis.call('HMGET', lineage, 'replid', 'gen')
  local gen = recorded[2] or '0'
  -- A Redis that does not let scripts run INFO (a managed service's restriction) goes
  -- without the check rather than without appends.
  local info = redis.pcall('INFO', 'replication')
  local replid = type(info) == 'string' and string.match(info, 'master_replid:(%x+)')
  if replid and recorded[1] ~= replid then
    local former = string.match(info, 'master_replid2:(%x+)')
    -- A node restarted from its own files, or one the shard's slot moved to in a
    -- resharding, holds all the shard had: only a promotion moves the generation on.
    if recorded[1] and recorded[1] == former then
      gen = string.format('%d', tonumber(gen) + 1)
    end
    redis.call('HSET', lineage, 'replid', replid, 'gen', gen)
  end
  lineages[lineage] = gen
  return gen
end

