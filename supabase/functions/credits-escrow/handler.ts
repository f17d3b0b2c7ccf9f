// POST /functions/v1/credits-escrow: credits held in escrow for a marketplace order. `action`
// selects the operation, each idempotent on client_request_id:
//   lock    the client (token subject) locks credits for an order, naming its provider
//   accept  the named provider (token subject) accepts the order; the client can no longer unlock it
//   unlock  the credits go back to the client: by the client before acceptance, by the named
//           provider, or by a platform admin (the procedure decides)
//   payout  the credits go to the named provider: by a platform admin, or by the service itself
//           with the service_role key (no user); nobody chooses the recipient
// Order ids belong to the client who chose them: a hold is the pair (client_user_id, order_id),
// so every action after lock names both. Users must be credits users (no anonymous sign-ins);
// festival staff are refused by the procedures.

import { z } from "zod";
import { authenticate, requireCreditsUser } from "../_shared/auth.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import {
  clientRequestId,
  externalId,
  parseInput,
  resolveClientRequestId,
} from "../_shared/schemas.ts";

/** More credits than any order could plausibly hold is a bug or an attack (400). */
export const MAX_LOCK_CREDITS = 1_000_000;

const orderId = externalId;

export const CreditsEscrowRequest = z.discriminatedUnion("action", [
  z.strictObject({
    action: z.literal("lock"),
    order_id: orderId,
    provider_id: z.guid(),
    amount: z.number().int().min(1).max(MAX_LOCK_CREDITS),
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("accept"),
    client_user_id: z.guid(),
    order_id: orderId,
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("unlock"),
    client_user_id: z.guid(),
    order_id: orderId,
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("payout"),
    client_user_id: z.guid(),
    order_id: orderId,
    client_request_id: clientRequestId.optional(),
  }),
]);

export function createCreditsEscrowHandler(
  call: RpcCall,
): (request: Request) => Promise<Response> {
  return serveFunction(
    { name: "credits-escrow", methods: ["POST"] },
    async (context) => {
      const caller = await authenticate(context.request);
      const body = parseInput(
        CreditsEscrowRequest,
        await readJsonBody(context.request),
      );
      const client_request_id = resolveClientRequestId(
        context.request,
        body.client_request_id,
      );
      switch (body.action) {
        case "lock":
          return respondWithProcedure(context, call, "lock_credits", {
            user_id: requireCreditsUser(caller).subject,
            provider_id: body.provider_id,
            amount: body.amount,
            order_id: body.order_id,
            client_request_id,
          });
        case "accept":
          return respondWithProcedure(context, call, "accept_credit_order", {
            client_user_id: body.client_user_id,
            order_id: body.order_id,
            provider_id: requireCreditsUser(caller).subject,
            client_request_id,
          });
        case "unlock":
          return respondWithProcedure(context, call, "unlock_credits", {
            client_user_id: body.client_user_id,
            order_id: body.order_id,
            actor_user_id: requireCreditsUser(caller).subject,
            client_request_id,
          });
        case "payout":
          return respondWithProcedure(context, call, "payout_to_provider", {
            client_user_id: body.client_user_id,
            order_id: body.order_id,
            client_request_id,
            // The service itself (service_role key, no user) acts as nobody; a user must be an admin.
            actor_user_id: caller.role === "service_role"
              ? null
              : requireCreditsUser(caller).subject,
          });
      }
    },
  );
}

export const handler = createCreditsEscrowHandler(rpc);
