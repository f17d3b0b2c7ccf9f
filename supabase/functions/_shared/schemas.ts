// Input validation shared by the functions (zod, strict: unknown fields, floats, strings for
// numbers are rejected). Failures become 400 with every failing field path.

import { z } from "zod";
import { HttpError } from "./errors.ts";

/**
 * The largest amount any single request may carry: more than a card can ever hold is not a
 * plausible input but a bug or an attack (400). Amounts within it that break the festival's
 * configured limits are business outcomes from the database (422 limit_exceeded).
 */
export const MAX_AMOUNT_CENTS = Number(Deno.env.get("MAX_AMOUNT_CENTS") ?? "50000");

export const cardId = z.string().regex(
  /^[A-Za-z0-9][A-Za-z0-9:_-]{0,63}$/,
  "1 to 64 letters, digits, ':', '_' or '-', starting with a letter or digit",
);
export const identifier = z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, "1 to 64 lowercase letters, digits or '-'");
/** An id chosen outside this system (a booking, an order): 1 to 255 visible ASCII characters. */
export const externalId = z.string().regex(/^[\x21-\x7e]{1,255}$/, "1 to 255 visible ASCII characters");
/** Client-generated idempotency key (a UUID fits). */
export const clientRequestId = externalId;
/** Top-up package codes (MINI, MIDI, …); an unknown code is the database's `unknown_package`. */
export const packageCode = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/, "1 to 32 letters, digits, '_' or '-'");
/** Free text (labels, reasons): no control characters, which Postgres text refuses (NUL) or logs mangle. */
export function freeText(maxLength: number) {
  // deno-lint-ignore no-control-regex -- matching control characters is the point of this check
  return z.string().min(1).max(maxLength).regex(/^[^\u0000-\u001f\u007f]+$/, "no control characters");
}
export const amountCents = z.number().int().positive().max(MAX_AMOUNT_CENTS);

const LOCAL_CHECKOUT_ORIGINS = "http://127.0.0.1,http://localhost";

/**
 * Where Stripe Checkout may send the payer back: `CHECKOUT_ALLOWED_ORIGINS`, comma-separated
 * origins (`https://pay.example.org`). An entry without a port allows any port of that scheme and
 * host (the local default, `http://127.0.0.1,http://localhost`, covers every local dev server).
 * Without the list an attacker could make our checkout page send a payer to a look-alike site.
 */
export function checkoutAllowedOrigins(): URL[] {
  const configured = Deno.env.get("CHECKOUT_ALLOWED_ORIGINS") ?? LOCAL_CHECKOUT_ORIGINS;
  return configured.split(",").map((origin) => origin.trim()).filter((origin) => origin !== "")
    .map((origin) => new URL(origin));
}

export function isAllowedReturnUrl(value: string, allowed: URL[] = checkoutAllowedOrigins()): boolean {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return false;
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return false;
  return allowed.some((origin) =>
    origin.protocol === url.protocol && origin.hostname === url.hostname && (origin.port === "" || origin.port === url.port)
  );
}

/** success_url / cancel_url of a Checkout session: an absolute URL on an allowed origin. */
export const checkoutReturnUrl = z.string().max(2048).refine(
  (value) => isAllowedReturnUrl(value),
  "an absolute http(s) URL on an origin listed in CHECKOUT_ALLOWED_ORIGINS",
);

export interface FieldProblem {
  path: string;
  message: string;
}

function fieldPath(path: PropertyKey[]): string {
  return path.map((part) => typeof part === "number" ? `[${part}]` : `.${String(part)}`).join("").replace(/^\./, "") ||
    "body";
}

/** Parses `value` with `schema` or throws a 400 HttpError listing every failing field. */
export function parseInput<Schema extends z.ZodType>(schema: Schema, value: unknown): z.infer<Schema> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const fields: FieldProblem[] = result.error.issues.flatMap((issue) =>
    issue.code === "unrecognized_keys"
      ? issue.keys.map((key) => ({ path: fieldPath([...issue.path, key]), message: "unknown field" }))
      : [{ path: fieldPath(issue.path), message: issue.message }]
  );
  throw new HttpError("invalid_input", `invalid ${fields.map((field) => field.path).join(", ")}`, { fields });
}

/**
 * The idempotency key: `client_request_id` in the body or the `Idempotency-Key` header; when
 * both are sent they must be equal.
 */
export function resolveClientRequestId(request: Request, fromBody: string | undefined): string {
  const header = request.headers.get("idempotency-key") ?? undefined;
  if (header !== undefined) parseInput(z.object({ "Idempotency-Key": clientRequestId }), { "Idempotency-Key": header });
  if (header !== undefined && fromBody !== undefined && header !== fromBody) {
    throw new HttpError("invalid_input", "Idempotency-Key and client_request_id differ", {
      fields: [{ path: "client_request_id", message: "must equal the Idempotency-Key header" }],
    });
  }
  const key = fromBody ?? header;
  if (key === undefined) {
    throw new HttpError("invalid_input", "client_request_id is required", {
      fields: [{ path: "client_request_id", message: "send client_request_id or an Idempotency-Key header" }],
    });
  }
  return key;
}
