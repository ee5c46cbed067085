-- A user is removed from a channel: all their sockets leave it at once.
-- Returns 1 if they were online there. (Index entries of those sockets are left to
-- their instance's next leave or resync, where removing them again is a no-op.)
-- KEYS[1] the (channel, user) set of sockets   KEYS[2] the channel's online users
-- ARGV[1] user id
redis.call('DEL', KEYS[1])
return redis.call('SREM', KEYS[2], ARGV[1])
