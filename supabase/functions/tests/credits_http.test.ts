// The practitioner-credit functions over HTTP against the local functions server and a real
// database (issue 6): peer-booking, credits-escrow, credits-balance. Every status each one can
// answer, bad input that moves nothing, replays with the same status and body.

import assert from "node:assert/strict";
import { call, connectDatabase, FUNCTIONS_URL } from "./http_helpers.ts";
import {
  createUsers,
  fund,
  makePlatformAdmin,
  rpcClient,
  uniqueKey,
} from "./credits_fixtures.ts";
import {
  anonKey,
  serviceRoleKey,
  userToken,
} from "../../../scripts/lib/tokens.ts";

const setup = rpcClient(2);
const [booker, treating, broke, client, provider, stranger, admin, reader] =
  await createUsers(8);
await makePlatformAdmin(admin);
await fund(setup, booker, 100_000);
await fund(setup, client, 100_000);
// More journal rows than the balance function returns.
for (let index = 0; index < 55; index++) await fund(setup, reader, 1);
await setup.end();

const tokens = {
  booker: await userToken(booker),
  treating: await userToken(treating),
  broke: await userToken(broke),
  client: await userToken(client),
  provider: await userToken(provider),
  stranger: await userToken(stranger),
  admin: await userToken(admin),
  reader: await userToken(reader),
  nobody: await userToken(crypto.randomUUID()),
  anon: await anonKey(),
  service: await serviceRoleKey(),
  expired: await userToken(booker, { expiresInSeconds: -60 }),
  otherSecret: await userToken(booker, {
    secret: "a-completely-different-secret-of-32-chars!!",
  }),
};

function post(
  path: string,
  json: unknown,
  token: string,
  headers: Record<string, string> = {},
) {
  return call(path, { method: "POST", json, token, headers });
}

function errorCodeOf(body: Record<string, unknown>): string | undefined {
  return (body.error as { code?: string } | undefined)?.code;
}

function bookingBody(overrides: Record<string, unknown> = {}) {
  return {
    treating_practitioner_id: treating,
    credits: 10,
    booking_id: uniqueKey("http-booking"),
    client_request_id: uniqueKey("http-book"),
    ...overrides,
  };
}

function escrow(action: string, fields: Record<string, unknown>) {
  return { action, client_request_id: uniqueKey(`http-${action}`), ...fields };
}

async function lockOrder(amount = 10): Promise<string> {
  const orderId = uniqueKey("http-order");
  const response = await post(
    "credits-escrow",
    escrow("lock", { order_id: orderId, provider_id: provider, amount }),
    tokens.client,
  );
  assert.equal(response.status, 200, JSON.stringify(response.body));
  return orderId;
}

/** Everything that would change if credits moved. */
async function creditSnapshot(): Promise<string> {
  const sql = connectDatabase(1);
  try {
    const [row] = await sql`
      select
        (select count(*) from ledger.transfers)::text as transfers,
        (select count(*) from credits.credit_transactions)::text as journal,
        (select count(*) || ':' || string_agg(status, ',' order by order_id) from credits.escrow_holds) as holds,
        (select coalesce(sum(balance_cents), 0) from ledger.accounts)::text as customer_balances`;
    return JSON.stringify(row);
  } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------------------------
// peer-booking
// ---------------------------------------------------------------------------------------------

Deno.test("peer-booking: 200, the token's subject pays the treating practitioner", async () => {
  const response = await post(
    "peer-booking",
    bookingBody({ credits: 25 }),
    tokens.booker,
  );
  assert.equal(response.status, 200, JSON.stringify(response.body));
  assert.equal(response.body.ok, true);
  assert.equal(response.body.credits, 25);
  const bookingPractitioner = response.body.booking_practitioner as Record<
    string,
    unknown
  >;
  const treatingPractitioner = response.body.treating_practitioner as Record<
    string,
    unknown
  >;
  assert.equal(bookingPractitioner.user_id, booker);
  assert.equal(treatingPractitioner.user_id, treating);
  assert.equal(
    Number(bookingPractitioner.balance_before_credits) -
      Number(bookingPractitioner.balance_after_credits),
    25,
  );
  assert.equal(
    Number(treatingPractitioner.balance_after_credits) -
      Number(treatingPractitioner.balance_before_credits),
    25,
  );
  assert.match(response.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
});

Deno.test("peer-booking: booking_practitioner_id equal to the subject is accepted", async () => {
  const response = await post(
    "peer-booking",
    bookingBody({ booking_practitioner_id: booker.toUpperCase() }),
    tokens.booker,
  );
  assert.equal(response.status, 200, JSON.stringify(response.body));
});

Deno.test("peer-booking: the Idempotency-Key header works alone", async () => {
  const { client_request_id: _key, ...body } = bookingBody();
  const key = uniqueKey("http-header");
  const first = await post("peer-booking", body, tokens.booker, {
    "idempotency-key": key,
  });
  const again = await post("peer-booking", body, tokens.booker, {
    "idempotency-key": key,
  });
  assert.equal(first.status, 200);
  assert.equal(again.status, 200);
  assert.equal(again.body.replayed, true);
});

const bookingStatusCases: {
  name: string;
  status: number;
  code?: string;
  send: () => ReturnType<typeof call>;
}[] = [
  {
    name: "invalid body",
    status: 400,
    code: "invalid_input",
    send: () =>
      post("peer-booking", bookingBody({ credits: 0 }), tokens.booker),
  },
  {
    name: "missing token",
    status: 401,
    send: () => call("peer-booking", { method: "POST", json: bookingBody() }),
  },
  {
    name: "expired token",
    status: 401,
    send: () => post("peer-booking", bookingBody(), tokens.expired),
  },
  {
    name: "a practitioner trying to book as someone else",
    status: 403,
    code: "forbidden",
    send: () =>
      post(
        "peer-booking",
        bookingBody({ booking_practitioner_id: treating }),
        tokens.booker,
      ),
  },
  {
    name: "the anon key",
    status: 403,
    code: "forbidden",
    send: () => post("peer-booking", bookingBody(), tokens.anon),
  },
  {
    name: "a service key without a user",
    status: 403,
    code: "forbidden",
    send: () => post("peer-booking", bookingBody(), tokens.service),
  },
  {
    name: "not enough credits",
    status: 402,
    code: "insufficient_funds",
    send: () => post("peer-booking", bookingBody(), tokens.broke),
  },
  {
    name: "unknown treating practitioner",
    status: 404,
    code: "user_not_found",
    send: () =>
      post(
        "peer-booking",
        bookingBody({ treating_practitioner_id: crypto.randomUUID() }),
        tokens.booker,
      ),
  },
  {
    name: "a token for a user who does not exist",
    status: 404,
    code: "user_not_found",
    send: () => post("peer-booking", bookingBody(), tokens.nobody),
  },
  {
    name: "booking oneself",
    status: 422,
    code: "self_booking",
    send: () =>
      post(
        "peer-booking",
        bookingBody({ treating_practitioner_id: booker }),
        tokens.booker,
      ),
  },
  {
    name: "GET",
    status: 405,
    code: "method_not_allowed",
    send: () => call("peer-booking", { token: tokens.booker }),
  },
];

for (const testCase of bookingStatusCases) {
  Deno.test(`peer-booking: ${testCase.status} for ${testCase.name}`, async () => {
    const before = await creditSnapshot();
    const response = await testCase.send();
    assert.equal(
      response.status,
      testCase.status,
      JSON.stringify(response.body),
    );
    if (testCase.code) assert.equal(errorCodeOf(response.body), testCase.code);
    assert.ok(
      response.headers.get("x-request-id"),
      "x-request-id on every response",
    );
    assert.equal(await creditSnapshot(), before, "no credits moved");
  });
}

Deno.test("peer-booking: 409 for a booking already paid under another key", async () => {
  const body = bookingBody();
  const first = await post("peer-booking", body, tokens.booker);
  assert.equal(first.status, 200);
  const again = await post("peer-booking", {
    ...body,
    client_request_id: uniqueKey("http-book"),
  }, tokens.booker);
  assert.equal(again.status, 409);
  assert.equal(errorCodeOf(again.body), "booking_already_paid");
  assert.equal(
    (again.body.error as Record<string, unknown>).transaction_id,
    first.body.transaction_id,
  );
});

Deno.test("peer-booking: replay answers the same status and body; another body under the key is 422", async () => {
  const body = bookingBody();
  const first = await post("peer-booking", body, tokens.booker);
  const second = await post("peer-booking", body, tokens.booker);
  assert.equal(first.status, 200);
  assert.equal(second.status, 200);
  assert.deepEqual({ ...second.body, replayed: false }, first.body);
  assert.equal(second.body.replayed, true);
  const reused = await post(
    "peer-booking",
    { ...body, credits: 11 },
    tokens.booker,
  );
  assert.equal(reused.status, 422);
  assert.equal(errorCodeOf(reused.body), "idempotency_key_reused");
});

Deno.test("peer-booking: a failure replays with the same status (402 stays 402)", async () => {
  const body = bookingBody();
  const first = await post("peer-booking", body, tokens.broke);
  const second = await post("peer-booking", body, tokens.broke);
  assert.equal(first.status, 402);
  assert.equal(second.status, 402);
  assert.deepEqual({ ...second.body, replayed: false }, first.body);
  assert.equal(second.body.replayed, true);
});

const badBookings: {
  name: string;
  body?: unknown;
  raw?: string;
  headers?: Record<string, string>;
}[] = [
  { name: "malformed JSON", raw: '{"credits":' },
  { name: "JSON array", body: [bookingBody()] },
  { name: "credits negative", body: bookingBody({ credits: -5 }) },
  { name: "credits float", body: bookingBody({ credits: 1.5 }) },
  { name: "credits as string", body: bookingBody({ credits: "10" }) },
  {
    name: "credits above 1,000,000",
    body: bookingBody({ credits: 1_000_001 }),
  },
  {
    name: "treating id not a uuid",
    body: bookingBody({ treating_practitioner_id: "bob" }),
  },
  {
    name: "booking_practitioner_id not a uuid",
    body: bookingBody({ booking_practitioner_id: "me" }),
  },
  { name: "booking id empty", body: bookingBody({ booking_id: "" }) },
  {
    name: "booking id of 256 characters",
    body: bookingBody({ booking_id: "b".repeat(256) }),
  },
  {
    name: "booking id with a space",
    body: bookingBody({ booking_id: "booking 1" }),
  },
  { name: "unknown field", body: bookingBody({ amount_cents: 10 }) },
  {
    name: "missing idempotency key",
    body: { ...bookingBody(), client_request_id: undefined },
  },
  {
    name: "header and body keys differ",
    body: bookingBody({ client_request_id: "body-key" }),
    headers: { "idempotency-key": "header-key" },
  },
];

Deno.test(`peer-booking: ${badBookings.length} bad inputs, each 400 naming the fields, nothing moves`, async (t) => {
  for (const bad of badBookings) {
    await t.step(bad.name, async () => {
      const before = await creditSnapshot();
      const response = await call("peer-booking", {
        method: "POST",
        body: bad.raw ?? JSON.stringify(bad.body),
        headers: { "content-type": "application/json", ...bad.headers },
        token: tokens.booker,
      });
      assert.equal(response.status, 400, JSON.stringify(response.body));
      const fields = (response.body.error as { fields?: unknown[] } | undefined)
        ?.fields;
      assert.ok(
        errorCodeOf(response.body) === "invalid_json" ||
          (fields && fields.length > 0),
        "400s name the failing fields",
      );
      assert.equal(await creditSnapshot(), before);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// credits-escrow
// ---------------------------------------------------------------------------------------------

Deno.test("credits-escrow: lock, accept, unlock by the provider; then 409 hold_already_released", async () => {
  const orderId = uniqueKey("http-order");
  const locked = await post(
    "credits-escrow",
    escrow("lock", { order_id: orderId, provider_id: provider, amount: 30 }),
    tokens.client,
  );
  assert.equal(locked.status, 200, JSON.stringify(locked.body));
  assert.equal(locked.body.status, "held");
  assert.equal(locked.body.user_id, client);
  assert.equal(locked.body.provider_id, provider);
  const accepted = await post(
    "credits-escrow",
    escrow("accept", { client_user_id: client, order_id: orderId }),
    tokens.provider,
  );
  assert.equal(accepted.status, 200, JSON.stringify(accepted.body));
  assert.equal(accepted.body.provider_id, provider);
  const byClient = await post(
    "credits-escrow",
    escrow("unlock", { client_user_id: client, order_id: orderId }),
    tokens.client,
  );
  assert.equal(
    byClient.status,
    403,
    "the client cannot unlock an accepted order",
  );
  const unlocked = await post(
    "credits-escrow",
    escrow("unlock", { client_user_id: client, order_id: orderId }),
    tokens.provider,
  );
  assert.equal(unlocked.status, 200, JSON.stringify(unlocked.body));
  assert.equal(unlocked.body.status, "unlocked");
  assert.equal(unlocked.body.user_id, client);
  const again = await post(
    "credits-escrow",
    escrow("unlock", { client_user_id: client, order_id: orderId }),
    tokens.provider,
  );
  assert.equal(again.status, 409);
  assert.equal(errorCodeOf(again.body), "hold_already_released");
});

Deno.test("credits-escrow: the client unlocks before acceptance; a stranger cannot unlock someone else's hold (403)", async () => {
  const orderId = await lockOrder();
  const byStranger = await post(
    "credits-escrow",
    escrow("unlock", { client_user_id: client, order_id: orderId }),
    tokens.stranger,
  );
  assert.equal(byStranger.status, 403);
  assert.equal(errorCodeOf(byStranger.body), "forbidden");
  const byClient = await post(
    "credits-escrow",
    escrow("unlock", { client_user_id: client, order_id: orderId }),
    tokens.client,
  );
  assert.equal(byClient.status, 200, JSON.stringify(byClient.body));
});

Deno.test("credits-escrow: payout by a non-admin user is 403; by an admin 200; twice 409", async () => {
  const orderId = await lockOrder();
  const byProvider = await post(
    "credits-escrow",
    escrow("payout", { client_user_id: client, order_id: orderId }),
    tokens.provider,
  );
  assert.equal(byProvider.status, 403);
  assert.equal(errorCodeOf(byProvider.body), "forbidden");
  const byAdmin = await post(
    "credits-escrow",
    escrow("payout", { client_user_id: client, order_id: orderId }),
    tokens.admin,
  );
  assert.equal(byAdmin.status, 200, JSON.stringify(byAdmin.body));
  assert.equal(byAdmin.body.status, "paid_out");
  const twice = await post(
    "credits-escrow",
    escrow("payout", { client_user_id: client, order_id: orderId }),
    tokens.admin,
  );
  assert.equal(twice.status, 409);
  assert.equal(errorCodeOf(twice.body), "hold_already_released");
});

Deno.test("credits-escrow: the service (service_role key) pays out; replay answers the same status and body", async () => {
  const orderId = await lockOrder();
  const body = escrow("payout", { client_user_id: client, order_id: orderId });
  const first = await post("credits-escrow", body, tokens.service);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  const second = await post("credits-escrow", body, tokens.service);
  assert.equal(second.status, 200);
  assert.deepEqual({ ...second.body, replayed: false }, first.body);
  assert.equal(second.body.replayed, true);
  const reused = await post("credits-escrow", {
    ...body,
    client_user_id: stranger,
  }, tokens.service);
  assert.equal(reused.status, 422);
  assert.equal(errorCodeOf(reused.body), "idempotency_key_reused");
});

const escrowStatusCases: {
  name: string;
  status: number;
  code?: string;
  send: () => Promise<Awaited<ReturnType<typeof call>>>;
}[] = [
  {
    name: "lock without a token",
    status: 401,
    send: () =>
      call("credits-escrow", {
        method: "POST",
        json: escrow("lock", { order_id: uniqueKey("o"), provider_id: provider, amount: 1 }),
      }),
  },
  {
    name: "lock with a token signed by another secret",
    status: 401,
    send: () =>
      post(
        "credits-escrow",
        escrow("lock", { order_id: uniqueKey("o"), provider_id: provider, amount: 1 }),
        tokens.otherSecret,
      ),
  },
  {
    name: "lock with the service key (no user to lock for)",
    status: 403,
    code: "forbidden",
    send: () =>
      post(
        "credits-escrow",
        escrow("lock", { order_id: uniqueKey("o"), provider_id: provider, amount: 1 }),
        tokens.service,
      ),
  },
  {
    name: "unlock with the anon key",
    status: 403,
    code: "forbidden",
    send: () =>
      post(
        "credits-escrow",
        escrow("unlock", { client_user_id: client, order_id: uniqueKey("o") }),
        tokens.anon,
      ),
  },
  {
    name: "lock more than the balance",
    status: 402,
    code: "insufficient_funds",
    send: () =>
      post(
        "credits-escrow",
        escrow("lock", { order_id: uniqueKey("o"), provider_id: provider, amount: 5 }),
        tokens.broke,
      ),
  },
  {
    name: "accept an unknown order",
    status: 404,
    code: "hold_not_found",
    send: () =>
      post(
        "credits-escrow",
        escrow("accept", { client_user_id: client, order_id: uniqueKey("o") }),
        tokens.provider,
      ),
  },
  {
    name: "unlock an unknown order",
    status: 404,
    code: "hold_not_found",
    send: () =>
      post(
        "credits-escrow",
        escrow("unlock", { client_user_id: client, order_id: uniqueKey("o") }),
        tokens.client,
      ),
  },
  {
    name: "payout of an unknown order by the service",
    status: 404,
    code: "hold_not_found",
    send: () =>
      post(
        "credits-escrow",
        escrow("payout", { client_user_id: client, order_id: uniqueKey("o") }),
        tokens.service,
      ),
  },
  {
    name: "a second lock for the same order",
    status: 409,
    code: "hold_already_exists",
    send: async () => {
      const orderId = await lockOrder();
      return post(
        "credits-escrow",
        escrow("lock", { order_id: orderId, provider_id: provider, amount: 10 }),
        tokens.client,
      );
    },
  },
  {
    name: "the client accepting their own order (only the named provider may)",
    status: 403,
    code: "forbidden",
    send: async () => {
      const orderId = await lockOrder();
      return post(
        "credits-escrow",
        escrow("accept", { client_user_id: client, order_id: orderId }),
        tokens.client,
      );
    },
  },
  {
    name: "the client naming themselves as the provider",
    status: 422,
    code: "self_booking",
    send: () =>
      post(
        "credits-escrow",
        escrow("lock", { order_id: uniqueKey("o"), provider_id: client, amount: 1 }),
        tokens.client,
      ),
  },
];

for (const testCase of escrowStatusCases) {
  Deno.test(`credits-escrow: ${testCase.status} for ${testCase.name}`, async () => {
    const response = await testCase.send();
    assert.equal(
      response.status,
      testCase.status,
      JSON.stringify(response.body),
    );
    if (testCase.code) assert.equal(errorCodeOf(response.body), testCase.code);
  });
}

const badEscrow: { name: string; body: unknown; token?: string }[] = [
  { name: "unknown action", body: escrow("refund", { order_id: "o-1" }) },
  {
    name: "missing action",
    body: { order_id: "o-1", amount: 1, client_request_id: "k-1" },
  },
  {
    name: "lock amount zero",
    body: escrow("lock", { order_id: "o-1", provider_id: provider, amount: 0 }),
  },
  {
    name: "lock amount float",
    body: escrow("lock", { order_id: "o-1", provider_id: provider, amount: 2.5 }),
  },
  {
    name: "lock amount as string",
    body: escrow("lock", { order_id: "o-1", provider_id: provider, amount: "5" }),
  },
  {
    name: "lock amount above 1,000,000",
    body: escrow("lock", { order_id: "o-1", provider_id: provider, amount: 1_000_001 }),
  },
  { name: "lock without order id", body: escrow("lock", { provider_id: provider, amount: 1 }) },
  { name: "lock without provider", body: escrow("lock", { order_id: "o-1", amount: 1 }) },
  {
    name: "lock provider not a uuid",
    body: escrow("lock", { order_id: "o-1", provider_id: "prov", amount: 1 }),
  },
  {
    name: "lock naming the user",
    body: escrow("lock", { order_id: "o-1", provider_id: provider, amount: 1, user_id: client }),
  },
  {
    name: "accept without the client",
    body: escrow("accept", { order_id: "o-1" }),
    token: tokens.provider,
  },
  {
    name: "accept naming the provider",
    body: escrow("accept", { client_user_id: client, order_id: "o-1", provider_id: provider }),
  },
  {
    name: "unlock without the client",
    body: escrow("unlock", { order_id: "o-1" }),
  },
  {
    name: "unlock naming the actor",
    body: escrow("unlock", { client_user_id: client, order_id: "o-1", actor_user_id: admin }),
  },
  {
    name: "payout naming a recipient",
    body: escrow("payout", { client_user_id: client, order_id: "o-1", provider_id: provider }),
    token: tokens.admin,
  },
  {
    name: "payout client not a uuid",
    body: escrow("payout", { client_user_id: "client", order_id: "o-1" }),
    token: tokens.admin,
  },
  {
    name: "order id of 256 characters",
    body: escrow("unlock", { client_user_id: client, order_id: "o".repeat(256) }),
  },
  {
    name: "missing idempotency key",
    body: { action: "unlock", client_user_id: client, order_id: "o-1" },
  },
];

Deno.test(`credits-escrow: ${badEscrow.length} bad inputs, each 400, nothing moves`, async (t) => {
  for (const bad of badEscrow) {
    await t.step(bad.name, async () => {
      const before = await creditSnapshot();
      const response = await post(
        "credits-escrow",
        bad.body,
        bad.token ?? tokens.client,
      );
      assert.equal(response.status, 400, JSON.stringify(response.body));
      assert.equal(errorCodeOf(response.body), "invalid_input");
      assert.equal(await creditSnapshot(), before);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// credits-balance
// ---------------------------------------------------------------------------------------------

Deno.test("credits-balance: the caller's own balance and last 50 credit transactions", async () => {
  const response = await call("credits-balance", { token: tokens.reader });
  assert.equal(response.status, 200, JSON.stringify(response.body));
  assert.equal(response.body.user_id, reader);
  assert.equal(response.body.balance_credits, 55);
  const transactions = response.body.transactions as {
    id: number;
    type: string;
    amount_credits: number;
  }[];
  assert.equal(transactions.length, 50);
  assert.ok(
    transactions.every((transaction) =>
      transaction.type === "monthly_allocation" &&
      transaction.amount_credits === 1
    ),
  );
  assert.ok(
    transactions.every((transaction, index) =>
      index === 0 || transaction.id < transactions[index - 1].id
    ),
    "newest first",
  );
});

Deno.test("credits-balance: a booking shows up on both sides", async () => {
  const booking = await post(
    "peer-booking",
    bookingBody({ credits: 3 }),
    tokens.booker,
  );
  assert.equal(booking.status, 200);
  const mine = await call("credits-balance", { token: tokens.booker });
  const theirs = await call("credits-balance", { token: tokens.treating });
  const newest = (body: Record<string, unknown>) =>
    (body.transactions as Record<string, unknown>[])[0];
  assert.equal(newest(mine.body).type, "peer_booking_debit");
  assert.equal(newest(mine.body).amount_credits, -3);
  assert.equal(newest(theirs.body).type, "session_earning");
  assert.equal(
    newest(theirs.body).booking_id,
    (booking.body as Record<string, unknown>).booking_id,
  );
  assert.equal(
    mine.body.balance_credits,
    (booking.body.booking_practitioner as Record<string, unknown>)
      .balance_after_credits,
  );
});

Deno.test("credits-balance: 200 with no credits, 400 with a parameter, 401, 403, 404, 405", async () => {
  const empty = await call("credits-balance", { token: tokens.stranger });
  assert.equal(empty.status, 200);
  assert.equal(empty.body.balance_credits, 0);
  assert.deepEqual(empty.body.transactions, []);
  const other = await call(`credits-balance?user_id=${booker}`, {
    token: tokens.stranger,
  });
  assert.equal(other.status, 400, "no way to ask for another user's balance");
  assert.equal((await call("credits-balance")).status, 401);
  assert.equal(
    (await call("credits-balance", { token: tokens.expired })).status,
    401,
  );
  assert.equal(
    (await call("credits-balance", { token: tokens.anon })).status,
    403,
  );
  assert.equal(
    (await call("credits-balance", { token: tokens.service })).status,
    403,
  );
  const nobody = await call("credits-balance", { token: tokens.nobody });
  assert.equal(nobody.status, 404);
  assert.equal(errorCodeOf(nobody.body), "user_not_found");
  assert.equal(
    (await call("credits-balance", {
      method: "POST",
      token: tokens.reader,
      json: {},
    })).status,
    405,
  );
});

Deno.test("CORS: preflight to the credit functions answers 204 without a token", async () => {
  for (const name of ["peer-booking", "credits-escrow", "credits-balance"]) {
    const response = await fetch(`${FUNCTIONS_URL}/${name}`, {
      method: "OPTIONS",
      headers: {
        origin: "http://practitioners.local",
        "access-control-request-method": "POST",
      },
    });
    await response.body?.cancel();
    assert.equal(response.status, 204, name);
  }
});
