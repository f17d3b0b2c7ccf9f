// Artillery processor for the festival simulation (loadtest/festival.yml). Runs in Node inside
// Artillery's worker. It builds each request (cards, orders, keys, signed Stripe events) and
// appends one JSON line per response to a file in LOADTEST_RECORDS_DIR, which scripts/loadtest.ts
// reads after the run to build the report and to prove every response against the database.
//
// Environment (set by scripts/loadtest.ts):
//   LOADTEST_DATA         JSON file: run id, card ids, practitioners with tokens, staff tokens, keys
//   LOADTEST_RECORDS_DIR  folder for the response records (one file per worker)

"use strict";

const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const Stripe = require("stripe");

const data = JSON.parse(fs.readFileSync(process.env.LOADTEST_DATA, "utf8"));
const recordsDir = process.env.LOADTEST_RECORDS_DIR;
const worker = `${process.pid}-${require("node:worker_threads").threadId}`;
const recordFile = path.join(recordsDir, `responses-${worker}.jsonl`);
// Buffered writes: one small synchronous append per response would cost the load generator more
// than the requests it measures.
let pending = [];
function flush() {
  if (pending.length === 0) return;
  fs.appendFileSync(recordFile, pending.join(""));
  pending = [];
}
setInterval(flush, 500).unref();
process.on("exit", flush);

const BARS = ["main-bar", "beach-bar", "vip-bar"];
const DRINKS = ["beer", "soda", "water", "cocktail"];
// Each cashier works at the checkpoint where the seed opened their cash register.
const CASHIERS = [
  { token: data.tokens.cashier, checkpoint: "entrance" },
  { token: data.tokens.cashier2, checkpoint: "camping" },
];
const BARTENDERS = [data.tokens.bartender, data.tokens.bartender2];

// Cups each card holds a deposit for, as far as this worker knows: returns are only offered for
// cups that were paid here (another worker or an order in flight can still make one refused).
const cupsByCard = new Map();

let sequence = 0;
function key(prefix) {
  sequence += 1;
  return `lt-${data.runId}-${prefix}-${worker}-${sequence}`;
}
function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}
function chance(probability) {
  return Math.random() < probability;
}
function randomInt(min, max) {
  return min + Math.floor(Math.random() * (max - min + 1));
}

/** One response record: what the checks and the report need, nothing more. */
function record(context, step, response, extra) {
  let body = null;
  try {
    body = typeof response.body === "string" ? JSON.parse(response.body) : response.body;
  } catch {
    body = null;
  }
  const timings = response.timings || {};
  const startedAt = context.vars.$requestStartedAt || Date.now();
  const latencyMs = timings.phases && typeof timings.phases.total === "number"
    ? timings.phases.total
    : Date.now() - startedAt;
  const error = body && body.error && typeof body.error === "object" ? body.error : null;
  const entry = {
    t: startedAt,
    ms: Math.round(latencyMs * 10) / 10,
    flow: context.vars.flow,
    step,
    status: response.statusCode,
    code: error && error.code ? error.code : null,
    ...extra,
  };
  if (extra && extra.keep) {
    delete entry.keep;
    entry.body = body;
  }
  pending.push(JSON.stringify(entry) + "\n");
  return body;
}

function startTimer(_requestParams, context, _events, next) {
  context.vars.$requestStartedAt = Date.now();
  return next();
}

// ---------------------------------------------------------------------------------------------
// Bar orders: 1 to 3 lines, cup deposits and returns; 5 % resend the same key, 2 % are a
// duplicate tap (the same order on the same card at the same bar under a new key).
// ---------------------------------------------------------------------------------------------

function orderItems(cardId) {
  const drinks = [...DRINKS].sort(() => Math.random() - 0.5).slice(0, chance(0.3) ? 2 : 1);
  const items = drinks.map((product_id) => ({ product_id, quantity: randomInt(1, 2) }));
  const cups = cupsByCard.get(cardId) || 0;
  if (items.length < 3 && chance(0.5)) {
    items.push({ product_id: "cup-deposit", quantity: items[0].quantity });
  }
  if (items.length < 3 && cups > 0 && chance(0.4)) {
    items.push({ product_id: "cup-return", quantity: Math.min(cups, randomInt(1, 2)) });
  }
  return items;
}

function prepareBarOrder(context, _events, next) {
  const cardId = pick(data.cards);
  context.vars.flow = "bar_order";
  context.vars.bartender = pick(BARTENDERS);
  context.vars.orderBody = {
    card_id: cardId,
    items: orderItems(cardId),
    point_of_sale_id: pick(BARS),
    client_request_id: key("order"),
  };
  context.vars.resend = chance(0.05);
  context.vars.duplicateTap = chance(0.02);
  return next();
}

function barOrderRequest(requestParams, context, events, next) {
  requestParams.json = context.vars.orderBody;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${context.vars.bartender}` };
  return startTimer(requestParams, context, events, next);
}

function rememberCups(body, items, cardId) {
  if (!body || body.ok !== true || body.replayed) return;
  let cups = cupsByCard.get(cardId) || 0;
  for (const line of items) {
    if (line.product_id === "cup-deposit") cups += line.quantity;
    if (line.product_id === "cup-return") cups -= line.quantity;
  }
  cupsByCard.set(cardId, Math.max(0, cups));
}

function afterBarOrder(step) {
  return function (_requestParams, response, context, _events, next) {
    const order = context.vars.orderBody;
    const body = record(context, step, response, {
      key: order.client_request_id,
      card: order.card_id,
      ...(step === "duplicate_tap" ? { original: context.vars.tapOf } : {}),
      keep: true,
    });
    if (step === "order") rememberCups(body, order.items, order.card_id);
    return next();
  };
}

function duplicateTapRequest(requestParams, context, events, next) {
  // The same order a moment later under a new key: the bartender tapped twice.
  context.vars.tapOf = context.vars.orderBody.client_request_id;
  context.vars.orderBody = { ...context.vars.orderBody, client_request_id: key("tap") };
  return barOrderRequest(requestParams, context, events, next);
}

// ---------------------------------------------------------------------------------------------
// Balance reads (a staff device: no PIN needed)
// ---------------------------------------------------------------------------------------------

function prepareBalance(context, _events, next) {
  context.vars.flow = "balance_read";
  context.vars.balanceCard = pick(data.cards);
  context.vars.staffToken = pick([...BARTENDERS, data.tokens.cashier]);
  return next();
}

function balanceRequest(requestParams, context, events, next) {
  requestParams.url = `${requestParams.url}?card_id=${encodeURIComponent(context.vars.balanceCard)}`;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${context.vars.staffToken}` };
  return startTimer(requestParams, context, events, next);
}

function afterBalance(_requestParams, response, context, _events, next) {
  record(context, "balance", response, { card: context.vars.balanceCard });
  return next();
}

// ---------------------------------------------------------------------------------------------
// Checkpoint recharges: cash or card terminal, by amount or package; 5 % resend the same key.
// ---------------------------------------------------------------------------------------------

function prepareRecharge(context, _events, next) {
  const cashier = pick(CASHIERS);
  context.vars.flow = "checkpoint_recharge";
  context.vars.cashierToken = cashier.token;
  const body = {
    card_id: pick(data.cards),
    payment_method: chance(0.5) ? "cash" : "card",
    checkpoint_id: cashier.checkpoint,
    client_request_id: key("recharge"),
  };
  if (chance(0.4)) body.package_code = pick(["MINI", "MIDI", "MAXI"]);
  else body.amount_cents = pick([1000, 2000, 3000, 5000]);
  context.vars.rechargeBody = body;
  context.vars.resend = chance(0.05);
  return next();
}

function rechargeRequest(requestParams, context, events, next) {
  requestParams.json = context.vars.rechargeBody;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${context.vars.cashierToken}` };
  return startTimer(requestParams, context, events, next);
}

function afterRecharge(step) {
  return function (_requestParams, response, context, _events, next) {
    const body = context.vars.rechargeBody;
    record(context, step, response, { key: body.client_request_id, card: body.card_id, keep: true });
    return next();
  };
}

// ---------------------------------------------------------------------------------------------
// Online top-ups: create-checkout-session (anon key) makes the pending row and the session, then
// Stripe's events arrive signed with the real library. 5 % of deliveries are repeated; 15 % of the
// payments are asynchronous and their events arrive out of order (async_payment_succeeded before
// the unpaid checkout.session.completed).
// ---------------------------------------------------------------------------------------------

function prepareCheckout(context, _events, next) {
  context.vars.flow = "stripe_topup";
  const body = {
    card_id: pick(data.cards),
    success_url: "http://127.0.0.1/loadtest/paid",
    cancel_url: "http://127.0.0.1/loadtest/cancelled",
    client_request_id: key("checkout"),
  };
  if (chance(0.6)) body.package_code = pick(["MINI", "MIDI", "MAXI"]);
  else body.amount_cents = pick([1500, 2500, 4000]);
  context.vars.checkoutBody = body;
  context.vars.asyncPayment = chance(0.15);
  context.vars.repeatDelivery = chance(0.05);
  context.vars.webhookEvents = [];
  context.vars.webhookPending = false;
  return next();
}

function checkoutRequest(requestParams, context, events, next) {
  requestParams.json = context.vars.checkoutBody;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${data.anonKey}` };
  return startTimer(requestParams, context, events, next);
}

function stripeEvent(type, session) {
  return {
    id: `evt_lt_${crypto.randomUUID().replaceAll("-", "")}`,
    object: "event",
    api_version: "2025-10-29.clover",
    created: Math.floor(Date.now() / 1000),
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
    data: { object: session },
  };
}

function afterCheckout(_requestParams, response, context, _events, next) {
  const request = context.vars.checkoutBody;
  const body = record(context, "checkout", response, { key: request.client_request_id, card: request.card_id, keep: true });
  if (!body || body.ok !== true) return next();
  const session = (paymentStatus) => ({
    id: body.session_id,
    object: "checkout.session",
    mode: "payment",
    amount_total: body.amount_cents,
    currency: String(body.currency || "eur").toLowerCase(),
    client_reference_id: String(body.recharge_id),
    payment_intent: `pi_lt_${body.session_id}`,
    payment_status: paymentStatus,
    status: "complete",
    metadata: {
      kind: "card_recharge",
      card_id: body.card_id,
      recharge_id: String(body.recharge_id),
      package_code: body.package_code || "",
      amount_cents: String(body.amount_cents),
      bonus_cents: String(body.bonus_cents),
    },
  });
  const deliveries = [];
  if (context.vars.asyncPayment) {
    const completed = stripeEvent("checkout.session.completed", session("unpaid"));
    const succeeded = stripeEvent("checkout.session.async_payment_succeeded", session("paid"));
    // Out of order: the later event first.
    deliveries.push({ event: succeeded, step: "webhook_out_of_order" }, { event: completed, step: "webhook_late_unpaid" });
  } else {
    deliveries.push({ event: stripeEvent("checkout.session.completed", session("paid")), step: "webhook" });
  }
  if (context.vars.repeatDelivery) deliveries.push({ ...deliveries[0], step: "webhook_repeat" });
  context.vars.webhookEvents = deliveries;
  context.vars.webhookIndex = 0;
  context.vars.webhookPending = true;
  context.vars.webhookCard = body.card_id;
  context.vars.webhookSession = body.session_id;
  return next();
}

// Artillery's loop runs its body before it asks whileTrue: the step itself is guarded by
// `ifTrue: webhookPending` too, so a refused checkout (limit_exceeded) sends no event.
function hasWebhook(context, next) {
  return next(context.vars.webhookPending === true);
}

function webhookRequest(requestParams, context, events, next) {
  const delivery = context.vars.webhookEvents[context.vars.webhookIndex];
  const payload = JSON.stringify(delivery.event);
  const signature = Stripe.webhooks.generateTestHeaderString({ payload, secret: data.webhookSecret });
  requestParams.body = payload;
  requestParams.headers = { ...requestParams.headers, "content-type": "application/json", "stripe-signature": signature };
  return startTimer(requestParams, context, events, next);
}

function afterWebhook(_requestParams, response, context, _events, next) {
  const delivery = context.vars.webhookEvents[context.vars.webhookIndex];
  record(context, delivery.step, response, {
    key: delivery.event.id,
    card: context.vars.webhookCard,
    session: context.vars.webhookSession,
    keep: true,
  });
  context.vars.webhookIndex += 1;
  context.vars.webhookPending = context.vars.webhookIndex < context.vars.webhookEvents.length;
  return next();
}

// ---------------------------------------------------------------------------------------------
// Practitioner credits: peer bookings, and escrow locks of which 30 % the client unlocks again.
// ---------------------------------------------------------------------------------------------

function twoPractitioners() {
  const first = pick(data.practitioners);
  let second = pick(data.practitioners);
  while (second.id === first.id) second = pick(data.practitioners);
  return [first, second];
}

function prepareBooking(context, _events, next) {
  const [booker, treating] = twoPractitioners();
  context.vars.flow = "credits";
  context.vars.userToken = booker.token;
  context.vars.bookingBody = {
    treating_practitioner_id: treating.id,
    credits: randomInt(1, 4),
    booking_id: key("booking"),
    client_request_id: key("book"),
  };
  context.vars.bookingUser = booker.id;
  context.vars.resend = chance(0.05);
  return next();
}

function bookingRequest(requestParams, context, events, next) {
  requestParams.json = context.vars.bookingBody;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${context.vars.userToken}` };
  return startTimer(requestParams, context, events, next);
}

function afterBooking(step) {
  return function (_requestParams, response, context, _events, next) {
    const body = context.vars.bookingBody;
    record(context, step, response, { key: body.client_request_id, user: context.vars.bookingUser, keep: true });
    return next();
  };
}

function prepareLock(context, _events, next) {
  const [client, provider] = twoPractitioners();
  context.vars.flow = "credits";
  context.vars.userToken = client.token;
  context.vars.lockUser = client.id;
  const orderId = key("escrow-order");
  context.vars.lockBody = {
    action: "lock",
    order_id: orderId,
    amount: randomInt(1, 5),
    client_request_id: key("lock"),
    // The provider is named at the lock: only they may accept, and a payout pays only them.
    provider_id: provider.id,
  };
  // A hold is named by its client and order id (order ids are scoped by the client who chose them).
  context.vars.unlockBody = { action: "unlock", client_user_id: client.id, order_id: orderId, client_request_id: key("unlock") };
  context.vars.unlock = chance(0.3);
  context.vars.locked = false;
  return next();
}

function lockRequest(requestParams, context, events, next) {
  requestParams.json = context.vars.lockBody;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${context.vars.userToken}` };
  return startTimer(requestParams, context, events, next);
}

function afterLock(_requestParams, response, context, _events, next) {
  const body = record(context, "escrow_lock", response, {
    key: context.vars.lockBody.client_request_id,
    user: context.vars.lockUser,
    keep: true,
  });
  context.vars.locked = Boolean(body && body.ok === true);
  return next();
}

function unlockRequest(requestParams, context, events, next) {
  requestParams.json = context.vars.unlockBody;
  requestParams.headers = { ...requestParams.headers, authorization: `Bearer ${context.vars.userToken}` };
  return startTimer(requestParams, context, events, next);
}

function afterUnlock(_requestParams, response, context, _events, next) {
  record(context, "escrow_unlock", response, {
    key: context.vars.unlockBody.client_request_id,
    user: context.vars.lockUser,
    keep: true,
  });
  return next();
}

module.exports = {
  prepareBarOrder,
  barOrderRequest,
  afterBarOrder: afterBarOrder("order"),
  afterBarOrderResend: afterBarOrder("order_resend"),
  afterDuplicateTap: afterBarOrder("duplicate_tap"),
  duplicateTapRequest,
  prepareBalance,
  balanceRequest,
  afterBalance,
  prepareRecharge,
  rechargeRequest,
  afterRecharge: afterRecharge("recharge"),
  afterRechargeResend: afterRecharge("recharge_resend"),
  prepareCheckout,
  checkoutRequest,
  afterCheckout,
  hasWebhook,
  webhookRequest,
  afterWebhook,
  prepareBooking,
  bookingRequest,
  afterBooking: afterBooking("peer_booking"),
  afterBookingResend: afterBooking("peer_booking_resend"),
  prepareLock,
  lockRequest,
  afterLock,
  unlockRequest,
  afterUnlock,
};
