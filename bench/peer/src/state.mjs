// Shared state in Redis: remembered joins (per user and community, for reconnects)
// and presence (per socket entries, so the first socket in and the last one out are
// known exactly across instances). Each instance files its presence entries under
// its own id and keeps a heartbeat; when the heartbeat lapses (the instance died or
// drained away), another instance takes those entries out ("reaping").

import { defineScript } from 'redis';

export const REMEMBER_FOR_S = 30 * 24 * 3600;
const HEARTBEAT_TTL_S = 20;

// A socket enters a channel: 1 if it is its user's first socket there.
// KEYS: (channel, user) sockets, channel's online users, instance index. ARGV: socket, user, index entry.
const ENTER = `
local added = redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
if added == 1 and redis.call('SCARD', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  return 1
end
return 0`;
// A socket leaves: 1 if it was its user's last socket there.
const LEAVE = `
local removed = redis.call('SREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[3])
if removed == 1 and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0`;
// A user removed from a channel: all their sockets leave it; 1 if they were online there.
const REMOVE_USER = `
redis.call('DEL', KEYS[1])
return redis.call('SREM', KEYS[2], ARGV[1])`;

const script = (n, SCRIPT) =>
  defineScript({
    NUMBER_OF_KEYS: n,
    SCRIPT,
    transformArguments: (...args) => args.map(String),
    transformReply: (r) => r === 1,
  });

export const scripts = {
  presenceEnter: script(3, ENTER),
  presenceLeave: script(3, LEAVE),
  presenceRemoveUser: script(2, REMOVE_USER),
};

export class State {
  /** `redis`: a node-redis v4 client created with `scripts`. */
  constructor(redis, prefix, instance) {
    this.redis = redis;
    this.p = prefix;
    this.instance = instance;
  }

  // ---- joins ----

  #joinsKey(user, community) {
    return `${this.p}:joins:${user}:${community}`;
  }

  async remember(user, community, channels) {
    if (channels.length === 0) return;
    const key = this.#joinsKey(user, community);
    await this.redis.multi().sAdd(key, channels.map(String)).expire(key, REMEMBER_FOR_S).exec();
  }

  async forget(user, community, channels) {
    if (channels.length === 0) return;
    await this.redis.sRem(this.#joinsKey(user, community), channels.map(String));
  }

  async remembered(user, community) {
    return (await this.redis.sMembers(this.#joinsKey(user, community))).map(Number);
  }

  // ---- presence ----

  #keys(channel, user, instance) {
    return [
      `${this.p}:presence:${channel}:${user}`,
      `${this.p}:online:${channel}`,
      `${this.p}:instance:${instance}:presence`,
    ];
  }

  /** True if this is the user's first socket in the channel. */
  enter(community, channel, user, sid) {
    const [k1, k2, k3] = this.#keys(channel, user, this.instance);
    return this.redis.presenceEnter(k1, k2, k3, `${this.instance}/${sid}`, user, `${community}|${channel}|${user}|${sid}`);
  }

  /** True if this was the user's last socket in the channel. */
  leave(community, channel, user, sid, instance = this.instance) {
    const [k1, k2, k3] = this.#keys(channel, user, instance);
    return this.redis.presenceLeave(k1, k2, k3, `${instance}/${sid}`, user, `${community}|${channel}|${user}|${sid}`);
  }

  /** True if the user was online in the channel. */
  removeUser(channel, user) {
    const [k1, k2] = this.#keys(channel, user, this.instance);
    return this.redis.presenceRemoveUser(k1, k2, user);
  }

  async online(channel) {
    return (await this.redis.sMembers(`${this.p}:online:${channel}`)).map(Number).sort((a, b) => a - b);
  }

  // ---- instances ----

  async heartbeat() {
    await this.redis
      .multi()
      .sAdd(`${this.p}:instances`, this.instance)
      .set(`${this.p}:instance:${this.instance}:alive`, '1', { EX: HEARTBEAT_TTL_S })
      .exec();
  }

  /**
   * Takes the presence entries of instances whose heartbeat lapsed out of Redis and
   * calls `offline(community, channel, user)` for each user that went offline.
   */
  async reap(offline) {
    for (const other of await this.redis.sMembers(`${this.p}:instances`)) {
      if (other === this.instance) continue;
      if (await this.redis.exists(`${this.p}:instance:${other}:alive`)) continue;
      const claimed = await this.redis.set(`${this.p}:reaping:${other}`, this.instance, { NX: true, EX: 60 });
      if (!claimed) continue;
      const index = `${this.p}:instance:${other}:presence`;
      for (const entry of await this.redis.sMembers(index)) {
        const [community, channel, user, sid] = entry.split('|');
        if (await this.leave(community, channel, user, sid, other)) {
          await offline(Number(community), Number(channel), Number(user));
        }
      }
      await this.redis.multi().del(index).sRem(`${this.p}:instances`, other).exec();
    }
  }
}
