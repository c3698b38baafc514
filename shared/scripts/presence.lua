-- Presence of one team: which sessions are online, refreshed by their gateways, expired
-- when a gateway stops refreshing (it died). A user is online while any session is.
--
-- KEYS[1] sessions hash: session -> "user \n name \n since_ms"
-- KEYS[2] expiry zset:   session -> expiry (ms)
-- KEYS[3] users hash:    user -> live session count
-- ARGV[1] operation: 'join' | 'leave' | 'tick'
-- ARGV[2] now (ms)   ARGV[3] new expiry (ms)   ARGV[4] channel
-- ARGV[5] 'PUBLISH', or 'SPUBLISH' on a Redis Cluster
-- join:  ARGV[6..] session, user, name of each joining session (a batch of joins)
--                                                       -> returns HVALS of the sessions hash
-- leave: ARGV[6] session                                -> returns 1
-- tick:  ARGV[6..] sessions still connected here         -> returns the ones it no longer
--        had (expired while their gateway could not refresh): the gateway joins them again
--
-- `presence:update` is published as '!presence:online|offline \n src \n user' exactly when a
-- user's first session appears or last one goes, expiry included.

local sessions, expiry, users = KEYS[1], KEYS[2], KEYS[3]
local op, now, expires, channel, publish = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local function drop(session, src)
  local entry = redis.call('HGET', sessions, session)
  redis.call('ZREM', expiry, session)
  if not entry then return end
  redis.call('HDEL', sessions, session)
  local user = string.match(entry, '^([^\n]*)')
  if redis.call('HINCRBY', users, user, -1) <= 0 then
    redis.call('HDEL', users, user)
    redis.call(publish, channel, '!presence:offline\n' .. src .. '\n' .. user)
  end
end

for _, session in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
  drop(session, '')
end

if op == 'join' then
  for i = 6, #ARGV - 2, 3 do
    local session, user, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call('HSETNX', sessions, session, user .. '\n' .. name .. '\n' .. now) == 1 then
      redis.call('ZADD', expiry, expires, session)
      if redis.call('HINCRBY', users, user, 1) == 1 then
        redis.call(publish, channel, '!presence:online\n' .. session .. '\n' .. user)
      end
    end
  end
  return redis.call('HVALS', sessions)
elseif op == 'leave' then
  drop(ARGV[6], ARGV[6])
elseif op == 'tick' then
  local missing = {}
  for i = 6, #ARGV do
    if redis.call('ZSCORE', expiry, ARGV[i]) then
      redis.call('ZADD', expiry, 'XX', expires, ARGV[i])
    else
      table.insert(missing, ARGV[i])
    end
  end
  return missing
end
return 1
