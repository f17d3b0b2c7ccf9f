import assert from "node:assert/strict";
import { buildCall, createRpc, DatabaseUnavailableError, ProcedureError } from "../_shared/rpc.ts";
import { connectDatabase, DATABASE_URL } from "./http_helpers.ts";

Deno.test("rpc: builds a named-argument call and skips undefined arguments", () => {
  const { text, values } = buildCall("sp_example", { card_id: "DEMO-0001", amount_cents: 500, note: undefined }, {
    functionName: "process-bar-order",
    requestId: "r-1",
    caller: "user:00000000-0000-4000-8000-00000000b001",
  });
  assert.match(text, /^select public\.sp_example\(card_id => \$1, amount_cents => \$2\) as result from /);
  assert.match(text, /set_config\('app\.edge_function', \$3, true\), set_config\('app\.request_id', \$4, true\)/);
  assert.match(text, /set_config\('app\.caller', \$5, true\)/);
  assert.deepEqual(values, ["DEMO-0001", 500, "process-bar-order", "r-1", "user:00000000-0000-4000-8000-00000000b001"]);
});

Deno.test("rpc: the call context reaches the attempt log", async () => {
  const client = createRpc(DATABASE_URL, { maxConnections: 1 });
  const sql = connectDatabase(1);
  try {
    const key = `rpc-context-${crypto.randomUUID()}`;
    // A 1-cent recharge is below the minimum: a logged business failure that moves nothing.
    const result = await client.call("sp_process_checkpoint_recharge", {
      card_id: "DEMO-0001",
      amount_cents: 1,
      payment_method: "cash",
      checkpoint_id: "entrance",
      staff_user_id: "00000000-0000-4000-8000-00000000c001",
      client_request_id: key,
    }, { functionName: "unit-test", requestId: "request-42" });
    assert.equal((result.error as { code: string }).code, "limit_exceeded");
    const [row] = await sql`select edge_function, request_id from ops.app_transaction_log where client_request_id = ${key}`;
    assert.deepEqual({ ...row }, { edge_function: "unit-test", request_id: "request-42" });
  } finally {
    await client.end();
    await sql.end();
  }
});

Deno.test("rpc: refuses names that are not plain identifiers", () => {
  assert.throws(() => buildCall("x; drop table y", {}), /invalid procedure name/);
  assert.throws(() => buildCall("ok_name", { "a => 1); --": 1 }), /invalid argument name/);
});

Deno.test("rpc: calls a real procedure and returns its jsonb", async () => {
  const client = createRpc(DATABASE_URL, { maxConnections: 1 });
  try {
    const result = await client.call("health_check", {});
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
    // The generated types refuse this call at compile time; the database must refuse it too.
    await assert.rejects(
      // @ts-expect-error: an argument health_check does not declare
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
    await assert.rejects(client.call("health_check", {}), DatabaseUnavailableError);
  } finally {
    await client.end();
  }
});
