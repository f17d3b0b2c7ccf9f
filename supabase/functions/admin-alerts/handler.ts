// /functions/v1/admin-alerts: what an operator must look at (docs/architecture.md §1, `ops`).
// GET lists alerts (query filters: status, severity, kind, subject, limit); POST acknowledges or
// resolves one with a note, idempotent on client_request_id. Admins only (the procedures decide);
// the service key may operate alerts too (scripts, on-call tooling).

import { z } from "zod";
import { authenticate, requireUser } from "../_shared/auth.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { clientRequestId, freeText, parseInput, resolveClientRequestId } from "../_shared/schemas.ts";

const alertId = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const alertKind = z.string().regex(/^[a-z][a-z0-9_]{0,62}$/, "an alert kind");

export const AlertListQuery = z.strictObject({
  status: z.enum(["open", "acknowledged", "resolved", "unresolved"]).optional(),
  severity: z.enum(["info", "warning", "critical"]).optional(),
  kind: alertKind.optional(),
  subject: freeText(255).optional(),
  limit: z.string().regex(/^[0-9]{1,4}$/).transform(Number).pipe(z.number().int().min(1).max(1000)).optional(),
});

export const AlertAction = z.discriminatedUnion("action", [
  z.strictObject({
    action: z.literal("acknowledge"),
    alert_id: alertId,
    note: freeText(1000).optional(),
    client_request_id: clientRequestId.optional(),
  }),
  z.strictObject({
    action: z.literal("resolve"),
    alert_id: alertId,
    note: freeText(1000).optional(),
    client_request_id: clientRequestId.optional(),
  }),
]);

export function createAdminAlertsHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "admin-alerts", methods: ["GET", "POST"] }, async (context) => {
    const caller = await authenticate(context.request);
    // The service key acts as the service itself (no staff member); anyone else must be a user,
    // and the procedure decides whether that user is an admin.
    const staff_user_id = caller.role === "service_role" ? null : requireUser(caller).subject;
    if (context.request.method === "GET") {
      const query = parseInput(AlertListQuery, Object.fromEntries(new URL(context.request.url).searchParams));
      return respondWithProcedure(context, call, "sp_list_alerts", {
        staff_user_id,
        status: query.status ?? null,
        severity: query.severity ?? null,
        kind: query.kind ?? null,
        subject: query.subject ?? null,
        alert_limit: query.limit ?? 100,
      });
    }
    const body = parseInput(AlertAction, await readJsonBody(context.request));
    const client_request_id = resolveClientRequestId(context.request, body.client_request_id);
    return respondWithProcedure(
      context,
      call,
      body.action === "acknowledge" ? "sp_acknowledge_alert" : "sp_resolve_alert",
      { alert_id: body.alert_id, staff_user_id, client_request_id, note: body.note ?? null },
    );
  });
}

export const handler = createAdminAlertsHandler(rpc);
