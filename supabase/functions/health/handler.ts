// GET /functions/v1/health: is the database reachable, and which migration is it on?
// No token needed (verify_jwt = false); it reveals nothing but the migration version.

import { recordCallerScope } from "../_shared/caller.ts";
import { jsonResponse, serveFunction } from "../_shared/http.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";

// A health check that hangs is worse than one that fails: monitors need an answer.
const DATABASE_TIMEOUT_MS = 3000;

function withTimeout<T>(promise: Promise<T>, milliseconds: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${milliseconds} ms`)), milliseconds);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export function createHealthHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "health", methods: ["GET"] }, async (context) => {
    // Anyone may ask; the probe changes nothing.
    recordCallerScope("public");
    try {
      const result = await withTimeout(call("health_check", {}), DATABASE_TIMEOUT_MS);
      context.outcome = "ok";
      return jsonResponse(200, { status: "ok", database: "ok", migration: result.migration }, context.requestId);
    } catch (error) {
      context.outcome = "database_unreachable";
      console.error(JSON.stringify({
        level: "error",
        function: "health",
        request_id: context.requestId,
        message: (error as Error).message,
      }));
      return jsonResponse(503, { status: "degraded", database: "unreachable" }, context.requestId);
    }
  });
}

export const handler = createHealthHandler(rpc);
