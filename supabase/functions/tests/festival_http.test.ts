// The festival functions over HTTP against the local functions server and a real database:
// every status of the docs/architecture.md §6 table, a table-driven bad-input suite that proves nothing moved,
// replays, CORS and request ids.

import assert from "node:assert/strict";
import { call, connectDatabase, DATABASE_URL, FUNCTIONS_URL } from "./http_helpers.ts";
import { ADMIN, BARTENDER, CASHIER, registerCards, rpcClient, uniqueKey } from "./festival_fixtures.ts";
import { anonKey, serviceRoleKey, signToken, userToken } from "../../../scripts/lib/tokens.ts";
import { createBarOrderHandler } from "../process-bar-order/handler.ts";
import { createRpc } from "../_shared/rpc.ts";

const tokens = {
  admin: await userToken(ADMIN),
  bartender: await userToken(BARTENDER),
  cashier: await userToken(CASHIER),
  anon: await anonKey(),
  service: await serviceRoleKey(),
  expired: await userToken(BARTENDER, { expiresInSeconds: -60 }),
  otherSecret: await userToken(BARTENDER, { secret: "a-completely-different-secret-of-32-chars!!" }),
  unknownUser: await userToken("00000000-0000-4000-8000-0000000000ff"),
};

function algNoneToken(): string {
  const encode = (value: unknown) => btoa(JSON.stringify(value)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
  return `${encode({ alg: "none", typ: "JWT" })}.${encode({ sub: BARTENDER, role: "authenticated" })}.`;
}

/** Everything that would change if money moved or a card changed. */
async function ledgerSnapshot(): Promise<string> {
  const sql = connectDatabase(1);
  try {
    const [row] = await sql`
      select
        (select count(*) from ledger.transfers)::text as transfers,
        (select count(*) from ledger.operations)::text as operations,
        (select coalesce(sum(balance_cents), 0) from ledger.accounts)::text as customer_balances,
        (select count(*) || ':' || count(*) filter (where status = 'blocked') from festival.cards) as cards`;
    return JSON.stringify(row);
  } finally {
    await sql.end();
  }
}

const setup = rpcClient(2);
const [fundedCard, emptyCard, blockedCard] = await registerCards(setup, 3, "HTTP");
await setup.call("sp_process_checkpoint_recharge", {
  card_id: fundedCard,
  amount_cents: 20000,
  payment_method: "cash",
  checkpoint_id: "entrance",
  staff_user_id: CASHIER,
  client_request_id: uniqueKey("http-fund"),
});
await setup.call("sp_admin_block_card", { card_id: blockedCard, staff_user_id: ADMIN, client_request_id: uniqueKey("http-block") });
await setup.end();

function orderBody(overrides: Record<string, unknown> = {}) {
  return {
    card_id: fundedCard,
    items: [{ product_id: "water", quantity: 1 }],
    point_of_sale_id: "main-bar",
    client_request_id: uniqueKey("http-order"),
    confirm_duplicate: true,
    ...overrides,
  };
}

function post(path: string, json: unknown, token = tokens.bartender, headers: Record<string, string> = {}) {
  return call(path, { method: "POST", json, token, headers });
}

function errorCodeOf(body: Record<string, unknown>): string | undefined {
  return (body.error as { code?: string } | undefined)?.code;
}

// ---------------------------------------------------------------------------------------------
// Every status of the mapping table
// ---------------------------------------------------------------------------------------------

Deno.test("http status: 200 for a sale, with x-request-id and the order in the body", async () => {
  const response = await post("process-bar-order", orderBody());
  assert.equal(response.status, 200);
  assert.equal(response.body.ok, true);
  assert.equal(response.body.total_cents, 200);
  assert.match(response.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
});

const statusCases: { name: string; status: number; code?: string; send: () => ReturnType<typeof call> }[] = [
  { name: "invalid body", status: 400, code: "invalid_input", send: () => post("process-bar-order", orderBody({ card_id: 42 })) },
  {
    name: "malformed JSON",
    status: 400,
    code: "invalid_json",
    send: () =>
      call("process-bar-order", {
        method: "POST",
        body: "{\"card_id\":",
        token: tokens.bartender,
        headers: { "content-type": "application/json" },
      }),
  },
  {
    name: "wrong content type",
    status: 400,
    code: "invalid_content_type",
    send: () =>
      call("process-bar-order", {
        method: "POST",
        body: "card_id=x",
        token: tokens.bartender,
        headers: { "content-type": "text/plain" },
      }),
  },
  { name: "missing token", status: 401, send: () => call("process-bar-order", { method: "POST", json: orderBody() }) },
  { name: "expired token", status: 401, send: () => post("process-bar-order", orderBody(), tokens.expired) },
  { name: "cashier selling", status: 403, code: "forbidden", send: () => post("process-bar-order", orderBody(), tokens.cashier) },
  {
    name: "unknown card",
    status: 404,
    code: "card_not_found",
    send: () => post("process-bar-order", orderBody({ card_id: "NO-SUCH-CARD" })),
  },
  {
    name: "unknown product",
    status: 404,
    code: "product_not_found",
    send: () => post("process-bar-order", orderBody({ items: [{ product_id: "champagne", quantity: 1 }] })),
  },
  {
    name: "empty card",
    status: 402,
    code: "insufficient_funds",
    send: () => post("process-bar-order", orderBody({ card_id: emptyCard })),
  },
  {
    name: "blocked card",
    status: 423,
    code: "card_blocked",
    send: () => post("process-bar-order", orderBody({ card_id: blockedCard })),
  },
  {
    name: "menu changed",
    status: 409,
    code: "price_mismatch",
    send: () => post("process-bar-order", orderBody({ expected_total_cents: 199 })),
  },
  {
    name: "recharge above the festival limit",
    status: 422,
    code: "limit_exceeded",
    send: () =>
      post("process-checkpoint-recharge", {
        card_id: emptyCard,
        amount_cents: 30000,
        payment_method: "card",
        checkpoint_id: "camping",
        client_request_id: uniqueKey("http-limit"),
      }, tokens.cashier),
  },
  {
    name: "body over 64 KiB",
    status: 413,
    code: "payload_too_large",
    send: () => post("process-bar-order", { ...orderBody(), pad: "x".repeat(70_000) }),
  },
  { name: "GET on a POST function", status: 405, code: "method_not_allowed", send: () => call("process-bar-order", { token: tokens.bartender }) },
];

for (const testCase of statusCases) {
  Deno.test(`http status: ${testCase.status} for ${testCase.name}`, async () => {
    const response = await testCase.send();
    assert.equal(response.status, testCase.status, JSON.stringify(response.body));
    if (testCase.code) assert.equal(errorCodeOf(response.body), testCase.code);
    assert.ok(response.headers.get("x-request-id"), "x-request-id on every response");
  });
}

Deno.test("http status: 409 duplicate_tap_suspected, then 200 with confirm_duplicate", async () => {
  const body = orderBody({ items: [{ product_id: "soda", quantity: 3 }], confirm_duplicate: false });
  assert.equal((await post("process-bar-order", body)).status, 200);
  const again = await post("process-bar-order", { ...body, client_request_id: uniqueKey("http-dup") });
  assert.equal(again.status, 409);
  assert.equal(errorCodeOf(again.body), "duplicate_tap_suspected");
  const confirmed = await post("process-bar-order", {
    ...body,
    client_request_id: uniqueKey("http-dup"),
    confirm_duplicate: true,
  });
  assert.equal(confirmed.status, 200);
});

Deno.test("http status: 500 with a request id and no details when the database refuses the call", async () => {
  // A real connection as `authenticator`, which may not execute the procedures: an unexpected
  // database error, the kind that must never leak details.
  const url = new URL(DATABASE_URL);
  url.username = "authenticator";
  const client = createRpc(url.toString(), { maxConnections: 1 });
  const originalError = console.error;
  console.error = () => {}; // the error log line is expected here
  try {
    const handler = createBarOrderHandler(client.call);
    const response = await handler(new Request(`${FUNCTIONS_URL}/process-bar-order`, {
      method: "POST",
      headers: { authorization: `Bearer ${tokens.bartender}`, "content-type": "application/json" },
      body: JSON.stringify(orderBody()),
    }));
    assert.equal(response.status, 500);
    const body = await response.json();
    assert.equal(body.error.code, "internal_error");
    assert.equal(body.error.request_id, response.headers.get("x-request-id"));
    assert.ok(!JSON.stringify(body).includes("permission"), "no database details in the response");
  } finally {
    console.error = originalError;
    await client.end();
  }
});

// ---------------------------------------------------------------------------------------------
// Bad input: each case is refused with its status and the ledger does not change
// ---------------------------------------------------------------------------------------------

interface BadInput {
  name: string;
  path?: string;
  body?: unknown;
  raw?: string;
  token?: string;
  headers?: Record<string, string>;
  status: number;
}

const order = (overrides: Record<string, unknown>) => orderBody(overrides);
const recharge = (overrides: Record<string, unknown>) => ({
  card_id: fundedCard,
  amount_cents: 1000,
  payment_method: "cash",
  checkpoint_id: "entrance",
  client_request_id: uniqueKey("http-recharge"),
  ...overrides,
});
const without = (object: Record<string, unknown>, key: string) => {
  const copy = { ...object };
  delete copy[key];
  return copy;
};

const badInputs: BadInput[] = [
  { name: "malformed JSON", raw: "{\"card_id\": \"DEMO-0051\",", status: 400 },
  { name: "JSON array instead of object", body: [orderBody()], status: 400 },
  { name: "JSON null", raw: "null", status: 400 },
  { name: "empty body", raw: "", status: 400 },
  { name: "card_id a number", body: order({ card_id: 51 }), status: 400 },
  { name: "card_id empty", body: order({ card_id: "" }), status: 400 },
  { name: "card_id with SQL", body: order({ card_id: "DEMO-0051'; drop table festival.cards; --" }), status: 400 },
  { name: "card_id with unicode", body: order({ card_id: "DÉMO-0051" }), status: 400 },
  { name: "card_id with a control character", body: order({ card_id: "DEMO-0051\u0000" }), status: 400 },
  { name: "card_id of 65 characters", body: order({ card_id: "A".repeat(65) }), status: 400 },
  { name: "items missing", body: without(orderBody(), "items"), status: 400 },
  { name: "items empty", body: order({ items: [] }), status: 400 },
  {
    name: "1,000 item lines",
    body: order({ items: Array.from({ length: 1000 }, (_, i) => ({ product_id: `p${i}`, quantity: 1 })) }),
    status: 400,
  },
  { name: "51 item lines", body: order({ items: Array.from({ length: 51 }, (_, i) => ({ product_id: `p${i}`, quantity: 1 })) }), status: 400 },
  {
    name: "duplicate lines",
    body: order({ items: [{ product_id: "beer", quantity: 1 }, { product_id: "beer", quantity: 2 }] }),
    status: 400,
  },
  { name: "quantity zero", body: order({ items: [{ product_id: "beer", quantity: 0 }] }), status: 400 },
  { name: "quantity negative", body: order({ items: [{ product_id: "beer", quantity: -1 }] }), status: 400 },
  { name: "quantity float", body: order({ items: [{ product_id: "beer", quantity: 1.5 }] }), status: 400 },
  { name: "quantity as string", body: order({ items: [{ product_id: "beer", quantity: "1" }] }), status: 400 },
  { name: "quantity 100", body: order({ items: [{ product_id: "beer", quantity: 100 }] }), status: 400 },
  { name: "quantity 2^63", raw: JSON.stringify(orderBody()).replace('"quantity":1', '"quantity":9223372036854775808'), status: 400 },
  { name: "client price on a line", body: order({ items: [{ product_id: "beer", quantity: 1, price_cents: 1 }] }), status: 400 },
  { name: "product_id with SQL", body: order({ items: [{ product_id: "beer' or '1'='1", quantity: 1 }] }), status: 400 },
  { name: "unknown top-level field", body: order({ staff_user_id: ADMIN }), status: 400 },
  { name: "expected_total_cents float", body: order({ expected_total_cents: 2.5 }), status: 400 },
  { name: "confirm_duplicate as string", body: order({ confirm_duplicate: "yes" }), status: 400 },
  { name: "point_of_sale_id missing", body: without(orderBody(), "point_of_sale_id"), status: 400 },
  { name: "missing idempotency key", body: without(orderBody(), "client_request_id"), status: 400 },
  { name: "256-character key", body: order({ client_request_id: "k".repeat(256) }), status: 400 },
  { name: "key with a newline", body: order({ client_request_id: "key\nwith-newline" }), status: 400 },
  {
    name: "header and body keys differ",
    body: order({ client_request_id: "body-key" }),
    headers: { "idempotency-key": "header-key" },
    status: 400,
  },
  { name: "token for another role (cashier sells)", body: order({}), token: tokens.cashier, status: 403 },
  { name: "anon key on a staff function", body: order({}), token: tokens.anon, status: 403 },
  { name: "service key without a user", body: order({}), token: tokens.service, status: 403 },
  { name: "user who is not staff", body: order({}), token: tokens.unknownUser, status: 403 },
  { name: "expired token", body: order({}), token: tokens.expired, status: 401 },
  { name: "token signed with another secret", body: order({}), token: tokens.otherSecret, status: 401 },
  { name: "alg none token", body: order({}), token: algNoneToken(), status: 401 },
  { name: "no token", body: order({}), token: "", status: 401 },
  { name: "recharge amount zero", path: "process-checkpoint-recharge", body: recharge({ amount_cents: 0 }), token: tokens.cashier, status: 400 },
  { name: "recharge amount negative", path: "process-checkpoint-recharge", body: recharge({ amount_cents: -500 }), token: tokens.cashier, status: 400 },
  { name: "recharge amount float", path: "process-checkpoint-recharge", body: recharge({ amount_cents: 500.5 }), token: tokens.cashier, status: 400 },
  { name: "recharge amount as string", path: "process-checkpoint-recharge", body: recharge({ amount_cents: "500" }), token: tokens.cashier, status: 400 },
  { name: "recharge amount 2^63", path: "process-checkpoint-recharge", body: recharge({ amount_cents: 2 ** 63 }), token: tokens.cashier, status: 400 },
  { name: "recharge above the configured maximum", path: "process-checkpoint-recharge", body: recharge({ amount_cents: 50001 }), token: tokens.cashier, status: 400 },
  { name: "recharge by bitcoin", path: "process-checkpoint-recharge", body: recharge({ payment_method: "bitcoin" }), token: tokens.cashier, status: 400 },
  { name: "recharge by a bartender", path: "process-checkpoint-recharge", body: recharge({}), token: tokens.bartender, status: 403 },
  { name: "admin-cards unknown action", path: "admin-cards", body: { action: "delete", card_id: fundedCard, client_request_id: "x" }, token: tokens.admin, status: 400 },
  { name: "admin-cards empty batch", path: "admin-cards", body: { action: "register", card_ids: [], client_request_id: "x" }, token: tokens.admin, status: 400 },
  { name: "admin-cards batch with a bad id", path: "admin-cards", body: { action: "register", card_ids: ["OK-1", "bad id"], client_request_id: "x" }, token: tokens.admin, status: 400 },
  { name: "admin-cards holder label with a NUL byte", path: "admin-cards", body: { action: "register", card_ids: ["NUL-1"], holder_label: "a\u0000b", client_request_id: uniqueKey("nul") }, token: tokens.admin, status: 400 },
  { name: "admin-cards block reason with a control character", path: "admin-cards", body: { action: "block", card_id: fundedCard, reason: "lost\u0007", client_request_id: uniqueKey("ctl") }, token: tokens.admin, status: 400 },
  { name: "admin-cards block by a bartender", path: "admin-cards", body: { action: "block", card_id: fundedCard, client_request_id: uniqueKey("blk") }, token: tokens.bartender, status: 403 },
];

Deno.test(`bad input: ${badInputs.length} cases, each refused with its status, nothing moves`, async (t) => {
  assert.ok(badInputs.length >= 40);
  for (const badInput of badInputs) {
    await t.step(badInput.name, async () => {
      const before = await ledgerSnapshot();
      const headers: Record<string, string> = { "content-type": "application/json", ...badInput.headers };
      const response = await call(badInput.path ?? "process-bar-order", {
        method: "POST",
        body: badInput.raw ?? JSON.stringify(badInput.body),
        headers,
        token: badInput.token ?? tokens.bartender,
      });
      assert.equal(response.status, badInput.status, JSON.stringify(response.body));
      if (response.status === 400) {
        const fields = (response.body.error as { fields?: { path: string }[] } | undefined)?.fields;
        const code = errorCodeOf(response.body);
        assert.ok(code === "invalid_json" || (fields && fields.length > 0), "400s name the failing fields");
      }
      assert.equal(await ledgerSnapshot(), before, "the ledger did not change");
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Replays, card-balance, admin-cards, CORS
// ---------------------------------------------------------------------------------------------

Deno.test("replay: the same request twice answers the same status and body; another body is 422", async () => {
  const body = orderBody({ items: [{ product_id: "cocktail", quantity: 1 }] });
  const first = await post("process-bar-order", body);
  const second = await post("process-bar-order", body);
  assert.equal(first.status, 200);
  assert.equal(second.status, first.status);
  assert.deepEqual({ ...second.body, replayed: false }, first.body);
  assert.equal(second.body.replayed, true);
  const reused = await post("process-bar-order", { ...body, items: [{ product_id: "beer", quantity: 1 }] });
  assert.equal(reused.status, 422);
  assert.equal(errorCodeOf(reused.body), "idempotency_key_reused");
});

Deno.test("replay: a failure replays with the same status (402 stays 402)", async () => {
  const body = orderBody({ card_id: emptyCard, items: [{ product_id: "beer", quantity: 1 }] });
  const first = await post("process-bar-order", body);
  const second = await post("process-bar-order", body);
  assert.equal(first.status, 402);
  assert.equal(second.status, 402);
  assert.deepEqual({ ...second.body, replayed: false }, first.body);
});

Deno.test("idempotency: the Idempotency-Key header works alone and equal to the body key", async () => {
  const key = uniqueKey("http-header");
  const viaHeader = await post("process-bar-order", without(orderBody(), "client_request_id"), tokens.bartender, {
    "idempotency-key": key,
  });
  assert.equal(viaHeader.status, 200);
  const both = await post("process-bar-order", { ...without(orderBody(), "client_request_id"), client_request_id: key }, tokens.bartender, {
    "idempotency-key": key,
  });
  assert.equal(both.body.replayed, true);
});

Deno.test("card-balance: staff read status, balance and movements with bar and checkpoint names", async () => {
  const response = await call(`card-balance?card_id=${fundedCard}`, { token: tokens.bartender });
  assert.equal(response.status, 200);
  assert.equal(response.body.status, "active");
  assert.equal(typeof response.body.balance_cents, "number");
  const movements = response.body.movements as { kind: string; location: string; amount_cents: number }[];
  assert.ok(movements.length > 0 && movements.length <= 20);
  assert.ok(movements.some((movement) => movement.kind === "checkpoint_recharge" && movement.location === "Entrance"));
  assert.ok(movements.some((movement) => movement.kind === "bar_order" && movement.location === "Main Bar" && movement.amount_cents < 0));
});

Deno.test("card-balance: 404 unknown card, 400 bad id, 401 without a token", async () => {
  assert.equal((await call("card-balance?card_id=NOPE-1", { token: tokens.anon })).status, 404);
  assert.equal((await call("card-balance?card_id=bad%20id", { token: tokens.anon })).status, 400);
  assert.equal((await call("card-balance?card_id=x&extra=1", { token: tokens.anon })).status, 400);
  assert.equal((await call(`card-balance?card_id=${fundedCard}`)).status, 401);
});

Deno.test("admin-cards: register a batch, block, unblock, each idempotent", async () => {
  const run = crypto.randomUUID().slice(0, 8).toUpperCase();
  const cardIds = [`ADM-${run}-1`, `ADM-${run}-2`];
  const register = { action: "register", card_ids: cardIds, client_request_id: uniqueKey("adm-reg") };
  const registered = await post("admin-cards", register, tokens.admin);
  assert.equal(registered.status, 200);
  assert.deepEqual(registered.body.registered, cardIds);
  assert.equal((await post("admin-cards", register, tokens.admin)).body.replayed, true);
  const blocked = await post("admin-cards", { action: "block", card_id: cardIds[0], reason: "lost", client_request_id: uniqueKey("adm") }, tokens.admin);
  assert.equal(blocked.status, 200);
  assert.equal(blocked.body.status, "blocked");
  const sale = await post("process-bar-order", orderBody({ card_id: cardIds[0] }));
  assert.equal(sale.status, 423);
  const unblocked = await post("admin-cards", { action: "unblock", card_id: cardIds[0], client_request_id: uniqueKey("adm") }, tokens.admin);
  assert.equal(unblocked.body.status, "active");
  const missing = await post("admin-cards", { action: "block", card_id: "NOPE-2", client_request_id: uniqueKey("adm") }, tokens.admin);
  assert.equal(missing.status, 404);
});

Deno.test("CORS: preflight through the server answers 204 without a token", async () => {
  for (const name of ["process-bar-order", "process-checkpoint-recharge", "card-balance", "admin-cards"]) {
    const response = await fetch(`${FUNCTIONS_URL}/${name}`, {
      method: "OPTIONS",
      headers: { origin: "http://terminal.local", "access-control-request-method": "POST" },
    });
    await response.body?.cancel();
    assert.equal(response.status, 204, name);
    assert.equal(response.headers.get("access-control-allow-origin"), "*");
  }
});

Deno.test("gateway: verify_jwt functions refuse a request without a valid JWT before the function runs", async () => {
  const response = await call("process-bar-order", { method: "POST", json: orderBody(), token: await signToken({ role: "anon" }, { secret: "x".repeat(40) }) });
  assert.equal(response.status, 401);
});
