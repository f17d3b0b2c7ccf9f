// POST /functions/v1/stripe-webhook (verify_jwt = false): Stripe's events. Verifies the signature
// on the raw body, then makes one procedure call and answers at once. Stripe retries anything that
// is not 2xx for days, so only what a retry can fix answers otherwise: a bad signature (400), a
// payment for a card that does not exist yet (404), a database that is down (503).

import { z } from "zod";
import { recordCallerScope } from "../_shared/caller.ts";
import { errorBody, isInvalidArgumentSqlState } from "../_shared/errors.ts";
import { jsonResponse, readRawBody, type RequestContext, serveFunction } from "../_shared/http.ts";
import { ProcedureError, type ProcedureResult, rpc, type RpcCall } from "../_shared/rpc.ts";
import { type Stripe, verifyWebhookEvent, webhookSecret } from "../_shared/stripe.ts";

// Stripe's events are small; a generous bound still keeps a flood out.
const MAX_EVENT_BYTES = 256 * 1024;

// Only sessions made by create-checkout-session (or by another flow of ours that says so) top up a
// card: other integrations on the same Stripe account can have a card_id in their metadata too.
const cardRechargeMetadata = z.object({
  kind: z.literal("card_recharge"),
  card_id: z.string().min(1).max(64),
  bonus_cents: z.string().regex(/^\d{1,9}$/).optional(),
}).passthrough();

const creditPurchaseMetadata = z.object({
  kind: z.literal("credit_purchase"),
  user_id: z.uuid(),
  credits: z.string().regex(/^[1-9]\d{0,11}$/),
}).passthrough();

/**
 * What a credit purchase session's metadata claims. Never trusted: the pending purchase decides
 * user, credits and price; these are only compared with it (and purchase_id finds a purchase whose
 * session was never attached). A claim that does not parse is simply not sent.
 */
const creditPurchaseClaims = z.object({
  user_id: z.uuid().optional().catch(undefined),
  credits: z.string().regex(/^[1-9]\d{0,11}$/).optional().catch(undefined),
  purchase_id: z.string().regex(/^[1-9]\d{0,17}$/).optional().catch(undefined),
}).passthrough();

/**
 * What a subscription invoice says across Stripe API versions: the subscription and its metadata
 * (user_id) under `parent.subscription_details` (newer) or at the top (older); what was paid; the
 * payment intent (`payment_intent`, older, or the first of `payments`, newer); and per line the
 * billed price, the line's period and whether it is a proration.
 */
const subscriptionInvoice = z.object({
  id: z.string(),
  amount_paid: z.number().int().nonnegative(),
  currency: z.string(),
  subscription: z.string().nullish(),
  payment_intent: z.union([z.string(), z.object({ id: z.string() })]).nullish(),
  payments: z.object({
    data: z.array(z.object({
      payment: z.object({ payment_intent: z.union([z.string(), z.object({ id: z.string() })]).nullish() }).nullish(),
    }).passthrough()),
  }).nullish(),
  subscription_details: z.object({ metadata: z.record(z.string(), z.string()).nullish() }).nullish(),
  parent: z.object({
    subscription_details: z.object({
      subscription: z.string().nullish(),
      metadata: z.record(z.string(), z.string()).nullish(),
    }).nullish(),
  }).nullish(),
  lines: z.object({
    data: z.array(z.object({
      period: z.object({ start: z.number().int(), end: z.number().int() }),
      proration: z.boolean().nullish(),
      price: z.object({ id: z.string() }).nullish(),
      pricing: z.object({ price_details: z.object({ price: z.string() }).nullish() }).nullish(),
      parent: z.object({
        subscription_item_details: z.object({ proration: z.boolean().nullish() }).nullish(),
      }).nullish(),
    }).passthrough()).min(1),
  }),
}).passthrough();

type InvoiceLine = z.infer<typeof subscriptionInvoice>["lines"]["data"][number];

function linePrice(line: InvoiceLine): string | undefined {
  return line.pricing?.price_details?.price ?? line.price?.id;
}

/**
 * The line that bills a subscription period: a price, not a proration. A proration (a plan change
 * in the middle of a period) bills part of a period that is already allocated.
 */
function billedPeriodLine(lines: InvoiceLine[]): InvoiceLine | undefined {
  return lines.find((line) =>
    linePrice(line) !== undefined && line.proration !== true &&
    line.parent?.subscription_item_details?.proration !== true
  );
}

function paymentIntentId(value: string | { id: string } | null | undefined): string | null {
  if (!value) return null;
  return typeof value === "string" ? value : value.id;
}

function acknowledge(context: RequestContext, eventId: string, outcome: string, result?: ProcedureResult): Response {
  context.outcome = outcome;
  return jsonResponse(200, { received: true, event_id: eventId, outcome, result }, context.requestId);
}

function outcomeOf(result: ProcedureResult): string {
  return String(result.outcome ?? (result.error as { code?: string } | undefined)?.code ?? "unknown");
}

/** 404 makes Stripe retry: for a user, card or plan that does not exist yet. */
function retryLater(context: RequestContext, eventId: string, result: ProcedureResult): Response {
  context.outcome = outcomeOf(result);
  return jsonResponse(404, { received: true, event_id: eventId, ...result }, context.requestId);
}

/**
 * The purchase metadata our platform put on the session, or null (logged as an error: a retry
 * cannot fix it, so Stripe is answered 200 and a person looks at the log).
 */
function parsedCreditPurchase(context: RequestContext, event: Stripe.Event, session: Stripe.Checkout.Session) {
  const metadata = creditPurchaseMetadata.safeParse(session.metadata);
  if (metadata.success) return metadata.data;
  console.error(JSON.stringify({
    level: "error",
    function: context.functionName,
    request_id: context.requestId,
    message: `credit purchase session ${session.id} of event ${event.id} has invalid metadata`,
  }));
  return null;
}

async function creditPurchase(
  context: RequestContext,
  call: RpcCall,
  event: Stripe.Event,
  session: Stripe.Checkout.Session,
  paymentStatus: string,
): Promise<Response> {
  if (session.amount_total === null || !session.currency) {
    return acknowledge(context, event.id, "ignored_invalid_credit_purchase");
  }
  const claims = creditPurchaseClaims.parse(session.metadata ?? {});
  const result = await call("sp_process_credit_purchase", {
    stripe_session_id: session.id,
    amount_cents: session.amount_total,
    currency: session.currency,
    payment_status: paymentStatus,
    stripe_payment_intent_id: paymentIntentId(session.payment_intent),
    stripe_event_id: event.id,
    user_id: claims.user_id ?? null,
    credits: claims.credits === undefined ? null : Number(claims.credits),
    purchase_id: claims.purchase_id === undefined ? null : Number(claims.purchase_id),
  }, { functionName: context.functionName, requestId: context.requestId });
  // Everything is final here (a mismatch is recorded and alerted): Stripe gets 200.
  return acknowledge(context, event.id, outcomeOf(result), result);
}

async function closeCreditPurchase(
  context: RequestContext,
  call: RpcCall,
  event: Stripe.Event,
  session: Stripe.Checkout.Session,
  status: "failed" | "cancelled",
): Promise<Response> {
  const metadata = parsedCreditPurchase(context, event, session);
  if (!metadata) return acknowledge(context, event.id, "ignored_invalid_credit_purchase");
  const result = await call("sp_close_credit_purchase", {
    stripe_session_id: session.id,
    user_id: metadata.user_id,
    credits: Number(metadata.credits),
    amount_cents: session.amount_total ?? 0,
    currency: session.currency ?? "",
    status,
    stripe_event_id: event.id,
  }, { functionName: context.functionName, requestId: context.requestId });
  return acknowledge(context, event.id, outcomeOf(result), result);
}

async function allocateSubscriptionPeriod(context: RequestContext, call: RpcCall, event: Stripe.Event): Promise<Response> {
  const invoice = subscriptionInvoice.safeParse(event.data.object);
  if (!invoice.success) return acknowledge(context, event.id, "ignored_not_a_subscription_invoice");
  const details = invoice.data.parent?.subscription_details;
  const subscriptionId = details?.subscription ?? invoice.data.subscription;
  const metadata = details?.metadata ?? invoice.data.subscription_details?.metadata ?? {};
  const userId = z.uuid().safeParse(metadata.user_id);
  if (!subscriptionId || !userId.success) return acknowledge(context, event.id, "ignored_not_a_credit_subscription");
  const line = billedPeriodLine(invoice.data.lines.data);
  if (!line) return acknowledge(context, event.id, "ignored_no_billed_period");
  const intent = paymentIntentId(invoice.data.payment_intent) ??
    paymentIntentId(invoice.data.payments?.data.find((entry) => entry.payment?.payment_intent)?.payment?.payment_intent);
  const result = await call("sp_process_subscription_invoice", {
    user_id: userId.data,
    stripe_price_id: linePrice(line)!,
    subscription_id: subscriptionId,
    period_start: new Date(line.period.start * 1000).toISOString(),
    period_end: new Date(line.period.end * 1000).toISOString(),
    amount_paid_cents: invoice.data.amount_paid,
    currency: invoice.data.currency,
    stripe_invoice_id: invoice.data.id,
    stripe_payment_intent_id: intent,
    stripe_event_id: event.id,
  }, { functionName: context.functionName, requestId: context.requestId });
  const code = (result.error as { code?: string } | undefined)?.code;
  if (code === "unmatched_payment" || code === "plan_not_found") return retryLater(context, event.id, result);
  return acknowledge(context, event.id, outcomeOf(result), result);
}

function isCreditPurchase(session: Stripe.Checkout.Session): boolean {
  return session.metadata?.kind === "credit_purchase";
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
    // Recorded durably; the retry applies it once the card exists.
    return retryLater(context, event.id, result);
  }
  return acknowledge(context, event.id, outcomeOf(result), result);
}

async function dispatch(context: RequestContext, call: RpcCall, event: Stripe.Event): Promise<Response> {
  const callContext = { functionName: context.functionName, requestId: context.requestId };
  switch (event.type) {
    case "checkout.session.completed": {
      const session = event.data.object;
      // Credit purchases record an unpaid session as pending; card top-ups have their pending row.
      if (isCreditPurchase(session)) return creditPurchase(context, call, event, session, session.payment_status);
      // Delayed payment methods complete unpaid: wait for async_payment_succeeded or _failed.
      if (session.payment_status !== "paid") return acknowledge(context, event.id, "waiting_for_payment");
      return creditPaidSession(context, call, event, session);
    }
    case "checkout.session.async_payment_succeeded": {
      const session = event.data.object;
      if (isCreditPurchase(session)) return creditPurchase(context, call, event, session, "paid");
      return creditPaidSession(context, call, event, session);
    }
    case "checkout.session.expired": {
      const session = event.data.object;
      if (isCreditPurchase(session)) return closeCreditPurchase(context, call, event, session, "cancelled");
      // The festival-goer never paid: the pending recharge is closed so it does not wait forever.
      const result = await call("sp_fail_stripe_recharge", {
        stripe_session_id: session.id,
        stripe_event_id: event.id,
        reason: "checkout_session_expired",
      }, callContext);
      return acknowledge(context, event.id, outcomeOf(result), result);
    }
    case "invoice.payment_succeeded":
      return allocateSubscriptionPeriod(context, call, event);
    case "checkout.session.async_payment_failed": {
      if (isCreditPurchase(event.data.object)) {
        return closeCreditPurchase(context, call, event, event.data.object, "failed");
      }
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
      // A refunded subscription invoice takes its period's credits back; anything else is a card
      // top-up or a credit purchase for the procedure below.
      const invoiceRefund = await call("sp_process_credit_invoice_refund", {
        stripe_payment_intent_id: intent,
        stripe_invoice_id: paymentIntentId((charge as { invoice?: string | { id: string } | null }).invoice),
        stripe_charge_id: charge.id,
        amount_refunded_cents: charge.amount_refunded,
        currency: charge.currency,
        stripe_event_id: event.id,
      }, callContext);
      if (invoiceRefund.outcome !== "not_a_subscription_invoice") {
        return acknowledge(context, event.id, outcomeOf(invoiceRefund), invoiceRefund);
      }
      const result = await call("sp_process_stripe_refund", {
        stripe_payment_intent_id: intent,
        stripe_charge_id: charge.id,
        amount_refunded_cents: charge.amount_refunded,
        currency: charge.currency,
        stripe_event_id: event.id,
        // When Stripe took this running total: an older total delivered late must not undo a failure.
        stripe_event_created_at: new Date(event.created * 1000).toISOString(),
      }, callContext);
      return acknowledge(context, event.id, String(result.outcome ?? (result.error as { code: string }).code), result);
    }
    case "charge.dispute.created": {
      const dispute = event.data.object;
      // A disputed credit purchase freezes its credits; anything else is the festival's.
      const creditDispute = await call("sp_process_credit_dispute", {
        stripe_payment_intent_id: paymentIntentId(dispute.payment_intent) ?? "",
        stripe_charge_id: typeof dispute.charge === "string" ? dispute.charge : dispute.charge.id,
        stripe_dispute_id: dispute.id,
        amount_cents: dispute.amount,
        stripe_event_id: event.id,
      }, callContext);
      if (creditDispute.outcome !== "not_a_credit_purchase") {
        return acknowledge(context, event.id, outcomeOf(creditDispute), creditDispute);
      }
      const result = await call("sp_process_stripe_dispute", {
        stripe_payment_intent_id: paymentIntentId(dispute.payment_intent) ?? "",
        stripe_charge_id: typeof dispute.charge === "string" ? dispute.charge : dispute.charge.id,
        stripe_dispute_id: dispute.id,
        amount_cents: dispute.amount,
        stripe_event_id: event.id,
      }, callContext);
      return acknowledge(context, event.id, outcomeOf(result), result);
    }
    case "charge.refund.updated": {
      // Only a failed refund changes anything: Stripe could not pay it back, the money is ours again.
      const refund = event.data.object;
      if (refund.status !== "failed") return acknowledge(context, event.id, "ignored_refund_not_failed");
      const intent = paymentIntentId(refund.payment_intent);
      if (!intent) return acknowledge(context, event.id, "ignored_no_payment_intent");
      const result = await call("sp_process_stripe_refund_failure", {
        stripe_payment_intent_id: intent,
        stripe_charge_id: typeof refund.charge === "string" ? refund.charge : refund.charge?.id ?? null,
        stripe_refund_id: refund.id,
        amount_cents: refund.amount,
        currency: refund.currency,
        stripe_event_id: event.id,
        // Refunded totals taken between these two times still count the failed refund.
        refund_created_at: typeof refund.created === "number" ? new Date(refund.created * 1000).toISOString() : null,
        stripe_event_created_at: new Date(event.created * 1000).toISOString(),
      }, callContext);
      return acknowledge(context, event.id, outcomeOf(result), result);
    }
    case "charge.dispute.closed": {
      // A closed dispute of a credit purchase releases or retires its credits; anything else is a
      // festival card's: won releases the held money to the card, lost writes it off.
      const dispute = event.data.object;
      const closed = {
        stripe_payment_intent_id: paymentIntentId(dispute.payment_intent) ?? "",
        stripe_charge_id: typeof dispute.charge === "string" ? dispute.charge : dispute.charge.id,
        stripe_dispute_id: dispute.id,
        amount_cents: dispute.amount,
        status: dispute.status,
        stripe_event_id: event.id,
      };
      const creditDispute = await call("sp_close_credit_dispute", closed, callContext);
      if (creditDispute.outcome !== "not_a_credit_purchase") {
        return acknowledge(context, event.id, outcomeOf(creditDispute), creditDispute);
      }
      const result = await call("sp_close_stripe_dispute", closed, callContext);
      return acknowledge(context, event.id, outcomeOf(result), result);
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
    // Stripe, proven by the signature, is the caller: its event ids are its keys.
    recordCallerScope("stripe");
    try {
      return await dispatch(context, call, event);
    } catch (error) {
      // A signed event whose data our procedures refuse can never succeed: a retry would only
      // repeat it for days. It is acknowledged, but only once an invalid_event alert exists for a
      // person to look at (if the alert cannot be written, the error answers 5xx and Stripe retries).
      if (!(error instanceof ProcedureError && isInvalidArgumentSqlState(error.sqlState))) throw error;
      console.error(JSON.stringify({
        level: "error",
        function: context.functionName,
        request_id: context.requestId,
        message: `event ${event.id} (${event.type}) refused by ${error.procedure}: ${error.message}`,
      }));
      await call("sp_record_invalid_stripe_event", {
        stripe_event_id: event.id,
        event_type: event.type,
        refused_by: error.procedure,
        sqlstate: error.sqlState ?? "",
        message: error.message,
      }, { functionName: context.functionName, requestId: context.requestId });
      return acknowledge(context, event.id, "invalid_event_data");
    }
  });
}

export const handler = createStripeWebhookHandler(rpc);
