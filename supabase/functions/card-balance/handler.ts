// GET /functions/v1/card-balance?card_id=...: a card's status, balance and last 20 movements.
// Any valid token will do, the project's anon key included: festival-goers check their own card.

import { z } from "zod";
import { authenticate } from "../_shared/auth.ts";
import { serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { cardId, parseInput } from "../_shared/schemas.ts";

const CardBalanceQuery = z.strictObject({ card_id: cardId });

export function createCardBalanceHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "card-balance", methods: ["GET"] }, async (context) => {
    await authenticate(context.request);
    const query = parseInput(CardBalanceQuery, Object.fromEntries(new URL(context.request.url).searchParams));
    return respondWithProcedure(context, call, "sp_card_balance", { card_id: query.card_id });
  });
}

export const handler = createCardBalanceHandler(rpc);
