import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { authenticate, authenticateUser, resetAuthKeys } from "../_shared/auth.ts";
import { HttpError } from "../_shared/errors.ts";

const SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";
const USER = "00000000-0000-4000-8000-00000000a001";

function withSecret<T>(run: () => Promise<T>): Promise<T> {
  const previous = Deno.env.get("SUPABASE_JWT_SECRET");
  Deno.env.set("SUPABASE_JWT_SECRET", SECRET);
  resetAuthKeys();
  return run().finally(() => {
    if (previous === undefined) Deno.env.delete("SUPABASE_JWT_SECRET");
    else Deno.env.set("SUPABASE_JWT_SECRET", previous);
    resetAuthKeys();
  });
}

async function token(claims: Record<string, unknown>, secret = SECRET, expiresIn = 3600): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).setIssuedAt(now)
    .setExpirationTime(now + expiresIn).sign(new TextEncoder().encode(secret));
}

function request(authorization?: string): Request {
  return new Request("http://localhost/", { headers: authorization ? { authorization } : {} });
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => error instanceof HttpError && error.code === code);
}

function base64url(value: unknown): string {
  return btoa(JSON.stringify(value)).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

Deno.test("auth: a valid user token yields its subject and role", () =>
  withSecret(async () => {
    const caller = await authenticate(request(`Bearer ${await token({ sub: USER, role: "authenticated" })}`));
    assert.equal(caller.subject, USER);
    assert.equal(caller.role, "authenticated");
  }));

Deno.test("auth: the anon key is a valid token without subject", () =>
  withSecret(async () => {
    const caller = await authenticate(request(`Bearer ${await token({ role: "anon" })}`));
    assert.equal(caller.subject, null);
    assert.equal(caller.role, "anon");
    await rejectsWith(authenticateUser(request(`Bearer ${await token({ role: "anon" })}`)), "forbidden");
  }));

Deno.test("auth: missing or malformed Authorization header is missing_token (401)", () =>
  withSecret(async () => {
    await rejectsWith(authenticate(request()), "missing_token");
    await rejectsWith(authenticate(request("Basic abc")), "missing_token");
  }));

Deno.test("auth: expired, wrongly signed, alg none and garbage tokens are invalid_token (401)", () =>
  withSecret(async () => {
    const expired = await token({ sub: USER, role: "authenticated" }, SECRET, -60);
    const otherSecret = await token({ sub: USER, role: "authenticated" }, "another-secret-that-is-long-enough-32");
    const algNone = `${base64url({ alg: "none", typ: "JWT" })}.${base64url({ sub: USER, role: "authenticated" })}.`;
    for (const bad of [expired, otherSecret, algNone, "not.a.token", "x"]) {
      await rejectsWith(authenticate(request(`Bearer ${bad}`)), "invalid_token");
    }
  }));

Deno.test("auth: a token without an expiry is refused", () =>
  withSecret(async () => {
    const noExpiry = await new SignJWT({ sub: USER, role: "authenticated" }).setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(SECRET));
    await rejectsWith(authenticate(request(`Bearer ${noExpiry}`)), "invalid_token");
  }));

Deno.test("auth: a token without role claim is refused", () =>
  withSecret(async () => {
    await rejectsWith(authenticate(request(`Bearer ${await token({ sub: USER })}`)), "invalid_token");
  }));

Deno.test("auth: without any key configured it fails closed", async () => {
  const saved = ["SUPABASE_JWT_SECRET", "JWT_SECRET", "SUPABASE_URL"].map((name) => [name, Deno.env.get(name)] as const);
  for (const [name] of saved) Deno.env.delete(name);
  resetAuthKeys();
  try {
    await assert.rejects(authenticate(request(`Bearer ${await token({ role: "anon" })}`)), /no JWT verification key/);
  } finally {
    for (const [name, value] of saved) if (value !== undefined) Deno.env.set(name, value);
    resetAuthKeys();
  }
});
