// POST /functions/v1/process-bar-order: a bartender (or admin) charges a card for an order.
// Prices come from the menu in the database; the staff member is the verified token's subject.

import { z } from "zod";
import { authenticateUser } from "../_shared/auth.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { cardId, clientRequestId, identifier, parseInput, resolveClientRequestId } from "../_shared/schemas.ts";

const orderLine = z.strictObject({
  product_id: identifier,
  quantity: z.number().int().min(1).max(99),
});

// 50 lines of 99 items at any plausible price stays far below this bound.
const TOTAL_BOUND_CENTS = 100_000_000;

export const BarOrderRequest = z.strictObject({
  card_id: cardId,
  items: z.array(orderLine).min(1).max(50).superRefine((lines, context) => {
    const seen = new Set<string>();
    lines.forEach((line, index) => {
      if (seen.has(line.product_id)) {
        context.addIssue({ code: "custom", path: [index, "product_id"], message: "a product may appear on one line only" });
      }
      seen.add(line.product_id);
    });
  }),
  point_of_sale_id: identifier,
  client_request_id: clientRequestId.optional(),
  expected_total_cents: z.number().int().min(-TOTAL_BOUND_CENTS).max(TOTAL_BOUND_CENTS).optional(),
  confirm_duplicate: z.boolean().optional(),
});

export function createBarOrderHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "process-bar-order", methods: ["POST"] }, async (context) => {
    const staff = await authenticateUser(context.request);
    const body = parseInput(BarOrderRequest, await readJsonBody(context.request));
    return respondWithProcedure(context, call, "sp_process_bar_order", {
      card_id: body.card_id,
      items: body.items,
      point_of_sale_id: body.point_of_sale_id,
      client_request_id: resolveClientRequestId(context.request, body.client_request_id),
      staff_user_id: staff.subject,
      expected_total_cents: body.expected_total_cents ?? null,
      confirm_duplicate: body.confirm_duplicate ?? false,
    });
  });
}

export const handler = createBarOrderHandler(rpc);
