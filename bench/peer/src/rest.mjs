// The REST API (PROTOCOL.md's table) on node:http, plus the operations endpoints.

import { asApiError, invalid, notFound, tooLarge, unauthorized } from './errors.mjs';

const MAX_BODY = 64 * 1024;

function send(res, status, body) {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const json = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) }).end(json);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw tooLarge('the request body is too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw invalid('the body is not valid JSON');
  }
}

const obj = (b) => {
  if (b === null || typeof b !== 'object' || Array.isArray(b)) throw invalid('the body must be a JSON object');
  return b;
};

/** An integer query parameter, or undefined. */
function qint(params, name) {
  const v = params.get(name);
  if (v === null) return undefined;
  if (!/^-?\d+$/.test(v)) throw invalid(`${name} must be an integer`);
  return Number(v);
}

const pathId = (s) => {
  if (!/^\d{1,15}$/.test(s) || Number(s) === 0) throw notFound('no such resource');
  return Number(s);
};

/** Routes: [method, pattern, auth?, handler(ctx)] -> [status, body]. */
function routes(app) {
  const { chat, gateway } = app;
  return [
    ['POST', /^\/api\/users$/, false, async ({ body }) => {
      const b = obj(body);
      return [201, await chat.register(b.username, b.password, b.displayName)];
    }],
    ['POST', /^\/api\/sessions$/, false, async ({ body }) => {
      const b = obj(body);
      const user = await chat.login(b.username, b.password);
      return [200, { token: app.tokens.issue(user.id), user }];
    }],
    ['GET', /^\/api\/me$/, true, async ({ user }) => {
      const [me, communities] = await Promise.all([chat.user(user), chat.communities(user)]);
      return [200, { user: me, communities }];
    }],
    ['GET', /^\/api\/unread$/, true, async ({ user }) => [200, await chat.unread(user)]],
    ['POST', /^\/api\/communities$/, true, async ({ user, body }) => [201, await chat.createCommunity(user, obj(body).name)]],
    ['GET', /^\/api\/communities$/, true, async ({ user }) => [200, await chat.communities(user)]],
    ['POST', /^\/api\/communities\/(\d+)\/members$/, true, async ({ user, m, body }) => {
      const [member, added] = await chat.addCommunityMember(user, pathId(m[1]), obj(body).username);
      return [added ? 201 : 200, member];
    }],
    ['GET', /^\/api\/communities\/(\d+)\/members$/, true, async ({ user, m }) => [
      200,
      await chat.communityMembers(user, pathId(m[1])),
    ]],
    ['GET', /^\/api\/communities\/(\d+)\/channels$/, true, async ({ user, m }) => [
      200,
      await chat.channels(user, pathId(m[1])),
    ]],
    ['POST', /^\/api\/communities\/(\d+)\/channels$/, true, async ({ user, m, body }) => {
      const b = obj(body);
      return [201, await chat.createChannel(user, pathId(m[1]), b.name, b.private)];
    }],
    ['POST', /^\/api\/channels\/(\d+)\/members$/, true, async ({ user, m, body }) => {
      const chid = pathId(m[1]);
      let channel, member, added;
      if (body === undefined) {
        [channel, added] = await chat.joinChannel(user, chid);
        member = await chat.user(user);
      } else {
        [channel, member, added] = await chat.addChannelMember(user, chid, obj(body).username);
      }
      if (added) await gateway.membershipChanged(channel.communityId, channel.id, member.id, true);
      return [added ? 201 : 200, { channel, user: member }];
    }],
    ['DELETE', /^\/api\/channels\/(\d+)\/members\/(\d+)$/, true, async ({ user, m }) => {
      const uid = pathId(m[2]);
      const channel = await chat.removeChannelMember(user, pathId(m[1]), uid);
      await gateway.membershipChanged(channel.communityId, channel.id, uid, false);
      return [204, undefined];
    }],
    ['GET', /^\/api\/channels\/(\d+)\/messages$/, true, async ({ user, m, query }) => {
      const q = { before: qint(query, 'before'), after: qint(query, 'after'), since: qint(query, 'since'), limit: qint(query, 'limit') };
      return [200, await chat.history(user, pathId(m[1]), q)];
    }],
    ['POST', /^\/api\/channels\/(\d+)\/messages$/, true, async ({ user, m, body }) => {
      const b = obj(body);
      const chid = pathId(m[1]);
      app.limiter.check(user);
      await chat.memberChannel(user, chid);
      const created = await chat.post(user, chid, b.content, b.clientMsgId);
      await gateway.publish(created, null);
      return [created.fresh ? 201 : 200, { written: true, chatInfo: created.message }];
    }],
    ['PUT', /^\/api\/channels\/(\d+)\/read$/, true, async ({ user, m, body }) => {
      const seq = await gateway.markRead(user, pathId(m[1]), obj(body).seq);
      return [200, { ok: true, seq }];
    }],
    ['GET', /^\/api\/channels\/(\d+)\/presence$/, true, async ({ user, m }) => {
      const chid = pathId(m[1]);
      await chat.memberChannel(user, chid);
      return [200, { online: await app.state.online(chid) }];
    }],
  ];
}

export function restHandler(app) {
  const table = routes(app);
  return async (req, res) => {
    try {
      const url = new URL(req.url, 'http://x');
      const path = url.pathname;
      if (req.method === 'GET' && path === '/healthz') return send(res, 200, { ok: true });
      if (req.method === 'GET' && path === '/readyz') {
        const ready = await app.readiness();
        return send(res, ready.ok ? 200 : 503, ready.ok ? { ok: true } : ready.error.body());
      }
      if (req.method === 'POST' && path === '/admin/drain') {
        if (!app.adminToken || bearer(req) !== app.adminToken) throw unauthorized('the admin token is required');
        app.drain();
        return send(res, 202, { draining: true });
      }
      for (const [method, pattern, needsAuth, handler] of table) {
        const m = pattern.exec(path);
        if (!m || method !== req.method) continue;
        let user = null;
        if (needsAuth) {
          user = app.tokens.verify(bearer(req));
          if (!user) throw unauthorized('a valid bearer token is required');
        }
        const body = req.method === 'GET' || req.method === 'DELETE' ? undefined : await readBody(req);
        const [status, out] = await handler({ user, m, body, query: url.searchParams });
        return send(res, status, out);
      }
      throw notFound(`no such endpoint: ${req.method} ${path}`);
    } catch (e) {
      const err = asApiError(e);
      if (!res.headersSent) send(res, err.status, err.body());
    }
  };
}

function bearer(req) {
  const h = req.headers.authorization;
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : null;
}
