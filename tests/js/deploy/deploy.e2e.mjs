// The deploy proof: 300 socket.io-client clients (a third on HTTP long-polling)
// chat through HAProxy at a steady rate while a blue-green switch happens, then a
// canary roll, then a deploy that fails and rolls back. Every client uses
// web/baton-client.js (dedupe by eventSeq, `since` on reconnect, gap filling,
// resend by clientMsgId). Asserted: no acked message lost for any client, no
// duplicate after dedupe, every reconnected client back in all its rooms. Printed:
// the figures, raw duplicates, reconnect-to-recovered p50/p99/max.
//
// Needs BATON_TEST_POSTGRES (an admin URL), haproxy, socat and redis-server:
// scripts/test provides them and runs this with `node --test deploy/deploy.e2e.mjs`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { writeFileSync, chmodSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";
import { createBatonClient } from "../../../web/baton-client.js";
import { rest, until, localCluster, batonBinary as binary } from "../baton.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const USERS = 60;
const CLIENTS_PER_USER = 5; // 300 clients
const CHANNELS = 10;
const SENDERS = 50; // one message a second each

let cluster;
// Runs a script without blocking the clients' event loop; resolves with its exit code.
const run = (script, args = []) =>
  new Promise((resolve) => {
    const started = Date.now();
    execFile(join(root, script), args, { env: cluster.env }, (error, stdout, stderr) => {
      const code = error ? (error.code ?? 1) : 0;
      console.log(`--- ${script} ${args.join(" ")}: exit ${code} in ${Date.now() - started} ms\n${stdout}${stderr}`);
      resolve(code);
    });
  });

before(async () => {
  assert.ok(process.env.BATON_TEST_POSTGRES, "the deploy test needs BATON_TEST_POSTGRES (scripts/test sets it)");
  cluster = await localCluster("deploy", {
    BATON_DRAIN_WINDOW: "6s",
    BATON_PRESENCE_GRACE: "5s",
    DEPLOY_READY_TIMEOUT: "20",
    CANARY_STEP_SECONDS: "2",
  });
});

after(() => cluster?.down());

const percentile = (sorted, p) => (sorted.length ? sorted[Math.round((sorted.length - 1) * p)] : 0);

test("300 clients chat through a blue-green switch, a canary roll and a rollback without losing a message", async () => {
  const lb = cluster.lb;
  const api = rest(lb);
  const owner = await api.user("owner");
  const users = [];
  for (let i = 0; i < USERS; i++) users.push(await api.user(`user${i}`));
  const cid = await api.community(owner, users);
  const channelIds = [];
  for (let c = 0; c < CHANNELS; c++) {
    const members = users.filter((_, i) => i % CHANNELS === c || (i + 3) % CHANNELS === c);
    channelIds.push(await api.channel(cid, owner, `channel-${c}`, false, members));
  }
  const channelsOf = (i) => [channelIds[i % CHANNELS], channelIds[(i + 3) % CHANNELS]];

  const clients = [];
  for (let i = 0; i < USERS; i++) {
    for (let k = 0; k < CLIENTS_PER_USER; k++) {
      const polling = clients.length % 3 === 0;
      const client = createBatonClient({
        io,
        url: lb,
        token: users[i].token,
        communityId: cid,
        ioOptions: {
          transports: polling ? ["polling"] : ["websocket"],
          withCredentials: true, // keeps HAProxy's sticky cookie, for long-polling
          // Reconnect timings: the client module's own (docs/client.md).
        },
      });
      client.user = i;
      client.channels = channelsOf(i);
      client.rejoined = [];
      client.on("rejoined", (r) => client.rejoined.push(r));
      clients.push(client);
    }
  }
  const t0 = Date.now();
  await until(() => clients.every((c) => c.socket.connected), 60000, "300 connections");
  console.log(`connected ${clients.length} clients in ${Date.now() - t0} ms`);
  await Promise.all(clients.map((c) => c.join(c.channels)));
  console.log(`joined in ${Date.now() - t0} ms`);

  // Steady traffic: SENDERS clients, one message a second each.
  const acked = [];
  const inFlight = new Set();
  let sending = true;
  const senders = clients.filter((_, j) => j % CLIENTS_PER_USER === 0).slice(0, SENDERS);
  const ticker = setInterval(() => {
    if (!sending) return;
    senders.forEach((c, n) => {
      const channelId = c.channels[n % 2];
      const p = c.send(channelId, `from ${c.user} at ${Date.now()}`).then((m) => acked.push(m));
      inFlight.add(p);
      p.finally(() => inFlight.delete(p));
    });
  }, 1000);

  // Traffic between the steps: wait until that many more messages were acked
  // (a condition with a deadline, not a fixed sleep).
  const moreAcked = (n, what) => {
    const target = acked.length + n;
    return until(() => acked.length >= target, 30000, `${n} more acked messages ${what}`);
  };
  await moreAcked(2 * SENDERS, "before the blue-green switch");
  assert.equal(await run("deploy/blue-green/deploy.sh", [binary]), 0, "blue-green switch");
  await moreAcked(SENDERS, "after the switch");
  assert.equal(await run("deploy/blue-green/canary.sh", [binary, "5", "25", "50", "100"]), 0, "canary roll");
  await moreAcked(SENDERS, "after the canary");
  const bad = join(cluster.dir, "bad-baton");
  writeFileSync(bad, "#!/bin/sh\necho 'this build is broken' >&2\nexit 1\n");
  chmodSync(bad, 0o755);
  assert.notEqual(await run("deploy/blue-green/deploy.sh", [bad]), 0, "a deploy whose new colour never gets ready fails");
  await moreAcked(2 * SENDERS, "after the rollback");
  sending = false;
  clearInterval(ticker);
  await until(() => inFlight.size === 0, 30000, "the last sends to be acked");
  assert.equal(
    clients.reduce((n, c) => n + c.pendingCount(), 0),
    0,
    "every send was acked, across reconnects",
  );

  // Everyone catches up to what the database holds.
  const { body: list } = await api.call("GET", `/api/communities/${cid}/channels`, owner.token);
  const lastSeq = Object.fromEntries(list.map((c) => [c.id, c.lastSeq]));
  await until(
    () => {
      const behind = clients.filter((c) => c.channels.some((ch) => c.held(ch).contiguous < lastSeq[ch]));
      behind.forEach((c) => c.catchUp());
      return behind.length === 0;
    },
    60000,
    "every client holding every event of its channels",
  );

  let lost = 0;
  for (const c of clients) {
    for (const ch of c.channels) {
      const { held } = c.held(ch);
      for (let s = 1; s <= lastSeq[ch]; s++) if (!held.has(s)) lost += 1;
    }
  }
  const ackedIds = new Set(acked.map((m) => m.id));
  let duplicates = 0;
  let missingAcked = 0;
  for (const c of clients) {
    const seen = new Map();
    for (const ch of c.channels) for (const m of c.messages(ch)) seen.set(m.id, (seen.get(m.id) || 0) + 1);
    for (const n of seen.values()) if (n > 1) duplicates += 1;
    for (const m of acked) if (c.channels.includes(m.channelId) && !seen.has(m.id)) missingAcked += 1;
  }
  const moved = clients.filter((c) => c.stats.recoveries.length > 0);
  const notBack = moved.filter((c) => {
    const last = c.rejoined.at(-1) || [];
    return !c.channels.every((ch) => last.includes(ch));
  });
  const times = clients.flatMap((c) => c.stats.recoveries).sort((a, b) => a - b);
  const isPolling = (c) => c.socket.io.opts.transports[0] === "polling";
  const timesOf = (pick) => clients.filter(pick).flatMap((c) => c.stats.recoveries).sort((a, b) => a - b);
  const summary = (t) => ({ p50: percentile(t, 0.5), p99: percentile(t, 0.99), max: t.at(-1) ?? 0 });
  const figures = {
    clients: clients.length,
    polling: clients.filter(isPolling).length,
    acked: acked.length,
    ackedIdsDistinct: ackedIds.size,
    lost,
    missingAcked,
    duplicatesAfterDedupe: duplicates,
    rawDuplicates: clients.reduce((n, c) => n + c.stats.duplicates, 0),
    filledFromHistory: clients.reduce((n, c) => n + c.stats.filled, 0),
    reconnects: times.length,
    notBackInRooms: notBack.length,
    reconnectToRecoveredMs: summary(times),
    websocketMs: summary(timesOf((c) => !isPolling(c))),
    pollingMs: summary(timesOf(isPolling)),
  };
  console.log(`deploy figures: ${JSON.stringify(figures)}`);
  clients.forEach((c) => c.close());
  assert.equal(lost, 0);
  assert.equal(missingAcked, 0);
  assert.equal(duplicates, 0);
  assert.equal(ackedIds.size, acked.length, "no acked message was written twice");
  assert.equal(notBack.length, 0);
  assert.ok(times.length >= clients.length, "the deploys moved every client at least once");
});
