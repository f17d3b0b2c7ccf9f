// A small local stand-in for the one Stripe API call the project makes: POST /v1/checkout/sessions
// (form-encoded, honouring Idempotency-Key like Stripe, checking expires_at like Stripe), plus
// GET /v1/checkout/sessions/:id so that tests can see what was sent. Used by the tests and by
// `npm start`, since Stripe cannot be reached from these machines. It does not pretend to be
// Stripe beyond that.

export interface StandInSession {
  id: string;
  object: "checkout.session";
  url: string;
  mode: string;
  amount_total: number;
  currency: string;
  client_reference_id: string | null;
  metadata: Record<string, string>;
  payment_status: "unpaid";
  status: "open";
  success_url: string;
  cancel_url: string;
  /** Unix seconds; Stripe's default is 24 hours after creation. */
  expires_at: number;
}

/** Stripe's bracket notation (`metadata[card_id]=…`, `line_items[0][quantity]=1`) to a flat map. */
function formFields(body: string): Map<string, string> {
  return new Map(new URLSearchParams(body).entries());
}

function prefixed(fields: Map<string, string>, prefix: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [key, value] of fields) {
    if (key.startsWith(prefix)) result[key.slice(prefix.length).replace(/\]$/, "")] = value;
  }
  return result;
}

export interface StripeStandIn {
  port: number;
  sessions: Map<string, StandInSession>;
  /** How many sessions were created (idempotent repeats do not count). */
  created: () => number;
  close: () => Promise<void>;
}

export function startStripeStandIn(port = 0): StripeStandIn {
  const sessions = new Map<string, StandInSession>();
  const byIdempotencyKey = new Map<string, StandInSession>();
  let created = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (request) => {
    const url = new URL(request.url);
    const retrieve = /^\/v1\/checkout\/sessions\/([A-Za-z0-9_]+)$/.exec(url.pathname);
    if (request.method === "GET" && retrieve) {
      const found = sessions.get(retrieve[1]);
      if (found) return Response.json(found);
      return Response.json({ error: { type: "invalid_request_error", code: "resource_missing" } }, { status: 404 });
    }
    if (request.method !== "POST" || url.pathname !== "/v1/checkout/sessions") {
      return Response.json({ error: { type: "invalid_request_error", message: "not supported by the stand-in" } }, {
        status: 404,
      });
    }
    if (!/^Bearer sk_/.test(request.headers.get("authorization") ?? "")) {
      return Response.json({ error: { type: "authentication_error", message: "missing key" } }, { status: 401 });
    }
    const idempotencyKey = request.headers.get("idempotency-key");
    const repeated = idempotencyKey ? byIdempotencyKey.get(idempotencyKey) : undefined;
    if (repeated) return Response.json(repeated);
    const fields = formFields(await request.text());
    const unitAmount = Number(fields.get("line_items[0][price_data][unit_amount]"));
    const quantity = Number(fields.get("line_items[0][quantity]") ?? "1");
    if (!Number.isInteger(unitAmount) || unitAmount <= 0) {
      return Response.json({ error: { type: "invalid_request_error", param: "line_items" } }, { status: 400 });
    }
    // Like Stripe: 30 minutes to 24 hours after creation.
    const now = Math.floor(Date.now() / 1000);
    const expiresAt = fields.has("expires_at") ? Number(fields.get("expires_at")) : now + 24 * 3600;
    if (!Number.isInteger(expiresAt) || expiresAt < now + 30 * 60 || expiresAt > now + 24 * 3600) {
      return Response.json({ error: { type: "invalid_request_error", param: "expires_at" } }, { status: 400 });
    }
    const id = `cs_test_${crypto.randomUUID().replaceAll("-", "")}`;
    const session: StandInSession = {
      id,
      object: "checkout.session",
      url: `https://checkout.stripe.test/c/pay/${id}`,
      mode: fields.get("mode") ?? "payment",
      amount_total: unitAmount * quantity,
      currency: fields.get("line_items[0][price_data][currency]") ?? "eur",
      client_reference_id: fields.get("client_reference_id") ?? null,
      metadata: prefixed(fields, "metadata["),
      payment_status: "unpaid",
      status: "open",
      success_url: fields.get("success_url") ?? "",
      cancel_url: fields.get("cancel_url") ?? "",
      expires_at: expiresAt,
    };
    sessions.set(id, session);
    if (idempotencyKey) byIdempotencyKey.set(idempotencyKey, session);
    created++;
    return Response.json(session);
  });
  return {
    port: (server.addr as Deno.NetAddr).port,
    sessions,
    created: () => created,
    close: () => server.shutdown(),
  };
}

if (import.meta.main) {
  const standIn = startStripeStandIn(Number(Deno.env.get("STRIPE_API_PORT") ?? "0"));
  console.error(`[stripe stand-in] listening on http://127.0.0.1:${standIn.port}/v1/checkout/sessions`);
}
