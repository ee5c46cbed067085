// The chat operations and their rules (PROTOCOL.md), whoever calls them (REST or a
// socket). Private channels leak nowhere: outside one, it answers as a missing channel.

import { hashPassword, verifyPassword, decoyHash } from './auth.mjs';
import { ApiError, conflict, forbidden, invalid, notFound, tooLarge, unauthorized } from './errors.mjs';

const CONTROL = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]/;
const USERNAME = /^[a-z0-9_.-]{3,32}$/;
const DEFAULT_PAGE = 50;
const MAX_PAGE = 200;
export const REPLAY_LIMIT = 1000;

const charCount = (s) => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

/** A text field: trimmed, 1..max characters, no control characters but tab and newlines. */
export function text(field, raw, max) {
  if (typeof raw !== 'string') throw invalid(`${field} must be a string`);
  const s = raw.trim();
  if (s.length === 0) throw invalid(`${field} must not be empty`);
  // Code units >= code points: only count when the cheap bound is not enough.
  if (s.length > max) {
    const len = charCount(s);
    if (len > max) throw tooLarge(`${field} is ${len} characters, at most ${max} are allowed`);
  }
  if (CONTROL.test(s)) throw invalid(`${field} contains control characters`);
  return s;
}

export function username(raw) {
  if (typeof raw !== 'string') throw invalid('username must be a string');
  const name = raw.trim().toLowerCase();
  if (!USERNAME.test(name)) {
    throw invalid("username must be 3 to 32 of letters, digits, '_', '.' and '-'");
  }
  return name;
}

export function clientMsgId(raw) {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'string') throw invalid('clientMsgId must be a string');
  const len = charCount(raw);
  if (len === 0 || len > 64) throw invalid('clientMsgId must be 1 to 64 characters');
  if (CONTROL.test(raw)) throw invalid('clientMsgId contains control characters');
  return raw;
}

export const isId = (v) => Number.isSafeInteger(v) && v > 0;
export function id(field, v) {
  if (!isId(v)) throw invalid(`${field} must be a positive integer`);
  return v;
}
const int = (field, v) => {
  if (v === undefined || v === null) return undefined;
  if (!Number.isSafeInteger(v)) throw invalid(`${field} must be an integer`);
  return v;
};

const noSuchChannel = () => notFound('no such channel');

function requireMember(access) {
  if (access?.channelMember) return access.channel;
  if (access && access.communityRole && !access.channel.private) {
    throw forbidden('you are not a member of this channel; join it first');
  }
  throw noSuchChannel();
}

/** Per-user token buckets: `rate` events per second, `burst` at once (one instance's view). */
export class RateLimiter {
  constructor(rate, burst) {
    this.rate = rate;
    this.burst = burst;
    this.buckets = new Map();
    this.sweeper = setInterval(() => this.#sweep(), 60_000).unref();
  }
  check(user) {
    const now = performance.now();
    let b = this.buckets.get(user);
    if (!b) {
      b = { tokens: this.burst, at: now };
      this.buckets.set(user, b);
    }
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
    b.at = now;
    if (b.tokens < 1) {
      throw new ApiError('rate_limited', `at most ${this.rate} chat events per second (burst ${this.burst}); slow down`);
    }
    b.tokens -= 1;
  }
  #sweep() {
    const now = performance.now();
    for (const [user, b] of this.buckets) {
      if (b.tokens + ((now - b.at) / 1000) * this.rate >= this.burst) this.buckets.delete(user);
    }
  }
}

export class Chat {
  constructor(store) {
    this.store = store;
  }

  // ---- accounts ----

  async register(rawUsername, password, displayName) {
    const name = username(rawUsername);
    if (typeof password !== 'string') throw invalid('password must be a string');
    const len = charCount(password);
    if (len < 8) throw invalid('password must be at least 8 characters');
    if (len > 1024) throw tooLarge('password must be at most 1024 characters');
    const display = text('displayName', displayName ?? name, 64);
    const hash = await hashPassword(password);
    const user = await this.store.insertUser(name, display, hash, Date.now());
    if (!user) throw conflict('that username is taken');
    return user;
  }

  async login(rawUsername, password) {
    const refused = () => unauthorized('wrong username or password');
    let name;
    try {
      name = username(rawUsername);
    } catch {
      throw refused();
    }
    if (typeof password !== 'string') throw refused();
    const creds = await this.store.credentials(name);
    const ok = await verifyPassword(password, creds?.password_hash ?? decoyHash);
    if (!creds || !ok) throw refused();
    return this.user(creds.id);
  }

  async user(id) {
    const user = await this.store.user(id);
    if (!user) throw unauthorized('the account no longer exists');
    return user;
  }

  async userNamed(raw) {
    let name;
    try {
      name = username(raw);
    } catch {
      throw notFound('no such user');
    }
    const user = await this.store.userByName(name);
    if (!user) throw notFound('no such user');
    return user;
  }

  // ---- communities ----

  communities(user) {
    return this.store.communitiesOf(user);
  }

  createCommunity(user, name) {
    return this.store.insertCommunity(user, text('name', name, 80), Date.now());
  }

  async communityRole(user, community) {
    const role = await this.store.communityRole(community, user);
    if (role) return role;
    if (await this.store.communityExists(community)) throw forbidden('you are not a member of this community');
    throw notFound('no such community');
  }

  async communityMembers(user, community) {
    await this.communityRole(user, community);
    return this.store.communityMembers(community);
  }

  /** The owner adds a member: [user, added]. */
  async addCommunityMember(actor, community, rawUsername) {
    if ((await this.communityRole(actor, community)) !== 'owner') {
      throw forbidden("only the community's owner adds members");
    }
    const user = await this.userNamed(rawUsername);
    return [user, await this.store.insertCommunityMember(community, user.id, Date.now())];
  }

  // ---- channels ----

  async channels(user, community) {
    await this.communityRole(user, community);
    return this.store.visibleChannels(community, user);
  }

  async createChannel(user, community, name, isPrivate) {
    const n = text('name', name, 80);
    if (isPrivate !== undefined && typeof isPrivate !== 'boolean') throw invalid('private must be a boolean');
    await this.communityRole(user, community);
    const channel = await this.store.insertChannel(community, user, n, isPrivate ?? false, Date.now());
    if (!channel) throw conflict('a channel with that name exists in this community');
    return channel;
  }

  async memberChannel(user, channel) {
    return requireMember(await this.store.channelAccess(channel, user));
  }

  /** Joins a public channel: [channel, added]. */
  async joinChannel(user, channel) {
    const access = await this.store.channelAccess(channel, user);
    if (!access) throw noSuchChannel();
    if (access.channelMember) return [access.channel, false];
    if (!access.communityRole || access.channel.private) throw noSuchChannel();
    return [access.channel, await this.store.insertChannelMember(channel, user, Date.now())];
  }

  /** A member adds another member of the community: [channel, user, added]. */
  async addChannelMember(actor, channel, rawUsername) {
    const ch = await this.memberChannel(actor, channel);
    const user = await this.userNamed(rawUsername);
    if (!(await this.store.communityRole(ch.communityId, user.id))) {
      throw forbidden('that user is not a member of this community');
    }
    return [ch, user, await this.store.insertChannelMember(ch.id, user.id, Date.now())];
  }

  async removeChannelMember(actor, channel, user) {
    const access = await this.store.channelAccess(channel, actor);
    if (!access) throw noSuchChannel();
    const visible = access.channelMember || (access.communityRole && !access.channel.private);
    if (!visible) throw noSuchChannel();
    if (actor !== user && access.communityRole !== 'owner') {
      throw forbidden("only the community's owner removes other members");
    }
    if (!(await this.store.deleteChannelMember(channel, user))) {
      throw notFound('that user is not a member of this channel');
    }
    return access.channel;
  }

  /** Why the user may not join this channel of the community: the refusal's code. */
  async joinRefusal(user, community, channel) {
    let access = await this.store.channelAccess(channel, user);
    if (access && access.channel.communityId !== community) access = null;
    try {
      requireMember(access);
      return 'not_found';
    } catch (e) {
      return e.code;
    }
  }

  // ---- messages ----

  /** {message, change, fresh}; `channel` already checked by the caller (see gateway). */
  async post(user, channelId, content, rawClientMsgId) {
    const body = text('content', content, 4000);
    const cmid = clientMsgId(rawClientMsgId);
    const { message, fresh } = await this.store.insertMessage(channelId, user, body, cmid, Date.now());
    return { message, change: 'new', fresh };
  }

  async ownMessage(user, channelId, messageId) {
    const message = await this.store.message(messageId);
    if (!message || message.channelId !== channelId) throw notFound('no such message in this channel');
    if (message.senderId !== user) throw forbidden('only the author modifies or deletes a message');
    return message;
  }

  async modify(user, channelId, messageId, content) {
    const body = text('content', content, 4000);
    const message = await this.ownMessage(user, channelId, messageId);
    if (message.deleted) throw conflict('the message was deleted');
    const updated = await this.store.changeMessage(message, body, Date.now());
    if (!updated) throw conflict('the message was deleted');
    return { message: updated, change: 'modify', fresh: true };
  }

  async delete(user, channelId, messageId) {
    const message = await this.ownMessage(user, channelId, messageId);
    if (!message.deleted) {
      const updated = await this.store.changeMessage(message, null, Date.now());
      if (updated) return { message: updated, change: 'delete', fresh: true };
    }
    const current = await this.store.message(messageId);
    if (!current) throw notFound('no such message');
    return { message: current, change: 'delete', fresh: false };
  }

  /** A chat command ({chatType, ...}) for a user in a channel they are a member of. */
  write(user, cmd) {
    switch (cmd.chatType) {
      case 'new':
        return this.post(user, cmd.channelId, cmd.content, cmd.clientMsgId);
      case 'modify':
        return this.modify(user, cmd.channelId, id('messageId', cmd.messageId), cmd.content);
      case 'delete':
        return this.delete(user, cmd.channelId, id('messageId', cmd.messageId));
      default:
        throw invalid('chatType must be new, modify or delete');
    }
  }

  /** `{messages, hasMore}` (+ `lastSeq` for since): the REST and socket `history`. */
  async history(user, channelId, q) {
    const limit = int('limit', q.limit) ?? DEFAULT_PAGE;
    if (limit < 1 || limit > MAX_PAGE) throw invalid(`limit must be 1 to ${MAX_PAGE}`);
    const before = int('before', q.before);
    const after = int('after', q.after);
    const since = int('since', q.since);
    if (since !== undefined && (before !== undefined || after !== undefined)) {
      throw invalid('since cannot be combined with before or after');
    }
    const slice =
      since !== undefined
        ? { kind: 'changes', since }
        : after !== undefined
          ? { kind: 'asc', after, before }
          : { kind: 'desc', before };
    const channel = await this.memberChannel(user, channelId);
    const messages = await this.store.messages(channel.id, slice, limit + 1);
    const hasMore = messages.length > limit;
    if (hasMore) messages.length = limit;
    const page = { messages, hasMore };
    if (slice.kind === 'changes') page.lastSeq = channel.lastSeq;
    return page;
  }

  /** Moves the read marker (never backwards): [seq, moved]. */
  async markRead(user, channelId, seq) {
    if (!Number.isSafeInteger(seq)) throw invalid('seq must be an integer');
    const channel = await this.memberChannel(user, channelId);
    if (seq < 0 || seq > channel.lastSeq) {
      throw invalid(`seq must be 0 to the channel's lastSeq (${channel.lastSeq})`);
    }
    const r = await this.store.advanceRead(channel.id, user, seq);
    if (!r) throw noSuchChannel();
    return r;
  }

  async unread(user) {
    const [communities, rows] = await Promise.all([this.store.communitiesOf(user), this.store.unreadRows(user)]);
    const byCommunity = new Map();
    for (const r of rows) {
      let list = byCommunity.get(r.community_id);
      if (!list) byCommunity.set(r.community_id, (list = []));
      list.push({ channelId: r.channel_id, unread: r.unread, lastSeq: r.last_seq, readSeq: r.read_seq });
    }
    return {
      communities: communities.map((c) => {
        const channels = byCommunity.get(c.id) ?? [];
        return { communityId: c.id, unread: channels.reduce((n, ch) => n + ch.unread, 0), channels };
      }),
    };
  }
}
