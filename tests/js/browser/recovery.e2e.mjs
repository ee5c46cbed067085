// Two browser pages chat while the server under them goes away: a single node
// restarted (SIGTERM, drain, start again on the same port and data), and a cluster
// instance killed with SIGKILL behind HAProxy (scripts/cluster, the other colour
// takes the pages in). Both pages keep sending through the composer the whole time;
// at the end both show the same complete, duplicate-free list: every message sent,
// once, in eventSeq order with no hole.
//
// Run from tests/js: node --test browser/*.e2e.mjs
// (needs target/debug/baton, /usr/bin/chromium; the cluster case also
// BATON_TEST_POSTGRES, redis-server, haproxy and socat, as scripts/test provides).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBaton, rest, freePort, localCluster } from "../baton.mjs";
import { launch, newPage, openAs, community, channel, send, messages, until, shoot } from "./ui.mjs";

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

/**
 * Alice and Bob, each in a page at `base`, in the private channel "ops" of the
 * community "Ops". Returns the pages.
 */
async function twoPagesInAPrivateChannel(base) {
  const api = rest(base);
  const alice = await api.user("alice");
  const bob = await api.user("bob");
  const { body: ops } = await api.call("POST", "/api/communities", alice.token, { name: "Ops" });
  await api.call("POST", `/api/communities/${ops.id}/members`, alice.token, { username: "bob" });
  await api.channel(ops.id, alice, "ops", true, [bob]);
  const pages = [];
  for (const user of [alice, bob]) {
    const page = await newPage(browser);
    await openAs(page, base, user);
    await community(page, "Ops").click();
    await channel(page, "ops").click();
    await page.locator("[data-testid=history-top][data-state=start]").waitFor();
    await page.locator("[data-testid=conn-banner][data-state=connected]").waitFor();
    pages.push(page);
  }
  return pages;
}

/**
 * Both pages send `perPage` messages through the composer, one every `everyMs`,
 * while `disrupt()` runs; resolves with the texts sent once disrupt and the sends
 * are done.
 */
async function chatThrough(pages, perPage, everyMs, disrupt) {
  const sent = [];
  const sending = pages.map(async (page, p) => {
    for (let i = 1; i <= perPage; i++) {
      const text = `page ${p} message ${i}`;
      await send(page, text);
      sent.push(text);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  });
  await Promise.all([...sending, disrupt()]);
  return sent;
}

/** Waits until both pages show exactly `sent` (in some order), all acked, and checks the list. */
async function assertSameCompleteList(pages, sent, what) {
  const expected = [...sent].sort();
  await until(
    async () => {
      const lists = await Promise.all(pages.map(messages));
      return lists.every(
        (list) =>
          list.length === sent.length &&
          list.every((m) => m.state === "sent") &&
          JSON.stringify(list.map((m) => m.content).sort()) === JSON.stringify(expected),
      );
    },
    60000,
    `both pages to show the ${sent.length} messages sent ${what}, all sent`,
  );
  const [a, b] = await Promise.all(pages.map(messages));
  assert.deepEqual(a, b, "both pages show the same list");
  assert.deepEqual(
    a.map((m) => m.seq),
    Array.from({ length: sent.length }, (_, i) => i + 1),
    "one message per eventSeq, in order, no hole and no duplicate",
  );
  assert.equal(new Set(a.map((m) => m.id)).size, sent.length, "no message written twice");
  for (const page of pages) {
    await page.locator("[data-testid=conn-banner][data-state=connected]").waitFor({ timeout: 20000 });
    assert.deepEqual(page.problems.filter((p) => !/ERR_CONNECTION_REFUSED|502|503/.test(p)), [], "no page errors");
  }
}

test("a single node restarted under two chatting pages: both end with the same complete list", async () => {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "baton-restart-"));
  const env = { BATON_LISTEN: `127.0.0.1:${port}`, BATON_DATA_DIR: dataDir };
  let baton = await startBaton(env);
  try {
    const pages = await twoPagesInAPrivateChannel(baton.base);
    let sawReconnecting = 0;
    const sent = await chatThrough(pages, 15, 200, async () => {
      await until(async () => (await messages(pages[1])).length >= 6, 10000, "some messages before the restart");
      assert.equal(await baton.stop(), 0, "SIGTERM drains and exits 0");
      // While the server is away the pages say so, and keep what is typed as pending.
      for (const page of pages) {
        await page.locator("[data-testid=conn-banner][data-state=reconnecting]").waitFor({ timeout: 10000 });
        sawReconnecting += 1;
      }
      await shoot(pages[0], "reconnecting.png");
      baton = await startBaton(env);
    });
    assert.equal(sawReconnecting, 2);
    await assertSameCompleteList(pages, sent, "across the restart");
    for (const page of pages) await page.context().close();
  } finally {
    await baton.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test(
  "a cluster instance killed with SIGKILL under two chatting pages behind HAProxy",
  { skip: !process.env.BATON_TEST_POSTGRES && "needs BATON_TEST_POSTGRES (scripts/test sets it)" },
  async () => {
    const cluster = await localCluster("browser", { BATON_DRAIN_WINDOW: "2s", BATON_PRESENCE_GRACE: "5s" });
    const dir = cluster.dir;
    const hap = (command) =>
      execFileSync("socat", ["-t", "5", "-", `UNIX-CONNECT:${join(dir, "haproxy.sock")}`], { input: `${command}\n` }).toString();
    try {
      // scripts/cluster starts with blue active (weight 100, green 0): both pages
      // land on blue-1. Then green takes the new sessions, so that the pages go
      // there when blue-1 dies (its supervisor restarts it, at weight 0).
      const base = cluster.lb;
      const pages = await twoPagesInAPrivateChannel(base);
      for (const page of pages) {
        const cookies = await page.context().cookies(base);
        assert.equal(cookies.find((c) => c.name === "BATON_SERVER")?.value, "blue-1", "the page is on blue-1");
      }
      assert.equal(hap("set server baton/green-1 weight 100; set server baton/blue-1 weight 0").trim(), "");
      const bluePid = Number(readFileSync(join(dir, "blue-1.pid"), "utf8"));
      const sent = await chatThrough(pages, 15, 200, async () => {
        await until(async () => (await messages(pages[1])).length >= 6, 10000, "some messages before the kill");
        process.kill(bluePid, "SIGKILL");
      });
      await assertSameCompleteList(pages, sent, "across the kill");
      for (const page of pages) {
        const cookies = await page.context().cookies(base);
        assert.equal(cookies.find((c) => c.name === "BATON_SERVER")?.value, "green-1", "the page moved to green-1");
        await page.context().close();
      }
    } finally {
      cluster.down();
    }
  },
);
