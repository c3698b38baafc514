-- Counts a user's connections across all gateways. Entries expire unless their gateway
-- refreshes them, so a dead gateway's connections stop counting.
--
-- KEYS[1] the user's connections zset: session -> expiry (ms)
-- ARGV[1] 'open' | 'refresh' | 'close'   ARGV[2] session   ARGV[3] now (ms)
-- ARGV[4] new expiry (ms)   ARGV[5] limit (open only)
-- Returns 1, or 0 when opening would pass the limit.

local key, op, session, now, expires = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if op == 'close' then
  redis.call('ZREM', key, session)
  return 1
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
if op == 'open' and redis.call('ZCARD', key) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('ZADD', key, expires, session)
redis.call('PEXPIREAT', key, expires)
return 1
