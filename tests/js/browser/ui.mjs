// Shared pieces of the browser tests: Debian's chromium driven by playwright-core
// (no browser download), pages logged in as a user, and reading what a page shows.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
// The README's screenshots are refreshed with BATON_SCREENSHOTS=1; otherwise a
// run leaves them in target/screenshots, for looking at a failure.
export const screenshots = process.env.BATON_SCREENSHOTS
  ? join(root, "docs", "screenshots")
  : join(root, "target", "screenshots");
export const PASSWORD = "password1"; // what rest(base).user() registers with

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A fresh chromium (playwright gives every launch its own temporary profile). */
export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30000 });
}

/**
 * A page in its own browser context (its own localStorage, so its own user).
 * Page errors and console errors are collected in `page.problems`.
 */
export async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") page.problems.push(`console: ${m.text()}`);
  });
  return page;
}

/** Logs in through the form (registering first if `register`). */
export async function logIn(page, base, username, { register = false, password = PASSWORD, screenshot } = {}) {
  await page.goto(base);
  await page.getByTestId("login").waitFor();
  if (register) await page.getByTestId("tab-register").click();
  await page.getByTestId("login-username").fill(username);
  await page.getByTestId("login-password").fill(password);
  if (screenshot) await shoot(page, screenshot);
  await page.getByTestId("login-submit").click();
  await page.getByTestId("app").waitFor();
  await page.locator(`[data-testid=me-name]`).filter({ hasText: username }).waitFor();
}

/** Opens the app already logged in (token in localStorage, as after a log in). */
export async function openAs(page, base, user) {
  await page.goto(base);
  await page.evaluate(({ token }) => localStorage.setItem("baton.token", token), user);
  await page.reload();
  await page.getByTestId("app").waitFor();
}

export async function shoot(page, name) {
  mkdirSync(screenshots, { recursive: true });
  await page.screenshot({ path: join(screenshots, name) });
}

/** Fills the shared dialog (text fields by name, checkboxes with booleans) and submits it. */
export async function dialog(page, values) {
  const d = page.getByTestId("dialog");
  await d.waitFor();
  for (const [name, value] of Object.entries(values)) {
    const input = page.getByTestId(`dialog-${name}`);
    if (typeof value === "boolean") await input.setChecked(value);
    else await input.fill(value);
  }
  await page.getByTestId("dialog-submit").click();
  await d.waitFor({ state: "hidden" });
}

export const community = (page, name) => page.locator(`[data-testid=community][data-name="${name}"]`);
export const channel = (page, name) => page.locator(`[data-testid=channel][data-name="${name}"]`);

/** Types and sends a message with the composer. */
export async function send(page, text) {
  const input = page.getByTestId("composer");
  await input.fill(text);
  await input.press("Enter");
}

/** The message list as the page renders it. */
export function messages(page) {
  return page.$$eval("[data-testid=message]", (els) =>
    els.map((e) => ({
      seq: e.dataset.seq === undefined ? null : Number(e.dataset.seq),
      id: e.dataset.id === undefined ? null : Number(e.dataset.id),
      state: e.dataset.state,
      deleted: e.dataset.deleted === "true",
      author: e.querySelector("[data-testid=message-author]")?.textContent ?? "",
      content: e.querySelector("[data-testid=message-content]")?.textContent ?? "",
      edited: !!e.querySelector("[data-testid=message-edited]"),
    })),
  );
}

/** The message row whose text is exactly `text`. */
export const messageRow = (page, text) =>
  page.locator("[data-testid=message]").filter({
    has: page.locator("[data-testid=message-content]").getByText(text, { exact: true }),
  });

export { until } from "../baton.mjs";

/** The unread badge of a community button, 0 when there is none. */
export async function communityBadge(page, name) {
  return Number((await community(page, name).getAttribute("data-unread")) || 0);
}
