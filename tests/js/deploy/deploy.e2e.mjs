// The deploy proof: 1,000 socket.io-client clients (a quarter on HTTP long-polling)
// chat through HAProxy at a steady rate, against two colours of two instances each
// (scripts/cluster, deploy/blue-green/), while in turn:
//
//   1. blue-green      deploy.sh switches to green and drains blue;
//   2. canary          canary.sh moves live sessions to blue in steps 5/25/50/100 by
//                      shedding green (checked at each step: blue holds its share);
//   3. broken canary   canary.sh on a build whose message writes fail: its error rate
//                      rises while it serves its share, it is rolled back and its
//                      clients move back;
//   4. kill -9         one instance of the serving colour is killed;
//   5. kill -9 polling the serving instance holding the most long-polling clients is
//                      killed;
//   6. kubernetes      two rolling updates as Kubernetes would run the Helm chart's
//                      Deployment (kubernetes.mjs, with the pod's probes, preStop
//                      hook, grace period, maxSurge/maxUnavailable and
//                      minReadySeconds as scripts/check-kubernetes renders them;
//                      HAProxy, its agent checks off, following the pods'
//                      readiness as the endpoints would, a terminating pod in
//                      its DRAIN state): the serving colour
//                      replaced by pods running with the chart's settings, then
//                      those replaced in turn. Asserted besides: no old pod was
//                      killed at the end of its grace period, each preStop hook
//                      ended with the drain's report, /healthz answered 200 for as
//                      long as each old pod ran.
//
// Every client uses web/baton-client.js (dedupe by eventSeq, `since` on reconnect,
// gap filling, resend by clientMsgId), 850 with its reconnect timings and 150 with
// socket.io-client's stock ones. Asserted per phase: acked messages lost (0),
// duplicates after dedupe (0), clients back in all their rooms (all); at each canary
// step, the canary's share of the live sessions (within 5 points). Printed per
// phase and transport, module and stock timings apart: reconnect-to-recovered
// p50/p99/max, measured from the event (the client's transport closing in a drain
// or a shed; the kill), with this process's event-loop lag (the clients share its
// one thread); and how long HAProxy took to mark each killed instance DOWN.
//
// Needs BATON_TEST_POSTGRES (an admin URL), haproxy, socat and redis-server, and
// runs scripts/check-kubernetes (which installs what it needs): scripts/test
// provides them and runs this with `node --test deploy/deploy.e2e.mjs`.
// BATON_TEST_REDIS (standalone, cluster, sentinel; scripts/redis-topology) picks
// the Redis the cluster runs on; DEPLOY_PHASES (comma separated, default all:
// blue-green,canary,broken-canary,kill,kill-polling,kubernetes) the phases, in that
// order (canary needs blue-green before it, broken-canary needs canary).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, execFileSync } from "node:child_process";
import { writeFileSync, chmodSync, readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { createServer } from "node:net";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { io } from "socket.io-client";
import { createBatonClient } from "../../../web/baton-client.js";
import { rest, until, localCluster, batonBinary as binary } from "../baton.mjs";
import { renderedPod, Deployment } from "./kubernetes.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const USERS = 200;
const CLIENTS_PER_USER = 5; // 1,000 clients
const POLLING_EVERY = 4; // every 4th client on long-polling: 250
// 150 clients (100 on WebSocket, 50 on long-polling) reconnect on socket.io-client's
// stock timings (first retry after 1 s ± 50 %, at most 5 s) instead of the
// module's (250 ms ± 50 %, at most 2 s): figures for both.
const stockTimings = (n) => n % 10 === 1 || n % 20 === 4;
const CHANNELS = 20;
// One message a second each: every client gets about two a second (its two
// channels), 2,000 deliveries a second in all. The 1,000 clients share this one
// Node.js thread, whose lag counts in every time measured (clientLoopLagMs).
const SENDERS = 20;
const SIZE = 2; // instances per colour
const ALL_PHASES = ["blue-green", "canary", "broken-canary", "kill", "kill-polling", "kubernetes"];
const PHASES = new Set((process.env.DEPLOY_PHASES || ALL_PHASES.join(",")).split(",").map((p) => p.trim()));
const want = (name) => PHASES.has(name);
const REDIS = process.env.BATON_TEST_REDIS || "standalone";

let cluster;
let deployment; // the simulated Kubernetes Deployment (phase 6), its probes stopped in `after`
// Closed in `after`, so that a failed assertion does not leave 1,000 sockets and the
// traffic's timer holding the process open.
const clients = [];
let ticker;
const lines = [];
const log = (line) => {
  lines.push(line);
  console.log(line);
};

// Runs a script without blocking the clients' event loop; `onLine` sees each line
// of its output as it comes. Resolves with its exit code.
const run = (script, args = [], onLine = () => {}) =>
  new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(join(root, script), args, { env: cluster.env, stdio: ["ignore", "pipe", "pipe"] });
    const out = [];
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on("line", (line) => {
        out.push(line);
        onLine(line);
      });
    }
    child.on("close", (code) => {
      console.log(`--- ${script} ${args.join(" ")}: exit ${code} in ${Date.now() - started} ms\n${out.join("\n")}`);
      resolve(code);
    });
  });

// Whether `port` can be listened on, on 127.0.0.1, now.
const portFree = (port) =>
  new Promise((resolve) => {
    const s = createServer()
      .once("error", () => resolve(false))
      .listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
// The first of `n` consecutive free ports below the kernel's ephemeral range. The
// instances' ports (and their agents') are taken from there: an instance is
// restarted under load (by its supervisor after a kill -9, as a new pod in the
// Kubernetes phase), and while it is down, any outgoing connection on this machine
// (HAProxy's to the other instances, the clients') may take a port of the ephemeral
// range as its own, and the restart then fails with "address already in use".
const portsBelowEphemeral = async (n) => {
  const [low] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/).map(Number);
  assert.ok(low > 11000 + n, `the ephemeral range starts at ${low}: no room below it`);
  for (let tries = 0; tries < 100; tries++) {
    const first = 10000 + Math.floor(Math.random() * (low - 10000 - n));
    let free = true;
    for (let p = first; p < first + n && free; p++) free = await portFree(p);
    if (free) return first;
  }
  throw new Error(`no ${n} free consecutive ports below ${low}`);
};

before(async () => {
  assert.ok(process.env.BATON_TEST_POSTGRES, "the deploy test needs BATON_TEST_POSTGRES (scripts/test sets it)");
  // The chart as rendered now (target/kubernetes/defaults.json), before any client
  // shares this machine's cores with the render.
  if (want("kubernetes")) {
    execFileSync(join(root, "scripts", "check-kubernetes"), [], { stdio: ["ignore", "ignore", "inherit"] });
  }
  // Each instance takes two ports (its own and its agent's): blue's, then green's.
  const ports = await portsBelowEphemeral(4 * SIZE);
  cluster = await localCluster("deploy", {
    BATON_COLOUR_SIZE: String(SIZE),
    BATON_BLUE_PORT: String(ports),
    BATON_GREEN_PORT: String(ports + 2 * SIZE),
    BATON_DRAIN_WINDOW: "10s",
    BATON_PRESENCE_GRACE: "5s",
    DEPLOY_READY_TIMEOUT: "30",
    CANARY_STEP_SECONDS: "6",
    CANARY_SHED_WINDOW: "3s",
  });
});

after(() => {
  deployment?.stop();
  clearInterval(ticker);
  clients.forEach((c) => c.close());
  cluster?.down();
});

const percentile = (sorted, p) => (sorted.length ? sorted[Math.round((sorted.length - 1) * p)] : 0);
const summary = (t) => {
  const s = [...t].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 0.5), p99: percentile(s, 0.99), max: s.at(-1) ?? 0 };
};

// The instances, their ports (scripts/cluster: colour's first port + 2(n-1)) and
// the admin token the cluster's env file holds.
const instances = (colour) => Array.from({ length: SIZE }, (_, k) => `${colour}-${k + 1}`);
const portOf = (name) => {
  const [colour, n] = name.split("-");
  const base = Number(colour === "blue" ? cluster.env.BATON_BLUE_PORT : cluster.env.BATON_GREEN_PORT);
  return base + 2 * (Number(n) - 1);
};
const token = () => /^BATON_ADMIN_TOKEN=(.*)$/m.exec(readFileSync(join(cluster.dir, "env"), "utf8"))[1];
const status = async (name) => {
  try {
    const res = await fetch(`http://127.0.0.1:${portOf(name)}/admin/status`, {
      headers: { authorization: `Bearer ${token()}` },
    });
    return res.ok ? await res.json() : null;
  } catch {
    return null;
  }
};
const active = () => readFileSync(join(cluster.dir, "active"), "utf8").trim();
const other = (c) => (c === "blue" ? "green" : "blue");

test(`1,000 clients through ${[...PHASES].join(", ")} lose nothing (Redis ${REDIS})`, async () => {
  for (const p of PHASES) assert.ok(ALL_PHASES.includes(p), `DEPLOY_PHASES: unknown phase ${p}`);
  assert.ok(!want("canary") || want("blue-green"), "DEPLOY_PHASES: canary needs blue-green");
  assert.ok(!want("broken-canary") || want("canary"), "DEPLOY_PHASES: broken-canary needs canary");
  const lb = cluster.lb;
  const api = rest(lb);
  const owner = await api.user("owner");
  const users = [];
  for (let i = 0; i < USERS; i++) users.push(await api.user(`user${i}`));
  const cid = await api.community(owner, users);
  const channelIds = [];
  for (let c = 0; c < CHANNELS; c++) {
    const members = users.filter((_, i) => i % CHANNELS === c || (i + 7) % CHANNELS === c);
    channelIds.push(await api.channel(cid, owner, `channel-${c}`, false, members));
  }
  const channelsOf = (i) => [channelIds[i % CHANNELS], channelIds[(i + 7) % CHANNELS]];

  // The broken build: the real binary, whose message writes the database refuses (a
  // trigger fails every insert of a connection named baton-broken-build), as a
  // build with a bug in its write path would. It starts, is ready, serves sockets
  // and history; only its clients' sends fail, with `unavailable`.
  const db = /^DATABASE_URL=(.*)$/m.exec(readFileSync(join(cluster.dir, "env"), "utf8"))[1];
  execFileSync("psql", ["-w", "-q", "-v", "ON_ERROR_STOP=1", db], {
    input: `create function baton_broken_build() returns trigger language plpgsql as $$
      begin
        if current_setting('application_name') = 'baton-broken-build' then
          raise exception 'this build cannot write messages';
        end if;
        return new;
      end $$;
      create trigger baton_broken_build before insert on messages for each row execute function baton_broken_build();`,
  });
  const broken = join(cluster.dir, "broken-baton");
  writeFileSync(
    broken,
    `#!/bin/sh\ncase "$DATABASE_URL" in *\\?*) s='&' ;; *) s='?' ;; esac\n` +
      `DATABASE_URL="$DATABASE_URL\${s}application_name=baton-broken-build" exec '${binary}' "$@"\n`,
  );
  chmodSync(broken, 0o755);

  for (let i = 0; i < USERS; i++) {
    for (let k = 0; k < CLIENTS_PER_USER; k++) {
      const polling = clients.length % POLLING_EVERY === 0;
      const stock = stockTimings(clients.length);
      const client = createBatonClient({
        io,
        url: lb,
        token: users[i].token,
        communityId: cid,
        ioOptions: {
          transports: polling ? ["polling"] : ["websocket"],
          withCredentials: true, // keeps HAProxy's sticky cookie, for long-polling
          // Reconnect timings: the client module's own (docs/client.md), or stock.
          ...(stock ? { reconnectionDelay: 1000, reconnectionDelayMax: 5000, randomizationFactor: 0.5 } : {}),
        },
      });
      client.user = i;
      client.polling = polling;
      client.stock = stock;
      client.channels = channelsOf(i);
      client.events = []; // [time, "down" | "recovered" | "rejoined", channels?]
      client.on("state", (s) => {
        if (s === "reconnecting") client.events.push([Date.now(), "down"]);
        if (s === "connected") client.events.push([Date.now(), "connected"]);
        if (s === "recovered") client.events.push([Date.now(), "recovered"]);
      });
      client.on("rejoined", (r) => client.events.push([Date.now(), "rejoined", r]));
      clients.push(client);
    }
  }
  const t0 = Date.now();
  await until(() => clients.every((c) => c.socket.connected), 120000, "1,000 connections");
  log(`connected ${clients.length} clients in ${Date.now() - t0} ms`);
  for (let i = 0; i < clients.length; i += 100) {
    await Promise.all(clients.slice(i, i + 100).map((c) => c.join(c.channels)));
  }
  log(`joined in ${Date.now() - t0} ms`);

  // Steady traffic: SENDERS clients (a quarter of them long-polling), one message a
  // second each. A send refused with `unavailable` is retried by the client module
  // until it is written; any other refusal is counted.
  const acked = []; // [time, message]
  const refused = [];
  const inFlight = new Set();
  let sending = true;
  const senders = clients.filter((_, j) => j % CLIENTS_PER_USER === 0 || j % POLLING_EVERY === 0).slice(0, SENDERS);
  ticker = setInterval(() => {
    if (!sending) return;
    senders.forEach((c, n) => {
      const channelId = c.channels[n % 2];
      const p = c.send(channelId, `from ${c.user} at ${Date.now()}`).then(
        (m) => acked.push([Date.now(), m]),
        (e) => refused.push([Date.now(), e.code]),
      );
      inFlight.add(p);
      p.finally(() => inFlight.delete(p));
    });
  }, 1000);

  const moreAcked = (n, what) => {
    const target = acked.length + n;
    return until(() => acked.length >= target, 60000, `${n} more acked messages ${what}`);
  };
  // Every client that went down since `since` has recovered since (its last down is
  // followed by a recovered), and is connected.
  const settled = (since) =>
    clients.every((c) => {
      const downs = c.events.filter(([t, k]) => k === "down" && t >= since);
      if (downs.length === 0) return c.socket.connected;
      const lastDown = downs.at(-1)[0];
      return c.socket.connected && c.events.some(([t, k]) => k === "recovered" && t >= lastDown);
    });

  const phases = [];
  // Runs one phase: `act` does it and may return the time of the event clients are
  // measured from (a kill); otherwise each client is measured from its own
  // transport's close. Waits until every client that went down has recovered.
  // How late this process's event loop ran during a phase: the 1,000 clients share
  // one thread, so their times include its lag.
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  const phase = async (name, act) => {
    lag.reset();
    const start = Date.now();
    const eventAt = await act();
    await until(() => settled(start), 60000, `every client recovered after ${name}`);
    await moreAcked(SENDERS, `after ${name}`);
    const end = Date.now();
    const loopLagMs = { p99: Math.round(lag.percentile(99) / 1e6), max: Math.round(lag.max / 1e6) };
    phases.push({ name, start, end, eventAt, loopLagMs });
    log(`phase ${name}: ${end - start} ms`);
  };

  await moreAcked(2 * SENDERS, "before the first deploy");

  if (want("blue-green")) await phase("blue-green", async () => {
    assert.equal(await run("deploy/blue-green/deploy.sh", [binary]), 0, "blue-green switch");
    assert.equal(active(), "green");
  });

  const shares = [];
  if (want("canary")) await phase("canary 5/25/50/100", async () => {
    const checks = [];
    const code = await run("deploy/blue-green/canary.sh", [binary, "5", "25", "50", "100"], (line) => {
      const m = /^holding (\d+)%/.exec(line);
      if (!m || m[1] === "100") return;
      // The shed has ended; its clients reconnect within a second or two (the
      // module's first retry is 250 ms): once they are all back, count where every
      // transport is (within the step's 6 s).
      checks.push(
        until(() => clients.every((c) => c.socket.connected), 5000, `every client back at ${m[1]}%`).then(async () => {
          const count = async (colour) => {
            let n = 0;
            for (const i of instances(colour)) n += (await status(i))?.transports ?? 0;
            return n;
          };
          const canary = await count("blue");
          const old = await count("green");
          shares.push({ step: Number(m[1]), canary, total: canary + old, share: (100 * canary) / (canary + old) });
        }),
      );
    });
    assert.equal(code, 0, "canary roll");
    await Promise.all(checks);
    assert.equal(active(), "blue");
  });
  if (want("canary")) {
    log(`canary shares: ${JSON.stringify(shares)}`);
    assert.deepEqual(
      shares.map((s) => s.step),
      [5, 25, 50],
    );
    for (const s of shares) {
      assert.ok(Math.abs(s.share - s.step) <= 5, `the canary holds ${s.share.toFixed(1)}% of the sessions at step ${s.step}%`);
    }
  }

  let brokenOutput = "";
  if (want("broken-canary")) await phase("broken canary rolled back", async () => {
    const code = await run("deploy/blue-green/canary.sh", [broken, "5", "25", "50", "100"], (line) => {
      brokenOutput += `${line}\n`;
    });
    assert.equal(code, 1, "the broken canary is rolled back");
    // At 5 % the canary may have held no sender yet (40 of the 1,000 clients send):
    // then it is caught at 25 %.
    assert.match(brokenOutput, /rolled back at (5|25)%: green's error rate/);
    assert.equal(active(), "blue");
  });
  if (want("broken-canary")) {
    for (const i of instances("green")) assert.equal(await status(i), null, `${i} was drained and stopped`);
  }

  // HAProxy's status of server NAME, from its runtime API.
  const hapStatus = (name) =>
    new Promise((resolve) => {
      const child = execFile("socat", ["-t", "2", "-", `UNIX-CONNECT:${join(cluster.dir, "haproxy.sock")}`], (e, out) => {
        const [header, ...rows] = (out || "").split("\n");
        const col = header.replace(/^# /, "").split(",").indexOf("status");
        resolve(rows.map((r) => r.split(",")).find((r) => r[0] === "baton" && r[1] === name)?.[col] ?? "");
      });
      child.stdin.end("show stat\n");
    });
  const markedDown = []; // ms from a kill until HAProxy marks the instance DOWN
  const kill = async (name) => {
    const pid = Number(readFileSync(join(cluster.dir, `${name}.pid`), "utf8"));
    const at = Date.now();
    process.kill(pid, "SIGKILL");
    await until(async () => (await hapStatus(name)).startsWith("DOWN"), 5000, `HAProxy marking ${name} down`);
    markedDown.push([name, Date.now() - at]);
    return at;
  };
  let killed1;
  if (want("kill")) {
    await phase("kill -9", async () => {
      killed1 = `${active()}-1`;
      return kill(killed1);
    });
    // The supervisor restarts it; wait for it before picking the next one.
    await until(async () => (await status(killed1)) !== null, 30000, `${killed1} restarted by its supervisor`);
  }

  let killed2;
  const polling = {};
  if (want("kill-polling")) await phase("kill -9 of the most long-polling", async () => {
    for (const i of instances(active())) polling[i] = (await status(i))?.polling ?? 0;
    killed2 = Object.entries(polling).sort((a, b) => b[1] - a[1])[0][0];
    return kill(killed2);
  });
  log(`killed ${killed1}, then ${killed2} (long-polling clients per instance: ${JSON.stringify(polling)})`);
  log(`HAProxy marked the killed instance DOWN after (ms, polled every 20 ms or so): ${JSON.stringify(markedDown)}`);

  if (want("kubernetes")) {
    // Kubernetes: the pod as the chart renders it, and the instances as its pods.
    // The new pods run the same binary with the rendered Deployment's baton settings
    // (the drain window, the load balancer delay, the presence grace), through a
    // wrapper, as a new image would; the scripts' own (port, agent port, instance
    // name, human logs) stay.
    const pod = renderedPod(join(root, "target", "kubernetes", "defaults.json"));
    const chartEnv = Object.entries(pod.env).filter(
      ([k]) => k.startsWith("BATON_") && !["BATON_LISTEN", "BATON_DATA_DIR", "BATON_LOG_FORMAT"].includes(k),
    );
    const chartBinary = join(cluster.dir, "chart-pod-baton");
    writeFileSync(
      chartBinary,
      `#!/bin/sh\n# baton with the rendered chart's settings\n` +
        chartEnv.map(([k, v]) => `export ${k}='${v}'\n`).join("") +
        `exec '${binary}' "$@"\n`,
    );
    chmodSync(chartBinary, 0o755);
    log(`kubernetes: the chart's pod: ${JSON.stringify({ ...pod, env: Object.fromEntries(chartEnv) })}`);
    const hap = (command) =>
      new Promise((resolve, reject) => {
        const child = execFile("socat", ["-t", "2", "-", `UNIX-CONNECT:${join(cluster.dir, "haproxy.sock")}`], (e, out) =>
          e || out.trim() ? reject(new Error(`HAProxy: ${command}: ${e?.message ?? out.trim()}`)) : resolve(),
        );
        child.stdin.end(`${command}\n`);
      });
    // The load balancer follows readiness only: no agent, whose `up ready` would end
    // the maintenance state a terminating pod is put in.
    for (const i of [...instances("blue"), ...instances("green")]) await hap(`disable agent baton/${i}`);
    deployment = new Deployment(pod, {
      start: async (name) => {
        writeFileSync(join(cluster.dir, `${name}.bin`), `${chartBinary}\n`);
        assert.equal(await run("scripts/cluster", ["restart", name]), 0, `${name} started`);
      },
      // In the endpoints: ready and weighted as the others. Out of them: HAProxy's
      // DRAIN, no new session, established connections kept, as any Kubernetes load
      // balancer does when an endpoint goes. (Not MAINT: with the template's
      // on-marked-down shutdown-sessions, it cuts every WebSocket of the server at
      // once.) DRAIN still sends a terminating pod the requests its cookie names, so
      // its long-polling clients move paced by the drain; ingress-nginx and the AWS
      // load balancers send those elsewhere from the deletion (docs/operations.md).
      lbAdd: (name) => hap(`set server baton/${name} state ready; set server baton/${name} weight 100`),
      lbRemove: (name) => hap(`set server baton/${name} state drain`),
      transportsOf: async (name) => (await status(name))?.transports,
      urlOf: (name) => `http://127.0.0.1:${portOf(name)}`,
      pidOf: (name) => Number(readFileSync(join(cluster.dir, `${name}.pid`), "utf8")),
      deleted: (name) => writeFileSync(join(cluster.dir, `${name}.stop`), ""),
      binary,
      adminToken: token(),
      log,
    });
    const first = active();
    await deployment.adopt(instances(first));
    const rollouts = [];
    for (const [name, to] of [
      ["kubernetes rolling update onto the chart's pods", other(first)],
      ["kubernetes rolling update, chart to chart", first],
    ]) {
      await phase(name, async () => {
        rollouts.push([name, await deployment.rollOut(instances(to))]);
      });
    }
    for (const [name, { started, terminated }] of rollouts) {
      log(`kubernetes figures: ${name}: ${JSON.stringify({ started, terminated })}`);
      for (const t of terminated) {
        assert.equal(t.preStopExit, 0, `${name}: ${t.name}'s preStop hook succeeded (${t.preStopOutput ?? ""})`);
        assert.ok(t.report?.instance === t.name, `${name}: ${t.name}'s preStop hook printed its drain report`);
        assert.ok(!t.killedAtGraceEnd && t.goneAfterMs < pod.graceMs, `${name}: ${t.name} exited within its grace period`);
        assert.ok(t.healthzChecks > 0, `${name}: ${t.name}'s /healthz was checked`);
        assert.deepEqual(t.healthzFailures, [], `${name}: ${t.name}'s /healthz answered 200 while it ran`);
        // After its drain the process closes its port and exits: the kubelet's
        // liveness probe gives up only after failureThreshold x periodSeconds.
        const patience = pod.liveness.periodMs * pod.liveness.failureThreshold;
        assert.ok(
          t.healthzAtExit.spanMs < patience,
          `${name}: ${t.name} exited within ${patience} ms of its last /healthz 200 (${JSON.stringify(t.healthzAtExit)})`,
        );
      }
    }

  }

  sending = false;
  clearInterval(ticker);
  await until(() => inFlight.size === 0, 60000, "the last sends to be acked");
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
    120000,
    "every client holding every event of its channels",
  );

  // Per client: how many times it holds each message (after dedupe: must be once).
  const seen = clients.map((c) => {
    const s = new Map();
    for (const ch of c.channels) for (const m of c.messages(ch)) s.set(m.id, (s.get(m.id) || 0) + 1);
    return s;
  });
  let gaps = 0;
  for (const c of clients) {
    for (const ch of c.channels) {
      const { held } = c.held(ch);
      for (let s = 1; s <= lastSeq[ch]; s++) if (!held.has(s)) gaps += 1;
    }
  }
  const ackedIds = new Set(acked.map(([, m]) => m.id));
  const figures = { clients: clients.length, polling: clients.filter((c) => c.polling).length, phases: [] };
  for (const p of phases) {
    const inPhase = acked.filter(([t]) => t >= p.start && t < p.end).map(([, m]) => m);
    let lost = 0;
    let duplicates = 0;
    clients.forEach((c, k) => {
      for (const m of inPhase) {
        if (!c.channels.includes(m.channelId)) continue;
        const n = seen[k].get(m.id) || 0;
        if (n === 0) lost += 1;
        if (n > 1) duplicates += 1;
      }
    });
    const row = { phase: p.name, acked: inPhase.length, lost, duplicatesAfterDedupe: duplicates };
    row.refused = refused.filter(([t]) => t >= p.start && t < p.end).length;
    let moved = 0;
    let notBack = 0;
    const times = { websocket: [], polling: [], stockWebsocket: [], stockPolling: [] };
    const connected = { websocket: [], polling: [] }; // down to connected: the transport's part
    for (const c of clients) {
      const downs = c.events.filter(([t, k]) => k === "down" && t >= p.start && t < p.end);
      if (downs.length === 0) continue;
      moved += 1;
      for (const [t] of downs) {
        const up = c.events.find(([u, k]) => k === "recovered" && u >= t);
        const kind = c.polling ? "polling" : "websocket";
        times[c.stock ? `stock${kind[0].toUpperCase()}${kind.slice(1)}` : kind].push(up[0] - (p.eventAt ?? t));
        const conn = c.events.find(([u, k]) => k === "connected" && u >= t);
        if (!c.stock) connected[kind].push(conn[0] - (p.eventAt ?? t));
      }
      const lastDown = downs.at(-1)[0];
      const rejoined = c.events.find(([t, k]) => k === "rejoined" && t >= lastDown);
      if (!rejoined || !c.channels.every((ch) => rejoined[2].includes(ch))) notBack += 1;
    }
    Object.assign(row, { moved, notBackInRooms: notBack });
    row.websocketMs = summary(times.websocket);
    row.pollingMs = summary(times.polling);
    row.stockWebsocketMs = summary(times.stockWebsocket);
    row.stockPollingMs = summary(times.stockPolling);
    row.clientLoopLagMs = p.loopLagMs;
    row.connectedMs = { websocket: summary(connected.websocket), polling: summary(connected.polling) };
    figures.phases.push(row);
  }
  figures.gaps = gaps;
  figures.rawDuplicates = clients.reduce((n, c) => n + c.stats.duplicates, 0);
  figures.filledFromHistory = clients.reduce((n, c) => n + c.stats.filled, 0);
  for (const row of figures.phases) log(`deploy figures: ${JSON.stringify({ redis: REDIS, ...row })}`);
  log(`deploy figures: ${JSON.stringify({ ...figures, phases: undefined, acked: acked.length, refused: refused.length })}`);
  clients.forEach((c) => c.close());

  assert.equal(gaps, 0, "every client holds every event of its channels");
  assert.equal(ackedIds.size, acked.length, "no acked message was written twice");
  for (const row of figures.phases) {
    assert.equal(row.lost, 0, `${row.phase}: acked messages lost`);
    assert.equal(row.duplicatesAfterDedupe, 0, `${row.phase}: duplicates after dedupe`);
    assert.equal(row.notBackInRooms, 0, `${row.phase}: clients not back in all their rooms`);
    assert.ok(row.moved > 0, `${row.phase} moved clients`);
  }
  if (want("blue-green")) assert.ok(figures.phases[0].moved >= clients.length, "the blue-green switch moved every client");
  assert.equal(refused.length, 0, "no send refused (the client module retries unavailable ones itself)");
});
