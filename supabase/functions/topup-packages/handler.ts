// GET /functions/v1/topup-packages: the active top-up packages (price and bonus in cents), for the
// checkpoint screen and the festival-goer's online top-up. Any valid token, the anon key included.

import { z } from "zod";
import { authenticate } from "../_shared/auth.ts";
import { serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { parseInput } from "../_shared/schemas.ts";

export function createTopupPackagesHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "topup-packages", methods: ["GET"] }, async (context) => {
    await authenticate(context.request);
    parseInput(z.strictObject({}), Object.fromEntries(new URL(context.request.url).searchParams));
    return respondWithProcedure(context, call, "sp_topup_packages", {});
  });
}

export const handler = createTopupPackagesHandler(rpc);
