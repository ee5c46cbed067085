// The peer's own checks, against real PostgreSQL and Redis, with the official
// socket.io-client: `node --test check.mjs` (or `npm run check`).
//
// Starts its own redis-server on a free port and its own database
// (peer_bench_check_<pid>) on PostgreSQL at PGHOST/PGPORT (default 127.0.0.1:5432,
// user postgres, trust auth; PGUSER and PGPASSWORD override), two peer instances (A and B) sharing them, and a small
// readiness-aware TCP balancer in front (the first instance whose /readyz is 200 gets
// each new connection). Everything it started is stopped and dropped at the end.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { io as connect, Manager } from 'socket.io-client';

const HERE = new URL('.', import.meta.url).pathname;
const PG = { host: process.env.PGHOST ?? '127.0.0.1', port: process.env.PGPORT ?? '5432', user: process.env.PGUSER ?? 'postgres' };
const DB = `peer_bench_check_${process.pid}`;
const DRAIN_WINDOW_MS = 3000;

const children = [];
let redisPort, ports, balancer, balancerPort;
const instances = {}; // name -> {proc, port, exited: Promise<code>}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function psql(sql) {
  execFileSync('psql', ['-h', PG.host, '-p', PG.port, '-U', PG.user, '-d', 'postgres', '-qc', sql], { stdio: 'pipe' });
}

async function until(what, pred, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function startInstance(name, port) {
  const proc = spawn(process.execPath, ['server.mjs'], {
    cwd: HERE,
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: `postgres://${PG.user}@${PG.host}:${PG.port}/${DB}`,
      REDIS_URL: `redis://127.0.0.1:${redisPort}`,
      DRAIN_WINDOW_MS: String(DRAIN_WINDOW_MS),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  proc.stdout.on('data', (d) => (log += d));
  proc.stderr.on('data', (d) => (log += d));
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  instances[name] = { proc, port, exited, log: () => log };
  children.push(proc);
  return until(`instance ${name} ready`, async () => (await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.ok, 15000);
}

async function ready(port) {
  try {
    return (await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(500) })).ok;
  } catch {
    return false;
  }
}

before(async () => {
  redisPort = await freePort();
  const redis = spawn('redis-server', ['--port', String(redisPort), '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: 'ignore' });
  children.push(redis);
  await until('redis', () => new Promise((r) => net.connect(redisPort, '127.0.0.1').on('connect', function () { this.end(); r(true); }).on('error', () => r(false))));
  psql(`CREATE DATABASE ${DB}`);
  ports = { A: await freePort(), B: await freePort() };
  // Both at once: the schema is created under an advisory lock.
  await Promise.all([startInstance('A', ports.A), startInstance('B', ports.B)]);
  balancer = net.createServer(async (client) => {
    client.pause();
    for (const port of [ports.A, ports.B]) {
      if (await ready(port)) {
        const upstream = net.connect(port, '127.0.0.1');
        client.pipe(upstream).pipe(client);
        client.resume();
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        return;
      }
    }
    client.destroy();
  });
  balancerPort = await new Promise((r) => balancer.listen(0, '127.0.0.1', () => r(balancer.address().port)));
});

after(async () => {
  balancer?.close();
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await sleep(200);
  try {
    psql(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  } catch (e) {
    console.error('could not drop', DB, e.message);
  }
});

// ---- helpers ----

async function api(port, method, path, { token, body } = {}) {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

const run = Math.random().toString(36).slice(2, 8);
async function user(port, name) {
  const username = `${name}-${run}`;
  const r = await api(port, 'POST', '/api/users', { body: { username, password: 'check-password' } });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  const s = await api(port, 'POST', '/api/sessions', { body: { username, password: 'check-password' } });
  assert.equal(s.status, 200);
  return { ...s.body.user, token: s.body.token };
}

/** A client that records every event it gets. */
function client(url, opts) {
  const socket = connect(url, { reconnectionDelay: 200, reconnectionDelayMax: 500, forceNew: true, ...opts });
  socket.seen = [];
  socket.onAny((event, ...args) => socket.seen.push([event, args[0]]));
  return socket;
}
const once = (socket, event, ms = 5000) =>
  Promise.race([
    new Promise((resolve) => socket.once(event, resolve)),
    sleep(ms).then(() => {
      throw new Error(`no ${event} within ${ms} ms`);
    }),
  ]);
const refusedWith = (socket) =>
  new Promise((resolve, reject) => {
    socket.once('connect', () => reject(new Error('connected; expected a refusal')));
    socket.once('connect_error', (e) => resolve(e.message));
  });

// ---- the checks (they build on each other, in order) ----

const ctx = {};

test('REST: accounts, communities, channels and error shapes', async () => {
  const A = ports.A;
  ctx.alice = await user(A, 'alice');
  ctx.bob = await user(ports.B, 'bob');
  ctx.eve = await user(A, 'eve');
  const dup = await api(A, 'POST', '/api/users', { body: { username: ctx.alice.username, password: 'check-password' } });
  assert.equal(dup.status, 409);
  assert.equal(dup.body.error.code, 'conflict');
  const wrong = await api(A, 'POST', '/api/sessions', { body: { username: ctx.alice.username, password: 'nope-nope' } });
  assert.equal(wrong.status, 401);
  assert.equal((await api(A, 'GET', '/api/me')).body.error.code, 'unauthorized');
  assert.equal((await api(A, 'GET', '/api/nowhere', { token: ctx.alice.token })).status, 404);

  const community = await api(A, 'POST', '/api/communities', { token: ctx.alice.token, body: { name: 'check' } });
  assert.equal(community.status, 201);
  assert.equal(community.body.role, 'owner');
  ctx.cid = community.body.id;
  const added = await api(ports.B, 'POST', `/api/communities/${ctx.cid}/members`, { token: ctx.alice.token, body: { username: ctx.bob.username } });
  assert.equal(added.status, 201);
  const byBob = await api(A, 'POST', `/api/communities/${ctx.cid}/members`, { token: ctx.bob.token, body: { username: ctx.eve.username } });
  assert.equal(byBob.status, 403);
  const channel = await api(A, 'POST', `/api/communities/${ctx.cid}/channels`, { token: ctx.alice.token, body: { name: 'general' } });
  assert.equal(channel.status, 201);
  assert.deepEqual(Object.keys(channel.body).sort(), ['communityId', 'id', 'lastSeq', 'name', 'private']);
  ctx.chid = channel.body.id;
  const join = await api(ports.B, 'POST', `/api/channels/${ctx.chid}/members`, { token: ctx.bob.token });
  assert.equal(join.status, 201);
  assert.equal((await api(A, 'POST', `/api/channels/${ctx.chid}/members`, { token: ctx.bob.token })).status, 200);
  const eveJoin = await api(A, 'POST', `/api/channels/${ctx.chid}/members`, { token: ctx.eve.token });
  assert.equal(eveJoin.status, 404, 'not a community member: the channel does not exist for her');
  const badLimit = await api(A, 'GET', `/api/channels/${ctx.chid}/messages?limit=500`, { token: ctx.bob.token });
  assert.equal(badLimit.status, 400);
  assert.equal(badLimit.body.error.code, 'invalid');
  const posted = await api(A, 'POST', `/api/channels/${ctx.chid}/messages`, { token: ctx.alice.token, body: { content: '  first  ', clientMsgId: 'rest-1' } });
  assert.equal(posted.status, 201);
  assert.equal(posted.body.chatInfo.content, 'first');
  assert.equal(posted.body.chatInfo.eventSeq, 1);
  const again = await api(A, 'POST', `/api/channels/${ctx.chid}/messages`, { token: ctx.alice.token, body: { content: 'first', clientMsgId: 'rest-1' } });
  assert.equal(again.status, 200);
  assert.equal(again.body.chatInfo.id, posted.body.chatInfo.id);
  const unread = await api(ports.B, 'GET', '/api/unread', { token: ctx.bob.token });
  assert.equal(unread.body.communities[0].unread, 1);
});

test('Socket.IO: connect refusals carry the code', async () => {
  const ns = `http://127.0.0.1:${ports.A}/socket/commu-${ctx.cid}`;
  const bad = client(ns, { auth: { token: 'forged' }, reconnection: false });
  assert.equal(await refusedWith(bad), 'unauthorized');
  const eve = client(ns, { auth: { token: ctx.eve.token }, reconnection: false });
  assert.equal(await refusedWith(eve), 'forbidden');
  const nowhere = client(`http://127.0.0.1:${ports.A}/socket/commu-999999`, { auth: { token: ctx.alice.token }, reconnection: false });
  assert.equal(await refusedWith(nowhere), 'forbidden');
  for (const s of [bad, eve, nowhere]) s.close();
});

test('Socket.IO: chat across instances, acks, idempotence, notify, modify, delete, history', async () => {
  // Alice through the balancer (instance A while it is ready), WebSocket only; her
  // position per channel goes in the auth of every reconnect.
  ctx.position = {};
  const alice = client(`http://127.0.0.1:${balancerPort}/socket/commu-${ctx.cid}`, {
    transports: ['websocket'],
    auth: (cb) => cb({ token: ctx.alice.token, since: { ...ctx.position } }),
  });
  ctx.aliceSocket = alice;
  for (const ev of ['new-chat', 'modify-chat', 'delete-chat']) {
    alice.on(ev, (m) => (ctx.position[m.channelId] = Math.max(ctx.position[m.channelId] ?? 0, m.eventSeq)));
  }
  // Bob on B: the default transports (long-polling, then the upgrade).
  const bob = client(`http://127.0.0.1:${ports.B}/socket/commu-${ctx.cid}`, { auth: { token: ctx.bob.token } });
  ctx.bobSocket = bob;
  const rejoinedA = once(alice, 'rejoined');
  const rejoinedB = once(bob, 'rejoined');
  const bobRoot = client(`http://127.0.0.1:${ports.B}/`, { auth: { token: ctx.bob.token } });
  const unreadP = once(bobRoot, 'unread');
  const unread = await unreadP;
  assert.equal(unread.communities[0].communityId, ctx.cid);
  assert.deepEqual((await rejoinedA).channels, []);
  assert.deepEqual((await rejoinedB).channels, []);
  ctx.position[ctx.chid] = 1; // alice wrote message 1 over REST
  const joined = await alice.emitWithAck('join', { channels: [ctx.chid, 999999] });
  assert.deepEqual(joined, { joined: [ctx.chid], rejected: [{ channelId: 999999, code: 'not_found' }] });
  assert.deepEqual((await bob.emitWithAck('join', { channels: [ctx.chid] })).joined, [ctx.chid]);

  const live = once(alice, 'new-chat');
  const notified = once(bobRoot, 'notify');
  const ack = await bob.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: 'hello from B', clientMsgId: 'b-1' });
  assert.equal(ack.written, true);
  assert.equal(ack.chatInfo.eventSeq, 2);
  assert.equal((await live).id, ack.chatInfo.id, 'delivered to instance A through Redis');
  const repeat = await bob.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: 'hello from B', clientMsgId: 'b-1' });
  assert.equal(repeat.chatInfo.id, ack.chatInfo.id);
  const aliceAck = await alice.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: 'hi bob' });
  const n = await notified;
  assert.equal(n.senderId, ctx.alice.id);
  assert.equal(n.preview, 'hi bob');
  const modified = once(alice, 'modify-chat');
  const mod = await bob.emitWithAck('chat', { chatType: 'modify', channelId: ctx.chid, messageId: ack.chatInfo.id, content: 'edited' });
  assert.equal(mod.chatInfo.eventSeq, 4);
  assert.equal((await modified).content, 'edited');
  const notMine = await alice.emitWithAck('chat', { chatType: 'delete', channelId: ctx.chid, messageId: ack.chatInfo.id });
  assert.equal(notMine.written, false);
  assert.equal(notMine.error.code, 'forbidden');
  const del = await alice.emitWithAck('chat', { chatType: 'delete', channelId: ctx.chid, messageId: aliceAck.chatInfo.id });
  assert.equal(del.chatInfo.deleted, true);
  ctx.position[ctx.chid] = del.chatInfo.eventSeq; // her own changes come back in acks, not broadcasts
  const empty = await bob.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: '   ' });
  assert.equal(empty.error.code, 'invalid');
  const changes = await bob.emitWithAck('history', { channelId: ctx.chid, since: 1 });
  assert.deepEqual(changes.messages.map((m) => [m.eventSeq, m.deleted]), [[4, false], [5, true]], 'compacted: current states');
  assert.equal(changes.lastSeq, 5);
  await sleep(200);
  assert.equal(alice.seen.filter(([e]) => e === 'new-chat').length, 1, 'the repeat was not broadcast, nor her own message echoed');
  bobRoot.close();
});

test('Socket.IO: one delivery per connection (v1.1): no notify where the same connection gets new-chat', async () => {
  // A channel of its own (the drain check counts the first channel's events). Bob's page
  // on B: `/` and the community multiplexed on one connection; his other device, `/`
  // alone. Alice sends on A.
  const created = await api(ports.A, 'POST', `/api/communities/${ctx.cid}/channels`, { token: ctx.alice.token, body: { name: `once-${run}` } });
  const ch = created.body.id;
  assert.equal((await api(ports.B, 'POST', `/api/channels/${ch}/members`, { token: ctx.bob.token })).status, 201);
  const alice = ctx.aliceSocket;
  await alice.emitWithAck('join', { channels: [ch] });
  const page = new Manager(`http://127.0.0.1:${ports.B}`, { transports: ['websocket'], reconnectionDelay: 200 });
  const b = page.socket(`/socket/commu-${ctx.cid}`, { auth: { token: ctx.bob.token } });
  const line = page.socket('/', { auth: { token: ctx.bob.token } });
  const device = client(`http://127.0.0.1:${ports.B}/`, { auth: { token: ctx.bob.token } });
  const notified = [];
  line.on('notify', (n) => notified.push(n.preview));
  try {
    await Promise.all([once(b, 'rejoined'), once(line, 'unread'), once(device, 'unread')]);
    await b.emitWithAck('join', { channels: [ch] });
    const send = async (content) => {
      const onDevice = once(device, 'notify');
      await alice.emitWithAck('chat', { chatType: 'new', channelId: ch, content });
      assert.equal((await onDevice).preview, content);
      // A round trip on Bob's connection: a notify sent to `line` would have come first.
      await b.emitWithAck('history', { channelId: ch, limit: 1 });
    };
    const live = once(b, 'new-chat');
    await send('once');
    assert.equal((await live).content, 'once');
    assert.deepEqual(notified, [], 'the connection in the room got new-chat only');
    await b.emitWithAck('leave', { channels: [ch] });
    await send('as notify');
    assert.deepEqual(notified, ['as notify']);
  } finally {
    await alice.emitWithAck('leave', { channels: [ch] }); // her rejoin in the drain check: the first channel only
    for (const s of [b, line, device]) s.close();
  }
});

test('drain: transports closed, the client reconnects on its own, rejoined and replayed elsewhere', async () => {
  const { aliceSocket: alice, bobSocket: bob } = ctx;
  assert.equal(ctx.position[ctx.chid], 5);
  const disconnected = once(alice, 'disconnect', DRAIN_WINDOW_MS + 2000);
  const A = instances.A;
  A.proc.kill('SIGTERM');
  await until('A not ready', async () => (await api(ports.A, 'GET', '/readyz')).status === 503);
  const late = client(`http://127.0.0.1:${ports.A}/socket/commu-${ctx.cid}`, { auth: { token: ctx.alice.token }, reconnection: false });
  assert.equal(await refusedWith(late), 'draining');
  late.close();
  assert.equal(await disconnected, 'transport close', 'an engine.io close, not a Socket.IO DISCONNECT');
  // While she is away: two new messages and an edit, written on B.
  const m6 = await bob.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: 'while away 1' });
  const m7 = await bob.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: 'while away 2' });
  await bob.emitWithAck('chat', { chatType: 'modify', channelId: ctx.chid, messageId: m6.chatInfo.id, content: 'while away 1, edited' });
  const rejoined = once(alice, 'rejoined', 10000);
  const recovered = once(alice, 'recovered', 10000);
  assert.deepEqual((await rejoined).channels, [ctx.chid]);
  const r = await recovered;
  assert.deepEqual(r, { channels: { [ctx.chid]: 8 }, complete: true });
  const replayed = alice.seen.filter(([e, m]) => e === 'new-chat' && m.eventSeq > 5).map(([, m]) => [m.id, m.content]);
  // In eventSeq order, each in its current state: m7 (eventSeq 7), then m6 as edited (eventSeq 8).
  assert.deepEqual(replayed, [[m7.chatInfo.id, 'while away 2'], [m6.chatInfo.id, 'while away 1, edited']]);
  assert.equal(alice.connected, true);
  assert.equal(await A.exited, 0, 'the drained instance exits 0');
  // Live again, now on B.
  const live = once(alice, 'new-chat');
  await bob.emitWithAck('chat', { chatType: 'new', channelId: ctx.chid, content: 'welcome back' });
  assert.equal((await live).eventSeq, 9);
  alice.close();
  bob.close();
});
