// admin-alerts over HTTP against the functions server and a real database: list with filters,
// acknowledge with a note, resolve, replays, and who may do it (admins and the service key).

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { ADMIN, BARTENDER, uniqueKey } from "./festival_fixtures.ts";
import { anonKey, serviceRoleKey, userToken } from "../../../scripts/lib/tokens.ts";

const tokens = {
  admin: await userToken(ADMIN),
  bartender: await userToken(BARTENDER),
  anon: await anonKey(),
  service: await serviceRoleKey(),
};

/** Raises an alert twice through the database (as the Stripe code does); returns its id and subject. */
async function raiseTwice(kind: string): Promise<{ id: number; subject: string }> {
  const sql = connectDatabase(1);
  const subject = uniqueKey("cs_http");
  try {
    await sql`select ops.raise_alert(${kind}, 'critical', null, ${subject}, '{"n": 1}'::jsonb)`;
    await sql`select ops.raise_alert(${kind}, 'critical', null, ${subject}, '{"n": 2}'::jsonb)`;
    const [row] = await sql`select id::int as id from ops.alerts where kind = ${kind} and subject = ${subject}`;
    return { id: row.id, subject };
  } finally {
    await sql.end();
  }
}

Deno.test("admin-alerts: list with filters, acknowledge with a note, resolve", async () => {
  const alert = await raiseTwice("payment_mismatch");
  const listed = await call(`admin-alerts?status=open&kind=payment_mismatch&subject=${alert.subject}`, {
    token: tokens.admin,
  });
  assert.equal(listed.status, 200);
  const alerts = listed.body.alerts as Array<Record<string, unknown>>;
  assert.equal(alerts.length, 1);
  assert.equal(alerts[0].id, alert.id);
  assert.equal(alerts[0].count, 2);
  assert.equal(alerts[0].severity, "critical");

  const key = uniqueKey("ack");
  const ack = await call("admin-alerts", {
    method: "POST",
    token: tokens.admin,
    json: { action: "acknowledge", alert_id: alert.id, note: "checking Stripe", client_request_id: key },
  });
  assert.equal(ack.status, 200);
  assert.equal((ack.body.alert as Record<string, unknown>).status, "acknowledged");
  assert.equal((ack.body.alert as Record<string, unknown>).acknowledged_by, ADMIN);
  const replay = await call("admin-alerts", {
    method: "POST",
    token: tokens.admin,
    headers: { "idempotency-key": key },
    json: { action: "acknowledge", alert_id: alert.id, note: "checking Stripe" },
  });
  assert.equal(replay.status, 200);
  assert.equal(replay.body.replayed, true);
  const again = await call("admin-alerts", {
    method: "POST",
    token: tokens.admin,
    json: { action: "acknowledge", alert_id: alert.id, client_request_id: uniqueKey("ack") },
  });
  assert.equal(again.status, 409);
  assert.equal((again.body.error as Record<string, unknown>).code, "alert_already_acknowledged");

  const resolved = await call("admin-alerts", {
    method: "POST",
    token: tokens.service,
    json: { action: "resolve", alert_id: alert.id, note: "refunded", client_request_id: uniqueKey("resolve") },
  });
  assert.equal(resolved.status, 200);
  assert.equal((resolved.body.alert as Record<string, unknown>).status, "resolved");
  const resolvedAgain = await call("admin-alerts", {
    method: "POST",
    token: tokens.admin,
    json: { action: "resolve", alert_id: alert.id, client_request_id: uniqueKey("resolve") },
  });
  assert.equal(resolvedAgain.status, 409);
  assert.equal((resolvedAgain.body.error as Record<string, unknown>).code, "alert_already_resolved");
  const missing = await call("admin-alerts", {
    method: "POST",
    token: tokens.admin,
    json: { action: "resolve", alert_id: 999_999_999, client_request_id: uniqueKey("resolve") },
  });
  assert.equal(missing.status, 404);
  assert.equal((missing.body.error as Record<string, unknown>).code, "alert_not_found");
});

Deno.test("admin-alerts: who may call, and bad input", async () => {
  assert.equal((await call("admin-alerts")).status, 401);
  const bartender = await call("admin-alerts", { token: tokens.bartender });
  assert.equal(bartender.status, 403);
  assert.equal((bartender.body.error as Record<string, unknown>).code, "forbidden");
  assert.equal((await call("admin-alerts", { token: tokens.anon })).status, 403);
  assert.equal((await call("admin-alerts", { token: tokens.service })).status, 200);
  const badStatus = await call("admin-alerts?status=closed", { token: tokens.admin });
  assert.equal(badStatus.status, 400);
  assert.equal((badStatus.body.error as Record<string, unknown>).code, "invalid_input");
  const badAction = await call("admin-alerts", {
    method: "POST",
    token: tokens.admin,
    json: { action: "delete", alert_id: 1, client_request_id: uniqueKey("x") },
  });
  assert.equal(badAction.status, 400);
  const noKey = await call("admin-alerts", { method: "POST", token: tokens.admin, json: { action: "resolve", alert_id: 1 } });
  assert.equal(noKey.status, 400);
});

Deno.test("README: the alert kinds table matches ops.alert_kinds", async () => {
  const readme = await Deno.readTextFile(new URL("../../../README.md", import.meta.url));
  const start = readme.indexOf("| kind | severity | what it means | what the operator does |");
  assert.ok(start >= 0, "the README has the alert kinds table");
  const rows = readme.slice(start).split("\n").slice(2);
  const documented = rows.slice(0, rows.findIndex((line) => !line.startsWith("|"))).map((line) => {
    const [kind, severity, description, action] = line.split(" | ").map((cell) => cell.replace(/^\| |\s\|$/g, ""));
    return { kind: kind.replaceAll("`", ""), severity, description, action };
  });
  const sql = connectDatabase(1);
  try {
    const kinds = await sql`
      select kind, default_severity as severity, description, operator_action as action from ops.alert_kinds order by kind`;
    assert.deepEqual(
      [...documented].sort((a, b) => a.kind.localeCompare(b.kind)),
      kinds.map((row) => ({ ...row })),
    );
  } finally {
    await sql.end();
  }
});
