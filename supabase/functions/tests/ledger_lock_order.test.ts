// The ledger kernel's lock order (issue 15): ledger.post_transfers locks the customer accounts of
// its legs sorted by id, so connections moving money between the same two customer accounts in
// opposite directions never deadlock, and no cent is lost.
//
// post_transfers is called directly, as the database owner (it is not exposed publicly), with no
// lock taken before it: the procedures that call it lock their accounts first, which would hide a
// wrong order inside post_transfers. Plain connections, not the RPC client: it retries deadlocks
// (40P01), which would hide one here. Each run creates its own accounts, so it does not depend on
// the seed or on other tests.

import assert from "node:assert/strict";
import { connectDatabase } from "./http_helpers.ts";

// With the sort removed from post_transfers, one connection per direction never deadlocked (2 x 2000
// calls); four per direction deadlocked on every run. So: four per direction.
const CONNECTIONS_PER_DIRECTION = 4;
const TRANSFERS_PER_CONNECTION = 200;
const TRANSFERS_PER_DIRECTION = CONNECTIONS_PER_DIRECTION * TRANSFERS_PER_CONNECTION;
const OPENING_BALANCE = 100_000;
const LEFT_TO_RIGHT = 3;
const RIGHT_TO_LEFT = 2;

type Sql = ReturnType<typeof connectDatabase>;

/** One operation with one leg, in one statement (one transaction), as every procedure posts. */
async function transfer(sql: Sql, fromId: string, toId: string, amount: number): Promise<void> {
  await sql`
    select ledger.post_transfers(
      ledger.create_operation('lock_order_test', null, null, '{}'::jsonb),
      array[(${fromId}::bigint, ${toId}::bigint, ${amount}::bigint)::ledger.transfer_leg])`;
}

/** Runs the transfers one after another on one connection; returns each failure (SQLSTATE: message). */
async function transferMany(sql: Sql, fromId: string, toId: string, amount: number): Promise<string[]> {
  const failures: string[] = [];
  for (let index = 0; index < TRANSFERS_PER_CONNECTION; index++) {
    try {
      await transfer(sql, fromId, toId, amount);
    } catch (error) {
      failures.push(`${(error as { code?: string }).code ?? "no code"}: ${(error as Error).message}`);
    }
  }
  return failures;
}

Deno.test("ledger lock order: 4 + 4 connections post_transfers between the same two customer accounts in opposite directions -> no deadlock, no lost cent", async () => {
  const owner = connectDatabase(1);
  const left = Array.from({ length: CONNECTIONS_PER_DIRECTION }, () => connectDatabase(1));
  const right = Array.from({ length: CONNECTIONS_PER_DIRECTION }, () => connectDatabase(1));
  try {
    const run = crypto.randomUUID();
    // Funded from a system account of this run: system accounts may go negative, the total stays zero.
    await owner`select ledger.ensure_system_account('lock_order_test', ${run})`;
    const [{ source }] = await owner`
      select id::text as source from ledger.accounts
      where kind = 'system' and system_purpose = 'lock_order_test' and owner_ref = ${run} and shard = 0`;
    const [{ id: leftId }] = await owner`
      insert into ledger.accounts (kind, code) values ('card', ${`lock-order-test:${run}:left`}) returning id::text`;
    const [{ id: rightId }] = await owner`
      insert into ledger.accounts (kind, code) values ('card', ${`lock-order-test:${run}:right`}) returning id::text`;
    await transfer(owner, source, leftId, OPENING_BALANCE);
    await transfer(owner, source, rightId, OPENING_BALANCE);
    // Every connection opens before the race, so none starts late.
    await Promise.all([...left, ...right].map((sql) => sql`select 1`));

    const failures = await Promise.all([
      ...left.map((sql) => transferMany(sql, leftId, rightId, LEFT_TO_RIGHT)),
      ...right.map((sql) => transferMany(sql, rightId, leftId, RIGHT_TO_LEFT)),
    ]);
    assert.deepEqual(
      failures.flat().slice(0, 5),
      [],
      "no deadlock (40P01) or other error in either direction",
    );

    const balances = await owner`
      select a.id::text as id, a.balance_cents::bigint as stored,
        (select coalesce(sum(amount_cents), 0) from ledger.transfers where to_account_id = a.id)
          - (select coalesce(sum(amount_cents), 0) from ledger.transfers where from_account_id = a.id) as from_transfers,
        (select count(*) from ledger.transfers where a.id in (from_account_id, to_account_id)) as transfer_count
      from ledger.accounts a where a.id in (${leftId}::bigint, ${rightId}::bigint)
      order by a.id = ${leftId}::bigint desc`;
    const net = TRANSFERS_PER_DIRECTION * (LEFT_TO_RIGHT - RIGHT_TO_LEFT);
    assert.deepEqual(
      balances.map((row) => ({
        stored: Number(row.stored),
        fromTransfers: Number(row.from_transfers),
        transfers: Number(row.transfer_count),
      })),
      [
        {
          stored: OPENING_BALANCE - net,
          fromTransfers: OPENING_BALANCE - net,
          transfers: 1 + 2 * TRANSFERS_PER_DIRECTION,
        },
        {
          stored: OPENING_BALANCE + net,
          fromTransfers: OPENING_BALANCE + net,
          transfers: 1 + 2 * TRANSFERS_PER_DIRECTION,
        },
      ],
      "each balance equals its transfers, every transfer landed, and the two balances still sum to what they held",
    );

    const discrepancies = await owner`select * from public.ledger_reconcile()`;
    assert.deepEqual([...discrepancies], [], "ledger_reconcile() must be empty");
  } finally {
    await Promise.all([owner, ...left, ...right].map((sql) => sql.end()));
  }
});
