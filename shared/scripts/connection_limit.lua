-- Counts a user's connections across all gateways. Entries expire unless their gateway
-- refreshes them, so a dead gateway's connections stop counting.
--
-- KEYS[1] the user's connections zset: session -> expiry (ms)
-- KEYS[2] the user's revocation record: tokens issued before it (ms) are refused
-- ARGV[1] 'open' | 'refresh' | 'close'   ARGV[2] session   ARGV[3] now (ms)
-- ARGV[4] new expiry (ms)   ARGV[5] limit (open only)   ARGV[6] token issued at (ms, open)
-- Returns 1; 0 when opening would pass the limit; -1 when the token is revoked.

local key, op, session, now, expires = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if op == 'close' then
  redis.call('ZREM', key, session)
  return 1
end
if op == 'open' then
  local revoked = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[6]) < revoked then
    return -1
  end
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if op == 'open' and redis.call('ZCARD', key) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('ZADD', key, expires, session)
redis.call('PEXPIREAT', key, expires)
return 1
