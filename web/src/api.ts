// Every call to the backend goes through supabase-js `functions.invoke`. The result is one of:
// an answer (2xx), a refusal (a final 4xx business or input error), or no answer (network failure,
// timeout, 5xx), which a money operation retries with the same idempotency key.

import { createClient, FunctionsFetchError, FunctionsHttpError } from "@supabase/supabase-js";
import { SUPABASE_ANON_KEY, SUPABASE_URL } from "./config";

export const supabase = createClient(SUPABASE_URL || "http://127.0.0.1:54321", SUPABASE_ANON_KEY || "missing-anon-key", {
  auth: { persistSession: true, autoRefreshToken: true, detectSessionInUrl: false },
});

export interface ErrorBody {
  code: string;
  message?: string;
  [detail: string]: unknown;
}

export type CallResult<T> =
  | { kind: "ok"; status: number; data: T }
  | { kind: "refused"; status: number; error: ErrorBody }
  | { kind: "no_answer"; status: number | null; error: ErrorBody };

export interface CallOptions {
  method?: "GET" | "POST";
  body?: unknown;
  token?: string | null;
  headers?: Record<string, string>;
  timeoutMs?: number;
}

/** 5xx (and 408, 429 without a code, 409 key in use) mean "try again with the same key". */
function isRetryable(status: number, code: string): boolean {
  return status >= 500 || status === 408 || code === "idempotency_key_in_use";
}

export async function invoke<T = Record<string, unknown>>(name: string, options: CallOptions = {}): Promise<CallResult<T>> {
  const headers: Record<string, string> = { ...(options.headers ?? {}) };
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  const { data, error } = await supabase.functions.invoke(name, {
    method: options.method ?? "POST",
    body: options.body as Record<string, unknown> | undefined,
    headers,
    timeout: options.timeoutMs ?? 15_000,
  });
  if (!error) return { kind: "ok", status: 200, data: data as T };
  if (error instanceof FunctionsHttpError) {
    const response = error.context as Response;
    let body: { error?: ErrorBody; code?: number; message?: string } = {};
    try {
      body = await response.json();
    } catch {
      // not JSON: keep the status only
    }
    const errorBody: ErrorBody = body.error ?? { code: `http_${response.status}`, message: body.message };
    return isRetryable(response.status, errorBody.code)
      ? { kind: "no_answer", status: response.status, error: errorBody }
      : { kind: "refused", status: response.status, error: errorBody };
  }
  const message = error instanceof FunctionsFetchError ? "network" : String((error as Error).message ?? error);
  return { kind: "no_answer", status: null, error: { code: "network_error", message } };
}

/** A fresh idempotency key (random; crypto.randomUUID needs a secure context, so fall back). */
export function newKey(prefix: string): string {
  if (typeof crypto.randomUUID === "function") return `${prefix}-${crypto.randomUUID()}`;
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `${prefix}-${Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("")}`;
}

export function formatMoney(cents: number, currency = "EUR", locale = "en"): string {
  return new Intl.NumberFormat(locale === "cs" ? "cs-CZ" : "en-IE", { style: "currency", currency }).format(cents / 100);
}
