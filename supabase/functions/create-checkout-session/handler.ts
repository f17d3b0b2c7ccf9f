// POST /functions/v1/create-checkout-session: a festival-goer tops up a card online. Stores a pending
// recharge (card, package or amount, limits checked in the database), creates the Stripe Checkout
// Session and answers {checkout_url, session_id}. The same key always answers the same session.

import { z } from "zod";
import { authenticate } from "../_shared/auth.ts";
import { HttpError, type OutcomeBody } from "../_shared/errors.ts";
import { jsonResponse, outcomeResponse, readJsonBody, serveFunction } from "../_shared/http.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import {
  amountCents,
  cardId,
  checkoutReturnUrl,
  clientRequestId,
  packageCode,
  parseInput,
  resolveClientRequestId,
} from "../_shared/schemas.ts";
import { stripeClient } from "../_shared/stripe.ts";

export const CheckoutRequest = z.strictObject({
  card_id: cardId,
  amount_cents: amountCents.optional(),
  package_code: packageCode.optional(),
  // Only our own pages: Stripe's checkout page must not send a payer on to a look-alike site.
  success_url: checkoutReturnUrl,
  cancel_url: checkoutReturnUrl,
  client_request_id: clientRequestId.optional(),
}).refine((body) => (body.amount_cents === undefined) !== (body.package_code === undefined), {
  message: "give either amount_cents or package_code",
  path: ["amount_cents"],
});

interface PendingRecharge extends OutcomeBody {
  recharge_id: number;
  card_id: string;
  package_code: string | null;
  amount_cents: number;
  bonus_cents: number;
  currency: string;
  session_id: string | null;
  checkout_url: string | null;
  /** When the Checkout Session expires; until then the pending top-up counts toward the card maximum. */
  expires_at: string | null;
}

export type CreateSession = (params: {
  recharge: PendingRecharge;
  successUrl: string;
  cancelUrl: string;
  idempotencyKey: string;
}) => Promise<{ id: string; url: string }>;

const createStripeSession: CreateSession = async ({ recharge, successUrl, cancelUrl, idempotencyKey }) => {
  const metadata = {
    kind: "card_recharge",
    card_id: recharge.card_id,
    recharge_id: String(recharge.recharge_id),
    package_code: recharge.package_code ?? "",
    amount_cents: String(recharge.amount_cents),
    bonus_cents: String(recharge.bonus_cents),
  };
  const session = await stripeClient().checkout.sessions.create({
    mode: "payment",
    line_items: [{
      quantity: 1,
      price_data: {
        currency: recharge.currency.toLowerCase(),
        unit_amount: recharge.amount_cents,
        product_data: { name: recharge.package_code ? `Card top-up ${recharge.package_code}` : "Card top-up" },
      },
    }],
    success_url: successUrl,
    cancel_url: cancelUrl,
    client_reference_id: String(recharge.recharge_id),
    // The expiry stored with the pending recharge (the same on every retry, as Stripe's
    // idempotency requires): after it nobody can pay, so the top-up stops counting.
    ...(recharge.expires_at ? { expires_at: Math.floor(Date.parse(recharge.expires_at) / 1000) } : {}),
    metadata,
    payment_intent_data: { metadata },
  }, { idempotencyKey });
  if (!session.url) throw new Error(`Stripe returned session ${session.id} without a URL`);
  return { id: session.id, url: session.url };
};

export function createCheckoutHandler(call: RpcCall, createSession: CreateSession = createStripeSession) {
  return serveFunction({ name: "create-checkout-session", methods: ["POST"] }, async (context) => {
    await authenticate(context.request);
    const body = parseInput(CheckoutRequest, await readJsonBody(context.request));
    const key = resolveClientRequestId(context.request, body.client_request_id);
    const callContext = { functionName: context.functionName, requestId: context.requestId };
    const prepared = await call("sp_prepare_online_recharge", {
      card_id: body.card_id,
      amount_cents: body.amount_cents ?? null,
      package_code: body.package_code ?? null,
      client_request_id: key,
    }, callContext) as PendingRecharge;
    if (!prepared.ok) return outcomeResponse(context, prepared);

    let sessionId = prepared.session_id;
    let checkoutUrl = prepared.checkout_url;
    if (!sessionId || !checkoutUrl) {
      let session: { id: string; url: string };
      try {
        // Stripe's own idempotency: a retry after a crash gets the same session back.
        session = await createSession({
          recharge: prepared,
          successUrl: body.success_url,
          cancelUrl: body.cancel_url,
          idempotencyKey: `checkout-session-recharge-${prepared.recharge_id}`,
        });
      } catch (error) {
        console.error(JSON.stringify({
          level: "error",
          function: context.functionName,
          request_id: context.requestId,
          message: `Stripe checkout session failed: ${(error as Error).message}`,
        }));
        throw new HttpError("payment_provider_unavailable", "the payment provider did not answer; retry with the same key");
      }
      const attached = await call("sp_attach_checkout_session", {
        recharge_id: prepared.recharge_id,
        stripe_session_id: session.id,
        checkout_url: session.url,
      }, callContext) as PendingRecharge;
      sessionId = attached.session_id;
      checkoutUrl = attached.checkout_url;
    }
    context.outcome = prepared.replayed ? "replayed" : "ok";
    return jsonResponse(200, {
      ok: true,
      replayed: prepared.replayed === true,
      checkout_url: checkoutUrl,
      session_id: sessionId,
      recharge_id: prepared.recharge_id,
      card_id: prepared.card_id,
      package_code: prepared.package_code,
      amount_cents: prepared.amount_cents,
      bonus_cents: prepared.bonus_cents,
      currency: prepared.currency,
      expires_at: prepared.expires_at,
    }, context.requestId);
  });
}

export const handler = createCheckoutHandler(rpc);
