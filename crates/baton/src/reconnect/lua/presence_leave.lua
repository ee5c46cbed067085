-- A socket leaves a channel. Returns 1 if it was its user's last socket there.
-- Same KEYS and ARGV as presence_enter.lua.
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
