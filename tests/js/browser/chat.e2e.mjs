// The web client in a real browser (Debian's chromium through playwright-core)
// against the real baton binary: private channels seen only by their members,
// editing, deleting, typing, presence, failed sends, scroll-back through history,
// and unread badges on the community switcher. Saves docs/screenshots/*.png.
//
// Run from tests/js: node --test browser/*.e2e.mjs   (needs target/debug/baton and /usr/bin/chromium)
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startBaton, rest } from "../baton.mjs";
import {
  launch,
  newPage,
  logIn,
  shoot,
  dialog,
  community,
  channel,
  send,
  messages,
  messageRow,
  until,
  communityBadge,
} from "./ui.mjs";

let baton;
let api;
let browser;
const pages = {};
let bob;
let carol;

before(async () => {
  baton = await startBaton({ BATON_CHAT_RATE: "1000", BATON_CHAT_BURST: "1000" }); // 120 posts in a row
  api = rest(baton.base);
  browser = await launch();
  bob = await api.user("bob");
  carol = await api.user("carol");
  for (const who of ["alice", "bob", "carol"]) pages[who] = await newPage(browser);
});

after(async () => {
  await browser?.close();
  await baton?.stop();
});

test("two users chat in a private channel; a third, outside it, sees nothing", async () => {
  const { alice: a, bob: b, carol: c } = pages;

  // Alice registers through the form and sets everything up through the UI.
  await logIn(a, baton.base, "alice", { register: true, screenshot: "login.png" });
  await a.getByTestId("new-community").click();
  await dialog(a, { name: "Acme" });
  await community(a, "Acme").waitFor();
  for (const who of ["bob", "carol"]) {
    await a.getByTestId("add-community-member").click();
    await dialog(a, { username: who });
    await a.getByTestId("toast").filter({ hasText: `${who} is now a member of Acme` }).waitFor();
  }
  await a.getByTestId("new-channel").click();
  await dialog(a, { name: "general", private: false });
  await channel(a, "general").waitFor();
  await a.getByTestId("new-channel").click();
  await dialog(a, { name: "secret", private: true });
  await channel(a, "secret").and(a.locator("[aria-current=true]")).waitFor();
  await a.getByTestId("add-channel-member").click();
  await dialog(a, { username: "bob" });
  await a.getByTestId("toast").filter({ hasText: "bob was added to secret" }).waitFor();

  // Bob and Carol log in through the form.
  await logIn(b, baton.base, "bob");
  await logIn(c, baton.base, "carol");
  await community(b, "Acme").waitFor();
  await channel(b, "secret").waitFor();
  assert.equal(await channel(b, "secret").getAttribute("data-member"), "true");
  await channel(b, "secret").click();
  await b.locator("[data-testid=history-top][data-state=start]").waitFor();

  await channel(c, "general").waitFor();
  assert.equal(await channel(c, "secret").count(), 0, "carol's sidebar has no private channel");

  // They chat, both ways.
  await send(a, "hello bob");
  await messageRow(b, "hello bob").waitFor();
  await messageRow(a, "hello bob").and(a.locator("[data-state=sent]")).waitFor();

  // Typing indicator: Bob types, Alice sees it.
  await b.getByTestId("composer").pressSequentially("hi al", { delay: 20 });
  await a.getByTestId("typing").filter({ hasText: "bob is typing" }).waitFor();
  await b.getByTestId("composer").pressSequentially("ice", { delay: 20 });
  await b.getByTestId("composer").press("Enter");
  await messageRow(a, "hi alice").waitFor();
  await until(async () => (await a.getByTestId("typing").textContent()) === "", 5000, "a message to end the typing");

  // Presence: both are online in the channel, as each page shows.
  const aliceId = await a.evaluate(() => JSON.parse(localStorage.getItem("baton.user")).id);
  for (const [page, other] of [
    [a, bob.id],
    [b, aliceId],
  ]) {
    await page.locator(`[data-testid=online-user][data-user-id="${other}"]`).waitFor();
  }

  // Message content is text, never HTML.
  const html = '<img src=x onerror="document.title=\'owned\'"><b>bold?</b>';
  await send(a, html);
  await messageRow(b, html).waitFor();
  assert.equal(await b.locator("[data-testid=message-list] img, [data-testid=message-list] b").count(), 0);
  assert.notEqual(await b.title(), "owned");

  // Alice edits her message, Bob deletes his; each sees the other's change.
  const row = messageRow(a, "hello bob");
  await row.hover();
  await row.getByTestId("edit").click();
  await a.getByTestId("edit-input").fill("hello bob, edited");
  await a.getByTestId("edit-input").press("Enter");
  await messageRow(b, "hello bob, edited").getByTestId("message-edited").waitFor();
  const mine = messageRow(b, "hi alice");
  await mine.hover();
  await mine.getByTestId("delete").click();
  await b.getByTestId("delete-confirm").click();
  await a.locator("[data-testid=message][data-deleted=true]").getByTestId("message-deleted").waitFor();
  await b.locator("[data-testid=message][data-deleted=true]").waitFor();

  // A refused send is shown as failed, with Retry (refused again here) and Discard.
  await send(a, "x".repeat(4001));
  const failed = a.locator("[data-testid=message][data-state=failed]");
  await failed.getByTestId("retry").waitFor();
  assert.match(await failed.getByTestId("message-status").textContent(), /too long/);
  await failed.getByTestId("retry").click();
  await a.locator("[data-testid=message][data-state=failed]").getByTestId("retry").waitFor();
  await a.locator("[data-testid=message][data-state=failed]").getByTestId("discard").click();
  await until(async () => (await a.locator("[data-testid=message][data-state=failed]").count()) === 0, 5000, "the discarded message to go");

  // Both pages show the same conversation.
  await until(
    async () => JSON.stringify(await messages(a)) === JSON.stringify(await messages(b)),
    5000,
    "alice's and bob's lists to match",
  ).catch(async (e) => {
    console.log(JSON.stringify({ alice: await messages(a), bob: await messages(b) }));
    throw e;
  });
  const shown = await messages(a);
  assert.deepEqual(
    shown.map((m) => [m.content, m.deleted]),
    [
      ["hello bob, edited", false],
      ["This message was deleted.", true],
      [html, false],
    ],
  );

  // Carol saw none of it: no channel, no message, no badge.
  await channel(c, "general").click();
  await c.getByTestId("join-channel").click();
  await c.getByTestId("composer").waitFor();
  await send(c, "carol in general");
  await messageRow(c, "carol in general").and(c.locator("[data-state=sent]")).waitFor();
  assert.equal(await channel(c, "secret").count(), 0);
  const carolText = await c.locator("body").innerText();
  for (const secret of ["hello bob", "hi alice", "bold?"]) assert.ok(!carolText.includes(secret), `carol sees "${secret}"`);
  assert.equal(await communityBadge(c, "Acme"), 0);
  const acme = Number(await community(c, "Acme").getAttribute("data-community-id"));
  const carolChannels = await api.call("GET", `/api/communities/${acme}/channels`, carol.token);
  assert.deepEqual(
    carolChannels.body.map((ch) => ch.name),
    ["general"],
  );

  // The chat view, with someone typing.
  await b.getByTestId("composer").pressSequentially("one more thing", { delay: 10 });
  await a.getByTestId("typing").filter({ hasText: "bob is typing" }).waitFor();
  await shoot(a, "chat.png");
  await b.getByTestId("composer").fill("");

  for (const p of [a, b, c]) assert.deepEqual(p.problems, [], "no page errors");
});

test("scrolling back pages in the history with `before`", async () => {
  const { alice: a, bob: b } = pages;
  const alice = { token: await a.evaluate(() => localStorage.getItem("baton.token")) };
  const general = Number(await channel(a, "general").getAttribute("data-channel-id"));
  for (let i = 1; i <= 120; i++) {
    const r = await api.call("POST", `/api/channels/${general}/messages`, alice.token, { content: `history ${i}` });
    assert.equal(r.status, 201);
  }
  // Bob is not in #general yet: he joins it from the channel view.
  assert.equal(await channel(b, "general").getAttribute("data-member"), "false");
  await channel(b, "general").click();
  await b.getByTestId("join-channel").click();
  await b.getByTestId("composer").waitFor();
  await b.locator("[data-testid=history-top][data-state=more]").waitFor();
  const first = await messages(b);
  assert.ok(first.length >= 50 && first.length < 122, `a first page, not everything (${first.length})`);
  assert.equal(first.at(-1).content, "history 120");

  // Scroll to the top until the start of the channel shows.
  await until(
    async () => {
      await b.getByTestId("message-scroll").evaluate((e) => e.scrollTo(0, 0));
      return (await b.getByTestId("history-top").getAttribute("data-state")) === "start";
    },
    15000,
    "the start of #general",
  );
  const all = await messages(b);
  assert.deepEqual(
    all.map((m) => m.content),
    ["carol in general", ...Array.from({ length: 120 }, (_, i) => `history ${i + 1}`)],
  );
  assert.deepEqual(
    all.map((m) => m.seq),
    Array.from({ length: 121 }, (_, i) => i + 1),
    "in seq order, once each",
  );
  for (const p of [a, b]) assert.deepEqual(p.problems, [], "no page errors");
});

test("a message in another community raises that community's badge", async () => {
  const { alice: a, bob: b } = pages;
  const alice = { token: await a.evaluate(() => localStorage.getItem("baton.token")) };
  // A second community with a channel Bob is added to: Bob's page learns of both
  // from the `membership` event on `/`, without a reload.
  const beta = (await api.call("POST", "/api/communities", alice.token, { name: "Beta" })).body.id;
  await api.call("POST", `/api/communities/${beta}/members`, alice.token, { username: "bob" });
  await api.channel(beta, alice, "lobby", false, [bob]);
  await community(b, "Beta").click();
  await channel(b, "lobby").and(b.locator("[aria-current=true]")).waitFor();

  // Alice writes in Acme's private channel while Bob looks at Beta.
  await community(a, "Acme").click();
  await channel(a, "secret").click();
  await send(a, "are you there, bob?");
  await send(a, "ping");
  await until(async () => (await communityBadge(b, "Acme")) === 2, 10000, "Acme's badge to show 2 on bob's page");
  assert.equal(await community(b, "Acme").getByTestId("community-unread").textContent(), "2");
  assert.equal(await communityBadge(b, "Beta"), 0);
  await shoot(b, "community-badge.png");

  // A message in Beta, where Bob is looking, raises nothing.
  await api.call("POST", `/api/channels/${Number(await channel(b, "lobby").getAttribute("data-channel-id"))}/messages`, alice.token, {
    content: "welcome to beta",
  });
  await messageRow(b, "welcome to beta").waitFor();
  assert.equal(await communityBadge(b, "Beta"), 0);

  // Back in Acme, the channel is read and the badges go.
  // (Acme opens on the channel Bob last looked at there, #general.)
  await community(b, "Acme").click();
  await channel(b, "general").and(b.locator("[aria-current=true]")).waitFor();
  assert.equal(await communityBadge(b, "Acme"), 2, "looking at #general does not read #secret");
  await channel(b, "secret").click();
  await channel(b, "secret").and(b.locator("[aria-current=true]")).waitFor();
  await messageRow(b, "ping").waitFor();
  await until(async () => (await communityBadge(b, "Acme")) === 0, 5000, "Acme's badge to clear");
  const secret = Number(await channel(b, "secret").getAttribute("data-channel-id"));
  await until(
    async () => {
      const u = await api.call("GET", "/api/unread", bob.token);
      return u.body.communities.flatMap((c) => c.channels).find((c) => c.channelId === secret)?.unread === 0;
    },
    5000,
    "the server to have bob's read marker",
  );
  for (const p of [a, b]) assert.deepEqual(p.problems, [], "no page errors");
});
