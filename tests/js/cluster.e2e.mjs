// The official socket.io-client against a two-instance cluster (scripts/cluster:
// its own Redis, a fresh PostgreSQL database, blue and green): what only a cluster
// can show. Needs BATON_TEST_POSTGRES (scripts/test sets it).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { io, Manager } from "socket.io-client";
import { rest, once, until, localCluster } from "./baton.mjs";

const skip = !process.env.BATON_TEST_POSTGRES && "needs BATON_TEST_POSTGRES (scripts/test sets it)";
let cluster, blue, green;
before(async () => {
  if (skip) return;
  cluster = await localCluster("sio");
  blue = `http://127.0.0.1:${cluster.env.BATON_BLUE_PORT}`;
  green = `http://127.0.0.1:${cluster.env.BATON_GREEN_PORT}`;
});
after(() => cluster?.down());

test("one delivery per connection across instances: a message posted on one instance reaches a connection on the other once (v1.1)", { skip }, async () => {
  const api = rest(green);
  const alice = await api.user("alice");
  const bob = await api.user("bob");
  const cid = await api.community(alice, [bob]);
  const ch = await api.channel(cid, alice, "general", false, [bob]);
  const opts = { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 300 };
  // Bob's page on blue: `/` and the community on one connection; his other device on
  // blue too, `/` only. Alice posts through green.
  const page = new Manager(blue, opts);
  const b = page.socket(`/socket/commu-${cid}`, { auth: { token: bob.token } });
  const bRoot = page.socket("/", { auth: { token: bob.token } });
  const device = io(`${blue}/`, { ...opts, forceNew: true, auth: { token: bob.token } });
  const seen = { newChat: [], rootNotify: [], deviceNotify: [] };
  b.on("new-chat", (m) => seen.newChat.push(m.content));
  bRoot.on("notify", (n) => seen.rootNotify.push(n.preview));
  device.on("notify", (n) => seen.deviceNotify.push(n.preview));
  const ready = Promise.all([once(b, "rejoined"), once(bRoot, "unread"), once(device, "unread")]);
  const post = async (content) => {
    const { status } = await api.call("POST", `/api/channels/${ch}/messages`, alice.token, { content });
    assert.equal(status, 201);
    await until(() => seen.deviceNotify.includes(content), 5000, `the other device's notify of ${content}`);
    // A round trip on Bob's connection: a notify sent to bRoot would have come first.
    await b.emitWithAck("history", { channelId: ch, limit: 1 });
  };
  try {
    await ready;
    await b.emitWithAck("join", { channels: [ch] });
    await post("one");
    await until(() => seen.newChat.includes("one"), 5000, "new-chat across instances");
    assert.deepEqual(seen.rootNotify, [], "the connection in the room got new-chat only");
    await b.emitWithAck("leave", { channels: [ch] });
    await post("two");
    await until(() => seen.rootNotify.includes("two"), 5000, "notify once the room is left");
    assert.deepEqual(seen.newChat, ["one"]);
  } finally {
    for (const s of [b, bRoot, device]) s.close();
  }
});
