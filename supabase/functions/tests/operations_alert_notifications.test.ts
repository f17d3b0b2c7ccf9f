// Alert notifications against a local webhook receiver: a new alert is posted once as
// Slack-compatible JSON, a failed delivery is recorded and retried after its backoff, a refresh
// sends nothing, an escalation sends once more. The alert-notifications handler runs in this
// process (so it can be pointed at the receiver) against the real database.

import assert from "node:assert/strict";
import { connectDatabase, DATABASE_URL } from "./http_helpers.ts";
import { uniqueKey } from "./festival_fixtures.ts";
import { BARTENDER } from "./festival_fixtures.ts";
import { serviceRoleKey, userToken } from "../../../scripts/lib/tokens.ts";
import { createRpc } from "../_shared/rpc.ts";
import { createAlertNotificationsHandler } from "../alert-notifications/handler.ts";

Deno.test("alert notifications: posted once per alert state, retried with backoff, recorded", async () => {
  const subject = uniqueKey("cs_notify");
  const received: Array<{ text: string; alert: { subject: string; state: string } }> = [];
  let failNext = true;
  const receiver = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const body = await request.json();
    if (body.alert?.subject !== subject) return new Response("ok");
    received.push(body);
    if (failNext) {
      failNext = false;
      return new Response("try later", { status: 503 });
    }
    return new Response("ok");
  });
  const rpcClient = createRpc(Deno.env.get("DB_URL") ?? DATABASE_URL, { maxConnections: 2 });
  const handler = createAlertNotificationsHandler(rpcClient.call, {
    webhookUrl: () => `http://127.0.0.1:${receiver.addr.port}/hooks/alerts`,
  });
  const sql = connectDatabase(1);
  const service = await serviceRoleKey();
  const send = async (token = service) => {
    const response = await handler(
      new Request("http://local/functions/v1/alert-notifications", { method: "POST", headers: { authorization: `Bearer ${token}` } }),
    );
    return { status: response.status, body: await response.json() };
  };
  const notifications = () =>
    sql`select n.state, n.status, n.attempts, n.last_http_status from ops.alert_notifications n
        join ops.alerts a on a.id = n.alert_id where a.subject = ${subject} order by n.id`;
  try {
    assert.equal((await send(await userToken(BARTENDER))).status, 403);

    await sql`select ops.raise_alert('payment_mismatch', 'warning', null, ${subject}, '{}'::jsonb)`;
    assert.equal((await send()).status, 200);
    assert.deepEqual((await notifications()).map((row) => ({ ...row })), [
      { state: "raised:warning", status: "pending", attempts: 1, last_http_status: 503 },
    ]);
    // Before its backoff is over, the failed notification is not sent again.
    await send();
    assert.equal(received.length, 1);
    await sql`update ops.alert_notifications n set next_attempt_at = now() from ops.alerts a
              where a.id = n.alert_id and a.subject = ${subject}`;
    await send();
    assert.equal(received.length, 2);
    assert.deepEqual((await notifications()).map((row) => ({ ...row })), [
      { state: "raised:warning", status: "delivered", attempts: 2, last_http_status: 200 },
    ]);
    assert.match(received[1].text, /payment_mismatch/);
    assert.equal(received[1].alert.state, "raised:warning");

    // A refresh of the same state sends nothing; an escalation sends once.
    await sql`select ops.raise_alert('payment_mismatch', 'warning', null, ${subject}, '{}'::jsonb)`;
    await send();
    assert.equal(received.length, 2);
    await sql`select ops.raise_alert('payment_mismatch', 'critical', null, ${subject}, '{}'::jsonb)`;
    await sql`select ops.raise_alert('payment_mismatch', 'critical', null, ${subject}, '{}'::jsonb)`;
    await send();
    await send();
    assert.equal(received.length, 3);
    assert.equal(received[2].alert.state, "escalated:critical");
    assert.deepEqual((await notifications()).map((row) => row.status), ["delivered", "delivered"]);
  } finally {
    await sql`update ops.alerts set status = 'resolved', resolved_at = now() where subject = ${subject}`;
    await sql.end();
    await rpcClient.end();
    await receiver.shutdown();
  }
});

Deno.test("alert notifications: without ALERT_WEBHOOK_URL nothing is claimed", async () => {
  const rpcClient = createRpc(Deno.env.get("DB_URL") ?? DATABASE_URL, { maxConnections: 1 });
  try {
    const handler = createAlertNotificationsHandler(rpcClient.call, { webhookUrl: () => undefined });
    const response = await handler(
      new Request("http://local/functions/v1/alert-notifications", {
        method: "POST",
        headers: { authorization: `Bearer ${await serviceRoleKey()}` },
      }),
    );
    assert.equal(response.status, 200);
    assert.equal((await response.json()).webhook, "not_configured");
  } finally {
    await rpcClient.end();
  }
});
