// Creating a Stripe Checkout session for a pending row the database already holds (a card top-up,
// a credit purchase): the session lives 30 minutes, Stripe's idempotency key is derived from the
// pending row so a retry after a crash gets the same session back, and a Stripe failure becomes
// 502 payment_provider_unavailable (retry with the same key).

import { HttpError } from "./errors.ts";
import type { RequestContext } from "./http.ts";
import { stripeClient } from "./stripe.ts";

/** How long a Checkout session can be paid: pending rows count as open until then. */
export const CHECKOUT_SESSION_LIFETIME_SECONDS = 30 * 60;

export interface CheckoutSessionRequest {
  /** The pending row's id in our database (also the client_reference_id). */
  referenceId: string;
  /** Derived from the pending row, never from the client: one row, one session. */
  idempotencyKey: string;
  amountCents: number;
  currency: string;
  productName: string;
  successUrl: string;
  cancelUrl: string;
  metadata: Record<string, string>;
  allowPromotionCodes?: boolean;
  /** Unix seconds; defaults to now + CHECKOUT_SESSION_LIFETIME_SECONDS. */
  expiresAt?: number;
}

export interface CreatedCheckoutSession {
  id: string;
  url: string;
  expiresAt: number;
}

export type CreateCheckoutSession = (request: CheckoutSessionRequest) => Promise<CreatedCheckoutSession>;

export function checkoutExpiry(nowMs = Date.now()): number {
  return Math.floor(nowMs / 1000) + CHECKOUT_SESSION_LIFETIME_SECONDS;
}

/** The parameters of POST /v1/checkout/sessions for a request (exported for tests). */
export function checkoutSessionParams(request: CheckoutSessionRequest, expiresAt: number) {
  return {
    mode: "payment" as const,
    line_items: [{
      quantity: 1,
      price_data: {
        currency: request.currency.toLowerCase(),
        unit_amount: request.amountCents,
        product_data: { name: request.productName },
      },
    }],
    success_url: request.successUrl,
    cancel_url: request.cancelUrl,
    client_reference_id: request.referenceId,
    metadata: request.metadata,
    payment_intent_data: { metadata: request.metadata },
    expires_at: expiresAt,
    ...(request.allowPromotionCodes ? { allow_promotion_codes: true } : {}),
  };
}

export const createStripeCheckoutSession: CreateCheckoutSession = async (request) => {
  const expiresAt = request.expiresAt ?? checkoutExpiry();
  const session = await stripeClient().checkout.sessions.create(checkoutSessionParams(request, expiresAt), {
    idempotencyKey: request.idempotencyKey,
  });
  if (!session.url) throw new Error(`Stripe returned session ${session.id} without a URL`);
  // The stand-in (and an idempotent repeat) may answer without expires_at: ours is what we asked for.
  return { id: session.id, url: session.url, expiresAt: session.expires_at ?? expiresAt };
};

/** Creates the session, or throws 502 payment_provider_unavailable after logging why. */
export async function createCheckoutSessionOr502(
  context: RequestContext,
  create: CreateCheckoutSession,
  request: CheckoutSessionRequest,
): Promise<CreatedCheckoutSession> {
  try {
    return await create(request);
  } catch (error) {
    console.error(JSON.stringify({
      level: "error",
      function: context.functionName,
      request_id: context.requestId,
      message: `Stripe checkout session failed: ${(error as Error).message}`,
    }));
    throw new HttpError(
      "payment_provider_unavailable",
      "the payment provider did not answer; retry with the same key",
    );
  }
}
