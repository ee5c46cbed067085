// A careful socket.io-client member in its own OS process, so that a test can stop
// it (SIGSTOP) and make it a consumer that reads nothing, then let it go (SIGCONT).
// It owns its view of the channels: the eventSeqs it holds per channel, which it
// completes as docs/protocol.md's "Never missing a message" says (reconnect with
// `since`, `position` and gaps answered with `history` `since`).
//
// Environment: BASE, CID, TOKEN, CHANNELS (comma separated). Needs socket.io-client
// (NODE_PATH=tests/js/node_modules). Prints one JSON line {"ready":true} once its
// rooms are joined; then, given a line `expect {"<channel>": lastSeq, ...}` on stdin,
// catches up until it holds 1..lastSeq of each, prints one JSON line with what it
// saw, and exits.
const { io } = require("socket.io-client");
const readline = require("node:readline");

const channels = process.env.CHANNELS.split(",").map(Number);
const held = new Map(channels.map((c) => [c, new Set()]));
const stats = { raw: 0, duplicates: 0, filled: 0, connects: 0, disconnects: [], foreign: 0, incomplete: 0 };

function contiguous(ch) {
  const set = held.get(ch);
  let n = 0;
  while (set.has(n + 1)) n++;
  return n;
}

const socket = io(`${process.env.BASE}/socket/commu-${process.env.CID}`, {
  transports: ["websocket"],
  auth: (cb) => cb({ token: process.env.TOKEN, since: Object.fromEntries(channels.map((c) => [c, contiguous(c)])) }),
});

function onChange(m) {
  stats.raw++;
  const set = held.get(m.channelId);
  if (!set) {
    stats.foreign++;
    return;
  }
  if (set.has(m.eventSeq)) stats.duplicates++;
  else set.add(m.eventSeq);
}
for (const ev of ["new-chat", "modify-chat", "delete-chat"]) socket.on(ev, onChange);

const busy = new Set();
async function catchUp(ch) {
  if (busy.has(ch)) return;
  busy.add(ch);
  try {
    for (;;) {
      const page = await socket.timeout(10_000).emitWithAck("history", { channelId: ch, since: contiguous(ch), limit: 200 });
      if (page.error) return;
      for (const m of page.messages) {
        if (!held.get(ch).has(m.eventSeq)) {
          held.get(ch).add(m.eventSeq);
          stats.filled++;
        }
      }
      if (!page.hasMore) return;
    }
  } catch {
    // Disconnected or timed out: the next position, gap or reconnect tries again.
  } finally {
    busy.delete(ch);
  }
}

socket.on("position", ({ channelId, lastSeq }) => {
  if (held.has(channelId) && contiguous(channelId) < lastSeq) catchUp(channelId);
});
socket.on("recovered", ({ complete }) => {
  if (!complete) stats.incomplete++;
  for (const ch of channels) catchUp(ch);
});
socket.on("disconnect", (reason) => stats.disconnects.push(reason));
socket.on("connect", async () => {
  stats.connects++;
  if (stats.connects === 1) {
    const ack = await socket.timeout(10_000).emitWithAck("join", { channels });
    if (ack.joined.length !== channels.length) throw new Error(`join: ${JSON.stringify(ack)}`);
    console.log(JSON.stringify({ ready: true }));
  }
});

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  const expected = JSON.parse(line.replace(/^expect /, ""));
  const deadline = Date.now() + 30_000;
  const behind = () => Object.entries(expected).filter(([ch, last]) => contiguous(Number(ch)) < last);
  while (behind().length > 0 && Date.now() < deadline) {
    for (const [ch] of behind()) if (socket.connected) await catchUp(Number(ch));
    await new Promise((r) => setTimeout(r, 100));
  }
  const held_ = Object.fromEntries(channels.map((c) => [c, contiguous(c)]));
  console.log(JSON.stringify({ ...stats, held: held_ }));
  socket.close();
  process.exit(0);
});
