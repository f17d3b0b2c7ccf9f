// Escrow and booking integrity (issue 9, items 4 and 5) over HTTP and with parallel connections:
// the provider named at lock is the only one who can accept or be paid; anonymous sign-ins and
// festival staff cannot use any credits endpoint; booking and order ids belong to their payer.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import {
  assertLedgerReconciles,
  createUsers,
  creditBalance,
  errorCode,
  fund,
  rpcClient,
  uniqueKey,
} from "./credits_fixtures.ts";
import type { ProcedureResult } from "../_shared/rpc.ts";
import {
  DEMO_STAFF,
  serviceRoleKey,
  signToken,
  userToken,
} from "../../../scripts/lib/tokens.ts";

const setup = rpcClient(2);
const [client, provider, impostor, admin, anonymousUser] = await createUsers(5);
await fund(setup, client, 10_000);
await fund(setup, impostor, 1_000);
// Funded, so that only who they are can explain a refusal.
await fund(setup, anonymousUser, 1_000);
await setup.end();
{
  const sql = connectDatabase(1);
  try {
    await sql`insert into credits.platform_roles (user_id, role) values (${admin}, 'admin')`;
  } finally {
    await sql.end();
  }
}

const tokens = {
  client: await userToken(client),
  provider: await userToken(provider),
  impostor: await userToken(impostor),
  admin: await userToken(admin),
  service: await serviceRoleKey(),
  // An anonymous sign-in of Supabase Auth: a real user session, but anyone can get one.
  anonymous: await signToken({
    sub: anonymousUser,
    role: "authenticated",
    aud: "authenticated",
    is_anonymous: true,
  }),
  // A festival cashier's session (seeded staff).
  staff: await userToken(DEMO_STAFF.cashier),
};

function post(path: string, json: unknown, token: string) {
  return call(path, { method: "POST", json, token });
}

function codeOf(body: Record<string, unknown>): string | undefined {
  return (body.error as { code?: string } | undefined)?.code;
}

function escrow(action: string, fields: Record<string, unknown>) {
  return { action, client_request_id: uniqueKey(`ei-${action}`), ...fields };
}

async function lockOrder(amount: number, orderId = uniqueKey("ei-order")): Promise<string> {
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
        (select count(*) from credits.booking_payments)::text as bookings,
        (select count(*) || ':' || string_agg(status, ',' order by client_user_id, order_id) from credits.escrow_holds) as holds`;
    return JSON.stringify(row);
  } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------------------------
// Who may call the credits endpoints
// ---------------------------------------------------------------------------------------------

for (const caller of ["anonymous", "staff"] as const) {
  Deno.test(`credits endpoints: 403 forbidden for ${caller === "anonymous" ? "an anonymous sign-in" : "a festival staff token"} on every action, nothing moves`, async () => {
    const orderId = await lockOrder(5);
    const token = tokens[caller];
    const attempts = {
      "peer-booking": () =>
        post("peer-booking", {
          treating_practitioner_id: provider,
          credits: 1,
          booking_id: uniqueKey("ei-booking"),
          client_request_id: uniqueKey("ei-book"),
        }, token),
      lock: () =>
        post(
          "credits-escrow",
          escrow("lock", { order_id: uniqueKey("ei-order"), provider_id: provider, amount: 1 }),
          token,
        ),
      accept: () =>
        post("credits-escrow", escrow("accept", { client_user_id: client, order_id: orderId }), token),
      unlock: () =>
        post("credits-escrow", escrow("unlock", { client_user_id: client, order_id: orderId }), token),
      payout: () =>
        post("credits-escrow", escrow("payout", { client_user_id: client, order_id: orderId }), token),
      "credits-balance": () => call("credits-balance", { token }),
    };
    const before = await creditSnapshot();
    for (const [name, send] of Object.entries(attempts)) {
      const response = await send();
      assert.equal(response.status, 403, `${name}: ${JSON.stringify(response.body)}`);
      assert.equal(codeOf(response.body), "forbidden", name);
    }
    assert.equal(await creditSnapshot(), before, "no credits moved");
  });
}

// ---------------------------------------------------------------------------------------------
// Escrow: the provider is named at lock
// ---------------------------------------------------------------------------------------------

Deno.test("credits-escrow: only the provider named at lock accepts; the payout pays that provider whoever triggers it", async () => {
  const orderId = uniqueKey("ei-order");
  const locked = await post(
    "credits-escrow",
    escrow("lock", { order_id: orderId, provider_id: provider, amount: 40 }),
    tokens.client,
  );
  assert.equal(locked.status, 200, JSON.stringify(locked.body));
  assert.equal(locked.body.provider_id, provider);
  assert.equal(locked.body.client_user_id, client);

  const takeover = await post(
    "credits-escrow",
    escrow("accept", { client_user_id: client, order_id: orderId }),
    tokens.impostor,
  );
  assert.equal(takeover.status, 403, JSON.stringify(takeover.body));
  assert.equal(codeOf(takeover.body), "forbidden");

  const accepted = await post(
    "credits-escrow",
    escrow("accept", { client_user_id: client, order_id: orderId }),
    tokens.provider,
  );
  assert.equal(accepted.status, 200, JSON.stringify(accepted.body));
  assert.equal(accepted.body.status, "accepted");

  const providerBefore = await creditBalance(provider);
  const impostorBefore = await creditBalance(impostor);
  const paid = await post(
    "credits-escrow",
    escrow("payout", { client_user_id: client, order_id: orderId }),
    tokens.service,
  );
  assert.equal(paid.status, 200, JSON.stringify(paid.body));
  assert.equal(paid.body.user_id, provider);
  assert.equal(await creditBalance(provider), providerBefore + 40);
  assert.equal(await creditBalance(impostor), impostorBefore);
  await assertLedgerReconciles();
});

Deno.test("credits-escrow: an admin's payout also goes to the named provider; a payout naming a recipient is 400", async () => {
  const orderId = await lockOrder(15);
  const naming = await post(
    "credits-escrow",
    escrow("payout", { client_user_id: client, order_id: orderId, provider_id: impostor }),
    tokens.admin,
  );
  assert.equal(naming.status, 400, JSON.stringify(naming.body));
  const providerBefore = await creditBalance(provider);
  const paid = await post(
    "credits-escrow",
    escrow("payout", { client_user_id: client, order_id: orderId }),
    tokens.admin,
  );
  assert.equal(paid.status, 200, JSON.stringify(paid.body));
  assert.equal(paid.body.user_id, provider);
  assert.equal(await creditBalance(provider), providerBefore + 15);
});

Deno.test("credits-escrow: lock without a provider is 400; naming oneself is 422 self_booking; an unknown provider 404", async () => {
  const before = await creditSnapshot();
  const missing = await post(
    "credits-escrow",
    escrow("lock", { order_id: uniqueKey("ei-order"), amount: 1 }),
    tokens.client,
  );
  assert.equal(missing.status, 400, JSON.stringify(missing.body));
  const self = await post(
    "credits-escrow",
    escrow("lock", { order_id: uniqueKey("ei-order"), provider_id: client, amount: 1 }),
    tokens.client,
  );
  assert.equal(self.status, 422, JSON.stringify(self.body));
  assert.equal(codeOf(self.body), "self_booking");
  const unknown = await post(
    "credits-escrow",
    escrow("lock", { order_id: uniqueKey("ei-order"), provider_id: crypto.randomUUID(), amount: 1 }),
    tokens.client,
  );
  assert.equal(unknown.status, 404, JSON.stringify(unknown.body));
  assert.equal(codeOf(unknown.body), "user_not_found");
  const withoutClient = await post("credits-escrow", escrow("accept", { order_id: "o-1" }), tokens.provider);
  assert.equal(withoutClient.status, 400, "accept must name the client of the hold");
  assert.equal(await creditSnapshot(), before);
});

// ---------------------------------------------------------------------------------------------
// Ids belong to their payer
// ---------------------------------------------------------------------------------------------

Deno.test("credits-escrow: an impostor locking the client's order id first does not block the client's lock", async () => {
  const orderId = uniqueKey("ei-order");
  const squat = await post(
    "credits-escrow",
    escrow("lock", { order_id: orderId, provider_id: provider, amount: 1 }),
    tokens.impostor,
  );
  assert.equal(squat.status, 200, JSON.stringify(squat.body));
  const real = await post(
    "credits-escrow",
    escrow("lock", { order_id: orderId, provider_id: provider, amount: 25 }),
    tokens.client,
  );
  assert.equal(real.status, 200, JSON.stringify(real.body));
  const again = await post(
    "credits-escrow",
    escrow("lock", { order_id: orderId, provider_id: provider, amount: 25 }),
    tokens.client,
  );
  assert.equal(again.status, 409);
  assert.equal(codeOf(again.body), "hold_already_exists");
  // The client's unlock reaches the client's hold, not the impostor's.
  const unlocked = await post(
    "credits-escrow",
    escrow("unlock", { client_user_id: client, order_id: orderId }),
    tokens.client,
  );
  assert.equal(unlocked.status, 200, JSON.stringify(unlocked.body));
  assert.equal(unlocked.body.amount_credits, 25);
  await assertLedgerReconciles();
});

Deno.test("peer-booking: an impostor paying 1 credit under the practitioner's booking id does not block the real booking", async () => {
  const bookingId = uniqueKey("ei-booking");
  const squat = await post("peer-booking", {
    treating_practitioner_id: provider,
    credits: 1,
    booking_id: bookingId,
    client_request_id: uniqueKey("ei-book"),
  }, tokens.impostor);
  assert.equal(squat.status, 200, JSON.stringify(squat.body));
  const body = {
    treating_practitioner_id: provider,
    credits: 20,
    booking_id: bookingId,
    client_request_id: uniqueKey("ei-book"),
  };
  const real = await post("peer-booking", body, tokens.client);
  assert.equal(real.status, 200, JSON.stringify(real.body));
  const again = await post("peer-booking", { ...body, client_request_id: uniqueKey("ei-book") }, tokens.client);
  assert.equal(again.status, 409);
  assert.equal(codeOf(again.body), "booking_already_paid");
  assert.equal((again.body.error as Record<string, unknown>).transaction_id, real.body.transaction_id);
  await assertLedgerReconciles();
});

// ---------------------------------------------------------------------------------------------
// Races with parallel connections
// ---------------------------------------------------------------------------------------------

function describe(results: ProcedureResult[]): string {
  return JSON.stringify(results.filter((result) => !result.ok).slice(0, 3));
}

Deno.test("concurrency: the named provider and an impostor race to accept 10 orders -> the provider always wins, the impostor is forbidden, payouts go to the provider", async () => {
  const rpc = rpcClient(20);
  try {
    const [buyer, named, rival] = await createUsers(3);
    await fund(rpc, buyer, 10 * 12);
    const orders: string[] = [];
    for (let index = 0; index < 10; index++) {
      const orderId = uniqueKey("ei-race");
      const locked = await rpc.call("lock_credits", {
        user_id: buyer,
        provider_id: named,
        amount: 12,
        order_id: orderId,
        client_request_id: uniqueKey("ei-lock"),
      });
      assert.ok(locked.ok, JSON.stringify(locked));
      orders.push(orderId);
    }
    const accept = (orderId: string, providerId: string) =>
      rpc.call("accept_credit_order", {
        client_user_id: buyer,
        order_id: orderId,
        provider_id: providerId,
        client_request_id: uniqueKey("ei-accept"),
      });
    const races = await Promise.all(orders.map((orderId) => Promise.all([accept(orderId, rival), accept(orderId, named)])));
    for (const [byRival, byNamed] of races) {
      assert.equal(errorCode(byRival), "forbidden", JSON.stringify(byRival));
      assert.ok(byNamed.ok, JSON.stringify(byNamed));
    }
    const payouts = await Promise.all(orders.map((orderId) =>
      rpc.call("payout_to_provider", {
        client_user_id: buyer,
        order_id: orderId,
        client_request_id: uniqueKey("ei-payout"),
        actor_user_id: null,
      })
    ));
    assert.ok(payouts.every((result) => result.ok), describe(payouts));
    assert.equal(await creditBalance(named), 120);
    assert.equal(await creditBalance(rival), 0);
    assert.equal(await creditBalance(buyer), 0);
  } finally {
    await rpc.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: the provider accepting and the client unlocking at once -> one consistent outcome per order", async () => {
  const rpc = rpcClient(20);
  try {
    const [buyer, named] = await createUsers(2);
    await fund(rpc, buyer, 10 * 9);
    const orders: string[] = [];
    for (let index = 0; index < 10; index++) {
      const orderId = uniqueKey("ei-race");
      const locked = await rpc.call("lock_credits", {
        user_id: buyer,
        provider_id: named,
        amount: 9,
        order_id: orderId,
        client_request_id: uniqueKey("ei-lock"),
      });
      assert.ok(locked.ok, JSON.stringify(locked));
      orders.push(orderId);
    }
    const races = await Promise.all(orders.map((orderId) =>
      Promise.all([
        rpc.call("accept_credit_order", {
          client_user_id: buyer,
          order_id: orderId,
          provider_id: named,
          client_request_id: uniqueKey("ei-accept"),
        }),
        rpc.call("unlock_credits", {
          client_user_id: buyer,
          order_id: orderId,
          actor_user_id: buyer,
          client_request_id: uniqueKey("ei-unlock"),
        }),
      ])
    ));
    let unlocked = 0;
    for (const [accepted, unlock] of races) {
      if (unlock.ok) {
        // The unlock ran first: the accept found the hold released.
        assert.equal(errorCode(accepted), "hold_already_released", JSON.stringify(accepted));
        unlocked++;
      } else {
        // The accept ran first: the client can no longer take the credits back.
        assert.ok(accepted.ok, JSON.stringify(accepted));
        assert.equal(errorCode(unlock), "forbidden", JSON.stringify(unlock));
      }
    }
    assert.equal(await creditBalance(buyer), unlocked * 9);
  } finally {
    await rpc.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: the real payer and an impostor use the same booking id at once, 10 times -> both paid, each once", async () => {
  const rpc = rpcClient(20);
  try {
    const [payer, squatter, treating] = await createUsers(3);
    await fund(rpc, payer, 10 * 20);
    await fund(rpc, squatter, 10 * 1);
    const book = (booker: string, credits: number, bookingId: string) =>
      rpc.call("process_peer_booking_credits", {
        booking_practitioner_id: booker,
        treating_practitioner_id: treating,
        credits,
        booking_id: bookingId,
        client_request_id: uniqueKey("ei-book"),
      });
    const bookingIds = Array.from({ length: 10 }, () => uniqueKey("ei-booking"));
    const results = (await Promise.all(bookingIds.map((bookingId) =>
      Promise.all([book(squatter, 1, bookingId), book(payer, 20, bookingId)])
    ))).flat();
    assert.ok(results.every((result) => result.ok), describe(results));
    assert.equal(await creditBalance(payer), 0);
    assert.equal(await creditBalance(squatter), 0);
    assert.equal(await creditBalance(treating), 10 * 21);
  } finally {
    await rpc.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: the client and an impostor lock the same order id at once, 10 times -> two holds each time", async () => {
  const rpc = rpcClient(20);
  const sql = connectDatabase(1);
  try {
    const [buyer, squatter, named] = await createUsers(3);
    await fund(rpc, buyer, 10 * 30);
    await fund(rpc, squatter, 10 * 1);
    const lock = (user: string, amount: number, orderId: string) =>
      rpc.call("lock_credits", {
        user_id: user,
        provider_id: named,
        amount,
        order_id: orderId,
        client_request_id: uniqueKey("ei-lock"),
      });
    const orderIds = Array.from({ length: 10 }, () => uniqueKey("ei-order"));
    const results = (await Promise.all(orderIds.map((orderId) =>
      Promise.all([lock(squatter, 1, orderId), lock(buyer, 30, orderId)])
    ))).flat();
    assert.ok(results.every((result) => result.ok), describe(results));
    const [{ holds }] = await sql`
      select count(*)::int as holds from credits.escrow_holds where order_id = any (${orderIds})`;
    assert.equal(holds, 20);
    assert.equal(await creditBalance(buyer), 0);
    assert.equal(await creditBalance(squatter), 0);
  } finally {
    await rpc.end();
    await sql.end();
  }
  await assertLedgerReconciles();
});
