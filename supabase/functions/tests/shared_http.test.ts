import assert from "node:assert/strict";
import { jsonResponse, MAX_BODY_BYTES, readJsonBody, serveFunction } from "../_shared/http.ts";
import { HttpError } from "../_shared/errors.ts";

const echo = serveFunction({ name: "echo", methods: ["POST"] }, async (context) => {
  const body = await readJsonBody(context.request);
  return jsonResponse(200, { ok: true, body }, context.requestId);
});

function post(body: BodyInit | null, contentType = "application/json", headers: Record<string, string> = {}) {
  return echo(new Request("http://localhost/echo", {
    method: "POST",
    body,
    headers: { "content-type": contentType, ...headers },
  }));
}

async function errorCode(response: Response): Promise<string> {
  return ((await response.json()).error as { code: string }).code;
}

Deno.test("http: a JSON body is parsed and every response has x-request-id", async () => {
  const response = await post(JSON.stringify({ a: 1 }));
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { ok: true, body: { a: 1 } });
  assert.match(response.headers.get("x-request-id")!, /^[0-9a-f-]{36}$/);
});

Deno.test("http: request ids differ between requests", async () => {
  const first = await post("{}");
  const second = await post("{}");
  await first.body?.cancel();
  await second.body?.cancel();
  assert.notEqual(first.headers.get("x-request-id"), second.headers.get("x-request-id"));
});

Deno.test("http: malformed JSON is 400 invalid_json", async () => {
  const response = await post("{not json");
  assert.equal(response.status, 400);
  assert.equal(await errorCode(response), "invalid_json");
});

Deno.test("http: a non-JSON content type is 400 with the failing field", async () => {
  const response = await post("a=1", "application/x-www-form-urlencoded");
  assert.equal(response.status, 400);
  const body = await response.json();
  assert.equal(body.error.code, "invalid_content_type");
  assert.equal(body.error.fields[0].path, "content-type");
});

Deno.test("http: a body over 64 KiB is 413, also when content-length is absent", async () => {
  const big = JSON.stringify({ pad: "x".repeat(MAX_BODY_BYTES) });
  const declared = await post(big);
  assert.equal(declared.status, 413);
  assert.equal(await errorCode(declared), "payload_too_large");
  const stream = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(big));
      controller.close();
    },
  });
  const streamed = await post(stream);
  assert.equal(streamed.status, 413);
  await streamed.body?.cancel();
});

Deno.test("http: CORS preflight answers 204 with the allowed headers", async () => {
  const response = await echo(new Request("http://localhost/echo", { method: "OPTIONS" }));
  assert.equal(response.status, 204);
  assert.equal(response.headers.get("access-control-allow-origin"), "*");
  assert.match(response.headers.get("access-control-allow-headers")!, /authorization/);
  assert.match(response.headers.get("access-control-allow-headers")!, /idempotency-key/);
  assert.ok(response.headers.get("x-request-id"));
});

Deno.test("http: a wrong method is 405", async () => {
  const response = await echo(new Request("http://localhost/echo", { method: "GET" }));
  assert.equal(response.status, 405);
  assert.equal(await errorCode(response), "method_not_allowed");
});

Deno.test("http: an unexpected exception is 500 with the request id and no details", async () => {
  const failing = serveFunction({ name: "failing", methods: ["GET"] }, () => {
    throw new Error("secret internals");
  });
  const originalError = console.error;
  console.error = () => {}; // the error log line is expected here
  try {
    const response = await failing(new Request("http://localhost/failing"));
    assert.equal(response.status, 500);
    const body = await response.json();
    assert.equal(body.error.code, "internal_error");
    assert.equal(body.error.request_id, response.headers.get("x-request-id"));
    assert.ok(!JSON.stringify(body).includes("secret internals"));
  } finally {
    console.error = originalError;
  }
});

Deno.test("http: a thrown HttpError answers its mapped status", async () => {
  const failing = serveFunction({ name: "failing", methods: ["GET"] }, () => {
    throw new HttpError("card_blocked", "the card is blocked");
  });
  const response = await failing(new Request("http://localhost/failing"));
  assert.equal(response.status, 423);
  assert.equal(await errorCode(response), "card_blocked");
});
