// baton's browser client: plain DOM, no framework, no build step.
//
// - `/` (the user's own line) feeds the unread badges: `unread` once per connect,
//   then `notify`, `read` and `membership`.
// - One baton-client per community visited (kept while the page lives): it follows
//   the community's member channels from the position read in the channel list,
//   dedupes, fills holes and resends unacked messages after a reconnect. Older
//   messages are paged in with `history` `before` when the view scrolls back.
// - Everything that comes from users is rendered with textContent, never as HTML.
import { io } from "/web/vendor/socket.io.esm.min.js";
import { createBatonClient } from "/web/baton-client.js";

const TOKEN_KEY = "baton.token";
const USER_KEY = "baton.user";
const NAMES_KEY = "baton.names";
const LAST_KEY = "baton.last";
const NOTICE_KEY = "baton.notice";
const PAGE = 50;
const TYPING_SEND_MS = 2500; // at most one `typing` per this while typing
const TYPING_SHOW_MS = 4000; // how long someone counts as typing after their event
const RECOVERED_SHOW_MS = 4000;
const ACK_MS = 8000;

const $ = (id) => document.getElementById(id);

/** Builds an element; string children become text nodes (never HTML). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

const state = {
  token: null,
  me: null,
  communities: new Map(), // id -> {id, name, role}
  channels: new Map(), // channelId -> {communityId, unread}: the channels the user is a member of
  names: new Map(), // userId -> display name, learnt where the API tells it
  views: new Map(), // communityId -> view (see createView)
  creating: new Map(), // communityId -> Promise<view>
  currentCid: null,
  currentChid: null,
  root: null,
  rootConn: "connecting",
};

// ---------------------------------------------------------------- REST

async function api(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: {
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...(state.token ? { authorization: `Bearer ${state.token}` } : {}),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw Object.assign(new Error("cannot reach the server"), { code: "network", status: 0 });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = Object.assign(new Error(data?.error?.message || `HTTP ${res.status}`), {
      code: data?.error?.code || "http",
      status: res.status,
    });
    if (res.status === 401 && state.token && path !== "/api/sessions") sessionExpired();
    throw err;
  }
  return { status: res.status, data };
}

// ---------------------------------------------------------------- names

function loadNames() {
  try {
    for (const [id, name] of Object.entries(JSON.parse(localStorage.getItem(NAMES_KEY) || "{}"))) {
      state.names.set(Number(id), String(name));
    }
  } catch {
    /* a damaged cache is only a cache */
  }
}
function learnUser(user) {
  if (!user || typeof user.id !== "number") return;
  const name = user.displayName || user.username;
  if (state.names.get(user.id) === name) return;
  state.names.set(user.id, name);
  try {
    localStorage.setItem(NAMES_KEY, JSON.stringify(Object.fromEntries(state.names)));
  } catch {
    /* storage full or disabled */
  }
  scheduleRender();
}
function nameOf(userId) {
  if (state.me && userId === state.me.id) return state.me.displayName || state.me.username;
  const name = state.names.get(userId);
  if (name) return name;
  lookUpMembers(state.currentCid); // a member added since: learn their name
  return `user #${userId}`;
}
// Learns the names of a community's members (GET /api/communities/{cid}/members),
// at most once every 5 s per community.
const membersAsked = new Map(); // cid -> time asked
async function lookUpMembers(cid) {
  if (cid === null || cid === undefined || Date.now() - (membersAsked.get(cid) || 0) < 5000) return;
  membersAsked.set(cid, Date.now());
  try {
    const { data } = await api("GET", `/api/communities/${cid}/members`);
    for (const member of data) learnUser(member);
  } catch {
    /* names stay as they were; asked again later */
  }
}
const hueOf = (userId) => `hue-${Math.abs(Number(userId) || 0) % 8}`;
const initials = (name) =>
  (name || "?")
    .trim()
    .split(/[\s._-]+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((w) => [...w][0].toUpperCase())
    .join("") || "?";

// ---------------------------------------------------------------- toast and dialog

let toastTimer = null;
function toast(text, kind = "info") {
  const t = $("toast");
  t.textContent = text;
  t.dataset.kind = kind;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 4000);
}

/**
 * Opens the shared dialog with a few fields; `onSubmit(values)` may throw to show
 * an error and keep the dialog open. Resolves with its result, or null if cancelled.
 */
function openDialog({ title, fields, submitLabel = "OK", onSubmit }) {
  const dialog = $("dialog");
  const form = $("dialog-form");
  $("dialog-title").textContent = title;
  $("dialog-error").textContent = "";
  $("dialog-submit").textContent = submitLabel;
  $("dialog-submit").disabled = false;
  const box = $("dialog-fields");
  box.replaceChildren();
  const inputs = {};
  for (const f of fields) {
    if (f.type === "checkbox") {
      inputs[f.name] = h("input", { type: "checkbox", name: f.name, "data-testid": `dialog-${f.name}` });
      box.append(h("label", { class: "check" }, inputs[f.name], h("span", { text: f.label })));
    } else {
      inputs[f.name] = h("input", {
        name: f.name,
        placeholder: f.placeholder || "",
        maxlength: f.maxlength,
        autocomplete: "off",
        spellcheck: "false",
        "data-testid": `dialog-${f.name}`,
      });
      box.append(h("label", {}, f.label, inputs[f.name]));
    }
    if (f.hint) box.append(h("p", { class: "hint", text: f.hint }));
  }
  return new Promise((resolve) => {
    const done = (result) => {
      form.removeEventListener("submit", submit);
      $("dialog-cancel").removeEventListener("click", cancel);
      dialog.removeEventListener("cancel", cancel);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    const cancel = (e) => {
      e?.preventDefault();
      done(null);
    };
    const submit = async (e) => {
      e.preventDefault();
      const values = {};
      for (const [k, input] of Object.entries(inputs)) values[k] = input.type === "checkbox" ? input.checked : input.value;
      $("dialog-submit").disabled = true;
      $("dialog-error").textContent = "";
      try {
        done(await onSubmit(values));
      } catch (err) {
        $("dialog-error").textContent = describeError(err);
        $("dialog-submit").disabled = false;
      }
    };
    form.addEventListener("submit", submit);
    $("dialog-cancel").addEventListener("click", cancel);
    dialog.addEventListener("cancel", cancel);
    dialog.showModal();
    inputs[fields[0].name]?.focus();
  });
}

function describeError(err) {
  const code = err?.code;
  const known = {
    network: "Cannot reach the server.",
    unauthorized: "Wrong username or password.",
    forbidden: "You are not allowed to do that.",
    not_found: "Not found.",
    conflict: "That already exists.",
    too_large: "That is too long.",
    rate_limited: "Slow down a little and try again.",
    unavailable: "The server is busy; try again.",
    draining: "The server is restarting; try again in a moment.",
    timeout: "No answer from the server.",
  };
  if (code === "invalid" && err.message) return err.message.charAt(0).toUpperCase() + err.message.slice(1) + ".";
  return known[code] || err?.message || "Something went wrong.";
}

// ---------------------------------------------------------------- log in

let loginMode = "login";
function setLoginMode(mode) {
  loginMode = mode;
  $("tab-login").classList.toggle("active", mode === "login");
  $("tab-register").classList.toggle("active", mode === "register");
  $("login-display-row").hidden = mode !== "register";
  $("login-submit").textContent = mode === "login" ? "Log in" : "Create account";
  $("login-password").autocomplete = mode === "login" ? "current-password" : "new-password";
  $("login-error").textContent = "";
}

function showLogin(notice = "") {
  $("app").hidden = true;
  $("login").hidden = false;
  setLoginMode(loginMode);
  $("login-error").textContent = notice;
  $("login-username").focus();
}

async function submitLogin(e) {
  e.preventDefault();
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  const displayName = $("login-display").value.trim();
  const error = $("login-error");
  error.textContent = "";
  if (username.length < 3) return void (error.textContent = "Usernames have 3 to 32 characters: a-z, 0-9, _ . -");
  if (password.length < 8) return void (error.textContent = "Passwords have at least 8 characters.");
  $("login-submit").disabled = true;
  try {
    if (loginMode === "register") {
      try {
        await api("POST", "/api/users", { username, password, ...(displayName ? { displayName } : {}) });
      } catch (err) {
        if (err.code === "conflict") throw Object.assign(new Error("That username is taken."), { code: "taken" });
        throw err;
      }
    }
    const { data } = await api("POST", "/api/sessions", { username, password });
    localStorage.setItem(TOKEN_KEY, data.token);
    localStorage.setItem(USER_KEY, JSON.stringify(data.user));
    $("login-password").value = "";
    await start();
  } catch (err) {
    error.textContent = err.code === "taken" ? err.message : describeError(err);
  } finally {
    $("login-submit").disabled = false;
  }
}

function sessionExpired() {
  if (!state.token) return;
  state.token = null;
  localStorage.removeItem(TOKEN_KEY);
  sessionStorage.setItem(NOTICE_KEY, "Your session has expired: please log in again.");
  location.reload();
}

function logOut() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
  localStorage.removeItem(LAST_KEY);
  location.reload(); // closes every socket and forgets every view
}

// ---------------------------------------------------------------- start

async function start() {
  state.token = localStorage.getItem(TOKEN_KEY);
  if (!state.token) return showLogin(sessionStorage.getItem(NOTICE_KEY) || "");
  sessionStorage.removeItem(NOTICE_KEY);
  let me;
  let unread;
  try {
    // The channels the user is in (from the unread counts) before any community
    // opens: a community's socket names them in its first connect.
    [me, unread] = (await Promise.all([api("GET", "/api/me"), api("GET", "/api/unread")])).map((r) => r.data);
  } catch (err) {
    if (err.status === 401) return; // sessionExpired reloads
    showLogin(`${describeError(err)} Retrying…`);
    setTimeout(start, 3000);
    return;
  }
  state.me = me.user;
  learnUser(me.user);
  setCommunities(me.communities);
  applyUnread(unread);
  $("login").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = nameOf(state.me.id);
  $("me-name").title = `@${state.me.username}`;
  $("me-avatar").textContent = initials(nameOf(state.me.id));
  $("me-avatar").className = `avatar small ${hueOf(state.me.id)}`;
  connectRoot();
  const last = readLast();
  const cid = state.communities.has(last.cid) ? last.cid : state.communities.keys().next().value;
  if (cid !== undefined) await openCommunity(cid, last.cid === cid ? last.chid : undefined);
  else renderAll();
}

function readLast() {
  try {
    return JSON.parse(localStorage.getItem(LAST_KEY) || "{}");
  } catch {
    return {};
  }
}
function saveLast() {
  localStorage.setItem(LAST_KEY, JSON.stringify({ cid: state.currentCid, chid: state.currentChid }));
}

function setCommunities(list) {
  state.communities = new Map(list.map((c) => [c.id, c]));
}

// ---------------------------------------------------------------- the user's own line: `/`

function connectRoot() {
  const root = io("/", { auth: (cb) => cb({ token: state.token }) });
  state.root = root;
  root.on("connect", () => setRootConn("connected"));
  root.on("disconnect", () => setRootConn(root.active ? "reconnecting" : "disconnected"));
  root.on("connect_error", (err) => {
    if (err.message === "unauthorized") return sessionExpired();
    setRootConn("reconnecting");
    if (!root.active) setTimeout(() => !root.connected && !root.active && root.connect(), 1000 + Math.random() * 1000);
  });
  root.on("unread", applyUnread);
  root.on("notify", onNotify);
  root.on("read", onRead);
  root.on("membership", onMembership);
}

function setRootConn(s) {
  state.rootConn = s;
  renderConn();
}

function applyUnread(u) {
  const next = new Map();
  for (const c of u.communities) {
    for (const ch of c.channels) next.set(ch.channelId, { communityId: c.communityId, unread: ch.unread });
  }
  const viewing = next.get(state.currentChid);
  if (viewing && isViewing()) viewing.unread = 0;
  state.channels = next;
  for (const view of state.views.values()) syncFollows(view);
  const known = [...state.communities.keys()].sort().join();
  const listed = u.communities.map((c) => c.communityId).sort().join();
  if (known !== listed) refreshCommunities();
  scheduleRender();
}

let unreadTimer = null;
function refreshUnread() {
  clearTimeout(unreadTimer);
  unreadTimer = setTimeout(async () => {
    try {
      applyUnread((await api("GET", "/api/unread")).data);
    } catch {
      /* the next `unread` (on reconnect) corrects it */
    }
  }, 250);
}

async function refreshCommunities() {
  try {
    setCommunities((await api("GET", "/api/communities")).data);
    if (state.currentCid !== null && !state.communities.has(state.currentCid)) {
      state.currentCid = null;
      state.currentChid = null;
      const first = state.communities.keys().next().value;
      if (first !== undefined) await openCommunity(first);
    }
    scheduleRender();
  } catch {
    /* kept as it was */
  }
}

/**
 * Someone else wrote a new message in a channel: one more unread unless it is in
 * view. It arrives once per connection (PROTOCOL.md v1.1): as `new-chat` where this
 * page's community socket follows the channel, as `notify` on `/` everywhere else.
 */
function countNew(communityId, channelId) {
  let ch = state.channels.get(channelId);
  if (!ch) {
    ch = { communityId, unread: 0 };
    state.channels.set(channelId, ch);
    refreshUnread();
  }
  if (!(channelId === state.currentChid && isViewing())) ch.unread += 1;
}

function onNotify(n) {
  countNew(n.communityId, n.channelId);
  if (!state.communities.has(n.communityId)) refreshCommunities();
  const view = state.views.get(n.communityId);
  if (view && !view.list.some((c) => c.id === n.channelId)) refreshChannels(view);
  scheduleRender();
}

function onRead({ channelId }) {
  const ch = state.channels.get(channelId);
  if (ch && channelId === state.currentChid && isViewing()) {
    ch.unread = 0;
    scheduleRender();
  } else {
    refreshUnread(); // the marker moved elsewhere (another tab): recount
  }
}

async function onMembership({ communityId, channelId, member }) {
  if (member) {
    if (!state.channels.has(channelId)) state.channels.set(channelId, { communityId, unread: 0 });
    refreshUnread();
  } else {
    state.channels.delete(channelId);
  }
  const view = state.views.get(communityId);
  if (view) {
    if (!member) view.followed.delete(channelId);
    await refreshChannels(view); // follows the channel if the user is now in it
    if (!member && view.cid === state.currentCid && channelId === state.currentChid) {
      const still = view.list.find((c) => c.id === channelId);
      if (!still) openChannel(firstChannel(view));
    }
  }
  scheduleRender();
}

// ---------------------------------------------------------------- communities and their views

async function getView(cid) {
  if (state.views.has(cid)) return state.views.get(cid);
  if (!state.creating.has(cid)) {
    state.creating.set(
      cid,
      createView(cid).finally(() => state.creating.delete(cid)),
    );
  }
  return state.creating.get(cid);
}

async function createView(cid) {
  lookUpMembers(cid);
  const { data: list } = await api("GET", `/api/communities/${cid}/channels`);
  const positions = {};
  for (const ch of list) if (isMember(ch.id)) positions[ch.id] = ch.lastSeq;
  const client = createBatonClient({
    io,
    url: location.origin,
    token: () => state.token,
    communityId: cid,
    positions, // the connect's `since` names them: the server rejoins their rooms
  });
  const view = {
    cid,
    client,
    list,
    pages: new Map(), // channelId -> {hasMore, loading, error}
    local: new Map(), // channelId -> [{clientMsgId, content, state, error, createdAt}]
    online: new Map(), // channelId -> Set<userId>
    typing: new Map(), // channelId -> Map<userId, expiresAt>
    readSent: new Map(), // channelId -> seq
    followed: new Set(Object.keys(positions).map(Number)), // member channels the client follows
    lastChid: null,
    conn: "connecting",
    wasDown: false,
    recoveredTimer: null,
  };
  client.on("message", (m) => onMessage(view, m));
  client.on("state", (s) => onClientState(view, s));
  client.on("presence", (p) => onPresence(view, p));
  client.on("typing", (t) => onTyping(view, t));
  client.on("error", (err) => onClientError(view, err));
  state.views.set(cid, view);
  syncFollows(view); // membership learnt while the list was read
  return view;
}

/** Follows every channel of the view the user is a member of and the client does not follow yet. */
function syncFollows(view) {
  for (const ch of view.list) if (isMember(ch.id) && !view.followed.has(ch.id)) followChannel(view, ch.id);
}

async function refreshChannels(view) {
  try {
    const { data } = await api("GET", `/api/communities/${view.cid}/channels`);
    view.list = data;
    syncFollows(view);
    scheduleRender();
  } catch {
    /* kept as it was */
  }
}

/** Follows a channel the user just became a member of, from its current position. */
async function followChannel(view, channelId) {
  if (view.followed.has(channelId)) return;
  view.followed.add(channelId);
  const ch = view.list.find((c) => c.id === channelId);
  view.client.track(channelId, ch ? ch.lastSeq : 0);
  try {
    await view.client.join([channelId]);
  } catch {
    /* disconnected: the next connect's `since` names it */
  }
}

async function openCommunity(cid, chid) {
  state.currentCid = cid;
  state.currentChid = null;
  renderAll();
  let view;
  try {
    view = await getView(cid);
  } catch (err) {
    toast(`Could not open the community: ${describeError(err)}`, "error");
    return;
  }
  if (state.currentCid !== cid) return; // switched again meanwhile
  refreshChannels(view); // channels created since the view was made
  const wanted = chid ?? view.lastChid;
  const target = view.list.some((c) => c.id === wanted) ? wanted : firstChannel(view);
  await openChannel(target);
}

function firstChannel(view) {
  const sorted = sortedChannels(view);
  return (sorted.find((c) => isMember(c.id)) || sorted[0])?.id ?? null;
}

function sortedChannels(view) {
  return [...view.list].sort((a, b) => a.name.localeCompare(b.name) || a.id - b.id);
}

const isMember = (chid) => state.channels.has(chid);
const currentView = () => (state.currentCid === null ? null : state.views.get(state.currentCid) || null);
const currentChannel = () => currentView()?.list.find((c) => c.id === state.currentChid) || null;
const isViewing = () => document.visibilityState === "visible";

async function openChannel(chid) {
  const view = currentView();
  if (!view) return;
  const changed = state.currentChid !== chid;
  state.currentChid = chid;
  view.lastChid = chid;
  saveLast();
  if (changed) {
    $("messages").replaceChildren();
    cancelTypingSend();
  }
  renderAll();
  if (chid === null) return;
  if (isMember(chid)) {
    if (!view.pages.has(chid)) await loadPage(view, chid, true);
    fetchPresence(view, chid);
    if (changed) $("composer-input").focus();
  }
}

// ---------------------------------------------------------------- history

async function loadPage(view, chid, initial = false) {
  let page = view.pages.get(chid);
  if (!page) {
    page = { hasMore: true, loading: false, error: null, loadedOnce: false };
    view.pages.set(chid, page);
  }
  if (page.loading || (!initial && !page.hasMore)) return;
  page.loading = true;
  page.error = null;
  renderHistoryTop();
  const held = view.client.messages(chid);
  const before = !initial && held.length ? held[0].seq : undefined;
  const scroller = $("message-scroll");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const result = await view.client.loadOlder(chid, { before, limit: PAGE });
    page.hasMore = result.hasMore;
    page.loadedOnce = true;
  } catch (err) {
    page.error = err;
  } finally {
    page.loading = false;
  }
  if (view !== currentView() || chid !== state.currentChid) return;
  renderMessages({ keepFromBottom: initial ? null : fromBottom, toBottom: initial });
  renderHistoryTop();
  // Short channels: keep loading until the view can scroll (or all is there).
  if (page.hasMore && !page.error && scroller.scrollHeight <= scroller.clientHeight + 10) loadPage(view, chid);
}

// ---------------------------------------------------------------- live events

function onMessage(view, m) {
  const typing = view.typing.get(m.channelId);
  if (typing?.delete(m.senderId)) renderTyping();
  // A live creation (its eventSeq is its seq) by someone else. What a reconnect
  // replays is counted by the refresh after `recovered`.
  const live = view.conn !== "reconnecting";
  if (live && m.eventSeq === m.seq && !m.deleted && m.senderId !== state.me?.id) {
    countNew(m.communityId, m.channelId);
    scheduleRender();
  } else if (view === currentView() && m.channelId === state.currentChid) scheduleRender();
}

function onClientState(view, s) {
  clearTimeout(view.recoveredTimer);
  if (s === "reconnecting" || s === "disconnected") {
    view.conn = s;
    view.wasDown = true;
  } else if (s === "connected") {
    view.conn = view.wasDown ? "reconnecting" : "connected"; // until `recovered`
  } else if (s === "recovered") {
    if (view.wasDown) {
      view.conn = "recovered";
      view.wasDown = false;
      view.recoveredTimer = setTimeout(() => {
        if (view.conn === "recovered") {
          view.conn = "connected";
          renderConn();
        }
      }, RECOVERED_SHOW_MS);
      // What may have been missed while away: presence, unread, a failed first page.
      if (view === currentView() && state.currentChid !== null && isMember(state.currentChid)) {
        fetchPresence(view, state.currentChid);
        const page = view.pages.get(state.currentChid);
        if (page?.error || (page && !page.loadedOnce)) loadPage(view, state.currentChid, !page.loadedOnce);
      }
      view.typing.clear();
      refreshChannels(view);
      refreshUnread();
    } else {
      view.conn = "connected";
    }
  }
  if (view === currentView()) {
    renderConn();
    renderOnline();
    renderComposer();
  }
}

function onClientError(view, err) {
  if (err.message === "unauthorized") return sessionExpired();
  const socket = view.client.socket;
  if (view.conn === "connected") view.conn = "reconnecting";
  view.wasDown = true;
  // A refusal (`draining`, `unavailable`, ...) is final for socket.io-client: try again.
  if (!socket.active) {
    setTimeout(() => !socket.connected && !socket.active && socket.connect(), 1000 + Math.random() * 1500);
  }
  if (view === currentView()) renderConn();
}

function onPresence(view, { channelId, userId, online }) {
  const set = view.online.get(channelId);
  if (!set) return; // read in full when the channel is opened
  if (online) set.add(userId);
  else set.delete(userId);
  if (view === currentView() && channelId === state.currentChid) renderOnline();
}

async function fetchPresence(view, chid) {
  try {
    const { data } = await api("GET", `/api/channels/${chid}/presence`);
    view.online.set(chid, new Set(data.online));
  } catch {
    if (!view.online.has(chid)) view.online.set(chid, new Set());
  }
  if (view === currentView() && chid === state.currentChid) renderOnline();
}

function onTyping(view, { channelId, userId }) {
  if (state.me && userId === state.me.id) return;
  if (!view.typing.has(channelId)) view.typing.set(channelId, new Map());
  view.typing.get(channelId).set(userId, Date.now() + TYPING_SHOW_MS);
  if (view === currentView() && channelId === state.currentChid) renderTyping();
}

// ---------------------------------------------------------------- sending, editing, deleting

let clientIdCounter = 0;
const newClientMsgId = () =>
  (crypto.randomUUID?.() || `${Date.now().toString(36)}-${(clientIdCounter++).toString(36)}-${Math.random().toString(36).slice(2, 10)}`);

function sendMessage(view, chid, content) {
  const local = { clientMsgId: newClientMsgId(), content, state: "pending", error: null, createdAt: Date.now() };
  if (!view.local.has(chid)) view.local.set(chid, []);
  view.local.get(chid).push(local);
  deliver(view, chid, local);
  renderMessages({ toBottom: true });
}

function deliver(view, chid, local) {
  view.client.send(chid, local.content, { clientMsgId: local.clientMsgId }).then(
    () => {
      dropLocal(view, chid, local);
      if (view === currentView() && chid === state.currentChid) scheduleRender();
    },
    (err) => {
      local.state = "failed";
      local.error = err;
      if (view === currentView() && chid === state.currentChid) scheduleRender();
    },
  );
}

function dropLocal(view, chid, local) {
  const list = view.local.get(chid) || [];
  const i = list.indexOf(local);
  if (i >= 0) list.splice(i, 1);
}

function retry(view, chid, local) {
  // A refused message was not written: send it again as a new one.
  const list = view.local.get(chid) || [];
  const i = list.indexOf(local);
  const again = { clientMsgId: newClientMsgId(), content: local.content, state: "pending", error: null, createdAt: Date.now() };
  if (i >= 0) list.splice(i, 1, again);
  else list.push(again);
  deliver(view, chid, again);
  renderMessages({ toBottom: true });
}

async function saveEdit(view, m, content) {
  const text = content.trim();
  if (!text || text === m.content) return true;
  try {
    await view.client.modify(m.channelId, m.id, text);
    return true;
  } catch (err) {
    toast(`Could not edit: ${describeError(err)}`, "error");
    return false;
  }
}

async function removeMessage(view, m) {
  try {
    await view.client.delete(m.channelId, m.id);
  } catch (err) {
    toast(`Could not delete: ${describeError(err)}`, "error");
  }
}

// typing: throttled, and only while connected (volatile: never queued for later)
let lastTypingSent = 0;
let lastTypingChannel = null;
function noteTyping() {
  const view = currentView();
  const chid = state.currentChid;
  if (!view || chid === null || !isMember(chid) || !$("composer-input").value.trim()) return;
  const now = Date.now();
  if (lastTypingChannel === chid && now - lastTypingSent < TYPING_SEND_MS) return;
  if (!view.client.socket.connected) return;
  lastTypingSent = now;
  lastTypingChannel = chid;
  view.client.socket.volatile.emit("typing", { channelId: chid });
}
function cancelTypingSend() {
  lastTypingSent = 0;
  lastTypingChannel = null;
}

// read markers: sent when the newest message shown is past the one last marked
function markRead() {
  const view = currentView();
  const chid = state.currentChid;
  if (!view || chid === null || !isMember(chid) || !isViewing()) return;
  const msgs = view.client.messages(chid);
  if (!msgs.length) return;
  const seq = msgs[msgs.length - 1].seq;
  const ch = state.channels.get(chid);
  if (ch && ch.unread) {
    ch.unread = 0;
    renderCommunities();
    renderChannels();
  }
  if ((view.readSent.get(chid) || 0) >= seq) return;
  view.readSent.set(chid, seq);
  view.client.socket
    .timeout(ACK_MS)
    .emitWithAck("read", { channelId: chid, seq })
    .then((ack) => {
      if (ack?.error && view.readSent.get(chid) === seq) view.readSent.delete(chid);
    })
    .catch(() => {
      if (view.readSent.get(chid) === seq) view.readSent.delete(chid); // tried again on the next render
    });
}

// ---------------------------------------------------------------- actions from the sidebar

async function createCommunity() {
  const created = await openDialog({
    title: "Create a community",
    fields: [{ name: "name", label: "Name", placeholder: "e.g. Acme", maxlength: 80 }],
    submitLabel: "Create",
    onSubmit: async ({ name }) => {
      if (!name.trim()) throw Object.assign(new Error("a name is needed"), { code: "invalid" });
      return (await api("POST", "/api/communities", { name: name.trim() })).data;
    },
  });
  if (!created) return;
  state.communities.set(created.id, created);
  await openCommunity(created.id);
}

async function addCommunityMember() {
  const community = state.communities.get(state.currentCid);
  if (!community) return;
  const result = await openDialog({
    title: `Add a member to ${community.name}`,
    fields: [{ name: "username", label: "Username", placeholder: "their username", maxlength: 32 }],
    submitLabel: "Add",
    onSubmit: async ({ username }) => {
      if (!username.trim()) throw Object.assign(new Error("a username is needed"), { code: "invalid" });
      try {
        return await api("POST", `/api/communities/${community.id}/members`, { username: username.trim() });
      } catch (err) {
        if (err.code === "not_found") throw new Error(`There is no user called “${username.trim()}”.`);
        throw err;
      }
    },
  });
  if (!result) return;
  learnUser(result.data);
  const who = result.data.displayName || result.data.username;
  toast(result.status === 201 ? `${who} is now a member of ${community.name}.` : `${who} was already a member.`);
}

async function createChannel() {
  const view = currentView();
  if (!view) return;
  const created = await openDialog({
    title: "Create a channel",
    fields: [
      { name: "name", label: "Name", placeholder: "e.g. general", maxlength: 80 },
      { name: "private", label: "Private: only people added to it can see it", type: "checkbox" },
    ],
    submitLabel: "Create",
    onSubmit: async (values) => {
      if (!values.name.trim()) throw Object.assign(new Error("a name is needed"), { code: "invalid" });
      try {
        return (await api("POST", `/api/communities/${view.cid}/channels`, { name: values.name.trim(), private: values.private }))
          .data;
      } catch (err) {
        if (err.code === "conflict") throw new Error("This community already has a channel with that name.");
        throw err;
      }
    },
  });
  if (!created) return;
  state.channels.set(created.id, { communityId: view.cid, unread: 0 });
  if (!view.list.some((c) => c.id === created.id)) view.list.push(created);
  await followChannel(view, created.id);
  if (view === currentView()) await openChannel(created.id);
}

async function addChannelMember() {
  const channel = currentChannel();
  if (!channel) return;
  const result = await openDialog({
    title: `Add someone to ${channel.private ? "" : "#"}${channel.name}`,
    fields: [
      {
        name: "username",
        label: "Username",
        placeholder: "their username",
        maxlength: 32,
        hint: "They must already be a member of the community.",
      },
    ],
    submitLabel: "Add",
    onSubmit: async ({ username }) => {
      if (!username.trim()) throw Object.assign(new Error("a username is needed"), { code: "invalid" });
      try {
        return await api("POST", `/api/channels/${channel.id}/members`, { username: username.trim() });
      } catch (err) {
        if (err.code === "forbidden") throw new Error(`${username.trim()} is not a member of this community (or there is no such user).`);
        if (err.code === "not_found") throw new Error(`There is no user called “${username.trim()}”.`);
        throw err;
      }
    },
  });
  if (!result) return;
  learnUser(result.data.user);
  const who = result.data.user.displayName || result.data.user.username;
  toast(result.status === 201 ? `${who} was added to ${channel.name}.` : `${who} was already in ${channel.name}.`);
  const view = currentView();
  if (view) fetchPresence(view, channel.id);
}

async function joinChannel() {
  const view = currentView();
  const channel = currentChannel();
  if (!view || !channel) return;
  $("join-channel").disabled = true;
  try {
    const { data } = await api("POST", `/api/channels/${channel.id}/members`);
    if (!state.channels.has(channel.id)) state.channels.set(channel.id, { communityId: view.cid, unread: 0 });
    const i = view.list.findIndex((c) => c.id === channel.id);
    if (i >= 0) view.list[i] = data.channel;
    await followChannel(view, channel.id);
    if (view === currentView() && state.currentChid === channel.id) {
      renderAll();
      await openChannel(channel.id);
    }
  } catch (err) {
    toast(`Could not join: ${describeError(err)}`, "error");
  } finally {
    $("join-channel").disabled = false;
  }
}

// ---------------------------------------------------------------- rendering

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    if (!$("app").hidden) renderAll();
  });
}

function renderAll() {
  renderCommunities();
  renderChannels();
  renderHeader();
  renderConn();
  renderMessages();
  renderHistoryTop();
  renderTyping();
  renderOnline();
  renderComposer();
}

function communityUnread(cid) {
  let n = 0;
  for (const ch of state.channels.values()) if (ch.communityId === cid) n += ch.unread;
  return n;
}

function renderCommunities() {
  const list = $("community-list");
  const items = [...state.communities.values()].sort((a, b) => a.id - b.id);
  list.replaceChildren(
    ...items.map((c) => {
      const unread = communityUnread(c.id);
      const active = c.id === state.currentCid;
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: `community ${active ? "active" : ""}`,
            title: c.name,
            "aria-label": `${c.name}${unread ? `, ${unread} unread` : ""}`,
            "aria-current": active ? "true" : null,
            "data-testid": "community",
            dataset: { communityId: String(c.id), name: c.name, unread: String(unread) },
            onclick: () => {
              if (c.id !== state.currentCid) openCommunity(c.id);
            },
          },
          h("span", { class: `avatar ${hueOf(c.id)}`, text: initials(c.name) }),
          h("span", { class: "community-label", text: c.name }),
          unread ? h("span", { class: "badge", "data-testid": "community-unread", text: unread > 99 ? "99+" : String(unread) }) : null,
        ),
      );
    }),
  );
}

function renderChannels() {
  const view = currentView();
  const community = state.communities.get(state.currentCid);
  $("community-name").textContent = community ? community.name : state.communities.size ? "" : "No community yet";
  $("add-community-member").hidden = !(community && community.role === "owner");
  $("new-channel").hidden = !view;
  const mine = $("channel-list");
  const others = $("other-channel-list");
  if (!view) {
    mine.replaceChildren();
    others.replaceChildren();
    $("other-channels-head").hidden = true;
    return;
  }
  const item = (c) => {
    const member = isMember(c.id);
    const unread = member ? state.channels.get(c.id).unread : 0;
    const active = c.id === state.currentChid;
    return h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: `channel ${active ? "active" : ""} ${unread ? "has-unread" : ""}`,
          "data-testid": "channel",
          "aria-current": active ? "true" : null,
          dataset: {
            channelId: String(c.id),
            name: c.name,
            private: String(c.private),
            member: String(member),
            unread: String(unread),
          },
          onclick: () => openChannel(c.id),
        },
        h("span", { class: `channel-icon ${c.private ? "lock" : ""}`, "aria-hidden": "true", text: c.private ? "" : "#" }),
        h("span", { class: "channel-name", text: c.name }),
        unread ? h("span", { class: "badge", "data-testid": "channel-unread", text: unread > 99 ? "99+" : String(unread) }) : null,
      ),
    );
  };
  const sorted = sortedChannels(view);
  const memberList = sorted.filter((c) => isMember(c.id));
  const otherList = sorted.filter((c) => !isMember(c.id));
  mine.replaceChildren(...memberList.map(item));
  if (!memberList.length) mine.append(h("li", { class: "muted-item", text: "No channels yet." }));
  others.replaceChildren(...otherList.map(item));
  $("other-channels-head").hidden = otherList.length === 0;
}

function renderHeader() {
  const channel = currentChannel();
  const title = $("channel-title");
  const meta = $("channel-meta");
  title.replaceChildren();
  if (channel) {
    title.append(
      h("span", { class: `channel-icon ${channel.private ? "lock" : ""}`, "aria-hidden": "true", text: channel.private ? "" : "#" }),
      h("span", { text: channel.name }),
    );
    meta.textContent = channel.private ? "private channel" : "public channel";
  } else {
    meta.textContent = "";
  }
  $("add-channel-member").hidden = !(channel && isMember(channel.id));
}

function connState() {
  const view = currentView();
  if (view) return view.conn;
  return state.rootConn;
}

function renderConn() {
  const s = connState();
  const node = $("conn");
  const text = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Connection lost, reconnecting…",
    recovered: "Reconnected: you are up to date",
    disconnected: "Disconnected",
  }[s];
  node.dataset.state = s;
  node.textContent = text || s;
}

function renderComposer() {
  const channel = currentChannel();
  const member = channel && isMember(channel.id);
  $("composer").hidden = !member;
  $("join-panel").hidden = !(channel && !member);
  if (channel && !member) $("join-text").textContent = `You are not in #${channel.name} yet.`;
  if (member) $("composer-input").placeholder = `Message ${channel.private ? "" : "#"}${channel.name}`;
}

function renderHistoryTop() {
  const top = $("history-top");
  const view = currentView();
  const chid = state.currentChid;
  const channel = currentChannel();
  top.replaceChildren();
  top.dataset.state = "none";
  if (!view || !channel || !isMember(chid)) return;
  const page = view.pages.get(chid);
  if (!page || page.loading) {
    top.dataset.state = "loading";
    top.append(h("span", { class: "muted", text: "Loading messages…" }));
  } else if (page.error) {
    top.dataset.state = "error";
    top.append(
      h("span", { class: "muted", text: `Could not load messages: ${describeError(page.error)} ` }),
      h("button", { type: "button", class: "ghost small", text: "Try again", onclick: () => loadPage(view, chid, !page.loadedOnce) }),
    );
  } else if (page.hasMore) {
    top.dataset.state = "more";
    top.append(
      h("button", {
        type: "button",
        class: "ghost small",
        "data-testid": "load-older",
        text: "Load older messages",
        onclick: () => loadPage(view, chid),
      }),
    );
  } else {
    top.dataset.state = "start";
    top.append(
      h("div", { class: "channel-start" }, h("strong", { text: `${channel.private ? "" : "#"}${channel.name}` }), h("span", { text: "This is the start of the channel." })),
    );
  }
}

function formatTime(ms) {
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

/** Keyed rendering of the current channel's messages, then the user's unsent ones. */
function renderMessages({ keepFromBottom = null, toBottom = false } = {}) {
  const list = $("messages");
  const scroller = $("message-scroll");
  const view = currentView();
  const chid = state.currentChid;
  const empty = $("empty");
  if (!view || chid === null) {
    list.replaceChildren();
    empty.hidden = false;
    empty.replaceChildren(
      state.communities.size
        ? h("p", { text: view ? "No channel yet: create one with + in the sidebar." : "Pick a community." })
        : h(
            "div",
            { class: "welcome" },
            h("h3", { text: "Welcome to baton" }),
            h("p", { text: "Create a community to start, or ask a community owner to add you." }),
            h("button", { type: "button", class: "primary", text: "Create a community", onclick: createCommunity }),
          ),
    );
    return;
  }
  if (!isMember(chid)) {
    list.replaceChildren();
    empty.hidden = false;
    empty.replaceChildren(h("p", { text: "Join this public channel to read and write in it." }));
    return;
  }
  empty.hidden = true;
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
  const me = state.me.id;
  const msgs = view.client.messages(chid);
  const sentIds = new Set();
  for (const m of msgs) if (m.senderId === me && m.clientMsgId) sentIds.add(m.clientMsgId);
  const items = msgs.map((m) => ({ key: m.senderId === me && m.clientMsgId ? `c:${m.clientMsgId}` : `m:${m.id}`, m }));
  for (const local of view.local.get(chid) || []) {
    if (!sentIds.has(local.clientMsgId)) items.push({ key: `c:${local.clientMsgId}`, local });
  }
  const existing = new Map();
  for (const li of list.children) existing.set(li.dataset.key, li);
  let cursor = list.firstElementChild;
  let previous = null;
  for (const item of items) {
    let li = existing.get(item.key);
    if (li) existing.delete(item.key);
    else li = h("li", { class: "msg", "data-testid": "message", dataset: { key: item.key } });
    updateMessage(view, li, item, previous);
    previous = item;
    if (li === cursor) cursor = cursor.nextElementSibling;
    else list.insertBefore(li, cursor);
  }
  for (const li of existing.values()) li.remove();
  if (keepFromBottom !== null) scroller.scrollTop = scroller.scrollHeight - keepFromBottom;
  else if (toBottom || atBottom) scroller.scrollTop = scroller.scrollHeight;
  markRead();
}

function updateMessage(view, li, item, previous) {
  const me = state.me.id;
  const m = item.m;
  const local = item.local;
  const senderId = m ? m.senderId : me;
  const status = local ? local.state : "sent";
  const prevSender = previous ? (previous.m ? previous.m.senderId : me) : null;
  const prevTime = previous ? (previous.m ? previous.m.createdAt : previous.local.createdAt) : 0;
  const time = m ? m.createdAt : local.createdAt;
  const grouped = prevSender === senderId && time - prevTime < 5 * 60 * 1000 && !(m && m.deleted);
  const signature = [
    m ? `${m.id}:${m.eventSeq}:${m.deleted}:${m.editedAt}` : `l:${local.content.length}`,
    status,
    local?.error?.code || "",
    nameOf(senderId),
    grouped,
  ].join("|");
  if (li.dataset.signature === signature) return;
  if (li.dataset.editing === "1" && m && !m.deleted) return; // keep the editor as it is
  li.dataset.signature = signature;
  li.dataset.editing = "0";
  li.dataset.state = status;
  li.dataset.mine = String(senderId === me);
  li.dataset.senderId = String(senderId);
  if (m) {
    li.dataset.id = String(m.id);
    li.dataset.seq = String(m.seq);
    li.dataset.deleted = String(m.deleted);
  } else {
    delete li.dataset.id;
    delete li.dataset.seq;
    li.dataset.deleted = "false";
  }
  li.className = `msg ${grouped ? "grouped" : ""} ${status} ${m?.deleted ? "deleted" : ""}`;
  const name = nameOf(senderId);
  const head = h(
    "div",
    { class: "msg-head" },
    h("span", { class: "msg-author", "data-testid": "message-author", text: name }),
    h("time", { class: "msg-time", datetime: new Date(time).toISOString(), title: new Date(time).toLocaleString(), text: formatTime(time) }),
    m && m.editedAt && !m.deleted ? h("span", { class: "msg-edited", "data-testid": "message-edited", text: "(edited)" }) : null,
  );
  const body = h("div", { class: "msg-body", "data-testid": "message-content" });
  if (m && m.deleted) {
    body.textContent = "";
    body.append(h("span", { class: "tombstone", "data-testid": "message-deleted", text: "This message was deleted." }));
  } else {
    body.textContent = m ? m.content : local.content;
  }
  const parts = [h("span", { class: `avatar ${hueOf(senderId)}`, "aria-hidden": "true", text: initials(name) }), h("div", { class: "msg-main" }, head, body)];
  const main = parts[1];
  if (local) {
    if (local.state === "pending") {
      main.append(h("div", { class: "msg-status", "data-testid": "message-status", text: "Sending…" }));
    } else {
      main.append(
        h(
          "div",
          { class: "msg-status failed", "data-testid": "message-status" },
          h("span", { text: `Not sent: ${describeError(local.error)}` }),
          h("button", { type: "button", class: "link", "data-testid": "retry", text: "Retry", onclick: () => retry(view, state.currentChid, local) }),
          h("button", {
            type: "button",
            class: "link",
            "data-testid": "discard",
            text: "Discard",
            onclick: () => {
              dropLocal(view, state.currentChid, local);
              renderMessages();
            },
          }),
        ),
      );
    }
  } else if (m.senderId === me && !m.deleted) {
    main.append(
      h(
        "div",
        { class: "msg-actions" },
        h("button", { type: "button", class: "link", "data-testid": "edit", text: "Edit", onclick: () => startEdit(view, li, m.id) }),
        h("button", { type: "button", class: "link danger", "data-testid": "delete", text: "Delete", onclick: () => confirmDelete(view, li, m.id) }),
      ),
    );
  }
  li.replaceChildren(...parts);
}

function messageById(view, chid, id) {
  return view.client.messages(chid).find((x) => x.id === id);
}

function startEdit(view, li, id) {
  const m = messageById(view, state.currentChid, id);
  if (!m || m.deleted) return;
  li.dataset.editing = "1";
  const body = li.querySelector(".msg-body");
  const actions = li.querySelector(".msg-actions");
  const input = h("textarea", { class: "edit-input", rows: "2", "data-testid": "edit-input", "aria-label": "Edit message" });
  input.value = m.content;
  const finish = () => {
    li.dataset.editing = "0";
    li.dataset.signature = "";
    renderMessages();
  };
  const save = async () => {
    input.disabled = true;
    const ok = await saveEdit(view, m, input.value);
    if (ok) finish();
    else input.disabled = false;
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      save();
    } else if (e.key === "Escape") {
      e.preventDefault();
      finish();
    }
  });
  body.replaceChildren(
    input,
    h(
      "div",
      { class: "edit-buttons" },
      h("button", { type: "button", class: "primary small", "data-testid": "edit-save", text: "Save", onclick: save }),
      h("button", { type: "button", class: "ghost small", "data-testid": "edit-cancel", text: "Cancel", onclick: finish }),
      h("span", { class: "hint", text: "Enter to save, Esc to cancel" }),
    ),
  );
  actions?.remove();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function confirmDelete(view, li, id) {
  const actions = li.querySelector(".msg-actions");
  if (!actions) return;
  li.dataset.editing = "1"; // hold the row while asking
  const finish = () => {
    li.dataset.editing = "0";
    li.dataset.signature = "";
    renderMessages();
  };
  actions.replaceChildren(
    h("span", { class: "confirm-text", text: "Delete this message?" }),
    h("button", {
      type: "button",
      class: "link danger",
      "data-testid": "delete-confirm",
      text: "Delete",
      onclick: async () => {
        const m = messageById(view, state.currentChid, id);
        if (m) await removeMessage(view, m);
        finish();
      },
    }),
    h("button", { type: "button", class: "link", "data-testid": "delete-cancel", text: "Cancel", onclick: finish }),
  );
  actions.classList.add("confirming");
}

let typingTimer = null;
function renderTyping() {
  const node = $("typing");
  const view = currentView();
  const chid = state.currentChid;
  clearTimeout(typingTimer);
  const now = Date.now();
  const who = [];
  let next = Infinity;
  const map = view?.typing.get(chid);
  if (map) {
    for (const [uid, until] of map) {
      if (until <= now) map.delete(uid);
      else {
        who.push(nameOf(uid));
        next = Math.min(next, until);
      }
    }
  }
  node.dataset.count = String(who.length);
  if (!who.length) node.textContent = "";
  else if (who.length === 1) node.textContent = `${who[0]} is typing…`;
  else if (who.length === 2) node.textContent = `${who[0]} and ${who[1]} are typing…`;
  else node.textContent = "Several people are typing…";
  if (next !== Infinity) typingTimer = setTimeout(renderTyping, next - now + 20);
}

function renderOnline() {
  const section = $("online-section");
  const view = currentView();
  const channel = currentChannel();
  if (!view || !channel || !isMember(channel.id) || !view.online.has(channel.id)) {
    section.hidden = true;
    return;
  }
  const ids = new Set(view.online.get(channel.id));
  if (view.client.socket.connected) ids.add(state.me.id); // this page is in the room
  else ids.delete(state.me.id);
  const sorted = [...ids].sort((a, b) => (a === state.me.id ? -1 : b === state.me.id ? 1 : nameOf(a).localeCompare(nameOf(b))));
  section.hidden = false;
  $("online-title").textContent = `Online in ${channel.private ? "" : "#"}${channel.name} (${sorted.length})`;
  $("online-list").replaceChildren(
    ...sorted.map((uid) =>
      h(
        "li",
        { "data-testid": "online-user", dataset: { userId: String(uid) } },
        h("span", { class: "dot", "aria-hidden": "true" }),
        h("span", { text: nameOf(uid) }),
        uid === state.me.id ? h("span", { class: "muted", text: " (you)" }) : null,
      ),
    ),
  );
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("login-form").addEventListener("submit", submitLogin);
  for (const tab of [$("tab-login"), $("tab-register")]) tab.addEventListener("click", () => setLoginMode(tab.dataset.mode));
  $("logout").addEventListener("click", logOut);
  $("new-community").addEventListener("click", createCommunity);
  $("add-community-member").addEventListener("click", addCommunityMember);
  $("new-channel").addEventListener("click", createChannel);
  $("add-channel-member").addEventListener("click", addChannelMember);
  $("join-channel").addEventListener("click", joinChannel);

  const input = $("composer-input");
  const autosize = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
  };
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const view = currentView();
    const chid = state.currentChid;
    const content = input.value;
    if (!view || chid === null || !content.trim()) return;
    input.value = "";
    autosize();
    cancelTypingSend();
    sendMessage(view, chid, content);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    autosize();
    noteTyping();
  });

  $("message-scroll").addEventListener("scroll", () => {
    const view = currentView();
    const chid = state.currentChid;
    if (!view || chid === null || !isMember(chid)) return;
    const page = view.pages.get(chid);
    if (page && page.hasMore && !page.loading && !page.error && $("message-scroll").scrollTop < 80) loadPage(view, chid);
  });

  document.addEventListener("visibilitychange", () => {
    if (isViewing()) markRead();
  });
  window.addEventListener("storage", (e) => {
    // Logged out (or in as someone else) in another tab.
    if (e.key === TOKEN_KEY && e.newValue !== state.token) location.reload();
  });
}

loadNames();
wire();
start();
