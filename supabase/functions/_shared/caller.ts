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
  recordCallerScope(callerScope(role, subject));
}

/**
 * Records the caller of a request that is not authenticated with a token but otherwise: Stripe's
 * signed webhook (`stripe`), the public health probe (`public`).
 */
export function recordCallerScope(scope: string): void {
  const slot = requestCaller.getStore();
  if (slot) slot.scope = scope;
}

/**
 * The current request's caller scope. Outside a request (scripts, tests) undefined: the database
 * then scopes the call as `service`. Inside a request that never said who calls, this throws
 * rather than letting the call share the service's keys: a handler must authenticate first.
 */
export function currentCallerScope(): string | undefined {
  const slot = requestCaller.getStore();
  if (slot && slot.scope === undefined) {
    throw new Error("a procedure was called before the request's caller was authenticated");
  }
  return slot?.scope;
}
