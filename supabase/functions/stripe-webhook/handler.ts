// POST /functions/v1/stripe-webhook (verify_jwt = false): Stripe's events. Verifies the signature
// on the raw body, then makes one procedure call and answers at once. Stripe retries anything that
// is not 2xx for days, so only what a retry can fix answers otherwise: a bad signature (400), a
// payment for a card that does not exist yet (404), a database that is down (503).

import { z } from "zod";
import { errorBody } from "../_shared/errors.ts";
import { jsonResponse, readRawBody, type RequestContext, serveFunction } from "../_shared/http.ts";
import { type ProcedureResult, rpc, type RpcCall } from "../_shared/rpc.ts";
import { type Stripe, verifyWebhookEvent, webhookSecret } from "../_shared/stripe.ts";

// Stripe's events are small; a generous bound still keeps a flood out.
const MAX_EVENT_BYTES = 256 * 1024;

const cardRechargeMetadata = z.object({
  kind: z.literal("card_recharge").optional(),
  card_id: z.string().min(1).max(64),
  bonus_cents: z.string().regex(/^\d{1,9}$/).optional(),
}).passthrough();

function paymentIntentId(value: string | { id: string } | null | undefined): string | null {
  if (!value) return null;
  return typeof value === "string" ? value : value.id;
}

function acknowledge(context: RequestContext, eventId: string, outcome: string, result?: ProcedureResult): Response {
  context.outcome = outcome;
  return jsonResponse(200, { received: true, event_id: eventId, outcome, result }, context.requestId);
}

async function creditPaidSession(
  context: RequestContext,
  call: RpcCall,
  event: Stripe.Event,
  session: Stripe.Checkout.Session,
): Promise<Response> {
  const metadata = cardRechargeMetadata.safeParse(session.metadata ?? {});
  if (!metadata.success || session.amount_total === null || !session.currency) {
    // Not a card top-up of ours (another integration on the same Stripe account): nothing to do.
    return acknowledge(context, event.id, "ignored_not_a_card_recharge");
  }
  const result = await call("sp_process_stripe_recharge", {
    card_id: metadata.data.card_id,
    amount_cents: session.amount_total,
    currency: session.currency,
    stripe_session_id: session.id,
    stripe_event_id: event.id,
    stripe_payment_intent_id: paymentIntentId(session.payment_intent),
    bonus_cents: Number(metadata.data.bonus_cents ?? "0"),
    metadata: session.metadata ?? {},
  }, { functionName: context.functionName, requestId: context.requestId });
  if ((result.error as { code?: string } | undefined)?.code === "unmatched_payment") {
    // Recorded durably; 404 makes Stripe retry, and the retry applies it once the card exists.
    context.outcome = "unmatched_payment";
    return jsonResponse(404, { received: true, event_id: event.id, ...result }, context.requestId);
  }
  return acknowledge(context, event.id, String(result.outcome ?? (result.error as { code: string }).code), result);
}

async function dispatch(context: RequestContext, call: RpcCall, event: Stripe.Event): Promise<Response> {
  const callContext = { functionName: context.functionName, requestId: context.requestId };
  switch (event.type) {
    case "checkout.session.completed": {
      const session = event.data.object;
      // Delayed payment methods complete unpaid: wait for async_payment_succeeded or _failed.
      if (session.payment_status !== "paid") return acknowledge(context, event.id, "waiting_for_payment");
      return creditPaidSession(context, call, event, session);
    }
    case "checkout.session.async_payment_succeeded":
      return creditPaidSession(context, call, event, event.data.object);
    case "checkout.session.async_payment_failed": {
      const result = await call("sp_fail_stripe_recharge", {
        stripe_session_id: event.data.object.id,
        stripe_event_id: event.id,
        reason: "async_payment_failed",
      }, callContext);
      return acknowledge(context, event.id, String(result.outcome), result);
    }
    case "charge.refunded": {
      const charge = event.data.object;
      const intent = paymentIntentId(charge.payment_intent);
      if (!intent) return acknowledge(context, event.id, "ignored_no_payment_intent");
      const result = await call("sp_process_stripe_refund", {
        stripe_payment_intent_id: intent,
        stripe_charge_id: charge.id,
        amount_refunded_cents: charge.amount_refunded,
        currency: charge.currency,
        stripe_event_id: event.id,
      }, callContext);
      return acknowledge(context, event.id, String(result.outcome ?? (result.error as { code: string }).code), result);
    }
    case "charge.dispute.created": {
      const dispute = event.data.object;
      const result = await call("sp_process_stripe_dispute", {
        stripe_payment_intent_id: paymentIntentId(dispute.payment_intent) ?? "",
        stripe_charge_id: typeof dispute.charge === "string" ? dispute.charge : dispute.charge.id,
        stripe_dispute_id: dispute.id,
        amount_cents: dispute.amount,
        stripe_event_id: event.id,
      }, callContext);
      return acknowledge(context, event.id, String(result.outcome), result);
    }
    default:
      // Acknowledged so that Stripe does not retry an event we do not use.
      return acknowledge(context, event.id, "ignored_event_type");
  }
}

export function createStripeWebhookHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "stripe-webhook", methods: ["POST"] }, async (context) => {
    const signature = context.request.headers.get("stripe-signature");
    const rawBody = await readRawBody(context.request, MAX_EVENT_BYTES);
    let event: Stripe.Event;
    try {
      if (!signature) throw new Error("missing stripe-signature header");
      event = await verifyWebhookEvent(rawBody, signature, webhookSecret());
    } catch (error) {
      if ((error as Error).message.includes("STRIPE_WEBHOOK_SECRET")) throw error;
      context.outcome = "invalid_signature";
      return jsonResponse(
        400,
        errorBody("invalid_signature", "the stripe-signature header does not verify this body"),
        context.requestId,
      );
    }
    return dispatch(context, call, event);
  });
}

export const handler = createStripeWebhookHandler(rpc);
