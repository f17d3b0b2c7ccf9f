// Request plumbing shared by every function: request id, CORS, JSON bodies with a size limit,
// one JSON log line per request, and the mapping of thrown errors to responses.

import { errorBody, HttpError, isInvalidArgumentSqlState, type OutcomeBody, statusForOutcome } from "./errors.ts";
import { withRequestCaller } from "./caller.ts";
import { DatabaseUnavailableError, ProcedureError } from "./rpc.ts";

export const MAX_BODY_BYTES = 64 * 1024;

export const CORS_HEADERS: Readonly<Record<string, string>> = {
  "access-control-allow-origin": Deno.env.get("CORS_ALLOWED_ORIGIN") ?? "*",
  "access-control-allow-headers":
    "authorization, x-client-info, apikey, content-type, idempotency-key, x-request-id, x-card-pin",
  "access-control-allow-methods": "GET, POST, OPTIONS",
  "access-control-expose-headers": "x-request-id",
  "access-control-max-age": "86400",
};

export interface RequestContext {
  request: Request;
  requestId: string;
  functionName: string;
  /** Set by handlers so the log line says which business outcome the request had. */
  outcome?: string;
}

export function jsonResponse(status: number, body: unknown, requestId: string): Response {
  return new Response(JSON.stringify(body), {
    status,
    // Balances, PINs and payment links must never sit in a shared or browser cache.
    headers: {
      ...CORS_HEADERS,
      "content-type": "application/json; charset=utf-8",
      "cache-control": "no-store",
      "x-request-id": requestId,
    },
  });
}

/** Answers a procedure outcome with the status from the shared mapping table. */
export function outcomeResponse(context: RequestContext, body: OutcomeBody): Response {
  context.outcome = body.ok ? "ok" : body.error?.code ?? "internal_error";
  return jsonResponse(statusForOutcome(body), body, context.requestId);
}

/** Reads a JSON body: content type must be JSON, at most MAX_BODY_BYTES, well-formed. */
export async function readJsonBody(request: Request, maxBytes = MAX_BODY_BYTES): Promise<unknown> {
  const contentType = request.headers.get("content-type") ?? "";
  if (!/^application\/json(\s*;|$)/i.test(contentType.trim())) {
    throw new HttpError("invalid_content_type", "content-type must be application/json", {
      fields: [{ path: "content-type", message: `expected application/json, got '${contentType}'` }],
    });
  }
  const declaredLength = Number(request.headers.get("content-length") ?? "0");
  if (declaredLength > maxBytes) throw payloadTooLarge(maxBytes);
  const text = await readTextWithLimit(request, maxBytes);
  try {
    return JSON.parse(text);
  } catch {
    throw new HttpError("invalid_json", "request body is not valid JSON");
  }
}

/** The body exactly as sent (signatures are computed over the raw bytes), at most `maxBytes`. */
export async function readRawBody(request: Request, maxBytes = MAX_BODY_BYTES): Promise<string> {
  const declaredLength = Number(request.headers.get("content-length") ?? "0");
  if (declaredLength > maxBytes) throw payloadTooLarge(maxBytes);
  return await readTextWithLimit(request, maxBytes);
}

function payloadTooLarge(maxBytes: number): HttpError {
  return new HttpError("payload_too_large", `request body exceeds ${maxBytes} bytes`, { max_bytes: maxBytes });
}

/** Streams the body and stops reading as soon as the limit is passed (content-length can lie). */
async function readTextWithLimit(request: Request, maxBytes: number): Promise<string> {
  if (!request.body) return "";
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = request.body.getReader();
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel().catch(() => {});
      throw payloadTooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

function newRequestId(): string {
  return crypto.randomUUID();
}

export interface FunctionOptions {
  name: string;
  methods: string[];
}

export type FunctionHandler = (context: RequestContext) => Promise<Response>;

/** Wraps a handler with CORS preflight, method check, error mapping and the per-request log line. */
export function serveFunction(options: FunctionOptions, handle: FunctionHandler): (request: Request) => Promise<Response> {
  return async (request: Request): Promise<Response> => {
    const startedAt = performance.now();
    const context: RequestContext = { request, requestId: newRequestId(), functionName: options.name };
    let response: Response;
    if (request.method === "OPTIONS") {
      response = new Response(null, { status: 204, headers: { ...CORS_HEADERS, "x-request-id": context.requestId } });
    } else if (!options.methods.includes(request.method)) {
      context.outcome = "method_not_allowed";
      response = jsonResponse(
        405,
        errorBody("method_not_allowed", `use ${options.methods.join(" or ")}`),
        context.requestId,
      );
    } else {
      try {
        response = await withRequestCaller(() => handle(context));
      } catch (error) {
        response = errorResponse(context, error);
      }
    }
    logRequest(context, response.status, performance.now() - startedAt);
    return response;
  };
}

function errorResponse(context: RequestContext, error: unknown): Response {
  if (error instanceof HttpError) {
    context.outcome = error.code;
    return jsonResponse(error.status, errorBody(error.code, error.message, error.details), context.requestId);
  }
  if (error instanceof ProcedureError && isInvalidArgumentSqlState(error.sqlState)) {
    context.outcome = "invalid_input";
    return jsonResponse(400, errorBody("invalid_input", error.message), context.requestId);
  }
  if (error instanceof DatabaseUnavailableError) {
    context.outcome = "database_unavailable";
    logError(context, error);
    return jsonResponse(
      503,
      errorBody("database_unavailable", "the database is not reachable, retry with the same key", {
        request_id: context.requestId,
      }),
      context.requestId,
    );
  }
  context.outcome = "internal_error";
  logError(context, error);
  return jsonResponse(
    500,
    errorBody("internal_error", "unexpected error; quote the request id", { request_id: context.requestId }),
    context.requestId,
  );
}

function logRequest(context: RequestContext, status: number, durationMs: number): void {
  console.log(JSON.stringify({
    level: status >= 500 ? "error" : "info",
    function: context.functionName,
    request_id: context.requestId,
    method: context.request.method,
    status,
    outcome: context.outcome ?? (status < 400 ? "ok" : "error"),
    duration_ms: Math.round(durationMs * 10) / 10,
  }));
}

function logError(context: RequestContext, error: unknown): void {
  const detail = error instanceof Error ? { name: error.name, message: error.message, stack: error.stack } : { error };
  console.error(JSON.stringify({
    level: "error",
    function: context.functionName,
    request_id: context.requestId,
    ...detail,
  }));
}
