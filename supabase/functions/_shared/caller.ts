// Who is calling, for the whole request: the verified token that `authenticate` saw. The RPC
// client passes it to the database as `app.caller`, which scopes idempotency keys by caller (a
// key an anonymous checkout used can never block a cashier's key). Kept in request-scoped storage
// rather than threaded through every handler so that no handler can forget it.

import { AsyncLocalStorage } from "node:async_hooks";

interface RequestCaller {
  scope?: string;
}

const requestCaller = new AsyncLocalStorage<RequestCaller>();

/** Runs one request's handler with its own caller slot. */
export function withRequestCaller<T>(handle: () => Promise<T>): Promise<T> {
  return requestCaller.run({}, handle);
}

/** `user:<id>` for a signed-in user, `anon` for the anon key, `service` for a service key. */
export function callerScope(role: string, subject: string | null): string {
  if (role === "authenticated" && subject) return `user:${subject}`;
  if (role === "service_role") return "service";
  return role === "anon" ? "anon" : `role:${role}`;
}

/** Records the verified caller of the current request (called by `authenticate`). */
export function recordCaller(role: string, subject: string | null): void {
  const slot = requestCaller.getStore();
  if (slot) slot.scope = callerScope(role, subject);
}

/** The current request's caller scope, or undefined outside a request or before authentication. */
export function currentCallerScope(): string | undefined {
  return requestCaller.getStore()?.scope;
}
