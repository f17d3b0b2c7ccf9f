// Browser tests of the web app: headless Chromium (the Debian package) driven by puppeteer-core,
// against the real local stack that scripts/test.ts started (functions server, throwaway database,
// Stripe stand-in). Nothing of ours is mocked: the page talks to the functions, and the assertions
// read balances back through the functions. Started by scripts/lib/browser-tests.ts, which passes:
//   WEB_URL, FUNCTIONS_URL, STRIPE_STAND_IN_URL, CHROMIUM, SCREENSHOT_DIR, ADMIN_TOKEN, CASHIER_TOKEN
// Prints "ok - name" / "not ok - name" per test and "# passed N failed N" at the end.

import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import puppeteer from "puppeteer-core";

const WEB_URL = process.env.WEB_URL;
const FUNCTIONS_URL = process.env.FUNCTIONS_URL;
const STRIPE_STAND_IN_URL = process.env.STRIPE_STAND_IN_URL;
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR;
const ADMIN_TOKEN = process.env.ADMIN_TOKEN;
const CASHIER_TOKEN = process.env.CASHIER_TOKEN;
const FILTER = process.env.BROWSER_TEST_FILTER ?? "";

const TABLET = { width: 1024, height: 768 };
// Not isMobile/hasTouch: changing those makes puppeteer reload the page, losing the state to capture.
const PHONE = { width: 360, height: 740 };
const TIMEOUT = 20_000;

// ---------------------------------------------------------------------------------------------
// The stack, through its HTTP functions
// ---------------------------------------------------------------------------------------------

async function api(path, { method = "GET", token = ADMIN_TOKEN, body, headers = {} } = {}) {
  const response = await fetch(`${FUNCTIONS_URL}/${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { "content-type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json().catch(() => ({})) };
}

const run = Math.random().toString(36).slice(2, 8).toUpperCase();
let cardCounter = 0;

/** A newly registered card holding `cents` (a cash top-up at the entrance), unique to this run. */
async function newCard(cents) {
  const cardId = `WEB-${run}-${cardCounter++}`;
  const registered = await api("admin-cards", {
    method: "POST",
    body: { action: "register", card_ids: [cardId], client_request_id: `web-register-${cardId}` },
  });
  assert.equal(registered.status, 200, JSON.stringify(registered.body));
  if (cents > 0) {
    const funded = await api("process-checkpoint-recharge", {
      method: "POST",
      token: CASHIER_TOKEN,
      body: { card_id: cardId, amount_cents: cents, payment_method: "cash", checkpoint_id: "entrance", client_request_id: `web-fund-${cardId}` },
    });
    assert.equal(funded.status, 200, JSON.stringify(funded.body));
  }
  return cardId;
}

/** The card's balance as the database has it (staff tokens read without a PIN). */
async function balance(cardId) {
  const answer = await api(`card-balance?card_id=${encodeURIComponent(cardId)}`);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return answer.body.balance_cents;
}

// ---------------------------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------------------------

let browser;

async function newPage(viewport = TABLET, language = "en") {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  await page.setViewport(viewport);
  await page.evaluateOnNewDocument((lang) => {
    Object.defineProperty(navigator, "languages", { get: () => [lang] });
    Object.defineProperty(navigator, "language", { get: () => lang });
  }, language);
  page.on("pageerror", (error) => console.log(`# page error: ${error.message}`));
  return page;
}

async function signIn(page, path, role) {
  await page.goto(`${WEB_URL}${path}`, { waitUntil: "networkidle0" });
  await page.click(`[data-testid="demo-${role}"]`);
}

async function text(page, selector) {
  await page.waitForSelector(selector, { visible: true });
  return page.$eval(selector, (element) => element.textContent ?? "");
}

async function waitForCents(page, selector, cents) {
  await page.waitForFunction(
    (sel, expected) => document.querySelector(sel)?.getAttribute("data-cents") === String(expected),
    {},
    selector,
    cents,
  ).catch(async (error) => {
    const actual = await page.$eval(selector, (element) => element.getAttribute("data-cents")).catch(() => "absent");
    throw new Error(`${selector} should show ${cents} cents, shows ${actual} (${error.message})`);
  });
}

async function readCardAtPos(page, cardId) {
  await page.click('[data-testid="card-input"]');
  await page.keyboard.type(cardId);
  await page.keyboard.press("Enter");
}

/** Writes <name>-tablet.png and <name>-phone.png of the page as it is now. */
async function screenshots(page, name, { fullPage = true } = {}) {
  if (!SCREENSHOT_DIR) return;
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  const original = page.viewport();
  for (const [label, viewport] of [["tablet", TABLET], ["phone", PHONE]]) {
    await page.setViewport(viewport);
    await new Promise((resolve) => setTimeout(resolve, 150));
    await page.screenshot({ path: `${SCREENSHOT_DIR}/${name}-${label}.png`, fullPage });
  }
  await page.setViewport(original);
}

async function addProducts(page, products) {
  await page.waitForSelector('[data-testid="product-beer"]', { visible: true });
  for (const product of products) await page.click(`[data-testid="product-${product}"]`);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

const tests = [];
const test = (name, body) => tests.push({ name, body });

test("pos: a sale with a card read lowers the balance by exactly the total", async () => {
  const cardId = await newCard(5000);
  const page = await newPage();
  await signIn(page, "/pos", "bartender");
  await addProducts(page, ["beer", "beer", "cup-deposit"]);
  assert.match(await text(page, '[data-testid="total"]'), /11[.,]00/);
  await readCardAtPos(page, cardId);
  await waitForCents(page, '[data-testid="new-balance"]', 3900);
  assert.equal(await balance(cardId), 3900);
  await screenshots(page, "pos");
});

test("pos: the same card read again within 2 s is ignored on the device", async () => {
  const cardId = await newCard(5000);
  const page = await newPage();
  let orderRequests = 0;
  page.on("request", (request) => {
    if (request.url().includes("/process-bar-order") && request.method() === "POST") orderRequests++;
  });
  await signIn(page, "/pos", "bartender");
  await addProducts(page, ["water"]);
  // A USB reader types the UID and Enter wherever the focus is; twice, as a tag held to the reader does.
  await page.evaluate(() => document.activeElement?.blur());
  await page.keyboard.type(`${cardId}\n`);
  await page.keyboard.type(`${cardId}\n`);
  await page.waitForSelector('[data-testid="notice"]', { visible: true });
  await waitForCents(page, '[data-testid="new-balance"]', 4800);
  assert.equal(orderRequests, 1, "one order sent");
  assert.equal(await page.$('[data-testid="duplicate-dialog"]'), null, "no duplicate-tap dialog: the device dropped the read");
  assert.equal(await balance(cardId), 4800);
});

test("pos: insufficient funds shows the message with the balance, and nothing moves", async () => {
  const cardId = await newCard(500);
  const page = await newPage();
  await signIn(page, "/pos", "bartender");
  await addProducts(page, ["cocktail"]);
  await readCardAtPos(page, cardId);
  await page.waitForSelector('[data-testid="error"][data-code="insufficient_funds"]', { visible: true });
  const message = await text(page, '[data-testid="error"]');
  assert.match(message, /5[.,]00/, "the message shows the balance");
  assert.match(message, /Nothing was charged/);
  assert.equal(await balance(cardId), 500);
  await screenshots(page, "pos-insufficient-funds");
});

test("pos: unknown and blocked cards have their own messages", async () => {
  const blocked = await newCard(1000);
  const block = await api("admin-cards", { method: "POST", body: { action: "block", card_id: blocked, client_request_id: `web-block-${blocked}` } });
  assert.equal(block.status, 200);
  const page = await newPage();
  await signIn(page, "/pos", "bartender");
  await addProducts(page, ["soda"]);
  await readCardAtPos(page, blocked);
  await page.waitForSelector('[data-testid="error"][data-code="card_blocked"]', { visible: true });
  await readCardAtPos(page, `NOPE-${run}`);
  await page.waitForSelector('[data-testid="error"][data-code="card_not_found"]', { visible: true });
  assert.equal(await balance(blocked), 1000);
});

test("pos: the duplicate-tap dialog charges again only when confirmed", async () => {
  const cardId = await newCard(5000);
  const page = await newPage();
  await signIn(page, "/pos", "bartender");
  await addProducts(page, ["beer"]);
  await readCardAtPos(page, cardId);
  await waitForCents(page, '[data-testid="new-balance"]', 4550);
  // Past the device's 2 s window, within the server's duplicate-tap window: the server asks.
  await new Promise((resolve) => setTimeout(resolve, 2200));
  await addProducts(page, ["beer"]);
  await readCardAtPos(page, cardId);
  await page.waitForSelector('[data-testid="duplicate-dialog"]', { visible: true });
  assert.equal(await balance(cardId), 4550, "nothing moves while the dialog asks");
  await screenshots(page, "pos-duplicate-tap", { fullPage: false });
  assert.equal(
    await page.evaluate(() => document.activeElement?.getAttribute("data-testid")),
    "duplicate-cancel",
    "the dialog's default button is the one that does not charge",
  );
  await page.click('[data-testid="duplicate-confirm"]');
  await waitForCents(page, '[data-testid="new-balance"]', 4100);
  assert.equal(await balance(cardId), 4100);
});

test("pos: network cut while the order is in flight, a reload while pending, then restored: exactly one charge", async () => {
  const cardId = await newCard(5000);
  const page = await newPage();
  await signIn(page, "/pos", "bartender");
  await addProducts(page, ["cocktail", "cup-deposit"]);

  // "lose-answer": the order reaches the server, but the answer never comes back to the page.
  // "offline": nothing reaches the functions. "online": everything passes.
  let network = "lose-answer";
  const keys = [];
  await page.setRequestInterception(true);
  page.on("request", (request) => {
    const isFunction = request.url().startsWith(FUNCTIONS_URL);
    const isOrder = isFunction && request.url().includes("/process-bar-order") && request.method() === "POST";
    if (isOrder) keys.push(JSON.parse(request.postData() ?? "{}").client_request_id);
    if (!isFunction || network === "online" || request.method() === "OPTIONS" && network !== "offline") {
      void request.continue();
    } else if (isOrder && network === "lose-answer") {
      network = "offline";
      void fetch(request.url(), { method: "POST", headers: request.headers(), body: request.postData() })
        .then((response) => response.text())
        .finally(() => void request.abort("internetdisconnected"));
    } else {
      void request.abort("internetdisconnected");
    }
  });

  await readCardAtPos(page, cardId);
  await page.waitForSelector('[data-testid="pending"]', { visible: true });
  // The server did charge: only the answer was lost.
  assert.equal(await balance(cardId), 3900);
  await screenshots(page, "pos-pending");

  await page.reload({ waitUntil: "domcontentloaded" });
  await page.waitForSelector('[data-testid="pending"]', { visible: true });
  assert.match(await text(page, '[data-testid="total"]'), /11[.,]00/, "the pending order is shown after the reload");

  network = "online";
  await waitForCents(page, '[data-testid="new-balance"]', 3900);
  assert.equal(await balance(cardId), 3900, "charged exactly once");
  assert.ok(keys.length >= 3, `the order was resent (${keys.length} sends)`);
  assert.equal(new Set(keys).size, 1, "every send carried the same idempotency key");
  const stored = await page.evaluate(() => new Promise((resolve) => {
    const open = indexedDB.open("festival-pos");
    open.onsuccess = () => {
      const get = open.result.transaction("pending-orders").objectStore("pending-orders").get("current");
      get.onsuccess = () => resolve(get.result ?? null);
    };
  }));
  assert.equal(stored, null, "the answered order left IndexedDB");
});

test("checkpoint: a cashier tops up by package with the card terminal and by amount in cash", async () => {
  const cardId = await newCard(0);
  const page = await newPage();
  await signIn(page, "/checkpoint", "cashier");
  await page.type('[data-testid="topup-card"]', cardId);
  await page.click('[data-testid="package-MIDI"]');
  await page.click('[data-testid="method-card"]');
  await page.click('[data-testid="topup-submit"]');
  await waitForCents(page, '[data-testid="topup-balance"]', 5250);
  assert.equal(await balance(cardId), 5250);
  await screenshots(page, "checkpoint");
  await page.type('[data-testid="topup-amount"]', "12.50");
  await page.click('[data-testid="method-cash"]');
  await page.click('[data-testid="topup-submit"]');
  await waitForCents(page, '[data-testid="topup-balance"]', 6500);
  assert.equal(await balance(cardId), 6500);
});

test("me: a Stripe top-up through the stand-in's checkout page and a signed webhook shows the new balance", async () => {
  const cardId = "DEMO-0042";
  const before = await balance(cardId);
  const page = await newPage(PHONE);
  await page.goto(`${WEB_URL}/me`, { waitUntil: "networkidle0" });
  await page.type('[data-testid="me-card"]', cardId);
  await page.type('[data-testid="me-pin"]', "0042");
  await page.click('[data-testid="me-submit"]');
  await waitForCents(page, '[data-testid="me-balance"]', before);
  // Session URLs say https://checkout.stripe.test/c/pay/<id>, as Stripe's are https; that host is
  // the local stand-in's checkout page, so the browser's requests for it go there.
  await page.setRequestInterception(true);
  page.on("request", (request) => {
    if (!request.url().startsWith("https://checkout.stripe.test/")) return void request.continue();
    const target = request.url().replace("https://checkout.stripe.test", STRIPE_STAND_IN_URL);
    void fetch(target, { method: request.method(), body: request.postData(), redirect: "manual" })
      .then(async (response) => request.respond({
        status: response.status,
        headers: Object.fromEntries(response.headers),
        body: Buffer.from(await response.arrayBuffer()),
      }))
      .catch(() => request.abort("failed"));
  });
  await Promise.all([page.waitForNavigation(), page.click('[data-testid="me-package-MIDI"]')]);
  assert.match(page.url(), /\/c\/pay\/cs_test_/, "on the checkout page");
  assert.match(await text(page, "#amount"), /50\.00 EUR/);
  // Pay: the stand-in signs checkout.session.completed with the stripe library and posts it to
  // stripe-webhook, then sends the browser back to the success URL.
  await Promise.all([page.waitForNavigation(), page.click("#pay")]);
  assert.match(page.url(), /\/me\?topup=success/);
  await page.waitForSelector('[data-testid="topup-returned"]', { visible: true });
  await waitForCents(page, '[data-testid="me-balance"]', before + 5250);
  assert.equal(await balance(cardId), before + 5250);
});

test("ops: health is shown; an admin looks a card up, blocks and unblocks it", async () => {
  const cardId = await newCard(700);
  const page = await newPage();
  await signIn(page, "/ops", "admin");
  await page.waitForSelector('[data-testid="health"][data-state="ok"]', { visible: true });
  await page.type('[data-testid="ops-card"]', cardId);
  await page.click('[data-testid="ops-block"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="ops-card-result"]')?.textContent?.includes("blocked"));
  assert.equal((await api(`card-balance?card_id=${cardId}`)).body.status, "blocked");
  await page.click('[data-testid="ops-unblock"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="ops-card-result"]')?.textContent?.includes("active"));
  await screenshots(page, "ops");
});

test("language: a Czech browser gets Czech, and English can be chosen", async () => {
  const page = await newPage(PHONE, "cs-CZ");
  await page.goto(`${WEB_URL}/`, { waitUntil: "networkidle0" });
  assert.match(await text(page, "main"), /Vyberte obrazovku/);
  await screenshots(page, "home-cs");
  await page.select('[data-testid="language"]', "en");
  assert.match(await text(page, "main"), /Choose the screen/);
  await page.reload({ waitUntil: "networkidle0" });
  assert.match(await text(page, "main"), /Choose the screen/, "the choice is remembered");
  await screenshots(page, "home");
});

// Written last, for the card PIN contract: the anon key reads a card only with its PIN.
test("me: a wrong PIN is refused, the right PIN shows balance and history", async () => {
  const cardId = "DEMO-0077";
  const page = await newPage();
  await page.goto(`${WEB_URL}/me`, { waitUntil: "networkidle0" });
  await page.type('[data-testid="me-card"]', cardId);
  await page.type('[data-testid="me-pin"]', "1234");
  await page.click('[data-testid="me-submit"]');
  await page.waitForSelector('[data-testid="me-error"][data-code="invalid_pin"]', { visible: true });
  assert.equal(await page.$('[data-testid="me-balance"]'), null, "no balance without the right PIN");
  // Select what was typed and type over it, as a person would.
  await page.$eval('[data-testid="me-pin"]', (input) => input.select());
  await page.keyboard.type("0077");
  await page.click('[data-testid="me-submit"]');
  await waitForCents(page, '[data-testid="me-balance"]', await balance(cardId));
  await page.waitForSelector('[data-testid="me-history"] tr', { visible: true });
  assert.equal(await page.$('[data-testid="me-error"]'), null);
  await screenshots(page, "me");
});

// ---------------------------------------------------------------------------------------------

browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check"],
});
let passed = 0;
let failed = 0;
try {
  for (const { name, body } of tests) {
    if (FILTER && !name.includes(FILTER)) continue;
    const startedAt = Date.now();
    try {
      await body();
      passed++;
      console.log(`ok - ${name} (${Date.now() - startedAt} ms)`);
    } catch (error) {
      failed++;
      console.log(`not ok - ${name}\n  ${String(error?.stack ?? error).replaceAll("\n", "\n  ")}`);
    }
  }
} finally {
  await browser.close();
}
console.log(`# passed ${passed} failed ${failed}`);
process.exit(failed > 0 ? 1 : 0);
