// GET /functions/v1/metrics: Prometheus text exposition computed from the database (sp_metrics),
// for a Prometheus server to scrape (docs/architecture.md §1, `ops`). Authorization: Bearer
// <METRICS_TOKEN> (what a scrape config can carry) or the service key. Locally, METRICS_TOKEN
// defaults to `local-metrics-token`; a hosted deployment without METRICS_TOKEN accepts only the
// service key, never the public default.

import { bearerToken, verifyToken } from "../_shared/auth.ts";
import { recordCaller } from "../_shared/caller.ts";
import { HttpError } from "../_shared/errors.ts";
import { serveFunction } from "../_shared/http.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { EXPOSITION_CONTENT_TYPE, type MetricFamily, renderMetrics } from "./exposition.ts";

export const LOCAL_METRICS_TOKEN = "local-metrics-token";

/** Local: no project URL, or one on this machine (the same rule as the Stripe webhook secret's default). */
function isLocalDeployment(): boolean {
  const projectUrl = Deno.env.get("SUPABASE_URL");
  return !projectUrl || /^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])(:|\/|$)/.test(projectUrl);
}

export function metricsToken(): string | undefined {
  return Deno.env.get("METRICS_TOKEN") || (isLocalDeployment() ? LOCAL_METRICS_TOKEN : undefined);
}

/** Compares without leaking through timing how much of the token was right. */
function sameToken(given: string, expected: string): boolean {
  const a = new TextEncoder().encode(given);
  const b = new TextEncoder().encode(expected);
  let difference = a.length ^ b.length;
  for (let index = 0; index < Math.max(a.length, b.length); index++) difference |= (a[index] ?? 0) ^ (b[index] ?? 0);
  return difference === 0;
}

async function authorizeScrape(request: Request): Promise<void> {
  const token = bearerToken(request);
  const expected = metricsToken();
  if (expected && sameToken(token, expected)) {
    // A scraper, not a token holder: its own caller scope (`role:metrics`; sp_metrics only reads).
    recordCaller("metrics", null);
    return;
  }
  const caller = await verifyToken(token);
  if (caller.role !== "service_role") throw new HttpError("forbidden", "metrics need the metrics token or the service key");
  recordCaller(caller.role, caller.subject);
}

export function createMetricsHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "metrics", methods: ["GET"] }, async (context) => {
    await authorizeScrape(context.request);
    const result = await call("sp_metrics", {}, { functionName: context.functionName, requestId: context.requestId });
    const body = await renderMetrics(result.metrics as MetricFamily[]);
    context.outcome = "ok";
    return new Response(body, {
      status: 200,
      headers: { "content-type": EXPOSITION_CONTENT_TYPE, "x-request-id": context.requestId, "cache-control": "no-store" },
    });
  });
}

export const handler = createMetricsHandler(rpc);
