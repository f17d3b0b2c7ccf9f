// Shared helpers for the Deno tests: where the functions server and database are, and tokens.

import postgres from "postgres";

export const FUNCTIONS_URL = Deno.env.get("FUNCTIONS_URL") ?? "http://127.0.0.1:54321/functions/v1";
export const DATABASE_URL = Deno.env.get("SUPABASE_DB_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54322/postgres?sslmode=disable";

/** A direct connection for assertions about the database (the tests never mock it). */
export function connectDatabase(max = 4) {
  return postgres(DATABASE_URL, { max, onnotice: () => {}, prepare: false });
}

export async function call(
  path: string,
  init: RequestInit & { json?: unknown; token?: string } = {},
): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> {
  const headers = new Headers(init.headers);
  if (init.token) headers.set("authorization", `Bearer ${init.token}`);
  let body = init.body;
  if (init.json !== undefined) {
    headers.set("content-type", "application/json");
    body = JSON.stringify(init.json);
  }
  const response = await fetch(`${FUNCTIONS_URL}/${path}`, { ...init, headers, body });
  const text = await response.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    parsed = { raw: text };
  }
  return { status: response.status, body: parsed, headers: response.headers };
}
