// GET /functions/v1/card-balance?card_id=...: a card's status, balance and last 20 movements.
// Festival-goers read their own card with the public anon key and the PIN printed on the card in
// the `x-card-pin` header (never in the URL, which logs and browser histories keep); wrong PINs
// are counted per card in the database. Staff tokens read any card without a PIN. Only staff see
// where a card was used.

import { z } from "zod";
import { authenticate, userSubject } from "../_shared/auth.ts";
import { serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { cardId, parseInput } from "../_shared/schemas.ts";

const cardPin = z.string().regex(/^[0-9]{4,8}$/, "4 to 8 digits");
const CardBalanceQuery = z.strictObject({ card_id: cardId });

export function createCardBalanceHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "card-balance", methods: ["GET"] }, async (context) => {
    const caller = await authenticate(context.request);
    const query = parseInput(CardBalanceQuery, Object.fromEntries(new URL(context.request.url).searchParams));
    const headerPin = context.request.headers.get("x-card-pin");
    const pin = headerPin === null
      ? null
      : parseInput(z.object({ "x-card-pin": cardPin }), { "x-card-pin": headerPin })["x-card-pin"];
    // The procedure decides whether this user is staff; anyone else needs the PIN.
    return respondWithProcedure(context, call, "sp_card_balance", {
      card_id: query.card_id,
      pin,
      reader_user_id: userSubject(caller),
    });
  });
}

export const handler = createCardBalanceHandler(rpc);
