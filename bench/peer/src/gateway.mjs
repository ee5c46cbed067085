// Socket.IO: the user's own line on `/`, one dynamic namespace per community, and
// everything the server tells sockets when something changes (broadcasts go through
// the Redis adapter to every instance).

import { ApiError, asApiError, forbidden, invalid, notFound, tooLarge, unauthorized } from './errors.mjs';
import { id, REPLAY_LIMIT } from './chat.mjs';

export const COMMUNITY_NS = /^\/socket\/commu-\d+$/;
const NS_PREFIX = '/socket/commu-';
const MAX_JOIN = 100;
const PREVIEW_CHARS = 100;
const KNOWN = new Set(['join', 'leave', 'chat', 'history', 'read', 'typing']);

export const channelRoom = (c) => `ch:${c}`;
export const userRoom = (u) => `user:${u}`;
const roomChannel = (room) => (room.startsWith('ch:') ? Number(room.slice(3)) : null);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A refused connect: connect_error's message is the code. */
function refusal(e) {
  const err = new Error(e.code);
  err.data = e.body();
  return err;
}

/** new-chat if the client never saw it, else its current state; null: nothing to send. */
function replayEvent(m, since) {
  if (m.seq > since) return m.deleted ? null : 'new-chat';
  return m.deleted ? 'delete-chat' : 'modify-chat';
}

const EVENTS = { new: 'new-chat', modify: 'modify-chat', delete: 'delete-chat' };

function preview(content) {
  if (content.length <= PREVIEW_CHARS) return content;
  return Array.from(content).slice(0, PREVIEW_CHARS).join('');
}

export class Gateway {
  /** app: {io, chat, store, state, limiter, tokens, isDraining()} */
  constructor(app) {
    this.app = app;
    this.io = app.io;
    this.inflight = 0; // ordered socket events being handled (the drain waits for them)
    this.background = new Set(); // work no event waits for (presence on disconnect): shutdown waits for it
    this.parent = this.io.of(COMMUNITY_NS);
    this.#root();
    this.#communities();
  }

  // ---- namespaces ----

  #authenticate(socket) {
    if (this.app.isDraining()) throw new ApiError('draining', 'this instance is draining; connect to another');
    const user = this.app.tokens.verify(socket.handshake.auth?.token);
    if (!user) throw unauthorized('a valid token is required in the CONNECT auth');
    return user;
  }

  #root() {
    this.io.use((socket, next) => {
      try {
        socket.data.user = this.#authenticate(socket);
        next();
      } catch (e) {
        next(refusal(asApiError(e)));
      }
    });
    this.io.on('connection', async (socket) => {
      const { user } = socket.data;
      socket.join(userRoom(user));
      // One delivery per connection (PROTOCOL.md v1.1): this `/` socket is in the rooms
      // of the channels its connection's community sockets are in, and `notify` skips
      // those rooms. Here: the channels they joined before `/` connected.
      for (const sibling of socket.client.sockets.values()) {
        if (sibling.nsp.name.startsWith(NS_PREFIX)) {
          for (const room of sibling.rooms) if (roomChannel(room) !== null) socket.join(room);
        }
      }
      try {
        socket.emit('unread', await this.app.chat.unread(user));
      } catch (e) {
        console.warn('peer: unread on connect failed:', e.message);
      }
    });
  }

  #communities() {
    this.parent.use(async (socket, next) => {
      try {
        const user = this.#authenticate(socket);
        const community = Number(socket.nsp.name.slice(NS_PREFIX.length));
        const since = parseSince(socket.handshake.auth?.since);
        // Refused with `forbidden` unless a member, whether or not the community exists.
        const role = await this.app.store.communityRole(community, user);
        if (!role) throw forbidden('you are not a member of this community');
        socket.data = { user, community, since };
        next();
      } catch (e) {
        next(refusal(asApiError(e)));
      }
    });
    this.parent.on('connection', (socket) => this.#onCommunitySocket(socket));
  }

  /** The community's namespace here, created if no socket of it connected yet. */
  communityNs(community) {
    const name = `${NS_PREFIX}${community}`;
    return this.io._nsps.get(name) ?? this.parent.createChild(name);
  }

  #onCommunitySocket(socket) {
    const { user, community, since } = socket.data;
    socket.join(userRoom(user));

    // chat, join, leave and read from one socket are applied in the order sent.
    let tail = Promise.resolve();
    const inOrder = (work) => {
      this.inflight++;
      const run = tail.then(work).finally(() => this.inflight--);
      tail = run.catch(() => {});
      return run;
    };
    const on = (event, ordered, handler) => {
      socket.on(event, (payload, ack) => {
        if (typeof payload === 'function') [payload, ack] = [undefined, payload];
        const reply = typeof ack === 'function' ? ack : () => {};
        const work = async () => {
          try {
            await handler(payload, reply);
          } catch (e) {
            reply(asApiError(e).body());
          }
        };
        if (ordered) inOrder(work);
        else work();
      });
    };

    on('join', true, async (p, reply) => {
      const channels = channelList(p);
      const joinable = await this.app.store.memberChannelsAmong(community, user, channels);
      const rejected = [];
      for (const c of channels) {
        if (!joinable.includes(c)) {
          rejected.push({ channelId: c, code: await this.app.chat.joinRefusal(user, community, c) });
        }
      }
      const joined = await this.#enterRooms(socket, user, community, joinable);
      reply({ joined, rejected });
    });

    on('leave', true, async (p, reply) => {
      const channels = channelList(p);
      await this.app.state.forget(user, community, channels).catch((e) => warn('forget', e));
      await this.#leaveRooms(socket, user, community, channels);
      reply({ left: channels });
    });

    on('chat', true, async (p, reply) => {
      let created;
      try {
        if (!isObject(p)) throw invalid('chat takes an object');
        this.app.limiter.check(user);
        await this.#inCommunity(user, community, id('channelId', p.channelId));
        created = await this.app.chat.write(user, p);
      } catch (e) {
        reply({ written: false, chatInfo: null, error: asApiError(e).body().error });
        return;
      }
      // Durable now: ack, then broadcast, still in this socket's turn so its broadcasts keep its order.
      reply({ written: true, chatInfo: created.message });
      await this.publish(created, socket);
    });

    on('read', true, async (p, reply) => {
      if (!isObject(p)) throw invalid('read takes {channelId, seq}');
      const channelId = id('channelId', p.channelId);
      await this.#inCommunity(user, community, channelId);
      const seq = await this.markRead(user, channelId, p.seq);
      reply({ ok: true, seq });
    });

    on('history', false, async (p, reply) => {
      if (!isObject(p)) throw invalid('history takes {channelId, before?, after?, since?, limit?}');
      const channelId = id('channelId', p.channelId);
      await this.#inCommunity(user, community, channelId);
      reply(await this.app.chat.history(user, channelId, p));
    });

    on('typing', false, async (p, reply) => {
      if (!isObject(p)) throw invalid('typing takes {channelId}');
      const channelId = id('channelId', p.channelId);
      const room = channelRoom(channelId);
      if (!socket.rooms.has(room)) throw notFound('join the channel before typing in it');
      socket.to(room).volatile.emit('typing', { channelId, userId: user });
      reply({ ok: true });
    });

    socket.onAny((event, ...args) => {
      if (KNOWN.has(event)) return;
      const ack = args.at(-1);
      if (typeof ack === 'function') ack(invalid(`unknown event ${JSON.stringify(event)}`).body());
    });

    socket.on('disconnecting', () => {
      // Moved by a drain: presence entries stay until this instance's heartbeat lapses
      // (the grace period), so a user who reconnects elsewhere never flaps.
      const channels = [...socket.rooms].map(roomChannel).filter((c) => c !== null);
      for (const room of channels.map(channelRoom)) lineOf(socket)?.leave(room);
      if (this.app.isDraining()) return;
      const nsp = socket.nsp;
      this.#track(async () => {
        for (const channel of channels) {
          try {
            if (await this.app.state.leave(community, channel, user, socket.id)) {
              nsp.to(channelRoom(channel)).emit('presence', { channelId: channel, userId: user, online: false });
            }
          } catch (e) {
            warn('presence leave', e);
          }
        }
      });
    });

    // Recovery runs first in the socket's turn: joins and chats wait for it.
    inOrder(() => this.#recover(socket, user, community, since)).catch((e) =>
      warn('recovery (the client can join and page history)', e),
    );
  }

  #track(work) {
    const p = work().finally(() => this.background.delete(p));
    this.background.add(p);
  }

  // ---- rooms, recovery ----

  async #inCommunity(user, community, channelId) {
    const channel = await this.app.chat.memberChannel(user, channelId);
    if (channel.communityId !== community) throw notFound('no such channel in this community');
    return channel;
  }

  /** Rejoin, `rejoined`, replay, `recovered` (PROTOCOL.md, Recovery). */
  async #recover(socket, user, community, since) {
    const { state, store } = this.app;
    const remembered = await state.remembered(user, community).catch((e) => {
      warn('remembered joins', e);
      return [];
    });
    const asked = since ? Object.entries(since).map(([k, n]) => [Number(k), n]) : [];
    // A channel the client has a position in was joined: rejoin it too, so its room is
    // joined before its replay is read.
    const wanted = [...new Set([...remembered, ...asked.map(([c]) => c)])];
    const rejoinable = await store.memberChannelsAmong(community, user, wanted);
    const lost = remembered.filter((c) => !rejoinable.includes(c));
    await state.forget(user, community, lost).catch((e) => warn('forget', e));
    const rejoined = await this.#enterRooms(socket, user, community, rejoinable);
    socket.emit('rejoined', { channels: rejoined });
    if (!since) return;
    const recovered = { channels: {}, complete: true };
    for (const [channel, n] of asked) {
      if (!rejoined.includes(channel)) continue;
      const messages = await store.messages(channel, { kind: 'changes', since: n }, REPLAY_LIMIT + 1);
      if (messages.length > REPLAY_LIMIT) {
        messages.length = REPLAY_LIMIT;
        recovered.complete = false;
      }
      let position = n;
      for (const m of messages) {
        const event = replayEvent(m, n);
        if (event) socket.emit(event, m);
        position = m.eventSeq;
      }
      recovered.channels[channel] = position;
    }
    socket.emit('recovered', recovered);
  }

  /** Puts the socket in the channels' rooms, remembers them, announces who came online; the channels joined. */
  async #enterRooms(socket, user, community, channels) {
    if (channels.length === 0) return [];
    const { state, store } = this.app;
    socket.join(channels.map(channelRoom));
    lineOf(socket)?.join(channels.map(channelRoom));
    await state.remember(user, community, channels).catch((e) => warn('remember joins', e));
    for (const channel of channels) {
      try {
        if (await state.enter(community, channel, user, socket.id)) {
          socket.to(channelRoom(channel)).emit('presence', { channelId: channel, userId: user, online: true });
        }
      } catch (e) {
        warn('presence enter', e);
      }
    }
    // A removal between the membership check and the join found no socket of ours to take out: check again.
    const still = await store.memberChannelsAmong(community, user, channels).catch(() => channels);
    const gone = channels.filter((c) => !still.includes(c));
    if (gone.length) {
      await this.#leaveRooms(socket, user, community, gone);
      await state.forget(user, community, gone).catch((e) => warn('forget', e));
    }
    return still;
  }

  async #leaveRooms(socket, user, community, channels) {
    for (const channel of channels) {
      socket.leave(channelRoom(channel));
      lineOf(socket)?.leave(channelRoom(channel));
      try {
        if (await this.app.state.leave(community, channel, user, socket.id)) {
          socket.to(channelRoom(channel)).emit('presence', { channelId: channel, userId: user, online: false });
        }
      } catch (e) {
        warn('presence leave', e);
      }
    }
  }

  // ---- what every change tells sockets (socket events and REST alike) ----

  /** Broadcasts a written change to the channel's room on every instance, except `origin`; a new message also goes as `notify`. */
  async publish(created, origin) {
    if (!created.fresh) return;
    const m = created.message;
    const room = channelRoom(m.channelId);
    const to = origin ? origin.to(room) : this.communityNs(m.communityId).to(room);
    to.emit(EVENTS[created.change], m);
    if (created.change === 'new') await this.#notify(m);
  }

  /**
   * `notify` on `/` to every member of the channel but the sender: one broadcast to their
   * user rooms, except connections whose `/` socket is in the channel's room (they get
   * `new-chat`: PROTOCOL.md v1.1).
   */
  async #notify(m) {
    let members;
    try {
      members = await this.app.store.channelMemberIds(m.channelId);
    } catch (e) {
      warn('members to notify', e);
      return;
    }
    const rooms = [];
    for (const u of members) if (u !== m.senderId) rooms.push(userRoom(u));
    if (rooms.length === 0) return;
    this.io.to(rooms).except(channelRoom(m.channelId)).emit('notify', {
      communityId: m.communityId,
      channelId: m.channelId,
      seq: m.seq,
      messageId: m.id,
      senderId: m.senderId,
      preview: preview(m.content),
    });
  }

  async markRead(user, channelId, seq) {
    const [at, moved] = await this.app.chat.markRead(user, channelId, seq);
    if (moved) this.io.to(userRoom(user)).emit('read', { channelId, seq: at });
    return at;
  }

  presence(community, channel, user, online) {
    this.communityNs(community).to(channelRoom(channel)).emit('presence', { channelId: channel, userId: user, online });
  }

  /** Added to or removed from a channel; a removal takes every socket of the user out of its room, on every instance. */
  async membershipChanged(community, channel, user, member) {
    if (!member) {
      this.communityNs(community).in(userRoom(user)).socketsLeave(channelRoom(channel));
      this.io.in(userRoom(user)).socketsLeave(channelRoom(channel));
      await this.app.state.forget(user, community, [channel]).catch((e) => warn('forget', e));
      try {
        if (await this.app.state.removeUser(channel, user)) this.presence(community, channel, user, false);
      } catch (e) {
        warn('presence removal', e);
      }
    }
    this.io.to(userRoom(user)).emit('membership', { communityId: community, channelId: channel, member });
  }

  /** `position` to this instance's sockets in channels with events in the last `windowMs`. */
  async emitPositions(windowMs) {
    for (const r of await this.app.store.recentlyActive(Date.now() - windowMs)) {
      const nsp = this.io._nsps.get(`${NS_PREFIX}${r.community_id}`);
      if (nsp) nsp.local.to(channelRoom(r.id)).emit('position', { channelId: r.id, lastSeq: r.last_seq });
    }
  }
}

/** The `/` socket of the socket's connection (socket.io-client multiplexes namespaces on one), if any. */
function lineOf(socket) {
  return socket.client.nsps.get('/');
}

function channelList(p) {
  if (!isObject(p) || !Array.isArray(p.channels)) throw invalid('takes {channels: [channelId...]}');
  if (p.channels.length > MAX_JOIN) throw tooLarge(`at most ${MAX_JOIN} channels at once`);
  for (const c of p.channels) id('channel id', c);
  return [...new Set(p.channels)].sort((a, b) => a - b);
}

function parseSince(v) {
  if (v === undefined || v === null) return null;
  const bad = () => invalid('since must be an object {"<channelId>": eventSeq}');
  if (!isObject(v)) throw bad();
  for (const [k, n] of Object.entries(v)) {
    if (!/^\d+$/.test(k) || !Number.isSafeInteger(n)) throw bad();
  }
  return v;
}

function warn(what, e) {
  console.warn(`peer: ${what} failed:`, e?.message ?? e);
}
