// The one place where outcomes become HTTP statuses (docs/architecture.md §6). Procedures return business
// outcomes as {"ok": false, "error": {"code": ...}}; edge functions never choose statuses themselves.

export const STATUS_BY_ERROR_CODE: Readonly<Record<string, number>> = {
  // Input the function rejected before calling the database.
  invalid_input: 400,
  invalid_json: 400,
  invalid_content_type: 400,
  // Caller identity.
  missing_token: 401,
  invalid_token: 401,
  forbidden: 403,
  // The PIN printed on a card, for reading it with the public anon key.
  invalid_pin: 401,
  pin_locked: 429,
  // Things that do not exist.
  not_found: 404,
  card_not_found: 404,
  account_not_found: 404,
  product_not_found: 404,
  user_not_found: 404,
  point_of_sale_not_found: 404,
  checkpoint_not_found: 404,
  method_not_allowed: 405,
  insufficient_funds: 402,
  card_blocked: 423,
  card_replaced: 423,
  price_mismatch: 409,
  no_deposit_outstanding: 409,
  order_already_cancelled: 409,
  register_not_open: 409,
  register_already_open: 409,
  cancel_window_passed: 422,
  duplicate_tap_suspected: 409,
  idempotency_key_in_use: 409,
  idempotency_key_reused: 422,
  limit_exceeded: 422,
  payload_too_large: 413,
  database_unavailable: 503,
  internal_error: 500,
  // Practitioner credits.
  self_booking: 422,
  booking_already_paid: 409,
  hold_not_found: 404,
  hold_already_exists: 409,
  hold_already_released: 409,
  plan_not_found: 404,
  // Stripe online recharges.
  unknown_package: 400,
  unmatched_payment: 404,
  recharge_not_found: 404,
  payment_mismatch: 422,
  invalid_signature: 400,
  payment_provider_unavailable: 502,
  // Credits through Stripe: credit checkout sessions.
  purchase_not_found: 404,
  // Operations: alerts.
  alert_not_found: 404,
  alert_already_acknowledged: 409,
  alert_already_resolved: 409,
};

/** HTTP status for a business error code; an unknown code is a gap in this table, hence 500. */
export function statusForErrorCode(code: string): number {
  return STATUS_BY_ERROR_CODE[code] ?? 500;
}

/** A procedure result or error body: `{ ok: true, ... }` or `{ ok: false, error: { code } }`. */
export interface OutcomeBody {
  ok: boolean;
  error?: { code: string; message?: string; [detail: string]: unknown };
  [field: string]: unknown;
}

export function statusForOutcome(body: OutcomeBody): number {
  if (body.ok) return 200;
  return statusForErrorCode(body.error?.code ?? "internal_error");
}

export function errorBody(code: string, message: string, details: Record<string, unknown> = {}): OutcomeBody {
  return { ok: false, error: { code, message, ...details } };
}

/** Thrown inside a function handler to answer with a mapped error; caught by `serveFunction`. */
export class HttpError extends Error {
  readonly status: number;
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.status = statusForErrorCode(code);
  }
}

/**
 * SQLSTATEs a procedure raises for invalid arguments (docs/architecture.md §6: programming errors of the caller).
 * They mean the input was wrong, not that the server failed, so they answer 400, never 500.
 */
const INVALID_ARGUMENT_SQLSTATES = new Set([
  "22023", // invalid_parameter_value: raised by our procedures
  "22P02", // invalid_text_representation: e.g. a malformed uuid
  "22003", // numeric_value_out_of_range
  "22004", // null_value_not_allowed
  "22001", // string_data_right_truncation
  "2201G", // invalid_argument_for_width_bucket_function and friends
  "22021", // character_not_in_repertoire: a NUL byte in text
  "22P05", // untranslatable_character
]);

export function isInvalidArgumentSqlState(sqlState: string | undefined): boolean {
  return sqlState !== undefined && INVALID_ARGUMENT_SQLSTATES.has(sqlState);
}
