// Protocol compatibility with the official socket.io-client 4.x, over WebSocket
// and over HTTP long-polling, against a real baton process.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io, Manager } from "socket.io-client";
import { startBaton, rest, once, until } from "./baton.mjs";

let baton, api;
before(async () => {
  baton = await startBaton();
  api = rest(baton.base);
});
after(async () => {
  assert.equal(await baton.stop(), 0, "baton exits 0 on SIGTERM");
});

for (const transport of ["websocket", "polling"]) {
  const opts = (auth) => ({ auth, transports: [transport], reconnectionDelay: 100, reconnectionDelayMax: 300 });

  test(`${transport}: two members chat with acks, broadcasts, history, unread and notify`, async () => {
    const alice = await api.user(`alice-${transport}`);
    const bob = await api.user(`bob-${transport}`);
    const carol = await api.user(`carol-${transport}`);
    const cid = await api.community(alice, [bob, carol]);
    const secret = await api.channel(cid, alice, "secret", true, [bob]);
    const elsewhere = await api.community(alice, [bob]);
    const other = await api.channel(elsewhere, alice, "other", false, [bob]);

    const a = io(`${baton.base}/socket/commu-${cid}`, opts({ token: alice.token }));
    const b = io(`${baton.base}/socket/commu-${cid}`, opts({ token: bob.token }));
    const c = io(`${baton.base}/socket/commu-${cid}`, opts({ token: carol.token }));
    const bRoot = io(`${baton.base}/`, opts({ token: bob.token }));
    const cSeen = [];
    c.onAny((ev) => cSeen.push(ev));
    // Listen before awaiting anything: these arrive right after connect.
    const ready = Promise.all([once(bRoot, "unread"), once(a, "rejoined"), once(b, "rejoined"), once(c, "rejoined")]);
    try {
      const [unread] = await ready;
      assert.equal(unread.communities.length, 2);
      assert.deepEqual(await a.emitWithAck("join", { channels: [secret] }), { joined: [secret], rejected: [] });
      assert.deepEqual(await b.emitWithAck("join", { channels: [secret] }), { joined: [secret], rejected: [] });
      assert.deepEqual(await c.emitWithAck("join", { channels: [secret] }), {
        joined: [],
        rejected: [{ channelId: secret, code: "not_found" }],
      });

      const got = once(b, "new-chat");
      const ack = await a.emitWithAck("chat", { chatType: "new", channelId: secret, content: "hello bob", clientMsgId: "m1" });
      assert.equal(ack.written, true);
      assert.equal(ack.chatInfo.seq, 1);
      assert.deepEqual(await got, ack.chatInfo);

      const edited = once(b, "modify-chat");
      await a.emitWithAck("chat", { chatType: "modify", channelId: secret, messageId: ack.chatInfo.id, content: "hello, bob" });
      assert.equal((await edited).content, "hello, bob");

      const history = await b.emitWithAck("history", { channelId: secret, limit: 10 });
      assert.deepEqual(history.messages.map((m) => m.content), ["hello, bob"]);
      const after = await api.call("GET", "/api/unread", bob.token);
      assert.equal(after.body.communities.find((x) => x.communityId === cid).unread, 1);

      const notify = once(bRoot, "notify");
      await api.call("POST", `/api/channels/${other}/messages`, alice.token, { content: "over in the other community" });
      const n = await notify;
      assert.equal(n.communityId, elsewhere);
      assert.equal(n.preview, "over in the other community");

      const bad = await a.emitWithAck("chat", { chatType: "new", channelId: secret, content: "" });
      assert.deepEqual([bad.written, bad.chatInfo, bad.error.code], [false, null, "invalid"]);
      assert.equal((await a.emitWithAck("chat", { chatType: "new", channelId: secret, content: "still fine" })).written, true);
      assert.ok(!cSeen.includes("new-chat"), "carol, outside the private channel, saw nothing");
    } finally {
      for (const s of [a, b, c, bRoot]) s.close();
    }
  });

  test(`${transport}: one delivery per connection: no notify where the same connection gets new-chat (v1.1)`, async () => {
    const alice = await api.user(`alice-once-${transport}`);
    const bob = await api.user(`bob-once-${transport}`);
    const cid = await api.community(alice, [bob]);
    const ch = await api.channel(cid, alice, "general", false, [bob]);
    // Bob's page: `/` and the community multiplexed on one connection (socket.io-client's
    // default); and another device: `/` alone, on a connection of its own.
    const page = new Manager(baton.base, opts());
    const b = page.socket(`/socket/commu-${cid}`, { auth: { token: bob.token } });
    const bRoot = page.socket("/", { auth: { token: bob.token } });
    const device = io(`${baton.base}/`, { ...opts({ token: bob.token }), forceNew: true });
    const seen = { newChat: [], rootNotify: [], deviceNotify: [] };
    b.on("new-chat", (m) => seen.newChat.push(m.content));
    bRoot.on("notify", (n) => seen.rootNotify.push(n.preview));
    device.on("notify", (n) => seen.deviceNotify.push(n.preview));
    const ready = Promise.all([once(b, "rejoined"), once(bRoot, "unread"), once(device, "unread")]);
    // Posts as alice; resolves once the other device has its notify and a round trip on
    // Bob's connection has come back (a notify sent to bRoot would have come first).
    const post = async (content) => {
      await api.call("POST", `/api/channels/${ch}/messages`, alice.token, { content });
      await until(() => seen.deviceNotify.includes(content), 5000, `the other device's notify of ${content}`);
      if (b.connected) await b.emitWithAck("history", { channelId: ch, limit: 1 });
    };
    try {
      await ready;
      await b.emitWithAck("join", { channels: [ch] });
      await post("one");
      await until(() => seen.newChat.includes("one"), 5000, "new-chat");
      assert.deepEqual(seen.rootNotify, [], "the connection in the room got new-chat only");

      await b.emitWithAck("leave", { channels: [ch] });
      await post("two");
      await until(() => seen.rootNotify.includes("two"), 5000, "notify once the room is left");
      assert.ok(!seen.newChat.includes("two"));

      await b.emitWithAck("join", { channels: [ch] });
      await post("three");
      await until(() => seen.newChat.includes("three"), 5000, "new-chat after joining again");
      assert.deepEqual(seen.rootNotify, ["two"]);

      // The community socket goes, `/` stays on the connection: notify again, once the
      // server has handled the DISCONNECT (on long-polling it may come after the next
      // request; Bob going offline in the channel is the sign).
      b.disconnect();
      await until(
        async () => {
          const { body } = await api.call("GET", `/api/channels/${ch}/presence`, alice.token);
          return !body.online.includes(bob.id);
        },
        5000,
        "the server to see the community socket gone",
      );
      await post("four");
      await until(() => seen.rootNotify.includes("four"), 5000, "notify once the community socket is gone");
      assert.deepEqual(seen.rootNotify, ["two", "four"]);
    } finally {
      for (const s of [b, bRoot, device]) s.close();
    }
  });

  test(`${transport}: refused connects carry the protocol code as connect_error's message`, async () => {
    const alice = await api.user(`refused-${transport}`);
    const eve = await api.user(`eve-${transport}`);
    const cid = await api.community(alice, []);
    for (const [ns, auth, code] of [
      ["/", { token: "nope" }, "unauthorized"],
      [`/socket/commu-${cid}`, { token: eve.token }, "forbidden"],
    ]) {
      const s = io(`${baton.base}${ns}`, { ...opts(auth), reconnection: false });
      const err = await once(s, "connect_error");
      assert.equal(err.message, code);
      s.close();
    }
  });

  test(`${transport}: a dropped transport reconnects on its own and recovers what it missed`, async () => {
    const alice = await api.user(`ra-${transport}`);
    const bob = await api.user(`rb-${transport}`);
    const cid = await api.community(alice, [bob]);
    const ch = await api.channel(cid, alice, "general", false, [bob]);
    const seen = new Map(); // eventSeq -> content, the client's dedupe
    const position = {};
    const b = io(`${baton.base}/socket/commu-${cid}`, {
      ...opts(undefined),
      // socket.io-client calls this on every (re)connect: pass what we have.
      auth: (cb) => cb({ token: bob.token, since: { ...position } }),
    });
    const record = (m) => {
      seen.set(m.eventSeq, m.content);
      position[m.channelId] = Math.max(position[m.channelId] ?? 0, m.eventSeq);
    };
    b.on("new-chat", record);
    let recoveredCount = 0;
    b.on("recovered", (r) => {
      recoveredCount += 1;
      for (const [chid, seq] of Object.entries(r.channels)) position[chid] = Math.max(position[chid] ?? 0, seq);
    });
    try {
      await once(b, "recovered");
      assert.deepEqual(await b.emitWithAck("join", { channels: [ch] }), { joined: [ch], rejected: [] });
      position[ch] = 0;
      await api.call("POST", `/api/channels/${ch}/messages`, alice.token, { content: "before" });
      await until(() => seen.size === 1, 5000, "the first message");

      b.io.engine.close(); // the transport drops, as when an instance dies
      for (const content of ["while away 1", "while away 2"]) {
        await api.call("POST", `/api/channels/${ch}/messages`, alice.token, { content });
      }
      await until(() => recoveredCount >= 2 && seen.size === 3, 10000, "recovery after reconnect");
      assert.deepEqual([...seen.keys()].sort(), [1, 2, 3]);
      assert.equal(position[ch], 3);
    } finally {
      b.close();
    }
  });
}

// A drain closes transports, never with a DISCONNECT packet, so the stock client
// reconnects on its own (here to the same draining instance, which refuses it;
// behind a load balancer it lands on another instance).
for (const transports of [["websocket"], ["polling"], ["polling", "websocket"]]) {
  test(`${transports.join("+")}: a drain closes the transport and the stock client reconnects on its own`, async () => {
    const drained = await startBaton({ BATON_ADMIN_TOKEN: "js-admin", BATON_DRAIN_WINDOW: "2s" });
    const dapi = rest(drained.base);
    try {
      const u = await dapi.user("drained");
      const s = io(`${drained.base}/`, { auth: { token: u.token }, transports, reconnectionDelay: 100, reconnectionDelayMax: 200 });
      await once(s, "connect");
      if (transports.length === 2) await until(() => s.io.engine.transport.name === "websocket", 5000, "the upgrade");
      const reasons = [];
      s.on("disconnect", (r) => reasons.push(r));
      const attempt = once(s.io, "reconnect_attempt", 5000);
      const refused = once(s, "connect_error", 5000);
      const res = await fetch(`${drained.base}/admin/drain`, { method: "POST", headers: { authorization: "Bearer js-admin" } });
      assert.equal(res.status, 202);
      await attempt;
      // Refused while the instance drains, or not answered once it has exited.
      const { message } = await refused;
      assert.ok(["draining", "websocket error", "xhr poll error"].includes(message), `connect_error: ${message}`);
      assert.ok(["transport close", "transport error"].includes(reasons[0]), `disconnect reason: ${reasons[0]}`);
      s.close();
    } finally {
      await drained.stop();
    }
  });
}
