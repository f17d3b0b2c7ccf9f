// GET /functions/v1/menu?point_of_sale_id=main-bar: what a bar sells, at which price, for a staff
// member (POS terminals draw their buttons from it). The procedure checks that the caller is staff.

import { z } from "zod";
import { authenticateUser } from "../_shared/auth.ts";
import { serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { identifier, parseInput } from "../_shared/schemas.ts";

const MenuQuery = z.strictObject({ point_of_sale_id: identifier });

export function createMenuHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "menu", methods: ["GET"] }, async (context) => {
    const staff = await authenticateUser(context.request);
    const query = parseInput(MenuQuery, Object.fromEntries(new URL(context.request.url).searchParams));
    return respondWithProcedure(context, call, "sp_menu", {
      point_of_sale_id: query.point_of_sale_id,
      staff_user_id: staff.subject,
    });
  });
}

export const handler = createMenuHandler(rpc);
