// monitoring-service over HTTP against the functions server and a real database: the checks run,
// a provoked check raises its alert once and refreshes it on the next call; who may call.

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

Deno.test("monitoring-service: checks and alerts; a provoked check is raised once, then refreshed", async () => {
  const sql = connectDatabase(1);
  const card = uniqueKey("MON").slice(0, 40);
  try {
    // Eleven scans of one card within the hour: more than the threshold of 10.
    await sql`
      insert into ops.nfc_scan_log (device_id, device_sequence, card_uid, status, scanned_at)
      select ${card.slice(0, 60)}, i, ${card}, 'ok', now() - make_interval(secs => i) from generate_series(1, 11) i`;
    const first = await call("monitoring-service", { token: tokens.service });
    assert.equal(first.status, 200);
    assert.ok(["healthy", "degraded", "critical"].includes(first.body.status as string));
    assert.notEqual(first.body.status, "healthy");
    const checks = first.body.checks as Array<Record<string, unknown>>;
    assert.ok(checks.some((check) => check.name === "ledger_reconcile"));
    const scans = checks.find((check) => check.name === "excessive_nfc_scans")!;
    assert.equal(scans.status, "warning");
    const alert = (first.body.alerts as Array<Record<string, unknown>>).find((a) => a.subject === card)!;
    assert.equal(alert.kind, "excessive_nfc_scans");
    assert.equal(alert.count, 1);

    const second = await call("monitoring-service", { token: tokens.admin });
    assert.equal(second.status, 200);
    const refreshed = (second.body.alerts as Array<Record<string, unknown>>).filter((a) => a.subject === card);
    assert.equal(refreshed.length, 1);
    assert.equal(refreshed[0].count, 2);

    // Resolved, so later runs of the test suite (or the stack's jobs) start from a clean slate.
    const resolved = await call("admin-alerts", {
      method: "POST",
      token: tokens.admin,
      json: { action: "resolve", alert_id: alert.id, note: "test card", client_request_id: uniqueKey("resolve") },
    });
    assert.equal(resolved.status, 200);
  } finally {
    await sql`delete from ops.nfc_scan_log where card_uid = ${card}`;
    await sql.end();
  }
});

Deno.test("monitoring-service: service key or admin only; GET only", async () => {
  assert.equal((await call("monitoring-service")).status, 401);
  assert.equal((await call("monitoring-service", { token: tokens.anon })).status, 403);
  const bartender = await call("monitoring-service", { token: tokens.bartender });
  assert.equal(bartender.status, 403);
  assert.equal((bartender.body.error as Record<string, unknown>).code, "forbidden");
  assert.equal((await call("monitoring-service", { method: "POST", token: tokens.service })).status, 405);
});
