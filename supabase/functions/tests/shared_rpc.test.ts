import assert from "node:assert/strict";
import { buildCall, createRpc, DatabaseUnavailableError, ProcedureError } from "../_shared/rpc.ts";
import { DATABASE_URL } from "./http_helpers.ts";

Deno.test("rpc: builds a named-argument call and skips undefined arguments", () => {
  const { text, values } = buildCall("sp_example", { card_id: "DEMO-0001", amount_cents: 500, note: undefined });
  assert.equal(text, "select public.sp_example(card_id => $1, amount_cents => $2) as result");
  assert.deepEqual(values, ["DEMO-0001", 500]);
});

Deno.test("rpc: refuses names that are not plain identifiers", () => {
  assert.throws(() => buildCall("x; drop table y", {}), /invalid procedure name/);
  assert.throws(() => buildCall("ok_name", { "a => 1); --": 1 }), /invalid argument name/);
});

Deno.test("rpc: calls a real procedure and returns its jsonb", async () => {
  const client = createRpc(DATABASE_URL, { maxConnections: 1 });
  try {
    const result = await client.call("health_check");
    assert.equal(result.ok, true);
    assert.match(String(result.migration), /^\d{14}$/);
  } finally {
    await client.end();
  }
});

Deno.test("rpc: a Postgres error becomes a ProcedureError with its SQLSTATE", async () => {
  const client = createRpc(DATABASE_URL, { maxConnections: 1 });
  try {
    // health_check takes no arguments: calling it with one is an undefined function (42883).
    await assert.rejects(
      client.call("health_check", { unexpected: 1 }),
      (error: unknown) => error instanceof ProcedureError && error.sqlState === "42883",
    );
  } finally {
    await client.end();
  }
});

Deno.test("rpc: an unreachable database is DatabaseUnavailableError", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const client = createRpc(`postgresql://postgres:postgres@127.0.0.1:${port}/postgres`, { maxConnections: 1 });
  try {
    await assert.rejects(client.call("health_check"), DatabaseUnavailableError);
  } finally {
    await client.end();
  }
});
