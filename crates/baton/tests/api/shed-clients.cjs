// Chatting stock socket.io-client clients in one process, for the shed tests: each
// is one Manager (one engine.io connection) on its own transport, with the
// community namespace and, for some, `/` beside it; each sends a message every
// ~150 ms with a clientMsgId and, when an ack does not come (its transport was
// closed), sends it again with the same clientMsgId once it is back. Each client
// owns its view of the channels (the eventSeqs it holds) and completes it as
// docs/protocol.md says (reconnect with `since`, `history` after `recovered`).
// socket.io-client's reconnection is left at its defaults: what a stock client does.
//
// Environment: BASE, CID, CHANNELS (comma separated), CLIENTS (JSON array of
// {token, transport: "websocket"|"polling", root: bool}). Needs socket.io-client
// (NODE_PATH=tests/js/node_modules). Lines on stdout, one JSON object each:
// {"ready":true} once every client has joined; then, for each line on stdin:
// - `stop`: stops sending, waits for every send to be acked, answers {"stopped":N}
//   (the messages acked, all clients);
// - `synced`: waits (at most 15 s) until every client is connected and recovered,
//   answers {"synced":true|false,"disconnects":[[reason, ...] per client]};
// - `expect {"<channel>": lastSeq, ...} ["content", ...]`: waits until every client
//   holds 1..lastSeq of each channel and got each content live (new-chat), then
//   answers with what each saw (and, per close, the time from its disconnect to
//   its `recovered`) and exits.
const { Manager } = require("socket.io-client");
const readline = require("node:readline");

const channels = process.env.CHANNELS.split(",").map(Number);
const specs = JSON.parse(process.env.CLIENTS);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function contiguous(set) {
  let n = 0;
  while (set.has(n + 1)) n++;
  return n;
}

const clients = specs.map((spec, i) => {
  const c = {
    i,
    transport: spec.transport,
    held: new Map(channels.map((ch) => [ch, new Set()])),
    live: new Set(),
    acked: [],
    disconnects: [],
    backAfterMs: [],
    connects: 0,
    recovered: 0,
    engineIds: new Set(),
    busy: new Set(),
  };
  const since = () => Object.fromEntries(channels.map((ch) => [ch, contiguous(c.held.get(ch))]));
  c.manager = new Manager(process.env.BASE, { transports: [spec.transport] });
  c.manager.on("open", () => c.engineIds.add(c.manager.engine.id));
  c.sock = c.manager.socket(`/socket/commu-${process.env.CID}`, {
    auth: (cb) => cb({ token: spec.token, since: since() }),
  });
  if (spec.root) c.root = c.manager.socket("/", { auth: { token: spec.token } });
  for (const ev of ["new-chat", "modify-chat", "delete-chat"]) {
    c.sock.on(ev, (m) => {
      c.held.get(m.channelId)?.add(m.eventSeq);
      c.live.add(m.content);
    });
  }
  c.sock.on("recovered", () => {
    c.recovered++;
    if (c.closedAt) c.backAfterMs.push(Date.now() - c.closedAt);
    c.closedAt = undefined;
    for (const ch of channels) catchUp(c, ch);
  });
  c.sock.on("position", ({ channelId, lastSeq }) => {
    if (c.held.has(channelId) && contiguous(c.held.get(channelId)) < lastSeq) catchUp(c, channelId);
  });
  c.sock.on("disconnect", (reason) => {
    c.disconnects.push(reason);
    c.closedAt = Date.now();
  });
  c.sock.on("connect", () => c.connects++);
  return c;
});

async function catchUp(c, ch) {
  if (c.busy.has(ch)) return;
  c.busy.add(ch);
  try {
    for (;;) {
      const page = await c.sock
        .timeout(5000)
        .emitWithAck("history", { channelId: ch, since: contiguous(c.held.get(ch)), limit: 200 });
      if (page.error) return;
      for (const m of page.messages) c.held.get(ch).add(m.eventSeq);
      if (!page.hasMore) return;
    }
  } catch {
    // Disconnected or timed out: the next recovered, position or expect tries again.
  } finally {
    c.busy.delete(ch);
  }
}

let stopping = false;
async function chat(c) {
  for (let n = 0; !stopping; n++) {
    const channelId = channels[(c.i + n) % channels.length];
    const cmid = `${c.i}-${n}`;
    const msg = { chatType: "new", channelId, content: cmid, clientMsgId: cmid };
    for (;;) {
      if (!c.sock.connected) {
        await sleep(50);
        continue;
      }
      try {
        const ack = await c.sock.timeout(5000).emitWithAck("chat", msg);
        if (ack.written) {
          c.acked.push(cmid);
          c.held.get(channelId).add(ack.chatInfo.eventSeq);
          break;
        }
        await sleep(200); // refused (rate limited): the same clientMsgId again
      } catch {
        // No ack: the transport closed under it. Again, same clientMsgId.
      }
    }
    await sleep(150);
  }
}

const out = (o) => console.log(JSON.stringify(o));

async function main() {
  await Promise.all(clients.map((c) => new Promise((r) => (c.sock.connected ? r() : c.sock.once("connect", r)))));
  for (const c of clients) {
    const ack = await c.sock.timeout(5000).emitWithAck("join", { channels });
    if (ack.joined?.length !== channels.length) throw new Error(`join: ${JSON.stringify(ack)}`);
  }
  const senders = clients.map(chat);
  out({ ready: true });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line === "stop") {
      stopping = true;
      await Promise.all(senders);
      out({ stopped: clients.reduce((n, c) => n + c.acked.length, 0) });
    } else if (line === "synced") {
      const deadline = Date.now() + 15_000;
      const synced = () => clients.every((c) => c.sock.connected && c.recovered >= c.connects);
      while (!synced() && Date.now() < deadline) await sleep(50);
      out({ synced: synced(), disconnects: clients.map((c) => c.disconnects) });
    } else if (line.startsWith("expect ")) {
      const [expected, contents] = JSON.parse(`[${line.slice(7).replace("} [", "}, [")}]`);
      const deadline = Date.now() + 20_000;
      const behind = (c) =>
        Object.entries(expected).some(([ch, last]) => contiguous(c.held.get(Number(ch))) < last) ||
        contents.some((x) => !c.live.has(x));
      while (clients.some(behind) && Date.now() < deadline) {
        for (const c of clients.filter(behind)) for (const ch of channels) if (c.sock.connected) await catchUp(c, ch);
        await sleep(100);
      }
      out({
        clients: clients.map((c) => ({
          transport: c.transport,
          root: !!c.root,
          held: Object.fromEntries(channels.map((ch) => [ch, contiguous(c.held.get(ch))])),
          live: contents.filter((x) => c.live.has(x)),
          acked: c.acked,
          disconnects: c.disconnects,
          backAfterMs: c.backAfterMs,
          connects: c.connects,
          engineIds: c.engineIds.size,
        })),
      });
      for (const c of clients) c.manager.engine?.close();
      process.exit(0);
    }
  }
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
