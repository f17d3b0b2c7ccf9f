// Operations under concurrency, over parallel connections to the real database: the same alert
// raised from many transactions at once is one row; the monitoring checks run twice at once
// refresh rather than repeat; the same scan batch sent at once from several requests is stored once.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { BARTENDER, uniqueKey } from "./festival_fixtures.ts";
import { userToken } from "../../../scripts/lib/tokens.ts";

Deno.test("alerts: 20 concurrent raises of one kind and subject are one alert counted 20 times, one notification", async () => {
  const sql = connectDatabase(10);
  const subject = uniqueKey("cs_concurrent");
  try {
    await Promise.all(
      Array.from({ length: 20 }, (_, index) =>
        sql.begin(async (transaction) => {
          await transaction`select ops.raise_alert('payment_mismatch', ${index === 7 ? "critical" : "warning"}, null, ${subject},
            ${JSON.stringify({ attempt: index })}::jsonb)`;
        })),
    );
    const rows = await sql`select occurrence_count, severity from ops.alerts where kind = 'payment_mismatch' and subject = ${subject}`;
    assert.equal(rows.length, 1);
    assert.equal(rows[0].occurrence_count, 20);
    assert.equal(rows[0].severity, "critical");
    const [notifications] = await sql`
      select count(*)::int as count from ops.alert_notifications n join ops.alerts a on a.id = n.alert_id where a.subject = ${subject}`;
    // Raised (at whatever severity came first) and, unless critical came first, escalated once.
    assert.ok(notifications.count === 1 || notifications.count === 2);
  } finally {
    await sql`update ops.alerts set status = 'resolved', resolved_at = now() where subject = ${subject}`;
    await sql.end();
  }
});

Deno.test("monitoring: two runs at once refresh the same alerts (no duplicate, no error)", async () => {
  const sql = connectDatabase(4);
  const card = uniqueKey("CONC").slice(0, 40);
  try {
    await sql`
      insert into ops.nfc_scan_log (device_id, device_sequence, card_uid, status, scanned_at)
      select ${card}, i, ${card}, 'ok', now() from generate_series(1, 11) i`;
    await Promise.all([
      sql`select public.run_monitoring_job()`,
      sql`select public.run_monitoring_job()`,
      sql`select public.sp_monitoring_report(null)`,
    ]);
    const rows = await sql`select occurrence_count from ops.alerts where kind = 'excessive_nfc_scans' and subject = ${card}`;
    assert.deepEqual(rows.map((row) => row.occurrence_count), [3]);
  } finally {
    await sql`delete from ops.nfc_scan_log where card_uid = ${card}`;
    await sql`update ops.alerts set status = 'resolved', resolved_at = now() where subject = ${card}`;
    await sql.end();
  }
});

Deno.test("nfc-scans: the same 500-scan batch sent by 4 requests at once is stored once", async () => {
  const token = await userToken(BARTENDER);
  const device_id = uniqueKey("conc-terminal").slice(0, 60);
  const now = Date.now();
  const scans = Array.from({ length: 500 }, (_, index) => ({
    device_sequence: index,
    card_uid: "DEMO-0060",
    status: "ok",
    scanned_at: new Date(now - index * 1000).toISOString(),
  }));
  const responses = await Promise.all(
    Array.from({ length: 4 }, () =>
      call("nfc-scans", { method: "POST", token, json: { device_id, point_of_sale_id: "vip-bar", scans } })),
  );
  for (const response of responses) assert.equal(response.status, 200);
  assert.equal(responses.reduce((sum, response) => sum + (response.body.stored as number), 0), 500);
  const sql = connectDatabase(1);
  try {
    const [row] = await sql`select count(*)::int as count from ops.nfc_scan_log where device_id = ${device_id}`;
    assert.equal(row.count, 500);
  } finally {
    await sql.end();
  }
});
