// Demo tokens for the local stack, signed with the Supabase CLI's default local JWT secret
// (docs/architecture.md §10). They are public knowledge: never configure this secret on a hosted project.

import { SignJWT } from "jose";

export const LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";

export const DEMO_STAFF = {
  admin: "00000000-0000-4000-8000-00000000a001",
  bartender: "00000000-0000-4000-8000-00000000b001",
  bartender2: "00000000-0000-4000-8000-00000000b002",
  cashier: "00000000-0000-4000-8000-00000000c001",
  cashier2: "00000000-0000-4000-8000-00000000c002",
} as const;

// Fixed times so that `npm start` prints the same demo tokens every run (valid until 2036).
const DEMO_ISSUED_AT = 1_767_225_600; // 2026-01-01
const DEMO_EXPIRES_AT = 2_082_758_400; // 2036-01-01

export async function signToken(
  claims: Record<string, unknown>,
  options: { secret?: string; expiresInSeconds?: number } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const expiresAt = options.expiresInSeconds === undefined ? DEMO_EXPIRES_AT : now + options.expiresInSeconds;
  return await new SignJWT({ iss: "supabase-demo", ...claims })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt(Math.min(DEMO_ISSUED_AT, expiresAt - 1))
    .setExpirationTime(expiresAt)
    .sign(new TextEncoder().encode(options.secret ?? LOCAL_JWT_SECRET));
}

/** A staff member's session token: `sub` = auth user id, `role` = authenticated. */
export function userToken(userId: string, options: { secret?: string; expiresInSeconds?: number } = {}) {
  return signToken({ sub: userId, role: "authenticated", aud: "authenticated" }, options);
}

export function anonKey(): Promise<string> {
  return signToken({ role: "anon" });
}

export function serviceRoleKey(): Promise<string> {
  return signToken({ role: "service_role" });
}
