// Verifies the caller's JWT. Locally (and on projects with a legacy HS256 secret) the secret comes
// from the environment; on hosted projects with signing keys, from the project's JWKS. The token's
// subject is passed to procedures, which decide what that user may do.

import { createRemoteJWKSet, type JWTPayload, jwtVerify } from "jose";
import { recordCaller } from "./caller.ts";
import { HttpError } from "./errors.ts";

export interface Caller {
  /** The verified `sub` claim (an auth user id), absent for the anon key and service keys. */
  subject: string | null;
  /** The verified `role` claim: `anon`, `authenticated` or `service_role`. */
  role: string;
  claims: JWTPayload;
}

type KeySource =
  | { kind: "secret"; key: Uint8Array }
  | { kind: "jwks"; keySet: ReturnType<typeof createRemoteJWKSet> };

let cachedKeySource: KeySource | undefined;

function keySource(): KeySource {
  if (cachedKeySource) return cachedKeySource;
  const secret = Deno.env.get("SUPABASE_JWT_SECRET") ?? Deno.env.get("JWT_SECRET");
  const projectUrl = Deno.env.get("SUPABASE_URL");
  if (secret) {
    cachedKeySource = { kind: "secret", key: new TextEncoder().encode(secret) };
  } else if (projectUrl) {
    const jwksUrl = new URL("/auth/v1/.well-known/jwks.json", projectUrl);
    cachedKeySource = { kind: "jwks", keySet: createRemoteJWKSet(jwksUrl) };
  } else {
    // Fail closed: never fall back to a well-known development secret.
    throw new Error("no JWT verification key: set SUPABASE_JWT_SECRET (or JWT_SECRET) or SUPABASE_URL");
  }
  return cachedKeySource;
}

/** For tests: forget the key source so that a changed environment is read again. */
export function resetAuthKeys(): void {
  cachedKeySource = undefined;
}

export function bearerToken(request: Request): string {
  const header = request.headers.get("authorization") ?? "";
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!match) throw new HttpError("missing_token", "an Authorization: Bearer <token> header is required");
  return match[1];
}

export async function verifyToken(token: string): Promise<Caller> {
  const source = keySource();
  try {
    const { payload } = source.kind === "secret"
      // Only HS256: a token saying `alg: none` or another algorithm is refused. A token without
      // an expiry would be valid forever: refused too.
      ? await jwtVerify(token, source.key, { algorithms: ["HS256"], requiredClaims: ["exp"] })
      : await jwtVerify(token, source.keySet, { algorithms: ["RS256", "ES256"], requiredClaims: ["exp"] });
    const role = typeof payload.role === "string" ? payload.role : "";
    if (!role) throw new Error("token has no role claim");
    return { subject: typeof payload.sub === "string" ? payload.sub : null, role, claims: payload };
  } catch {
    throw new HttpError("invalid_token", "the token is invalid or expired");
  }
}

/** The verified caller of a request, or a 401 HttpError. */
export async function authenticate(request: Request): Promise<Caller> {
  const caller = await verifyToken(bearerToken(request));
  recordCaller(caller.role, caller.subject);
  return caller;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Supabase Auth issues user sessions with `aud` = "authenticated". A token signed with the same
 * secret for another audience (another service sharing the project's keys) is not a user session.
 */
function hasUserAudience(claims: JWTPayload): boolean {
  const audience = claims.aud;
  return audience === "authenticated" || (Array.isArray(audience) && audience.includes("authenticated"));
}

/** The caller as a signed-in user (a staff member or practitioner), or a 403 HttpError. */
export function requireUser(caller: Caller): Caller & { subject: string } {
  if (
    caller.role !== "authenticated" || !caller.subject || !UUID.test(caller.subject) || !hasUserAudience(caller.claims)
  ) {
    throw new HttpError("forbidden", "this endpoint needs a signed-in user's token");
  }
  return caller as Caller & { subject: string };
}

/** The caller's user id when the token is a signed-in user's session, else null (anon, service). */
export function userSubject(caller: Caller): string | null {
  return caller.role === "authenticated" && caller.subject !== null && UUID.test(caller.subject) &&
      hasUserAudience(caller.claims)
    ? caller.subject
    : null;
}

/**
 * The caller as a practitioner of the credits platform: a signed-in user who is not an anonymous
 * sign-in (Supabase's `is_anonymous` claim: anyone can get one, so it must never hold or move
 * credits). Festival staff are refused by the credits procedures, since only the database knows
 * who is staff.
 */
export function requireCreditsUser(caller: Caller): Caller & { subject: string } {
  const user = requireUser(caller);
  if (caller.claims.is_anonymous === true) {
    throw new HttpError("forbidden", "anonymous sign-ins cannot use credits");
  }
  return user;
}

/** A signed-in user: a token with a user id as subject. */
export async function authenticateUser(request: Request): Promise<Caller & { subject: string }> {
  return requireUser(await authenticate(request));
}
