-- Records a revocation or a removal: tokens issued before the kept time (ms) no longer
-- grant it. A later record never moves the time back; the record lives as long as the
-- longest token (MAX_TOKEN_TTL_S), after which every token it refuses has expired.
--
-- KEYS[1] the record   ARGV[1] issued-before time (ms)   ARGV[2] how long to keep it (ms)
-- Returns the time kept.

local before = tonumber(ARGV[1])
local kept = tonumber(redis.call('GET', KEYS[1]) or '0')
if kept > before then
  before = kept
end
redis.call('SET', KEYS[1], string.format('%d', before), 'PX', ARGV[2])
return before
