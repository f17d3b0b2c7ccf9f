// A small local stand-in for the one Stripe API call the project makes: POST /v1/checkout/sessions
// (form-encoded, honouring Idempotency-Key like Stripe, checking expires_at like Stripe), plus
// GET /v1/checkout/sessions/:id so that tests can see what was sent. Used by the tests and by
// `npm start`, since Stripe cannot be reached from these machines. It does not pretend to be
// Stripe beyond that, except for a bare checkout page (GET /c/pay/<id> on the stand-in): "Pay"
// marks the session paid, sends `checkout.session.completed` signed with the real `stripe`
// library to `webhookUrl` (when given) and redirects to the session's success_url, as Stripe
// Checkout does; "Cancel" goes back. A session's `url` is https://checkout.stripe.test/c/pay/<id>
// like Stripe's (https), unless `localCheckoutPages` makes it the stand-in's own http page
// (npm start); the browser tests route checkout.stripe.test to the stand-in.

import Stripe from "stripe";

export interface StandInSession {
  id: string;
  object: "checkout.session";
  url: string;
  mode: string;
  amount_total: number;
  currency: string;
  client_reference_id: string | null;
  metadata: Record<string, string>;
  payment_status: "unpaid" | "paid";
  status: "open" | "complete";
  payment_intent: string | null;
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

export interface StandInOptions {
  port?: number;
  /** Where "Pay" on the checkout page delivers checkout.session.completed (stripe-webhook). */
  webhookUrl?: string;
  webhookSecret?: string;
  /** Session URLs point at this stand-in's own checkout page (http://127.0.0.1:<port>/c/pay/<id>). */
  localCheckoutPages?: boolean;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

function checkoutPage(session: StandInSession): Response {
  const amount = `${(session.amount_total / 100).toFixed(2)} ${session.currency.toUpperCase()}`;
  const done = session.payment_status === "paid";
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Checkout (local stand-in)</title>
<style>body{font-family:system-ui,sans-serif;max-width:26rem;margin:2rem auto;padding:0 1rem}
button,a.button{display:block;width:100%;min-height:52px;font-size:1.1rem;margin:.6rem 0;border-radius:10px;text-align:center}
button{background:#635bff;color:#fff;border:0}a.button{line-height:52px;color:#333;border:1px solid #ccc;text-decoration:none}</style>
</head><body><p>Local Stripe stand-in: no real payment.</p>
<h1 id="amount">${escapeHtml(amount)}</h1><p>${escapeHtml(session.metadata.package_code || "")} ${escapeHtml(session.metadata.card_id || "")}</p>
${done ? "<p>Already paid.</p>" : `<form method="post"><button type="submit" id="pay">Pay ${escapeHtml(amount)}</button></form>`}
<a class="button" id="cancel" href="${escapeHtml(session.cancel_url)}">Cancel</a></body></html>`;
  return new Response(html, { headers: { "content-type": "text/html; charset=utf-8" } });
}

export function startStripeStandIn(options: number | StandInOptions = 0): StripeStandIn {
  const { port = 0, webhookUrl, webhookSecret = "whsec_local_development", localCheckoutPages = false } = typeof options === "number"
    ? { port: options }
    : options;
  const sessions = new Map<string, StandInSession>();
  const byIdempotencyKey = new Map<string, StandInSession>();
  const signer = new Stripe("sk_test_stand_in", { httpClient: Stripe.createFetchHttpClient() });
  const cryptoProvider = Stripe.createSubtleCryptoProvider();
  let created = 0;

  async function pay(session: StandInSession): Promise<void> {
    session.payment_status = "paid";
    session.status = "complete";
    session.payment_intent ??= `pi_test_${crypto.randomUUID().replaceAll("-", "")}`;
    if (!webhookUrl) return;
    const payload = JSON.stringify({
      id: `evt_test_${crypto.randomUUID().replaceAll("-", "")}`,
      object: "event",
      api_version: "2025-01-01",
      created: Math.floor(Date.now() / 1000),
      livemode: false,
      type: "checkout.session.completed",
      data: { object: session },
    });
    const signature = await signer.webhooks.generateTestHeaderStringAsync({ payload, secret: webhookSecret, cryptoProvider });
    const response = await fetch(webhookUrl, {
      method: "POST",
      headers: { "content-type": "application/json", "stripe-signature": signature },
      body: payload,
    });
    await response.body?.cancel();
    if (!response.ok) console.error(`[stripe stand-in] webhook answered ${response.status} for ${session.id}`);
  }

  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (request) => {
    const url = new URL(request.url);
    const page = /^\/c\/pay\/(cs_test_[a-z0-9]+)$/.exec(url.pathname);
    if (page) {
      const session = sessions.get(page[1]);
      if (!session) return new Response("no such checkout session", { status: 404 });
      if (request.method === "GET") return checkoutPage(session);
      if (request.method === "POST") {
        if (session.payment_status !== "paid") await pay(session);
        return new Response(null, { status: 303, headers: { location: session.success_url } });
      }
    }
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
      url: localCheckoutPages
        ? `http://127.0.0.1:${(server.addr as Deno.NetAddr).port}/c/pay/${id}`
        : `https://checkout.stripe.test/c/pay/${id}`,
      mode: fields.get("mode") ?? "payment",
      amount_total: unitAmount * quantity,
      currency: fields.get("line_items[0][price_data][currency]") ?? "eur",
      client_reference_id: fields.get("client_reference_id") ?? null,
      metadata: prefixed(fields, "metadata["),
      payment_status: "unpaid",
      status: "open",
      payment_intent: null,
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
