// Fixtures for the practitioner-credit tests against the real database: fresh auth users (unique
// per run, so the tests also run against the `npm start` database), platform admins, and credits
// allocated through the real procedure.

import assert from "node:assert/strict";
import type { ProcedureResult, RpcClient } from "../_shared/rpc.ts";
import { connectDatabase } from "./http_helpers.ts";
import { uniqueKey } from "./festival_fixtures.ts";

export {
  errorCode,
  rpcClient,
  uniqueKey,
  withoutReplayFlag,
} from "./festival_fixtures.ts";

/** Creates `count` auth users (payments never create users: tests do, directly) and returns their ids. */
export async function createUsers(count: number): Promise<string[]> {
  const ids = Array.from({ length: count }, () => crypto.randomUUID());
  const sql = connectDatabase(1);
  try {
    for (const id of ids) {
      await sql`insert into auth.users (id, aud, role, email)
        values (${id}, 'authenticated', 'authenticated', ${`${id}@credits.test`})`;
    }
  } finally {
    await sql.end();
  }
  return ids;
}

export async function makePlatformAdmin(userId: string): Promise<void> {
  const sql = connectDatabase(1);
  try {
    await sql`insert into credits.platform_roles (user_id, role) values (${userId}, 'admin')`;
  } finally {
    await sql.end();
  }
}

/** Gives a user credits through allocate_monthly_credits (a fresh subscription period each time). */
export async function fund(
  client: RpcClient,
  userId: string,
  credits: number,
): Promise<void> {
  const result = await client.call("allocate_monthly_credits", {
    user_id: userId,
    credits,
    subscription_id: uniqueKey("sub"),
    period_start: "2026-01-01T00:00:00Z",
    period_end: "2026-02-01T00:00:00Z",
    source_event_id: uniqueKey("evt"),
  });
  if (!result.ok) throw new Error(`funding failed: ${JSON.stringify(result)}`);
}

/** A user's credit balance from the ledger (0 without a credit account). */
export async function creditBalance(userId: string): Promise<number> {
  const sql = connectDatabase(1);
  try {
    const [row] = await sql`
      select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
        where ua.user_id = ${userId}), 0)::int as balance`;
    return row.balance;
  } finally {
    await sql.end();
  }
}

export async function assertLedgerReconciles(): Promise<void> {
  const sql = connectDatabase(1);
  try {
    const discrepancies = await sql`select * from public.ledger_reconcile()`;
    assert.deepEqual(
      [...discrepancies],
      [],
      "ledger_reconcile() must be empty",
    );
  } finally {
    await sql.end();
  }
}

export function book(
  client: RpcClient,
  bookerId: string,
  treatingId: string,
  credits: number,
  bookingId = uniqueKey("booking"),
  key = uniqueKey("book"),
): Promise<ProcedureResult> {
  return client.call("process_peer_booking_credits", {
    booking_practitioner_id: bookerId,
    treating_practitioner_id: treatingId,
    credits,
    booking_id: bookingId,
    client_request_id: key,
  });
}

/** Locks credits of `userId` for an order whose provider is `providerId`; returns the order id. */
export async function lock(
  client: RpcClient,
  userId: string,
  providerId: string,
  amount: number,
  orderId = uniqueKey("order"),
): Promise<string> {
  const result = await client.call("lock_credits", {
    user_id: userId,
    provider_id: providerId,
    amount,
    order_id: orderId,
    client_request_id: uniqueKey("lock"),
  });
  if (!result.ok) throw new Error(`lock failed: ${JSON.stringify(result)}`);
  return orderId;
}
