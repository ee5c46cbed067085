// baton's wire contract (PROTOCOL.md v1.1, as docs/protocol.md states it) on Node.js: Socket.IO 4.8 with the
// Redis adapter, PostgreSQL. The comparison peer of baton's benchmark; see README.md.

import crypto from 'node:crypto';
import http from 'node:http';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { Server } from 'socket.io';

import { Tokens } from './src/auth.mjs';
import { Chat, RateLimiter } from './src/chat.mjs';
import { Store } from './src/db.mjs';
import { ApiError } from './src/errors.mjs';
import { Gateway } from './src/gateway.mjs';
import { restHandler } from './src/rest.mjs';
import { scripts, State } from './src/state.mjs';

const env = (name, fallback) => process.env[name] ?? fallback;
const num = (name, fallback) => {
  const v = Number(env(name, fallback));
  if (!Number.isFinite(v) || v < 0) throw new Error(`${name} must be a number >= 0`);
  return v;
};
const config = {
  port: num('PORT', 3000),
  host: env('HOST', '127.0.0.1'),
  databaseUrl: env('DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/peer'),
  redisUrl: env('REDIS_URL', 'redis://127.0.0.1:6379'),
  redisPrefix: env('REDIS_PREFIX', 'peer'),
  drainWindowMs: num('DRAIN_WINDOW_MS', 10000),
  chatRate: num('CHAT_RATE', 20),
  chatBurst: num('CHAT_BURST', 40),
  pgPool: num('PG_POOL', 10),
  adminToken: env('ADMIN_TOKEN', ''),
};
const POSITION_EVERY_MS = 30_000;
const HEARTBEAT_EVERY_MS = 5_000;
const REAP_EVERY_MS = 10_000;

const instance = crypto.randomUUID();
const store = new Store({ url: config.databaseUrl, max: config.pgPool });
await store.migrate();
const tokens = new Tokens(await store.tokenSecret());

const redis = createClient({ url: config.redisUrl, scripts });
const sub = redis.duplicate();
for (const c of [redis, sub]) c.on('error', (e) => console.error('peer: redis:', e.message));
await Promise.all([redis.connect(), sub.connect()]);

// REST gets every request engine.io does not take (engine.io wraps the listeners present when it attaches).
let rest = null;
const httpServer = http.createServer((req, res) => rest(req, res));
const io = new Server(httpServer, { adapter: createAdapter(redis, sub), serveClient: false });

let draining = false;
const app = {
  io,
  store,
  tokens,
  chat: new Chat(store),
  state: new State(redis, config.redisPrefix, instance),
  limiter: new RateLimiter(config.chatRate, config.chatBurst),
  adminToken: config.adminToken,
  isDraining: () => draining,
  async readiness() {
    if (draining) return { ok: false, error: new ApiError('draining', 'this instance is draining') };
    if (!redis.isReady || !(await store.ping())) {
      return { ok: false, error: new ApiError('unavailable', 'the database or Redis is unreachable') };
    }
    return { ok: true };
  },
  drain: () => drain(),
};
app.gateway = new Gateway(app);
rest = restHandler(app);

const timers = [
  setInterval(() => app.gateway.emitPositions(POSITION_EVERY_MS).catch((e) => console.warn('peer: position:', e.message)), POSITION_EVERY_MS),
  setInterval(() => app.state.heartbeat().catch((e) => console.warn('peer: heartbeat:', e.message)), HEARTBEAT_EVERY_MS),
  setInterval(
    () =>
      app.state
        .reap((community, channel, user) => app.gateway.presence(community, channel, user, false))
        .catch((e) => console.warn('peer: reap:', e.message)),
    REAP_EVERY_MS,
  ),
];
await app.state.heartbeat();

await new Promise((resolve) => httpServer.listen(config.port, config.host, resolve));
console.log(`peer: instance ${instance} listening on http://${config.host}:${config.port}`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Drain: /readyz 503 and connects refused with `draining` at once; then the acks in
 * flight finish; then every client's transport is closed (the engine.io connection, not
 * a Socket.IO DISCONNECT, so that socket.io-client reconnects by itself), spread over
 * the window; exit 0 once no connection is left or the window ends.
 */
async function drain() {
  if (draining) return;
  draining = true;
  const started = Date.now();
  const deadline = started + config.drainWindowMs;
  console.log(`peer: draining ${io.engine.clientsCount} connections over ${config.drainWindowMs} ms`);
  while (app.gateway.inflight > 0 && Date.now() < deadline) await sleep(10);
  const conns = Object.values(io.engine.clients);
  const spread = Math.max(0, deadline - Date.now() - 250);
  conns.forEach((conn, i) => setTimeout(() => conn.close(), ((i + 1) * spread) / (conns.length + 1)).unref());
  while (io.engine.clientsCount > 0 && Date.now() < deadline) await sleep(50);
  await shutdown();
}

async function shutdown() {
  for (const t of timers) clearInterval(t);
  clearInterval(app.limiter.sweeper);
  // Presence entries of drained sockets stay: other instances reap them once this
  // instance's heartbeat lapses (the grace period).
  await new Promise((resolve) => io.close(() => resolve()));
  await Promise.race([Promise.allSettled([...app.gateway.background]), sleep(2000)]);
  await Promise.allSettled([store.close(), redis.quit(), sub.quit()]);
  console.log(`peer: instance ${instance} stopped`);
  process.exit(0);
}

// The Redis adapter publishes without awaiting: a Redis outage must cost broadcasts
// (clients repair gaps from `position` and `since`), not the process.
process.on('unhandledRejection', (e) => console.error('peer: unhandled rejection:', e?.message ?? e));
process.on('SIGTERM', () => drain());
process.on('SIGINT', () => drain());
