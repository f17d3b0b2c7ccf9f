// Stripe online top-ups end to end: create-checkout-session against the local stand-in, then
// events signed with the real `stripe` library posted to stripe-webhook, delivered repeatedly,
// out of order and concurrently. Every test ends with ledger_reconcile() empty.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { deliver, event } from "./stripe_helpers.ts";
import { ADMIN, BARTENDER, registerCards, rpcClient, uniqueKey } from "./festival_fixtures.ts";
import { anonKey } from "../../../scripts/lib/tokens.ts";

const anon = await anonKey();

interface Session {
  id: string;
  amount_total: number;
  currency: string;
  metadata: Record<string, string>;
  payment_intent: string | null;
  payment_status: string;
}

async function checkout(cardId: string, purchase: { amount_cents?: number; package_code?: string }, key = uniqueKey("checkout")) {
  return await call("create-checkout-session", {
    method: "POST",
    token: anon,
    json: {
      card_id: cardId,
      ...purchase,
      success_url: "http://127.0.0.1:54323/topup/ok",
      cancel_url: "http://127.0.0.1:54323/topup/cancel",
      client_request_id: key,
    },
  });
}

/** A session object as Stripe would send it back for what create-checkout-session created. */
async function paidSession(cardId: string, purchase: { amount_cents?: number; package_code?: string }): Promise<Session> {
  const created = await checkout(cardId, purchase);
  assert.equal(created.status, 200, JSON.stringify(created.body));
  const amount = Number(created.body.amount_cents);
  const bonus = Number(created.body.bonus_cents);
  return {
    id: String(created.body.session_id),
    amount_total: amount,
    currency: "eur",
    payment_intent: `pi_test_${crypto.randomUUID().replaceAll("-", "")}`,
    payment_status: "paid",
    metadata: {
      kind: "card_recharge",
      card_id: cardId,
      recharge_id: String(created.body.recharge_id),
      package_code: String(created.body.package_code ?? ""),
      amount_cents: String(amount),
      bonus_cents: String(bonus),
    },
  };
}

function charge(session: Session, amountRefunded: number) {
  return { id: `ch_${session.payment_intent}`, object: "charge", payment_intent: session.payment_intent, amount: session.amount_total, amount_refunded: amountRefunded, currency: "eur" };
}

const sql = connectDatabase(2);

async function balance(cardId: string): Promise<number> {
  const [row] = await sql`select a.balance_cents::int as cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = ${cardId}`;
  return row.cents;
}

async function reconcileIsEmpty(): Promise<void> {
  assert.deepEqual([...await sql`select * from public.ledger_reconcile()`], []);
}

async function newCards(count: number): Promise<string[]> {
  const client = rpcClient(1);
  try {
    return await registerCards(client, count, "STRIPE");
  } finally {
    await client.end();
  }
}

Deno.test("checkout: creates a session at the stand-in and stores a pending recharge; the same key gives the same session", async () => {
  const [cardId] = await newCards(1);
  const key = uniqueKey("checkout-same");
  const first = await checkout(cardId, { package_code: "MIDI" }, key);
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.match(String(first.body.session_id), /^cs_test_/);
  assert.match(String(first.body.checkout_url), /^https:\/\//);
  assert.equal(first.body.amount_cents, 5000);
  assert.equal(first.body.bonus_cents, 250);
  const again = await checkout(cardId, { package_code: "MIDI" }, key);
  assert.equal(again.status, 200);
  assert.equal(again.body.session_id, first.body.session_id);
  assert.equal(again.body.replayed, true);
  const [row] = await sql`select status, payment_method, currency from festival.recharges where client_request_id = ${key}`;
  assert.deepEqual({ ...row }, { status: "pending", payment_method: "stripe", currency: "EUR" });
  assert.equal(await balance(cardId), 0, "nothing is credited before payment");
});

Deno.test("checkout: unknown package 400, unknown card 404, blocked card 423, over the limit 422, key reuse 422", async () => {
  const [cardId, blockedId] = await newCards(2);
  const client = rpcClient(1);
  await client.call("sp_admin_block_card", { card_id: blockedId, staff_user_id: ADMIN, client_request_id: uniqueKey("block") });
  await client.end();
  const unknownPackage = await checkout(cardId, { package_code: "GIGA" });
  assert.equal(unknownPackage.status, 400);
  assert.equal((unknownPackage.body.error as { code: string }).code, "unknown_package");
  assert.equal((await checkout("NO-SUCH-CARD-1", { amount_cents: 1000 })).status, 404);
  assert.equal((await checkout(blockedId, { amount_cents: 1000 })).status, 423);
  assert.equal((await checkout(cardId, { amount_cents: 499 })).status, 422);
  const key = uniqueKey("reuse");
  assert.equal((await checkout(cardId, { amount_cents: 1000 }, key)).status, 200);
  assert.equal((await checkout(cardId, { amount_cents: 2000 }, key)).status, 422);
  const both = await call("create-checkout-session", {
    method: "POST",
    token: anon,
    json: { card_id: cardId, amount_cents: 1000, package_code: "MINI", success_url: "http://localhost/x", cancel_url: "http://localhost/x", client_request_id: uniqueKey("x") },
  });
  assert.equal(both.status, 400);
  const badUrl = await call("create-checkout-session", {
    method: "POST",
    token: anon,
    json: { card_id: cardId, amount_cents: 1000, success_url: "javascript:alert(1)", cancel_url: "http://localhost/x", client_request_id: uniqueKey("x") },
  });
  assert.equal(badUrl.status, 400);
});

Deno.test("webhook: one event delivered 10 times concurrently credits once", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 3000 });
  const completed = event("checkout.session.completed", session);
  const results = await Promise.all(Array.from({ length: 10 }, () => deliver(completed)));
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.status)));
  assert.equal(results.filter((result) => result.body.result?.replayed === false).length, 1);
  assert.equal(await balance(cardId), 3000);
  const [{ credits }] = await sql`select count(*)::int as credits from ledger.operations where kind = 'stripe_recharge' and metadata ->> 'stripe_session_id' = ${session.id}`;
  assert.equal(credits, 1);
  await reconcileIsEmpty();
});

Deno.test("webhook: completed and async_payment_succeeded of one session, concurrently, credit once", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { package_code: "MINI" });
  const results = await Promise.all([
    deliver(event("checkout.session.completed", session)),
    deliver(event("checkout.session.async_payment_succeeded", session)),
    deliver(event("checkout.session.async_payment_succeeded", session)),
  ]);
  assert.ok(results.every((result) => result.status === 200));
  assert.deepEqual(results.map((result) => result.body.outcome).sort(), ["already_credited", "already_credited", "credited"]);
  assert.equal(await balance(cardId), 2000);
  await reconcileIsEmpty();
});

Deno.test("webhook: an unpaid completed session waits; async_payment_succeeded then credits; a failure after it changes nothing", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 1500 });
  const waiting = await deliver(event("checkout.session.completed", { ...session, payment_status: "unpaid" }));
  assert.equal(waiting.status, 200);
  assert.equal(waiting.body.outcome, "waiting_for_payment");
  assert.equal(await balance(cardId), 0);
  const succeeded = await deliver(event("checkout.session.async_payment_succeeded", session));
  assert.equal(succeeded.body.outcome, "credited");
  const failedLate = await deliver(event("checkout.session.async_payment_failed", session));
  assert.equal(failedLate.body.outcome, "already_credited");
  assert.equal(await balance(cardId), 1500);
});

Deno.test("webhook: async_payment_failed marks the recharge failed and credits nothing", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 1200 });
  const failed = await deliver(event("checkout.session.async_payment_failed", { ...session, payment_status: "unpaid" }));
  assert.equal(failed.status, 200);
  assert.equal(failed.body.outcome, "marked_failed");
  const [row] = await sql`select status from festival.recharges where stripe_session_id = ${session.id}`;
  assert.equal(row.status, "failed");
  assert.equal(await balance(cardId), 0);
});

Deno.test("webhook: an expired checkout session closes its pending recharge", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 1000 });
  const expired = await deliver(event("checkout.session.expired", { ...session, payment_status: "unpaid", payment_intent: null }));
  assert.equal(expired.status, 200);
  assert.equal(expired.body.outcome, "marked_failed");
  const [row] = await sql`select status, failure_reason from festival.recharges where stripe_session_id = ${session.id}`;
  assert.deepEqual({ ...row }, { status: "failed", failure_reason: "checkout_session_expired" });
});

Deno.test("webhook: a refund arriving before the completion gives the right final state", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 4000 });
  const early = await deliver(event("charge.refunded", charge(session, 1500)));
  assert.equal(early.body.outcome, "refund_parked_until_credit");
  assert.equal(await balance(cardId), 0);
  const credited = await deliver(event("checkout.session.completed", session));
  assert.equal(credited.body.outcome, "credited");
  assert.equal(await balance(cardId), 2500);
  await reconcileIsEmpty();
});

Deno.test("webhook: two partial refunds reverse the right amounts, with the bonus in proportion", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { package_code: "MAXI" }); // 10000 + 1000 bonus
  assert.equal((await deliver(event("checkout.session.completed", session))).status, 200);
  assert.equal(await balance(cardId), 11000);
  const first = await deliver(event("charge.refunded", charge(session, 2500)));
  assert.equal(first.body.result.refund_cents, 2500);
  assert.equal(first.body.result.bonus_reversed_cents, 250);
  assert.equal(await balance(cardId), 8250);
  const second = await deliver(event("charge.refunded", charge(session, 4000)));
  assert.equal(second.body.result.refund_cents, 1500, "only the new part of the running total");
  assert.equal(second.body.result.bonus_reversed_cents, 150);
  assert.equal(await balance(cardId), 6600);
  const stale = await deliver(event("charge.refunded", charge(session, 2500)));
  assert.equal(stale.body.outcome, "refund_already_applied");
  assert.equal(await balance(cardId), 6600);
  await reconcileIsEmpty();
});

Deno.test("webhook: a full refund of a spent card takes what is left and records a receivable and an alert", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 2000 });
  await deliver(event("checkout.session.completed", session));
  const client = rpcClient(1);
  const spent = await client.call("sp_process_bar_order", {
    card_id: cardId,
    items: [{ product_id: "cocktail", quantity: 2 }],
    point_of_sale_id: "main-bar",
    client_request_id: uniqueKey("spend"),
    staff_user_id: BARTENDER,
  });
  await client.end();
  assert.equal(spent.ok, true);
  const refunded = await deliver(event("charge.refunded", charge(session, 2000)));
  assert.equal(refunded.status, 200);
  assert.equal(refunded.body.result.taken_from_card_cents, 200);
  assert.equal(refunded.body.result.receivable_cents, 1800);
  assert.equal(await balance(cardId), 0);
  const [receivable] = await sql`select amount_cents::int, status from festival.receivables where card_id = ${cardId}`;
  assert.deepEqual({ ...receivable }, { amount_cents: 1800, status: "open" });
  const [{ alerts }] = await sql`select count(*)::int as alerts from ops.alerts where card_id = ${cardId} and kind = 'refund_receivable'`;
  assert.equal(alerts, 1);
  await reconcileIsEmpty();
});

Deno.test("webhook: a dispute holds the disputed money (the card stays active) and raises an alert", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 1000 });
  await deliver(event("checkout.session.completed", session));
  const dispute = { id: `dp_${crypto.randomUUID()}`, object: "dispute", amount: 1000, charge: `ch_${session.payment_intent}`, payment_intent: session.payment_intent, currency: "eur" };
  const result = await deliver(event("charge.dispute.created", dispute));
  assert.equal(result.body.outcome, "dispute_hold_opened");
  const [card] = await sql`select status from festival.cards where id = ${cardId}`;
  assert.equal(card.status, "active");
  assert.equal(await balance(cardId), 0);
  const [{ alerts }] = await sql`select count(*)::int as alerts from ops.alerts where card_id = ${cardId} and kind = 'dispute'`;
  assert.equal(alerts, 1);
  await reconcileIsEmpty();
});

Deno.test("webhook: a paid session for an unknown card is 404 until the card exists, then the retry credits it", async () => {
  const run = crypto.randomUUID().slice(0, 8).toUpperCase();
  const cardId = `LATE-${run}`;
  const session: Session = {
    id: `cs_test_late_${run}`,
    amount_total: 2500,
    currency: "eur",
    payment_intent: `pi_late_${run}`,
    payment_status: "paid",
    metadata: { kind: "card_recharge", card_id: cardId, bonus_cents: "0" },
  };
  const completed = event("checkout.session.completed", session);
  const first = await deliver(completed);
  assert.equal(first.status, 404);
  const [unmatched] = await sql`select amount_cents::int, resolved_at from festival.unmatched_payments where stripe_session_id = ${session.id}`;
  assert.equal(unmatched.amount_cents, 2500);
  assert.equal(unmatched.resolved_at, null);
  const client = rpcClient(1);
  await client.call("sp_admin_register_cards", { card_ids: [cardId], staff_user_id: ADMIN, client_request_id: uniqueKey("late") });
  await client.end();
  const retry = await deliver(completed);
  assert.equal(retry.status, 200);
  assert.equal(retry.body.outcome, "credited");
  assert.equal(await balance(cardId), 2500);
  const [resolved] = await sql`select resolved_at from festival.unmatched_payments where stripe_session_id = ${session.id}`;
  assert.notEqual(resolved.resolved_at, null);
  await reconcileIsEmpty();
});

Deno.test("webhook: an amount that differs from the pending recharge is recorded and alerted, not credited", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 3000 });
  const result = await deliver(event("checkout.session.completed", { ...session, amount_total: 300 }));
  assert.equal(result.status, 200);
  assert.equal(result.body.outcome, "payment_mismatch");
  assert.equal(await balance(cardId), 0);
  const [{ alerts }] = await sql`select count(*)::int as alerts from ops.alerts where card_id = ${cardId} and kind = 'payment_mismatch'`;
  assert.equal(alerts, 1);
});

Deno.test("webhook: bad signature, tampered body, stale timestamp and no signature are 400 and write nothing", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 1000 });
  const completed = event("checkout.session.completed", session);
  const [{ events: before }] = await sql`select count(*)::int as events from festival.stripe_events`;
  const cases = [
    await deliver(completed, { secret: "whsec_someone_else" }),
    await deliver(completed, { tamper: (body) => body.replace('"amount_total":1000', '"amount_total":9000') }),
    await deliver(completed, { timestamp: Math.floor(Date.now() / 1000) - 3600 }),
    await deliver(completed, { signature: null }),
    await deliver(completed, { signature: "t=1,v1=deadbeef" }),
  ];
  for (const result of cases) {
    assert.equal(result.status, 400);
    assert.equal(result.body.error.code, "invalid_signature");
  }
  const [{ events: after }] = await sql`select count(*)::int as events from festival.stripe_events`;
  assert.equal(after, before);
  assert.equal(await balance(cardId), 0);
});

Deno.test("webhook: an event type we do not use is acknowledged with 200 and ignored", async () => {
  const result = await deliver(event("customer.created", { id: "cus_1", object: "customer" }));
  assert.equal(result.status, 200);
  assert.equal(result.body.outcome, "ignored_event_type");
});

Deno.test("webhook: a session that is not a card top-up of ours is acknowledged and ignored", async () => {
  const result = await deliver(event("checkout.session.completed", {
    id: "cs_other_integration",
    amount_total: 100,
    currency: "eur",
    payment_status: "paid",
    payment_intent: "pi_other",
    metadata: {},
  }));
  assert.equal(result.status, 200);
  assert.equal(result.body.outcome, "ignored_not_a_card_recharge");
});

Deno.test("checkpoint recharge by package over HTTP: the card receives price plus bonus", async () => {
  const [cardId] = await newCards(1);
  const { userToken } = await import("../../../scripts/lib/tokens.ts");
  const response = await call("process-checkpoint-recharge", {
    method: "POST",
    token: await userToken("00000000-0000-4000-8000-00000000c001"),
    json: { card_id: cardId, package_code: "MIDI", payment_method: "card", checkpoint_id: "camping", client_request_id: uniqueKey("pkg") },
  });
  assert.equal(response.status, 200, JSON.stringify(response.body));
  assert.equal(response.body.new_balance_cents, 5250);
  const unknown = await call("process-checkpoint-recharge", {
    method: "POST",
    token: await userToken("00000000-0000-4000-8000-00000000c001"),
    json: { card_id: cardId, package_code: "NOPE", payment_method: "card", checkpoint_id: "camping", client_request_id: uniqueKey("pkg") },
  });
  assert.equal(unknown.status, 400);
  assert.equal((unknown.body.error as { code: string }).code, "unknown_package");
  await reconcileIsEmpty();
});

Deno.test({
  name: "stripe tests: close the database connection",
  fn: async () => {
    await sql.end();
  },
});
