// Concurrency of the festival procedures with real parallel connections (issue: ledger kernel).
// Each test uses its own fresh cards, so the tests are independent of each other and of the seed.

import assert from "node:assert/strict";
import { connectDatabase } from "./http_helpers.ts";
import {
  CASHIER,
  errorCode,
  order,
  recharge,
  registerCards,
  rpcClient,
  uniqueKey,
  withoutReplayFlag,
} from "./festival_fixtures.ts";

async function assertLedgerReconciles(): Promise<void> {
  const sql = connectDatabase(1);
  try {
    const discrepancies = await sql`select * from public.ledger_reconcile()`;
    assert.deepEqual([...discrepancies], [], "ledger_reconcile() must be empty");
  } finally {
    await sql.end();
  }
}

async function cardBalance(cardId: string): Promise<number> {
  const sql = connectDatabase(1);
  try {
    const [row] = await sql`
      select a.balance_cents::int as balance from festival.cards c join ledger.accounts a on a.id = c.account_id
      where c.id = ${cardId}`;
    return row.balance;
  } finally {
    await sql.end();
  }
}

Deno.test("concurrency: 50 parallel orders on a card holding 10 orders' worth -> exactly 10 succeed", async () => {
  const client = rpcClient(50);
  try {
    const [cardId] = await registerCards(client, 1, "RACE");
    assert.equal((await recharge(client, cardId, 10 * 450)).ok, true);
    const results = await Promise.all(
      Array.from({ length: 50 }, () => order(client, cardId, [{ product_id: "beer", quantity: 1 }])),
    );
    const succeeded = results.filter((result) => result.ok);
    const insufficient = results.filter((result) => errorCode(result) === "insufficient_funds");
    assert.equal(succeeded.length, 10);
    assert.equal(insufficient.length, 40);
    assert.equal(await cardBalance(cardId), 0);
    // Every success saw a distinct balance: the card was locked, never read twice.
    const balancesBefore = new Set(succeeded.map((result) => result.previous_balance_cents));
    assert.equal(balancesBefore.size, 10);
  } finally {
    await client.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: the same key 20 times in parallel -> one order, 20 identical responses", async () => {
  const client = rpcClient(20);
  const sql = connectDatabase(1);
  try {
    const [cardId] = await registerCards(client, 1, "SAMEKEY");
    await recharge(client, cardId, 5000);
    const key = uniqueKey("same-key");
    const results = await Promise.all(
      Array.from({ length: 20 }, () => order(client, cardId, [{ product_id: "cocktail", quantity: 2 }], key)),
    );
    assert.ok(results.every((result) => result.ok), JSON.stringify(results.find((result) => !result.ok)));
    const first = JSON.stringify(withoutReplayFlag(results[0]));
    for (const result of results) assert.equal(JSON.stringify(withoutReplayFlag(result)), first);
    assert.equal(results.filter((result) => result.replayed === false).length, 1);
    assert.equal(results.filter((result) => result.replayed === true).length, 19);
    const [{ orders }] = await sql`select count(*)::int as orders from festival.bar_orders where client_request_id = ${key}`;
    assert.equal(orders, 1);
    assert.equal(await cardBalance(cardId), 5000 - 1800);
  } finally {
    await client.end();
    await sql.end();
  }
  await assertLedgerReconciles();
});

Deno.test("concurrency: 10 s of mixed recharges, orders and returns from 16 connections", async () => {
  const connections = 16;
  const durationMs = 10_000;
  const client = rpcClient(connections);
  const sql = connectDatabase(1);
  try {
    const cardIds = await registerCards(client, 4, "MIXED");
    for (const cardId of cardIds) await recharge(client, cardId, 10_000);
    const expectedBalance = new Map(cardIds.map((cardId) => [cardId, 10_000]));
    const outcomes = new Map<string, number>();
    const count = (label: string) => outcomes.set(label, (outcomes.get(label) ?? 0) + 1);
    const unexpected: unknown[] = [];
    const deadline = Date.now() + durationMs;
    const menu = [
      [{ product_id: "beer", quantity: 1 }],
      [{ product_id: "beer", quantity: 2 }, { product_id: "cup-deposit", quantity: 2 }],
      [{ product_id: "cup-return", quantity: 1 }],
      [{ product_id: "cocktail", quantity: 1 }, { product_id: "cup-return", quantity: 1 }],
      [{ product_id: "water", quantity: 3 }, { product_id: "soda", quantity: 1 }],
    ];

    const worker = async (workerIndex: number): Promise<void> => {
      for (let step = 0; Date.now() < deadline; step++) {
        const cardId = cardIds[(workerIndex + step) % cardIds.length];
        const kind = (workerIndex * 7 + step) % 4;
        try {
          if (kind === 0) {
            const result = await client.call("sp_process_checkpoint_recharge", {
              card_id: cardId,
              amount_cents: 500 + 100 * (step % 10),
              payment_method: step % 2 ? "cash" : "card",
              checkpoint_id: workerIndex % 2 ? "entrance" : "camping",
              staff_user_id: CASHIER,
              client_request_id: uniqueKey("mixed-recharge"),
            });
            if (result.ok) {
              expectedBalance.set(cardId, expectedBalance.get(cardId)! + Number(result.amount_cents));
            }
            count(errorCode(result) ?? "recharge_ok");
          } else {
            const result = await order(client, cardId, menu[(workerIndex + step) % menu.length]);
            if (result.ok) expectedBalance.set(cardId, expectedBalance.get(cardId)! - Number(result.total_cents));
            count(errorCode(result) ?? "order_ok");
          }
        } catch (error) {
          unexpected.push(error);
        }
      }
    };

    await Promise.all(Array.from({ length: connections }, (_, index) => worker(index)));
    assert.deepEqual(unexpected, [], "no deadlock, serialization failure or other error");
    // A return is refused while the festival holds no deposit for it; a card also has an hourly
    // return limit (limit_exceeded).
    const businessOutcomes = new Set([
      "recharge_ok",
      "order_ok",
      "insufficient_funds",
      "limit_exceeded",
      "no_deposit_outstanding",
    ]);
    for (const label of outcomes.keys()) assert.ok(businessOutcomes.has(label), `unexpected outcome ${label}`);
    assert.ok((outcomes.get("order_ok") ?? 0) > 50, `too few orders: ${JSON.stringify([...outcomes])}`);
    assert.ok((outcomes.get("recharge_ok") ?? 0) > 10, `too few recharges: ${JSON.stringify([...outcomes])}`);

    for (const cardId of cardIds) {
      const [{ recharged, sold }] = await sql`
        select
          (select coalesce(sum(amount_cents), 0)::int from festival.recharges where card_id = ${cardId} and status = 'completed') as recharged,
          (select coalesce(sum(total_cents), 0)::int from festival.bar_orders where card_id = ${cardId}) as sold`;
      const balance = await cardBalance(cardId);
      assert.equal(balance, recharged - sold, `${cardId}: balance equals recharges minus net sales`);
      assert.equal(balance, expectedBalance.get(cardId), `${cardId}: balance equals the sum of the responses`);
    }
    const [deposits] = await sql`
      select
        (select sum(held_cents)::bigint from festival.deposits_outstanding) as outstanding,
        (select sum(balance_cents)::bigint from ledger.account_balances where system_purpose = 'deposits_held') as held,
        (select count(*)::int from festival.deposits_outstanding where held_cents < 0) as negative`;
    assert.equal(deposits.outstanding, deposits.held, "the deposit counter equals the deposits-held accounts");
    assert.equal(deposits.negative, 0, "no shard of the deposits held ever goes below zero");
  } finally {
    await client.end();
    await sql.end();
  }
  await assertLedgerReconciles();
});
