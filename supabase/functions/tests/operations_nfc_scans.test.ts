// nfc-scans over HTTP against the functions server and a real database: 500 scans sent twice are
// stored once, a partial resend stores only what is new, a batch with one invalid scan is refused
// whole with the failing index and field, and who may send.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { ADMIN, BARTENDER, uniqueKey } from "./festival_fixtures.ts";
import { anonKey, serviceRoleKey, userToken } from "../../../scripts/lib/tokens.ts";

const tokens = {
  bartender: await userToken(BARTENDER),
  admin: await userToken(ADMIN),
  stranger: await userToken("00000000-0000-4000-8000-0000000000ff"),
  anon: await anonKey(),
  service: await serviceRoleKey(),
};

function scans(count: number, from = 0) {
  const now = Date.now();
  return Array.from({ length: count }, (_, index) => ({
    device_sequence: from + index,
    card_uid: `DEMO-00${String(51 + ((from + index) % 50)).padStart(2, "0")}`,
    raw_data: "04a224b2c35e80",
    status: "ok",
    scanned_at: new Date(now - (count - index) * 1000).toISOString(),
  }));
}

async function storedCount(deviceId: string): Promise<number> {
  const sql = connectDatabase(1);
  try {
    const [row] = await sql`select count(*)::int as count from ops.nfc_scan_log where device_id = ${deviceId}`;
    return row.count;
  } finally {
    await sql.end();
  }
}

Deno.test("nfc-scans: 500 scans sent twice are stored once; a partial resend stores only what is new", async () => {
  const device_id = uniqueKey("bar-terminal").slice(0, 60);
  const batch = { device_id, point_of_sale_id: "main-bar", app_version: "2.4.1", scans: scans(500) };
  const first = await call("nfc-scans", { method: "POST", token: tokens.bartender, json: batch });
  assert.equal(first.status, 200);
  assert.deepEqual([first.body.received, first.body.stored, first.body.already_stored], [500, 500, 0]);
  const again = await call("nfc-scans", { method: "POST", token: tokens.bartender, json: batch });
  assert.equal(again.status, 200);
  assert.deepEqual([again.body.stored, again.body.already_stored, again.body.replayed], [0, 500, true]);
  assert.equal(await storedCount(device_id), 500);

  const overlapping = await call("nfc-scans", {
    method: "POST",
    token: tokens.bartender,
    json: { device_id, point_of_sale_id: "main-bar", scans: scans(20, 490) },
  });
  assert.deepEqual([overlapping.body.stored, overlapping.body.already_stored], [10, 10]);
  assert.equal(await storedCount(device_id), 510);

  const sql = connectDatabase(1);
  try {
    const [device] = await sql`select point_of_sale_id, app_version, last_staff_user_id::text from ops.devices where device_id = ${device_id}`;
    assert.deepEqual({ ...device }, { point_of_sale_id: "main-bar", app_version: "2.4.1", last_staff_user_id: BARTENDER });
  } finally {
    await sql.end();
  }
});

Deno.test("nfc-scans: one invalid scan refuses the whole batch, naming its index and field", async () => {
  const device_id = uniqueKey("bar-terminal").slice(0, 60);
  const batch = scans(300);
  (batch[137] as Record<string, unknown>).status = "maybe";
  const refused = await call("nfc-scans", {
    method: "POST",
    token: tokens.bartender,
    json: { device_id, point_of_sale_id: "beach-bar", scans: batch },
  });
  assert.equal(refused.status, 400);
  const error = refused.body.error as { code: string; fields: { path: string }[] };
  assert.equal(error.code, "invalid_input");
  assert.deepEqual(error.fields.map((field) => field.path), ["scans[137].status"]);
  assert.equal(await storedCount(device_id), 0);

  const missingUid = scans(3);
  delete (missingUid[2] as Record<string, unknown>).card_uid;
  const noUid = await call("nfc-scans", {
    method: "POST",
    token: tokens.bartender,
    json: { device_id, point_of_sale_id: "beach-bar", scans: missingUid },
  });
  assert.equal(noUid.status, 400);
  assert.deepEqual((noUid.body.error as { fields: { path: string }[] }).fields.map((field) => field.path), ["scans[2].card_uid"]);

  const tooMany = await call("nfc-scans", {
    method: "POST",
    token: tokens.bartender,
    json: { device_id, point_of_sale_id: "beach-bar", scans: scans(501) },
  });
  assert.equal(tooMany.status, 400);
  assert.deepEqual((tooMany.body.error as { fields: { path: string }[] }).fields.map((field) => field.path), ["scans"]);
  const unknownBar = await call("nfc-scans", {
    method: "POST",
    token: tokens.bartender,
    json: { device_id, point_of_sale_id: "no-such-bar", scans: scans(1) },
  });
  assert.equal(unknownBar.status, 404);
  assert.equal((unknownBar.body.error as { code: string }).code, "point_of_sale_not_found");
  assert.equal(await storedCount(device_id), 0);
});

Deno.test("nfc-scans: staff tokens only", async () => {
  const json = { device_id: uniqueKey("t").slice(0, 60), checkpoint_id: "entrance", scans: scans(1) };
  assert.equal((await call("nfc-scans", { method: "POST", json })).status, 401);
  assert.equal((await call("nfc-scans", { method: "POST", token: tokens.anon, json })).status, 403);
  assert.equal((await call("nfc-scans", { method: "POST", token: tokens.service, json })).status, 403);
  const stranger = await call("nfc-scans", { method: "POST", token: tokens.stranger, json });
  assert.equal(stranger.status, 403);
  assert.equal((stranger.body.error as { code: string }).code, "forbidden");
  assert.equal((await call("nfc-scans", { method: "POST", token: tokens.admin, json })).status, 200);
});
