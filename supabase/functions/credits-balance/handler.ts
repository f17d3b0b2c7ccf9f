// GET /functions/v1/credits-balance: the caller's own credit balance and last 50 credit
// transactions. The user is the verified token's subject; there is no parameter to ask for another.
// Anonymous sign-ins are refused here, festival staff by the procedure.

import { z } from "zod";
import { authenticate, requireCreditsUser } from "../_shared/auth.ts";
import { serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { parseInput } from "../_shared/schemas.ts";

export const TRANSACTION_LIMIT = 50;

const CreditsBalanceQuery = z.strictObject({});

export function createCreditsBalanceHandler(
  call: RpcCall,
): (request: Request) => Promise<Response> {
  return serveFunction(
    { name: "credits-balance", methods: ["GET"] },
    async (context) => {
      const user = requireCreditsUser(await authenticate(context.request));
      parseInput(
        CreditsBalanceQuery,
        Object.fromEntries(new URL(context.request.url).searchParams),
      );
      return respondWithProcedure(context, call, "credits_balance", {
        user_id: user.subject,
        transaction_limit: TRANSACTION_LIMIT,
      });
    },
  );
}

export const handler = createCreditsBalanceHandler(rpc);
