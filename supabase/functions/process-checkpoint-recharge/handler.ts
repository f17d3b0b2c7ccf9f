// POST /functions/v1/process-checkpoint-recharge: a cashier (or admin) tops a card up with cash or
// a card terminal at a checkpoint. The staff member is the verified token's subject.

import { z } from "zod";
import { authenticateUser } from "../_shared/auth.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import {
  amountCents,
  cardId,
  clientRequestId,
  identifier,
  packageCode,
  parseInput,
  resolveClientRequestId,
} from "../_shared/schemas.ts";

export const CheckpointRechargeRequest = z.strictObject({
  card_id: cardId,
  amount_cents: amountCents.optional(),
  package_code: packageCode.optional(),
  payment_method: z.enum(["cash", "card"]),
  checkpoint_id: identifier,
  client_request_id: clientRequestId.optional(),
}).refine((body) => (body.amount_cents === undefined) !== (body.package_code === undefined), {
  message: "give either amount_cents or package_code",
  path: ["amount_cents"],
});

export function createCheckpointRechargeHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "process-checkpoint-recharge", methods: ["POST"] }, async (context) => {
    const staff = await authenticateUser(context.request);
    const body = parseInput(CheckpointRechargeRequest, await readJsonBody(context.request));
    return respondWithProcedure(context, call, "sp_process_checkpoint_recharge", {
      card_id: body.card_id,
      amount_cents: body.amount_cents ?? null,
      package_code: body.package_code ?? null,
      payment_method: body.payment_method,
      checkpoint_id: body.checkpoint_id,
      staff_user_id: staff.subject,
      client_request_id: resolveClientRequestId(context.request, body.client_request_id),
    });
  });
}

export const handler = createCheckpointRechargeHandler(rpc);
