// Starts a real baton binary for the JS tests and offers small REST helpers.
// BATON_BIN names the binary (default: the debug build); DATABASE_URL, when set,
// names a fresh database the caller created; otherwise a SQLite file in a temp dir.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const batonBinary = process.env.BATON_BIN || join(root, "target", "debug", "baton");

/** A TCP port free on 127.0.0.1 right now. */
export const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const portFree = (port) =>
  new Promise((resolve) => {
    const s = createServer()
      .once("error", () => resolve(false))
      .listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });

/** The first of `n` consecutive TCP ports free on 127.0.0.1 right now. */
export async function freePorts(n) {
  for (;;) {
    const first = await freePort();
    if (first + n > 65535) continue;
    let all = true;
    for (let p = first + 1; p < first + n && all; p++) all = await portFree(p);
    if (all) return first;
  }
}

/**
 * A local cluster from scripts/cluster (HAProxy, its own Redis of the topology
 * BATON_TEST_REDIS names, standalone by default, two colours of
 * BATON_COLOUR_SIZE instances, blue-1.. and green-1.., on a fresh database of the
 * PostgreSQL server BATON_TEST_POSTGRES), on free ports with its state in a
 * temporary directory. `extra` is added to the scripts' environment (its
 * BATON_COLOUR_SIZE, default 1 here, sets the instances per colour). Returns `{dir, env, lb, run(script, ...args), down()}`;
 * `run` runs a repository script (e.g. deploy/blue-green/deploy.sh) in that
 * environment, synchronously, with its output inherited.
 */
export async function localCluster(name, extra = {}) {
  const dir = mkdtempSync(join(tmpdir(), `baton-${name}-`));
  // Each instance takes two ports: its own and its HAProxy agent's.
  const size = Number(extra.BATON_COLOUR_SIZE || 1);
  const env = {
    ...process.env,
    BATON_DEPLOY_DIR: dir,
    BATON_COLOUR_SIZE: String(size),
    BATON_LB_PORT: String(await freePort()),
    BATON_BLUE_PORT: String(await freePorts(2 * size)),
    BATON_GREEN_PORT: String(await freePorts(2 * size)),
    // Its Redis: BATON_TEST_REDIS's topology (standalone, cluster or sentinel),
    // on enough free ports in a row for any of them.
    BATON_CLUSTER_REDIS: process.env.BATON_TEST_REDIS || "standalone",
    BATON_CLUSTER_REDIS_PORT: String(await freePorts(12)),
    BATON_CLUSTER_DB: `baton_js_${name}_${process.pid}`,
    BATON_PG_ADMIN: process.env.BATON_TEST_POSTGRES,
    ...extra,
  };
  const run = (script, ...args) => execFileSync(join(root, script), args, { env, stdio: "inherit" });
  run("scripts/cluster", "up", batonBinary);
  return {
    dir,
    env,
    lb: `http://127.0.0.1:${env.BATON_LB_PORT}`,
    run,
    down() {
      try {
        run("scripts/cluster", "down");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/**
 * This process's environment without baton's own settings (BATON_*, REDIS_URL,
 * RUST_LOG): a developer's BATON_SECRET or BATON_CHAT_RATE must not change what a
 * test sees. DATABASE_URL, this file's documented input, is kept.
 */
function environmentWithoutBatonSettings() {
  const baton = (name) => name.startsWith("BATON_") || name === "REDIS_URL" || name === "RUST_LOG";
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !baton(name)));
}

export async function startBaton(extraEnv = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), "baton-js-"));
  const child = spawn(batonBinary, ["serve"], {
    env: {
      ...environmentWithoutBatonSettings(),
      BATON_LISTEN: "127.0.0.1:0",
      BATON_DATA_DIR: dataDir,
      BATON_LOG_FORMAT: "json",
      BATON_DRAIN_WINDOW: "1s",
      RUST_LOG: "warn,baton::server=info",
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("baton did not start in 20 s")), 20000);
    child.on("exit", (code) => reject(new Error(`baton exited with ${code}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        const addr = JSON.parse(line).fields?.addr;
        if (addr) {
          clearTimeout(timer);
          resolve(`http://${addr}`);
        }
      } catch {}
    });
  });
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((r) => child.on("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dataDir, { recursive: true, force: true });
    return child.exitCode;
  };
  return { base, stop, child };
}

export function rest(base) {
  const call = async (method, path, token, body) => {
    const res = await fetch(base + path, {
      method,
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
  return {
    call,
    async user(username) {
      await call("POST", "/api/users", null, { username, password: "password1" });
      const { body } = await call("POST", "/api/sessions", null, { username, password: "password1" });
      return { id: body.user.id, username, token: body.token };
    },
    async community(owner, members) {
      const { body } = await call("POST", "/api/communities", owner.token, { name: "acme" });
      for (const m of members) await call("POST", `/api/communities/${body.id}/members`, owner.token, { username: m.username });
      return body.id;
    },
    async channel(cid, creator, name, isPrivate, members) {
      const { body } = await call("POST", `/api/communities/${cid}/channels`, creator.token, { name, private: isPrivate });
      for (const m of members) await call("POST", `/api/channels/${body.id}/members`, creator.token, { username: m.username });
      return body.id;
    },
  };
}

/** Resolves with the first `event` payload, or rejects after `ms`. */
export function once(socket, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    socket.once(event, (v) => {
      clearTimeout(t);
      resolve(v);
    });
  });
}

/**
 * Polls `predicate` (sync or async) until it returns a truthy value, and resolves
 * with it; fails after `ms` naming `what`.
 */
export async function until(predicate, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
