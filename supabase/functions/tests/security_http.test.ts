// Holes an adversarial review found, over HTTP against the real stack: card PINs for the public
// anon key, idempotency keys scoped by caller, the functions' restricted database role, and cup
// returns racing for the last deposit the festival holds.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { ADMIN, BARTENDER, CASHIER, errorCode, order, registerCards, rpcClient, uniqueKey } from "./festival_fixtures.ts";
import { anonKey, userToken } from "../../../scripts/lib/tokens.ts";

const BARTENDER_2 = "00000000-0000-4000-8000-00000000b002";
const tokens = {
  anon: await anonKey(),
  bartender: await userToken(BARTENDER),
  bartender2: await userToken(BARTENDER_2),
  cashier: await userToken(CASHIER),
};

/** Registers one card through admin-cards and returns it with the PIN the response printed. */
async function cardWithPin(): Promise<{ cardId: string; pin: string }> {
  const cardId = `PIN-${crypto.randomUUID().slice(0, 8).toUpperCase()}`;
  const response = await call("admin-cards", {
    method: "POST",
    token: await userToken(ADMIN),
    json: { action: "register", card_ids: [cardId], client_request_id: uniqueKey("pin-register") },
  });
  assert.equal(response.status, 200, JSON.stringify(response.body));
  const pin = (response.body.pins as Record<string, string>)[cardId];
  assert.match(pin, /^[0-9]{6}$/);
  return { cardId, pin };
}

function readCard(cardId: string, options: { pin?: string; pinInQuery?: string; token?: string } = {}) {
  const query = options.pinInQuery === undefined ? "" : `&pin=${options.pinInQuery}`;
  return call(`card-balance?card_id=${cardId}${query}`, {
    token: options.token ?? tokens.anon,
    headers: options.pin === undefined ? {} : { "x-card-pin": options.pin },
  });
}

Deno.test("card PIN: the anon key reads a card only with its PIN, and never sees locations", async () => {
  const { cardId, pin } = await cardWithPin();
  const setup = rpcClient(1);
  await setup.call("sp_process_checkpoint_recharge", {
    card_id: cardId,
    amount_cents: 2000,
    payment_method: "cash",
    checkpoint_id: "entrance",
    staff_user_id: CASHIER,
    client_request_id: uniqueKey("pin-fund"),
  });
  await setup.end();

  const withoutPin = await readCard(cardId);
  assert.equal(withoutPin.status, 401);
  assert.equal(errorCode(withoutPin.body), "invalid_pin");

  const viaHeader = await readCard(cardId, { pin });
  assert.equal(viaHeader.status, 200, JSON.stringify(viaHeader.body));
  assert.equal(viaHeader.body.balance_cents, 2000);
  const movements = viaHeader.body.movements as Record<string, unknown>[];
  assert.equal(movements.length, 1);
  assert.equal("location" in movements[0], false, "anonymous readers never see where a card was used");

  const inUrl = await readCard(cardId, { pinInQuery: pin });
  assert.equal(inUrl.status, 400, "a PIN in the URL is refused: logs and histories keep URLs");
  assert.equal(viaHeader.headers.get("cache-control"), "no-store");

  const staff = await readCard(cardId, { token: tokens.cashier });
  assert.equal(staff.status, 200, "staff read without a PIN");
  assert.equal((staff.body.movements as Record<string, unknown>[])[0].location, "Entrance", "staff see locations");

  const badFormat = await readCard(cardId, { pin: "12ab" });
  assert.equal(badFormat.status, 400);
  assert.deepEqual((badFormat.body.error as { fields: { path: string }[] }).fields.map((field) => field.path), ["x-card-pin"]);
});

Deno.test("card PIN: an admin gives a card a new PIN, answered once; the old one stops working", async () => {
  const { cardId, pin } = await cardWithPin();
  const admin = await userToken(ADMIN);
  const key = uniqueKey("pin-reset");
  const reset = await call("admin-cards", { method: "POST", token: admin, json: { action: "reset_pin", card_id: cardId, client_request_id: key } });
  assert.equal(reset.status, 200, JSON.stringify(reset.body));
  const newPin = String(reset.body.pin);
  assert.match(newPin, /^[0-9]{6}$/);
  const replay = await call("admin-cards", { method: "POST", token: admin, json: { action: "reset_pin", card_id: cardId, client_request_id: key } });
  assert.equal(replay.body.pin, undefined, "a replay never answers the PIN again");
  assert.equal(replay.body.pin_withheld, true);
  if (newPin !== pin) assert.equal((await readCard(cardId, { pin })).status, 401);
  assert.equal((await readCard(cardId, { pin: newPin })).status, 200);
  const byCashier = await call("admin-cards", {
    method: "POST",
    token: tokens.cashier,
    json: { action: "reset_pin", card_id: cardId, client_request_id: uniqueKey("pin-reset") },
  });
  assert.equal(byCashier.status, 403);
});

Deno.test("card PIN: five wrong PINs lock the card (429), across requests; staff still read it", async () => {
  const { cardId, pin } = await cardWithPin();
  const wrong = pin === "000000" ? "111111" : "000000";
  const answers = [];
  for (let attempt = 0; attempt < 5; attempt++) answers.push(await readCard(cardId, { pin: wrong }));
  assert.deepEqual(answers.map((answer) => answer.status), [401, 401, 401, 401, 401]);
  assert.deepEqual(answers.map((answer) => (answer.body.error as { attempts_remaining: number }).attempts_remaining), [4, 3, 2, 1, 0]);
  const locked = await readCard(cardId, { pin });
  assert.equal(locked.status, 429);
  assert.equal(errorCode(locked.body), "pin_locked");
  assert.ok(Number((locked.body.error as { retry_after_seconds: number }).retry_after_seconds) > 0);
  assert.equal((await readCard(cardId, { token: tokens.bartender })).status, 200);
});

Deno.test("card PIN: wrong PINs sent concurrently are all counted (the limit holds across instances)", async () => {
  const { cardId, pin } = await cardWithPin();
  const wrong = pin === "000000" ? "111111" : "000000";
  const answers = await Promise.all(Array.from({ length: 12 }, () => readCard(cardId, { pin: wrong })));
  assert.equal(answers.filter((answer) => answer.status === 401).length, 5, "exactly five wrong PINs are tried");
  assert.equal(answers.filter((answer) => answer.status === 429).length, 7, "the rest find the card locked");
});

Deno.test("idempotency scope: an anonymous checkout's key does not block a cashier's, nor one bartender's another's", async () => {
  const setup = rpcClient(1);
  const [cardId] = await registerCards(setup, 1, "SCOPE");
  await setup.end();
  const key = uniqueKey("shared");
  const checkout = await call("create-checkout-session", {
    method: "POST",
    token: tokens.anon,
    json: {
      card_id: cardId,
      package_code: "MINI",
      success_url: "http://127.0.0.1:54323/me?topup=ok",
      cancel_url: "http://127.0.0.1:54323/me",
      client_request_id: key,
    },
  });
  assert.equal(checkout.status, 200, JSON.stringify(checkout.body));
  const recharge = await call("process-checkpoint-recharge", {
    method: "POST",
    token: tokens.cashier,
    json: { card_id: cardId, amount_cents: 3000, payment_method: "cash", checkpoint_id: "entrance", client_request_id: key },
  });
  assert.equal(recharge.status, 200, JSON.stringify(recharge.body));
  assert.equal(recharge.body.replayed, false);

  const orderKey = uniqueKey("shared-order");
  const body = { card_id: cardId, items: [{ product_id: "water", quantity: 1 }], confirm_duplicate: true, client_request_id: orderKey };
  const first = await call("process-bar-order", { method: "POST", token: tokens.bartender, json: { ...body, point_of_sale_id: "main-bar" } });
  const second = await call("process-bar-order", { method: "POST", token: tokens.bartender2, json: { ...body, point_of_sale_id: "beach-bar" } });
  assert.deepEqual([first.status, second.status], [200, 200], JSON.stringify([first.body, second.body]));
  assert.notEqual(first.body.order_id, second.body.order_id);
  assert.equal(second.body.new_balance_cents, 3000 - 200 - 200);
  const again = await call("process-bar-order", { method: "POST", token: tokens.bartender2, json: { ...body, point_of_sale_id: "beach-bar" } });
  assert.equal(again.body.replayed, true, "within one caller the key still replays");
});

Deno.test("database role: the functions connect as edge_functions, which may only execute public procedures", async () => {
  assert.equal((await call("health")).status, 200);
  const sql = connectDatabase(1);
  try {
    const users = await sql`select distinct usename from pg_stat_activity where application_name = 'edge-functions'`;
    assert.deepEqual(users.map((row) => row.usename), ["edge_functions"]);
    const [privileges] = await sql`
      select
        has_table_privilege('edge_functions', 'ledger.accounts', 'select') as read_accounts,
        has_function_privilege('edge_functions', 'public.sp_process_bar_order(text, jsonb, text, text, uuid, bigint, boolean)', 'execute') as sell`;
    assert.deepEqual({ ...privileges }, { read_accounts: false, sell: true });
  } finally {
    await sql.end();
  }
});

Deno.test("cup returns: ten cards racing to return the festival's last cup, exactly one is paid", async () => {
  const client = rpcClient(12);
  const sql = connectDatabase(1);
  const [settings] = await sql`select cup_returns_per_card_hour_max from festival.settings`;
  try {
    // Give back every cup still held (returns spread over fresh cards), so that exactly one is left.
    await sql`update festival.settings set cup_returns_per_card_hour_max = 100000`;
    const [{ held }] = await sql`select coalesce(sum(held_cents), 0)::bigint as held from festival.deposits_outstanding`;
    let cups = Number(held) / 200;
    const drainers = await registerCards(client, Math.ceil(cups / 99) + 1, "DRAIN");
    for (const cardId of drainers) {
      if (cups === 0) break;
      const quantity = Math.min(cups, 99);
      const drained = await order(client, cardId, [{ product_id: "cup-return", quantity }]);
      assert.equal(drained.ok, true, JSON.stringify(drained));
      cups -= quantity;
    }
    const [buyer, ...returners] = await registerCards(client, 11, "RACE");
    await client.call("sp_process_checkpoint_recharge", {
      card_id: buyer,
      amount_cents: 1000,
      payment_method: "cash",
      checkpoint_id: "entrance",
      staff_user_id: CASHIER,
      client_request_id: uniqueKey("race-fund"),
    });
    assert.equal((await order(client, buyer, [{ product_id: "cup-deposit", quantity: 1 }])).ok, true);

    const results = await Promise.all(returners.map((cardId) => order(client, cardId, [{ product_id: "cup-return", quantity: 1 }])));
    assert.equal(results.filter((result) => result.ok).length, 1, "one return is paid");
    assert.deepEqual(
      results.filter((result) => !result.ok).map((result) => errorCode(result)),
      Array(9).fill("no_deposit_outstanding"),
    );
    const [after] = await sql`
      select (select sum(held_cents) from festival.deposits_outstanding)::bigint as outstanding,
        (select sum(balance_cents) from ledger.account_balances where system_purpose = 'deposits_held')::bigint as held`;
    assert.deepEqual({ ...after }, { outstanding: "0", held: "0" });
    assert.deepEqual([...await sql`select * from public.ledger_reconcile()`], []);
  } finally {
    await sql`update festival.settings set cup_returns_per_card_hour_max = ${settings.cup_returns_per_card_hour_max}`;
    await client.end();
    await sql.end();
  }
});

Deno.test("user tokens: a token signed with the project's secret but not for aud=authenticated is not a user session", async () => {
  const { signToken } = await import("../../../scripts/lib/tokens.ts");
  const otherAudience = await signToken({ sub: BARTENDER, role: "authenticated", aud: "some-other-service" });
  const noAudience = await signToken({ sub: BARTENDER, role: "authenticated" });
  for (const token of [otherAudience, noAudience]) {
    const response = await call("process-bar-order", {
      method: "POST",
      token,
      json: { card_id: "DEMO-0051", items: [{ product_id: "water", quantity: 1 }], point_of_sale_id: "main-bar", client_request_id: uniqueKey("aud") },
    });
    assert.equal(response.status, 403);
    assert.equal(errorCode(response.body), "forbidden");
  }
});
