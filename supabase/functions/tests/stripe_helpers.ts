// Stripe test helpers: events signed with the real `stripe` library and posted to stripe-webhook.

import Stripe from "stripe";
import { FUNCTIONS_URL } from "./http_helpers.ts";

const WEBHOOK_SECRET = Deno.env.get("STRIPE_WEBHOOK_SECRET") ?? "whsec_local_development";
const stripe = new Stripe("sk_test_unused", { httpClient: Stripe.createFetchHttpClient() });
const cryptoProvider = Stripe.createSubtleCryptoProvider();

let eventCounter = 0;

/** An event envelope as Stripe sends it, around `object`. */
export function event(type: string, object: object, id = `evt_test_${crypto.randomUUID()}_${eventCounter++}`) {
  return { id, object: "event", api_version: "2025-01-01", created: Math.floor(Date.now() / 1000), livemode: false, type, data: { object } };
}

/** Posts an event signed like Stripe does (or with a wrong secret, an old timestamp, a tampered body). */
export async function deliver(
  stripeEvent: unknown,
  options: { secret?: string; timestamp?: number; tamper?: (body: string) => string; signature?: string | null } = {},
) {
  const payload = JSON.stringify(stripeEvent);
  const header = await stripe.webhooks.generateTestHeaderStringAsync({
    payload,
    secret: options.secret ?? WEBHOOK_SECRET,
    timestamp: options.timestamp,
    cryptoProvider,
  });
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.signature !== null) headers["stripe-signature"] = options.signature ?? header;
  const response = await fetch(`${FUNCTIONS_URL}/stripe-webhook`, {
    method: "POST",
    headers,
    body: options.tamper ? options.tamper(payload) : payload,
  });
  return { status: response.status, body: await response.json() };
}
