// baton-client.js: what a Socket.IO app needs to get baton's guarantees, on top of
// the official socket.io-client. One instance follows one community namespace.
//
// - Reconnects pass `since` (the highest eventSeq held without a hole, per
//   channel) through an `auth` function, which socket.io-client calls on every
//   attempt, so the server rejoins the rooms and replays what was missed.
// - Events whose eventSeq is already held are dropped (replay and live overlap).
// - A hole in eventSeq, or a `position` ahead of what is held, is filled from
//   `history` (`since`).
// - Sends carry a clientMsgId; one not acked when the connection drops is sent
//   again after the reconnect with the same id, so nothing is doubled.
//
// The module imports nothing: pass socket.io-client's `io`, so it runs the same in
// a browser and in Node. See docs/client.md.
//
// A channel's position starts at 0 (join loads its whole history) unless the
// caller gives one (`positions`, `track`): then only changes after it are followed,
// and older messages are paged in on demand with `loadOlder`.

const ACK_TIMEOUT_MS = 8000;
const HISTORY_PAGE = 200;
// A hole in the live eventSeqs is filled from history only if it is still there
// after this long: events from different senders can arrive a little out of order
// (each is broadcast after its own commit), and most holes close on their own.
const GAP_GRACE_MS = 300;

export function createBatonClient({ io, url, token, communityId, ioOptions = {}, positions = {} }) {
  // channelId -> { held: Set<eventSeq>, contiguous, base, messages: Map<id, message> }
  // `base`: the position the channel was first followed from; events up to it
  // are taken as held (they are only ever paged in, never replayed).
  const channels = new Map();
  const pending = new Map(); // clientMsgId -> { channelId, content, resolve, reject, sent }
  const listeners = new Map();
  const stats = { received: 0, duplicates: 0, filled: 0, recoveries: [], reconnects: 0 };
  let disconnectedAt = null;
  let counter = 0;

  const emit = (event, ...args) => (listeners.get(event) || []).forEach((fn) => fn(...args));
  const channel = (id) => {
    if (!channels.has(id)) channels.set(id, { held: new Set(), contiguous: 0, base: 0, messages: new Map(), filling: false });
    return channels.get(id);
  };
  // Starts following a channel from a position (its eventSeq as last seen), unless
  // it is already followed; the next connect's `since` names it.
  const track = (id, position) => {
    if (channels.has(id)) return false;
    const c = channel(id);
    c.contiguous = c.base = Math.max(0, Number(position) || 0);
    return true;
  };
  // Keeps the newest known state of a message; true if it changed.
  const store = (c, message) => {
    const current = c.messages.get(message.id);
    if (current && current.eventSeq >= message.eventSeq) return false;
    c.messages.set(message.id, message);
    return true;
  };
  for (const [id, position] of Object.entries(positions)) track(Number(id), position);
  const since = () => Object.fromEntries([...channels].map(([id, c]) => [String(id), c.contiguous]));

  const socket = io(`${url}/socket/commu-${communityId}`, {
    // Reconnect timings that fit a drain or a shed (docs/client.md): the first retry
    // after 250 ms, doubling to at most 2 s, each delay randomised by ±50 % so that
    // the clients of a closed instance do not come back in step. socket.io-client's
    // defaults (1 s, up to 5 s) stay for stock clients; an app's own options win.
    reconnectionDelay: 250,
    reconnectionDelayMax: 2000,
    randomizationFactor: 0.5,
    ...ioOptions,
    // Called on every connect attempt: the server replays from here.
    auth: (cb) => cb({ token: typeof token === "function" ? token() : token, since: since() }),
  });

  // Holds a message change; false if its eventSeq was already held.
  function apply(message) {
    const c = channel(message.channelId);
    stats.received += 1;
    if (message.eventSeq <= c.base) {
      // Before the position the channel is followed from: a late copy.
      if (store(c, message)) emit("message", message);
      return false;
    }
    if (c.held.has(message.eventSeq)) {
      stats.duplicates += 1;
      return false;
    }
    c.held.add(message.eventSeq);
    while (c.held.has(c.contiguous + 1)) c.contiguous += 1;
    store(c, message);
    emit("message", message);
    if (message.eventSeq > c.contiguous + 1 || c.held.size > c.contiguous - c.base) fillSoon(message.channelId);
    return true;
  }

  // Fills holes from history, from the highest eventSeq held without a hole.
  // Fills the channel's hole if it outlives GAP_GRACE_MS.
  function fillSoon(channelId) {
    const c = channel(channelId);
    if (c.gapTimer) return;
    c.gapTimer = setTimeout(() => {
      c.gapTimer = null;
      if (c.held.size > c.contiguous - c.base) fill(channelId);
    }, GAP_GRACE_MS);
  }

  async function fill(channelId) {
    const c = channel(channelId);
    if (c.filling || !socket.connected) return;
    c.filling = true;
    try {
      for (;;) {
        const page = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("history", {
          channelId,
          since: c.contiguous,
          limit: HISTORY_PAGE,
        });
        if (page.error) break;
        for (const m of page.messages) {
          if (!c.held.has(m.eventSeq)) {
            stats.filled += 1;
            apply(m);
            stats.received -= 1; // counted as filled, not received
          }
        }
        if (!page.hasMore) break;
      }
    } catch {
      // Disconnected meanwhile: the reconnect's replay takes over.
    } finally {
      c.filling = false;
    }
  }

  for (const event of ["new-chat", "modify-chat", "delete-chat"]) socket.on(event, apply);
  socket.on("position", ({ channelId, lastSeq }) => {
    if (channels.has(channelId) && lastSeq > channel(channelId).contiguous) fill(channelId);
  });
  socket.on("rejoined", (r) => emit("rejoined", r.channels));
  socket.on("recovered", (r) => {
    if (disconnectedAt !== null) {
      stats.recoveries.push(Date.now() - disconnectedAt);
      disconnectedAt = null;
    }
    for (const [id, pos] of Object.entries(r.channels)) {
      if (!r.complete || pos > channel(Number(id)).contiguous) fill(Number(id));
    }
    emit("state", "recovered");
    resendPending();
  });
  socket.on("connect", () => emit("state", "connected"));
  socket.on("disconnect", (reason) => {
    if (disconnectedAt === null) disconnectedAt = Date.now();
    stats.reconnects += 1;
    emit("state", socket.active ? "reconnecting" : "disconnected", reason);
  });
  socket.on("connect_error", (e) => emit("error", e));
  for (const event of ["presence", "typing"]) socket.on(event, (p) => emit(event, p));

  function trySend(clientMsgId) {
    const p = pending.get(clientMsgId);
    if (!p || p.inFlight || !socket.connected) return;
    p.inFlight = true;
    socket
      .timeout(ACK_TIMEOUT_MS)
      .emitWithAck("chat", { chatType: "new", channelId: p.channelId, content: p.content, clientMsgId })
      .then((ack) => {
        p.inFlight = false;
        if (ack.written) {
          pending.delete(clientMsgId);
          apply(ack.chatInfo);
          stats.received -= 1; // our own message came by ack
          p.resolve(ack.chatInfo);
        } else if (ack.error?.code === "rate_limited" || ack.error?.code === "unavailable") {
          setTimeout(() => trySend(clientMsgId), 1000);
        } else {
          pending.delete(clientMsgId);
          p.reject(Object.assign(new Error(ack.error?.message || "refused"), { code: ack.error?.code }));
        }
      })
      .catch(() => {
        // No ack (the connection dropped): sent again after the reconnect.
        p.inFlight = false;
        if (socket.connected) setTimeout(() => trySend(clientMsgId), 200);
      });
  }

  function resendPending() {
    for (const id of pending.keys()) trySend(id);
  }

  // modify and delete: one attempt; the result is applied like any change.
  async function change(payload) {
    let ack;
    try {
      ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("chat", payload);
    } catch {
      throw Object.assign(new Error("no answer from the server"), { code: "timeout" });
    }
    if (!ack.written) throw Object.assign(new Error(ack.error?.message || "refused"), { code: ack.error?.code });
    apply(ack.chatInfo);
    stats.received -= 1; // our own change came by ack
    return ack.chatInfo;
  }

  return {
    socket,
    stats,
    on(event, fn) {
      if (!listeners.has(event)) listeners.set(event, []);
      listeners.get(event).push(fn);
      return this;
    },
    /** Joins channels (remembered by the server for reconnects) and loads what they hold. */
    async join(ids) {
      const ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("join", { channels: ids });
      for (const id of ack.joined || []) {
        channel(id);
        await fill(id);
      }
      return ack;
    },
    /**
     * Sends a new message; resolves with it once written, across reconnects.
     * `options.clientMsgId` sets the id (1..64 characters) instead of a generated one.
     */
    send(channelId, content, options = {}) {
      const clientMsgId =
        options.clientMsgId ||
        `${Date.now().toString(36)}-${(counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
      return new Promise((resolve, reject) => {
        pending.set(clientMsgId, { channelId, content, resolve, reject, inFlight: false });
        trySend(clientMsgId);
      });
    },
    /** Modifies one of the user's messages; resolves with it, rejects with the error's `code`. */
    modify(channelId, messageId, content) {
      return change({ chatType: "modify", channelId, messageId, content });
    },
    /** Deletes one of the user's messages; resolves with the tombstone, rejects with the error's `code`. */
    delete(channelId, messageId) {
      return change({ chatType: "delete", channelId, messageId });
    },
    /**
     * Follows a channel from `position` (its eventSeq as last seen, e.g. `lastSeq` from
     * the channel list) instead of 0, if it is not followed yet; call it before `join`.
     */
    track(channelId, position) {
      return track(channelId, position);
    },
    /**
     * Pages in older messages (`history` with `before`, newest first; without
     * `before`, the newest page) and keeps them with the channel's messages.
     * Resolves with the page `{messages, hasMore}`; rejects with the error's `code`.
     */
    async loadOlder(channelId, { before, limit = 50 } = {}) {
      const request = { channelId, limit };
      if (before !== undefined) request.before = before;
      let page;
      try {
        page = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck("history", request);
      } catch {
        throw Object.assign(new Error("no answer from the server"), { code: "timeout" });
      }
      if (page.error) throw Object.assign(new Error(page.error.message || "refused"), { code: page.error.code });
      const c = channel(channelId);
      for (const m of page.messages) store(c, m);
      return page;
    },
    /** The channel's messages in their current state, by seq. */
    messages(channelId) {
      return [...channel(channelId).messages.values()].sort((a, b) => a.seq - b.seq);
    },
    /** The eventSeqs held for a channel, and the highest held without a hole. */
    held(channelId) {
      const c = channel(channelId);
      return { held: c.held, contiguous: c.contiguous };
    },
    /** Fills every channel up to what the server has (e.g. before comparing). */
    async catchUp() {
      await Promise.all([...channels.keys()].map((id) => fill(id)));
    },
    pendingCount: () => pending.size,
    close: () => socket.close(),
  };
}
