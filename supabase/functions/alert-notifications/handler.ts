// POST /functions/v1/alert-notifications: sends the queued alert notifications (one per new or
// escalated alert, ops.alert_notifications) to ALERT_WEBHOOK_URL as Slack-compatible JSON and
// records each delivery; failures are retried with backoff by later calls (docs/architecture.md
// §1, `ops`). Called every minute by a scheduler (pg_cron with pg_net on Supabase; `npm start`
// locally) with the service key. Two procedure calls, not one: the HTTP posts happen between
// claiming the notifications and recording what became of them, outside any transaction.

import { authenticate } from "../_shared/auth.ts";
import { HttpError, type OutcomeBody } from "../_shared/errors.ts";
import { jsonResponse, outcomeResponse, serveFunction } from "../_shared/http.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";

interface ClaimedNotification {
  id: number;
  alert_id: number;
  state: string;
  payload: Record<string, unknown>;
  attempts: number;
}

export interface AlertNotificationOptions {
  /** Where to post; undefined: nothing is sent (the notifications wait, and expire after a day). */
  webhookUrl?: () => string | undefined;
  fetch?: typeof fetch;
  /** A webhook that hangs must not hold the claimed batch for long. */
  timeoutMs?: number;
}

async function deliver(
  notification: ClaimedNotification,
  url: string,
  send: typeof fetch,
  timeoutMs: number,
): Promise<{ id: number; delivered: boolean; http_status?: number; error?: string }> {
  try {
    const response = await send(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(notification.payload),
      signal: AbortSignal.timeout(timeoutMs),
    });
    await response.body?.cancel();
    return response.ok
      ? { id: notification.id, delivered: true, http_status: response.status }
      : { id: notification.id, delivered: false, http_status: response.status, error: `HTTP ${response.status}` };
  } catch (error) {
    return { id: notification.id, delivered: false, error: (error as Error).message.slice(0, 500) };
  }
}

export function createAlertNotificationsHandler(
  call: RpcCall,
  options: AlertNotificationOptions = {},
): (request: Request) => Promise<Response> {
  const webhookUrl = options.webhookUrl ?? (() => Deno.env.get("ALERT_WEBHOOK_URL") || undefined);
  const send = options.fetch ?? fetch;
  const timeoutMs = options.timeoutMs ?? 10_000;
  return serveFunction({ name: "alert-notifications", methods: ["POST"] }, async (context) => {
    const caller = await authenticate(context.request);
    if (caller.role !== "service_role") throw new HttpError("forbidden", "alert notifications are sent with the service key");
    const url = webhookUrl();
    if (!url) {
      context.outcome = "not_configured";
      return jsonResponse(200, { ok: true, sent: 0, failed: 0, webhook: "not_configured" }, context.requestId);
    }
    const callContext = { functionName: context.functionName, requestId: context.requestId };
    const claimed = await call("sp_claim_alert_notifications", { batch_size: 20 }, callContext);
    if (!claimed.ok) return outcomeResponse(context, claimed as OutcomeBody);
    const notifications = claimed.notifications as ClaimedNotification[];
    const results = await Promise.all(notifications.map((notification) => deliver(notification, url, send, timeoutMs)));
    if (results.length > 0) await call("sp_record_alert_deliveries", { results }, callContext);
    const sent = results.filter((result) => result.delivered).length;
    context.outcome = "ok";
    return jsonResponse(200, { ok: true, sent, failed: results.length - sent }, context.requestId);
  });
}

export const handler = createAlertNotificationsHandler(rpc);
