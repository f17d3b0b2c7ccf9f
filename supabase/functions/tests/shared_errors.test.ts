import assert from "node:assert/strict";
import { HttpError, isInvalidArgumentSqlState, statusForErrorCode, statusForOutcome } from "../_shared/errors.ts";

Deno.test("errors: every code of the docs/architecture.md §6 table maps to its status", () => {
  const expected: Record<string, number> = {
    invalid_input: 400,
    invalid_json: 400,
    invalid_content_type: 400,
    missing_token: 401,
    invalid_token: 401,
    forbidden: 403,
    card_not_found: 404,
    account_not_found: 404,
    product_not_found: 404,
    insufficient_funds: 402,
    card_blocked: 423,
    price_mismatch: 409,
    duplicate_tap_suspected: 409,
    idempotency_key_in_use: 409,
    idempotency_key_reused: 422,
    limit_exceeded: 422,
    payload_too_large: 413,
    internal_error: 500,
  };
  for (const [code, status] of Object.entries(expected)) assert.equal(statusForErrorCode(code), status, code);
});

Deno.test("errors: an unknown code is 500, a success is 200", () => {
  assert.equal(statusForErrorCode("something_new"), 500);
  assert.equal(statusForOutcome({ ok: true, order_id: 1 }), 200);
  assert.equal(statusForOutcome({ ok: false, error: { code: "insufficient_funds" } }), 402);
  assert.equal(statusForOutcome({ ok: false }), 500);
});

Deno.test("errors: HttpError carries the mapped status and details", () => {
  const error = new HttpError("card_blocked", "blocked", { card_id: "X" });
  assert.equal(error.status, 423);
  assert.deepEqual(error.details, { card_id: "X" });
});

Deno.test("errors: invalid-argument SQLSTATEs are recognised, others are not", () => {
  assert.ok(isInvalidArgumentSqlState("22023"));
  assert.ok(isInvalidArgumentSqlState("22P02"));
  assert.ok(isInvalidArgumentSqlState("22021"), "a NUL byte in text is the caller's input");
  assert.ok(!isInvalidArgumentSqlState("23505"));
  assert.ok(!isInvalidArgumentSqlState(undefined));
});
