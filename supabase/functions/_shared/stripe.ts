// The Stripe client and webhook verification, configured from the environment. Locally and in
// tests the client talks to a stand-in for the one API call we make (POST /v1/checkout/sessions),
// selected by STRIPE_API_HOST / STRIPE_API_PORT / STRIPE_API_PROTOCOL.

import Stripe from "stripe";

export const LOCAL_WEBHOOK_SECRET = "whsec_local_development";

let client: Stripe | undefined;

export function stripeClient(): Stripe {
  if (client) return client;
  const secretKey = Deno.env.get("STRIPE_SECRET_KEY");
  if (!secretKey) throw new Error("STRIPE_SECRET_KEY is not set");
  const host = Deno.env.get("STRIPE_API_HOST");
  client = new Stripe(secretKey, {
    httpClient: Stripe.createFetchHttpClient(),
    maxNetworkRetries: 2,
    timeout: 10_000,
    ...(host
      ? {
        host,
        port: Number(Deno.env.get("STRIPE_API_PORT") ?? "443"),
        protocol: (Deno.env.get("STRIPE_API_PROTOCOL") ?? "https") as "http" | "https",
      }
      : {}),
  });
  return client;
}

function isLocalDeployment(): boolean {
  const projectUrl = Deno.env.get("SUPABASE_URL");
  return !projectUrl || /^https?:\/\/(127\.0\.0\.1|localhost|\[::1\])(:|\/|$)/.test(projectUrl);
}

/**
 * The webhook signing secret. The well-known local default applies only to a local deployment: on
 * a hosted project a missing STRIPE_WEBHOOK_SECRET fails closed instead of trusting a public secret.
 */
export function webhookSecret(): string {
  const secret = Deno.env.get("STRIPE_WEBHOOK_SECRET");
  if (secret) return secret;
  if (isLocalDeployment()) return LOCAL_WEBHOOK_SECRET;
  throw new Error("STRIPE_WEBHOOK_SECRET is not set on a hosted deployment");
}

const cryptoProvider = Stripe.createSubtleCryptoProvider();

/** The verified event, or throws Stripe's StripeSignatureVerificationError. */
export function verifyWebhookEvent(rawBody: string, signature: string, secret: string): Promise<Stripe.Event> {
  // A client without a key is enough to verify: verification never calls the API.
  return new Stripe("sk_unused", { httpClient: Stripe.createFetchHttpClient() }).webhooks.constructEventAsync(
    rawBody,
    signature,
    secret,
    undefined,
    cryptoProvider,
  );
}

export { Stripe };
