-- A socket enters a channel. Returns 1 if it is its user's first socket there.
-- KEYS[1] the (channel, user) set of sockets   KEYS[2] the channel's online users
-- (one hash slot: both carry the channel's hash tag)
-- ARGV[1] socket key "instance/sid"   ARGV[2] user id
local added = redis.call('SADD', KEYS[1], ARGV[1])
if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  return 1
end
return 0
