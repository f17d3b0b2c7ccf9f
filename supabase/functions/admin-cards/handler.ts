// POST /functions/v1/admin-cards: an admin registers a batch of card UIDs (answering each new
// card's PIN once, to be printed), blocks or unblocks a card, or gives a card a new PIN. `action`
// selects the operation; each is idempotent on client_request_id.

import { z } from "zod";
import { authenticateUser } from "../_shared/auth.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { cardId, clientRequestId, freeText, parseInput, resolveClientRequestId } from "../_shared/schemas.ts";

export const AdminCardsRequest = z.discriminatedUnion("action", [
  z.strictObject({
    action: z.literal("register"),
    card_ids: z.array(cardId).min(1).max(1000),
    holder_label: freeText(100).optional(),
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("block"),
    card_id: cardId,
    reason: freeText(500).optional(),
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("unblock"),
    card_id: cardId,
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("reset_pin"),
    card_id: cardId,
    client_request_id: clientRequestId.optional(),
  }),
]);

export function createAdminCardsHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "admin-cards", methods: ["POST"] }, async (context) => {
    const admin = await authenticateUser(context.request);
    const body = parseInput(AdminCardsRequest, await readJsonBody(context.request));
    const client_request_id = resolveClientRequestId(context.request, body.client_request_id);
    const staff_user_id = admin.subject;
    switch (body.action) {
      case "register":
        return respondWithProcedure(context, call, "sp_admin_register_cards", {
          card_ids: body.card_ids,
          holder_label: body.holder_label ?? null,
          staff_user_id,
          client_request_id,
        });
      case "block":
        return respondWithProcedure(context, call, "sp_admin_block_card", {
          card_id: body.card_id,
          reason: body.reason ?? null,
          staff_user_id,
          client_request_id,
        });
      case "unblock":
        return respondWithProcedure(context, call, "sp_admin_unblock_card", {
          card_id: body.card_id,
          staff_user_id,
          client_request_id,
        });
      case "reset_pin":
        return respondWithProcedure(context, call, "sp_admin_reset_card_pin", {
          card_id: body.card_id,
          staff_user_id,
          client_request_id,
        });
    }
  });
}

export const handler = createAdminCardsHandler(rpc);
