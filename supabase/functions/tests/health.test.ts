import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { createHealthHandler } from "../health/handler.ts";
import { createRpc } from "../_shared/rpc.ts";

Deno.test("health: GET answers 200 with the newest applied migration", async () => {
  const sql = connectDatabase(1);
  try {
    const [{ version }] = await sql`select max(version) as version from supabase_migrations.schema_migrations`;
    const response = await call("health");
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, { status: "ok", database: "ok", migration: version });
    assert.match(response.headers.get("x-request-id") ?? "", /^[0-9a-f-]{36}$/);
  } finally {
    await sql.end();
  }
});

Deno.test("health: needs no token (verify_jwt = false) and refuses POST with 405", async () => {
  const response = await call("health", { method: "POST", body: "{}" });
  assert.equal(response.status, 405);
  assert.equal((response.body.error as { code: string }).code, "method_not_allowed");
});

Deno.test("health: 503 degraded when the database is unreachable", async () => {
  // A port nothing listens on: the connection is refused at once.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const client = createRpc(`postgresql://postgres:postgres@127.0.0.1:${deadPort}/postgres`);
  try {
    const handler = createHealthHandler(client.call);
    const response = await handler(new Request("http://localhost/functions/v1/health"));
    assert.equal(response.status, 503);
    assert.deepEqual(await response.json(), { status: "degraded", database: "unreachable" });
    assert.ok(response.headers.get("x-request-id"));
  } finally {
    await client.end();
  }
});

Deno.test("functions server: an unknown function is 404", async () => {
  const response = await call("no-such-function");
  assert.equal(response.status, 404);
});
