// Fixtures for tests that run against the real database: fresh cards (unique per run, so tests can
// also run against the `npm start` database), funding through the real recharge procedure.

import { createRpc, type ProcedureResult, type RpcClient } from "../_shared/rpc.ts";
import { DATABASE_URL } from "./http_helpers.ts";

export const ADMIN = "00000000-0000-4000-8000-00000000a001";
export const BARTENDER = "00000000-0000-4000-8000-00000000b001";
export const CASHIER = "00000000-0000-4000-8000-00000000c001";

export function uniqueKey(prefix: string): string {
  return `${prefix}-${crypto.randomUUID()}`;
}

export function rpcClient(maxConnections: number): RpcClient {
  return createRpc(DATABASE_URL, { maxConnections });
}

/** Registers `count` new empty cards and returns their ids. */
export async function registerCards(client: RpcClient, count: number, prefix = "T"): Promise<string[]> {
  const run = crypto.randomUUID().slice(0, 8).toUpperCase();
  const cardIds = Array.from({ length: count }, (_, index) => `${prefix}-${run}-${index}`);
  const result = await client.call("sp_admin_register_cards", {
    card_ids: cardIds,
    staff_user_id: ADMIN,
    client_request_id: uniqueKey("register"),
  });
  if (!result.ok) throw new Error(`card registration failed: ${JSON.stringify(result)}`);
  return cardIds;
}

export async function recharge(
  client: RpcClient,
  cardId: string,
  amountCents: number,
  key = uniqueKey("recharge"),
): Promise<ProcedureResult> {
  return await client.call("sp_process_checkpoint_recharge", {
    card_id: cardId,
    amount_cents: amountCents,
    payment_method: "cash",
    checkpoint_id: "entrance",
    staff_user_id: CASHIER,
    client_request_id: key,
  });
}

export function order(
  client: RpcClient,
  cardId: string,
  items: { product_id: string; quantity: number }[],
  key = uniqueKey("order"),
  pointOfSaleId = "main-bar",
): Promise<ProcedureResult> {
  return client.call("sp_process_bar_order", {
    card_id: cardId,
    items,
    point_of_sale_id: pointOfSaleId,
    client_request_id: key,
    staff_user_id: BARTENDER,
    // Tests send identical orders on purpose; the duplicate-tap guard has its own tests.
    confirm_duplicate: true,
  });
}

export function errorCode(result: ProcedureResult): string | undefined {
  return (result.error as { code?: string } | undefined)?.code;
}

export function withoutReplayFlag(result: ProcedureResult): ProcedureResult {
  const { replayed: _replayed, ...rest } = result;
  return rest;
}
