// POST /functions/v1/create-credit-checkout: a signed-in practitioner buys a credit package. The
// database stores a pending purchase at the package's price (staff and unknown packages refused
// there), then the Stripe Checkout session is created for exactly that and attached to it. The
// client names only the package: credits and price come from the price list. The same key always
// answers the same session.

import { z } from "zod";
import { authenticate, requireCreditsUser } from "../_shared/auth.ts";
import {
  type CreateCheckoutSession,
  createCheckoutSessionOr502,
  createStripeCheckoutSession,
} from "../_shared/checkout.ts";
import type { OutcomeBody } from "../_shared/errors.ts";
import { jsonResponse, outcomeResponse, readJsonBody, serveFunction } from "../_shared/http.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import {
  checkoutReturnUrl,
  clientRequestId,
  packageCode,
  parseInput,
  resolveClientRequestId,
} from "../_shared/schemas.ts";

export const CreditCheckoutRequest = z.strictObject({
  package_code: packageCode,
  success_url: checkoutReturnUrl,
  cancel_url: checkoutReturnUrl,
  client_request_id: clientRequestId.optional(),
});

interface PendingPurchase extends OutcomeBody {
  purchase_id: number;
  user_id: string;
  package_code: string;
  credits: number;
  amount_cents: number;
  currency: string;
  allow_promotion_codes: boolean;
  status: string;
  session_id: string | null;
  checkout_url: string | null;
  expires_at: string;
}

export function createCreditCheckoutHandler(
  call: RpcCall,
  createSession: CreateCheckoutSession = createStripeCheckoutSession,
) {
  return serveFunction({ name: "create-credit-checkout", methods: ["POST"] }, async (context) => {
    const caller = requireCreditsUser(await authenticate(context.request));
    const body = parseInput(CreditCheckoutRequest, await readJsonBody(context.request));
    const key = resolveClientRequestId(context.request, body.client_request_id);
    const callContext = { functionName: context.functionName, requestId: context.requestId };
    const prepared = await call("sp_prepare_credit_purchase", {
      user_id: caller.subject,
      package_code: body.package_code,
      client_request_id: key,
    }, callContext) as PendingPurchase;
    if (!prepared.ok) return outcomeResponse(context, prepared);

    let sessionId = prepared.session_id;
    let checkoutUrl = prepared.checkout_url;
    if (!sessionId || !checkoutUrl) {
      const metadata = {
        kind: "credit_purchase",
        purchase_id: String(prepared.purchase_id),
        user_id: prepared.user_id,
        package_code: prepared.package_code,
        credits: String(prepared.credits),
      };
      const session = await createCheckoutSessionOr502(context, createSession, {
        referenceId: `credit-purchase-${prepared.purchase_id}`,
        idempotencyKey: `checkout-session-credit-purchase-${prepared.purchase_id}`,
        amountCents: prepared.amount_cents,
        currency: prepared.currency,
        productName: `${prepared.credits} credits (${prepared.package_code})`,
        successUrl: body.success_url,
        cancelUrl: body.cancel_url,
        metadata,
        allowPromotionCodes: prepared.allow_promotion_codes,
        expiresAt: Math.floor(Date.parse(prepared.expires_at) / 1000),
      });
      const attached = await call("sp_attach_credit_checkout_session", {
        purchase_id: prepared.purchase_id,
        stripe_session_id: session.id,
        checkout_url: session.url,
      }, callContext) as PendingPurchase;
      if (!attached.ok) return outcomeResponse(context, attached);
      sessionId = attached.session_id;
      checkoutUrl = attached.checkout_url;
    }
    context.outcome = prepared.replayed ? "replayed" : "ok";
    return jsonResponse(200, {
      ok: true,
      replayed: prepared.replayed === true,
      checkout_url: checkoutUrl,
      session_id: sessionId,
      purchase_id: prepared.purchase_id,
      package_code: prepared.package_code,
      credits: prepared.credits,
      amount_cents: prepared.amount_cents,
      currency: prepared.currency,
      expires_at: prepared.expires_at,
    }, context.requestId);
  });
}

export const handler = createCreditCheckoutHandler(rpc);
