// GET /functions/v1/monitoring-service: runs the monitoring checks now (ops.run_monitoring_checks,
// raising or refreshing alerts) and answers {status: healthy | degraded | critical, checks, alerts}
// (docs/architecture.md §1, `ops`). The service key (uptime monitors, scripts) or an admin's token.

import { authenticate, requireUser } from "../_shared/auth.ts";
import { serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";

export function createMonitoringServiceHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "monitoring-service", methods: ["GET"] }, async (context) => {
    const caller = await authenticate(context.request);
    // The procedure decides: no staff id is allowed for the service key only, a user must be an admin.
    const staff_user_id = caller.role === "service_role" ? null : requireUser(caller).subject;
    return respondWithProcedure(context, call, "sp_monitoring_report", { staff_user_id });
  });
}

export const handler = createMonitoringServiceHandler(rpc);
