// Concurrency of the practitioner-credit procedures with real parallel connections (issue 6).
// Each test uses its own fresh users, so the tests are independent of each other and of the seed.

import assert from "node:assert/strict";
import { connectDatabase } from "./http_helpers.ts";
import {
  assertLedgerReconciles,
  book,
  createUsers,
  creditBalance,
  errorCode,
  fund,
  lock,
  rpcClient,
  uniqueKey,
  withoutReplayFlag,
} from "./credits_fixtures.ts";
import type { ProcedureResult } from "../_shared/rpc.ts";

function describe(results: ProcedureResult[]): string {
  return JSON.stringify(results.filter((result) => !result.ok).slice(0, 3));
}

Deno.test("concurrency: 20 simultaneous bookings between two practitioners in both directions -> no deadlock, exact balances", async () => {
  const client = rpcClient(2);
  // Plain connections, not the RPC client: it retries deadlocks (40P01), which would hide one here.
  const sql = connectDatabase(20);
  try {
    const [alice, bob] = await createUsers(2);
    await fund(client, alice, 1000);
    await fund(client, bob, 1000);
    const bookOnce = async (
      booker: string,
      treating: string,
      credits: number,
    ) => {
      const [{ result }] = await sql`
        select public.process_peer_booking_credits(
          booking_practitioner_id => ${booker}, treating_practitioner_id => ${treating}, credits => ${credits},
          booking_id => ${uniqueKey("booking")}, client_request_id => ${
        uniqueKey("book")
      }) as result`;
      return result as ProcedureResult;
    };
    // Alternating directions: half the calls use the pair in the opposite order of the other half.
    const results = await Promise.all(
      Array.from(
        { length: 20 },
        (_, index) =>
          index % 2 === 0 ? bookOnce(alice, bob, 7) : bookOnce(bob, alice, 3),
      ),
    );
    assert.ok(results.every((result) => result.ok), describe(results));
    assert.equal(await creditBalance(alice), 1000 - 10 * 7 + 10 * 3);
    assert.equal(await creditBalance(bob), 1000 + 10 * 7 - 10 * 3);
  } finally {
    await client.end();
    await sql.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: a booker with credits for exactly 5 bookings sends 20 at once -> exactly 5 succeed", async () => {
  const client = rpcClient(20);
  try {
    const [booker, treating] = await createUsers(2);
    await fund(client, booker, 5 * 10);
    const results = await Promise.all(
      Array.from({ length: 20 }, () => book(client, booker, treating, 10)),
    );
    const succeeded = results.filter((result) => result.ok);
    assert.equal(succeeded.length, 5, describe(results));
    assert.equal(
      results.filter((result) => errorCode(result) === "insufficient_funds")
        .length,
      15,
    );
    assert.equal(await creditBalance(booker), 0);
    assert.equal(await creditBalance(treating), 50);
    // Every success saw a distinct balance: the account was locked, never read twice.
    const balancesBefore = new Set(
      succeeded.map((result) =>
        (result.booking_practitioner as { balance_before_credits: number })
          .balance_before_credits
      ),
    );
    assert.deepEqual([...balancesBefore].sort((a, b) => a - b), [
      10,
      20,
      30,
      40,
      50,
    ]);
  } finally {
    await client.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: one booking paid from 10 keys at once -> paid once, the others booking_already_paid", async () => {
  const client = rpcClient(10);
  try {
    const [booker, treating] = await createUsers(2);
    await fund(client, booker, 100);
    const bookingId = uniqueKey("booking");
    const results = await Promise.all(
      Array.from(
        { length: 10 },
        () => book(client, booker, treating, 10, bookingId),
      ),
    );
    assert.equal(
      results.filter((result) => result.ok).length,
      1,
      describe(results),
    );
    assert.equal(
      results.filter((result) => errorCode(result) === "booking_already_paid")
        .length,
      9,
    );
    assert.equal(await creditBalance(booker), 90);
  } finally {
    await client.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: 10 bookers pay a practitioner who has no credit account yet -> one account, all paid", async () => {
  const client = rpcClient(10);
  const sql = connectDatabase(1);
  try {
    const [treating, ...bookers] = await createUsers(11);
    for (const booker of bookers) await fund(client, booker, 10);
    const results = await Promise.all(
      bookers.map((booker) => book(client, booker, treating, 10)),
    );
    assert.ok(results.every((result) => result.ok), describe(results));
    const [{ accounts }] = await sql`
      select count(*)::int as accounts from ledger.accounts where code = ${`user_credit:${treating}`}`;
    assert.equal(accounts, 1);
    assert.equal(await creditBalance(treating), 100);
  } finally {
    await client.end();
    await sql.end();
  }
  await assertLedgerReconciles();
});

for (const variant of ["the same event id", "10 different event ids"]) {
  Deno.test(`concurrency: one subscription period allocated 10 times at once with ${variant} -> one allocation`, async () => {
    const client = rpcClient(10);
    const sql = connectDatabase(1);
    try {
      const [member] = await createUsers(1);
      const subscriptionId = uniqueKey("sub");
      const sharedEvent = uniqueKey("evt");
      const results = await Promise.all(
        Array.from(
          { length: 10 },
          () =>
            client.call("allocate_monthly_credits", {
              user_id: member,
              credits: 300,
              subscription_id: subscriptionId,
              period_start: "2026-03-01T00:00:00Z",
              period_end: "2026-04-01T00:00:00Z",
              source_event_id: variant === "the same event id"
                ? sharedEvent
                : uniqueKey("evt"),
            }),
        ),
      );
      assert.ok(results.every((result) => result.ok), describe(results));
      const first = JSON.stringify(withoutReplayFlag(results[0]));
      for (const result of results) {
        assert.equal(JSON.stringify(withoutReplayFlag(result)), first);
      }
      assert.equal(
        results.filter((result) => result.replayed === false).length,
        1,
      );
      assert.equal(
        results.filter((result) => result.replayed === true).length,
        9,
      );
      const [{ allocations, journal }] = await sql`
        select
          (select count(*)::int from credits.allocations where subscription_id = ${subscriptionId}) as allocations,
          (select count(*)::int from credits.credit_transactions where subscription_id = ${subscriptionId}) as journal`;
      assert.equal(allocations, 1);
      assert.equal(journal, 1);
      assert.equal(await creditBalance(member), 300);
    } finally {
      await client.end();
      await sql.end();
    }
    await assertLedgerReconciles();
  });
}

Deno.test("concurrency: unlock and payout of one hold racing -> exactly one wins, the other hold_already_released", async () => {
  const rounds = 10;
  const client = rpcClient(2 * rounds);
  try {
    const [buyer, provider] = await createUsers(2);
    await fund(client, buyer, rounds * 25);
    const orders: string[] = [];
    for (let round = 0; round < rounds; round++) {
      orders.push(await lock(client, buyer, provider, 25));
    }
    const races = await Promise.all(orders.map((orderId) =>
      Promise.all([
        client.call("unlock_credits", {
          client_user_id: buyer,
          order_id: orderId,
          actor_user_id: buyer,
          client_request_id: uniqueKey("unlock"),
        }),
        client.call("payout_to_provider", {
          client_user_id: buyer,
          order_id: orderId,
          client_request_id: uniqueKey("payout"),
          actor_user_id: null,
        }),
      ])
    ));
    let unlocked = 0;
    let paidOut = 0;
    for (const [unlock, payout] of races) {
      assert.equal(
        [unlock, payout].filter((result) => result.ok).length,
        1,
        JSON.stringify([unlock, payout]),
      );
      const loser = unlock.ok ? payout : unlock;
      assert.equal(errorCode(loser), "hold_already_released");
      if (unlock.ok) unlocked++;
      else paidOut++;
    }
    assert.equal(await creditBalance(buyer), unlocked * 25);
    assert.equal(await creditBalance(provider), paidOut * 25);
  } finally {
    await client.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: 10 releases of one hold from 10 keys at once -> released exactly once", async () => {
  const client = rpcClient(10);
  try {
    const [buyer, provider] = await createUsers(2);
    await fund(client, buyer, 40);
    const orderId = await lock(client, buyer, provider, 40);
    const results = await Promise.all(
      Array.from(
        { length: 10 },
        (_, index) =>
          index % 2 === 0
            ? client.call("unlock_credits", {
              client_user_id: buyer,
              order_id: orderId,
              actor_user_id: buyer,
              client_request_id: uniqueKey("unlock"),
            })
            : client.call("payout_to_provider", {
              client_user_id: buyer,
              order_id: orderId,
              client_request_id: uniqueKey("payout"),
            }),
      ),
    );
    assert.equal(
      results.filter((result) => result.ok).length,
      1,
      describe(results),
    );
    assert.equal(
      results.filter((result) => errorCode(result) === "hold_already_released")
        .length,
      9,
    );
    assert.equal(
      (await creditBalance(buyer)) + (await creditBalance(provider)),
      40,
    );
  } finally {
    await client.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: 10 locks for one order from 10 keys at once -> one hold, the others hold_already_exists", async () => {
  const client = rpcClient(10);
  try {
    const [buyer, provider] = await createUsers(2);
    await fund(client, buyer, 100);
    const orderId = uniqueKey("order");
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        client.call("lock_credits", {
          user_id: buyer,
          provider_id: provider,
          amount: 10,
          order_id: orderId,
          client_request_id: uniqueKey("lock"),
        })),
    );
    assert.equal(
      results.filter((result) => result.ok).length,
      1,
      describe(results),
    );
    assert.equal(
      results.filter((result) => errorCode(result) === "hold_already_exists")
        .length,
      9,
    );
    assert.equal(await creditBalance(buyer), 90);
  } finally {
    await client.end();
  }
  await assertLedgerReconciles();
});
