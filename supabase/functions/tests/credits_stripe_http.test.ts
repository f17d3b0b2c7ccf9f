// Practitioner credits through Stripe, end to end over the webhook: credit purchases bought through
// create-credit-checkout (exactly once, pending / failed / cancelled recorded without balance change,
// refunds never below zero, sessions without a pending purchase not credited) and subscription
// invoices allocating a period once, even delivered concurrently.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { deliver, event } from "./stripe_helpers.ts";
import { assertLedgerReconciles, book, createUsers, creditBalance, rpcClient, uniqueKey } from "./credits_fixtures.ts";
import { userToken } from "../../../scripts/lib/tokens.ts";

/** A credit purchase made through create-credit-checkout, as the session Stripe sends back. */
async function purchaseSession(userId: string, packageCode: string, paymentStatus = "paid") {
  const created = await call("create-credit-checkout", {
    method: "POST",
    token: await userToken(userId),
    json: {
      package_code: packageCode,
      success_url: "http://127.0.0.1:3000/credits/ok",
      cancel_url: "http://127.0.0.1:3000/credits/cancel",
      client_request_id: uniqueKey("credit-checkout"),
    },
  });
  assert.equal(created.status, 200, JSON.stringify(created.body));
  const id = crypto.randomUUID().replaceAll("-", "");
  return {
    id: String(created.body.session_id),
    object: "checkout.session",
    amount_total: Number(created.body.amount_cents),
    currency: "eur",
    payment_status: paymentStatus,
    payment_intent: `pi_credit_${id}`,
    metadata: {
      kind: "credit_purchase",
      user_id: userId,
      credits: String(created.body.credits),
      purchase_id: String(created.body.purchase_id),
    },
  };
}

/** An invoice billing `planId`'s Stripe price (plans are keyed by it) for one period. */
function invoice(userId: string, planId: string, subscriptionId: string, periodStart: number) {
  return {
    id: `in_${crypto.randomUUID().replaceAll("-", "")}`,
    object: "invoice",
    amount_paid: 2900,
    currency: "eur",
    parent: { subscription_details: { subscription: subscriptionId, metadata: { user_id: userId } } },
    lines: {
      data: [{
        period: { start: periodStart, end: periodStart + 30 * 24 * 3600 },
        pricing: { price_details: { price: planId } },
      }],
    },
  };
}

async function createPlan(monthlyCredits: number): Promise<string> {
  const planId = `plan_${crypto.randomUUID().slice(0, 8)}`;
  const sql = connectDatabase(1);
  try {
    await sql`insert into credits.plans (plan_id, monthly_credits, stripe_price_id) values (${planId}, ${monthlyCredits}, ${planId})`;
  } finally {
    await sql.end();
  }
  return planId;
}

async function count(query: string, ...values: string[]): Promise<number> {
  const sql = connectDatabase(1);
  try {
    const [row] = await sql.unsafe(query, values);
    return Number(row.count);
  } finally {
    await sql.end();
  }
}

Deno.test("credit purchase: the same event 10 times concurrently, plus async_payment_succeeded, credits once", async () => {
  const [userId] = await createUsers(1);
  const session = await purchaseSession(userId, "CREDITS-100");
  const completed = event("checkout.session.completed", session);
  const results = await Promise.all([
    ...Array.from({ length: 10 }, () => deliver(completed)),
    deliver(event("checkout.session.async_payment_succeeded", session)),
  ]);
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.status)));
  // One delivery credits; the other deliveries of that event replay its result, the other event finds it done.
  assert.equal(results.filter((result) => result.body.outcome === "credited" && result.body.result.replayed === false).length, 1);
  assert.equal(results.filter((result) => result.body.result.replayed === true).length, 9);
  assert.equal(await creditBalance(userId), 100);
  assert.equal(await count("select count(*) from credits.credit_transactions where user_id = $1 and type = 'purchase'", userId), 1);
  await assertLedgerReconciles();
});

Deno.test("credit purchase: pending, failed and cancelled payments are recorded and change no balance", async () => {
  const [userId] = await createUsers(1);
  const pending = await purchaseSession(userId, "CREDITS-50", "unpaid");
  const waiting = await deliver(event("checkout.session.completed", pending));
  assert.equal(waiting.body.outcome, "payment_pending");
  const failed = await deliver(event("checkout.session.async_payment_failed", pending));
  assert.equal(failed.body.outcome, "marked_failed");
  const expired = await purchaseSession(userId, "CREDITS-50", "unpaid");
  const cancelled = await deliver(event("checkout.session.expired", expired));
  assert.equal(cancelled.body.outcome, "marked_cancelled");
  const sql = connectDatabase(1);
  try {
    const rows = await sql`select stripe_session_id, status from credits.credit_purchases where user_id = ${userId} order by status`;
    assert.deepEqual(rows.map((row) => row.status), ["cancelled", "failed"]);
  } finally {
    await sql.end();
  }
  assert.equal(await creditBalance(userId), 0);
  await assertLedgerReconciles();
});

Deno.test("credit purchase: partial then full refund reduce credits in proportion; a spent balance leaves a receivable", async () => {
  const [buyer, other] = await createUsers(2);
  const session = await purchaseSession(buyer, "CREDITS-100");
  await deliver(event("checkout.session.completed", session));
  const charge = (refunded: number) => ({ id: `ch_${session.payment_intent}`, object: "charge", payment_intent: session.payment_intent, amount: 8000, amount_refunded: refunded, currency: "eur" });
  const partial = await deliver(event("charge.refunded", charge(1600)));
  assert.equal(partial.body.result.credits_reversed, 20);
  assert.equal(await creditBalance(buyer), 80);
  // The buyer spends 70 credits, then the rest of the payment is refunded: 80 more to take, 10 left.
  const client = rpcClient(1);
  const booked = await book(client, buyer, other, 70);
  await client.end();
  assert.equal(booked.ok, true);
  const full = await deliver(event("charge.refunded", charge(8000)));
  assert.equal(full.body.result.credits_reversed, 80);
  assert.equal(full.body.result.taken_from_balance_credits, 10);
  assert.equal(full.body.result.receivable_credits, 70);
  assert.equal(await creditBalance(buyer), 0);
  assert.equal(await count("select count(*) from credits.receivables where user_id = $1 and status = 'open' and amount_credits = 70", buyer), 1);
  assert.equal(await count("select count(*) from ops.alerts where user_id = $1 and kind = 'refund_receivable'", buyer), 1);
  await assertLedgerReconciles();
});

Deno.test("credit purchase: a session for a user who does not exist (no pending purchase) is 200 payment_mismatch, no user or account created", async () => {
  // Sessions are credited only against a pending purchase, which create-credit-checkout makes for
  // an existing user: metadata naming anyone else buys nothing, and Stripe need not retry.
  const userId = crypto.randomUUID();
  const id = crypto.randomUUID().replaceAll("-", "");
  const completed = event("checkout.session.completed", {
    id: `cs_credit_${id}`,
    object: "checkout.session",
    amount_total: 2000,
    currency: "eur",
    payment_status: "paid",
    payment_intent: `pi_credit_${id}`,
    metadata: { kind: "credit_purchase", user_id: userId, credits: "40" },
  });
  const first = await deliver(completed);
  assert.equal(first.status, 200);
  assert.equal(first.body.outcome, "payment_mismatch");
  assert.equal(await count("select count(*) from credits.unmatched_payments where user_id = $1", userId), 0);
  assert.equal(await count("select count(*) from credits.user_accounts where user_id = $1", userId), 0, "payments never create users");
  assert.equal(await count("select count(*) from auth.users where id = $1", userId), 0);
  await assertLedgerReconciles();
});

Deno.test("invoice.payment_succeeded: the same invoice event 10 times concurrently allocates the period once", async () => {
  const [userId] = await createUsers(1);
  const planId = await createPlan(300);
  const subscriptionId = `sub_${crypto.randomUUID().slice(0, 12)}`;
  const paid = event("invoice.payment_succeeded", invoice(userId, planId, subscriptionId, 1_790_000_000));
  const results = await Promise.all(Array.from({ length: 10 }, () => deliver(paid)));
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.status)));
  assert.equal(await creditBalance(userId), 300);
  // Another event for the same period (Stripe sends invoice.paid-like duplicates) allocates nothing more.
  const duplicate = await deliver(event("invoice.payment_succeeded", invoice(userId, planId, subscriptionId, 1_790_000_000)));
  assert.equal(duplicate.status, 200);
  assert.equal(duplicate.body.result.replayed, true);
  assert.equal(await creditBalance(userId), 300);
  // The next period allocates again.
  await deliver(event("invoice.payment_succeeded", invoice(userId, planId, subscriptionId, 1_792_592_000)));
  assert.equal(await creditBalance(userId), 600);
  assert.equal(await count("select count(*) from credits.allocations where subscription_id = $1", subscriptionId), 2);
  await assertLedgerReconciles();
});

Deno.test("invoice.payment_succeeded: an unknown plan is 404 with one alert, retried after the plan exists", async () => {
  const [userId] = await createUsers(1);
  const planId = `plan_missing_${crypto.randomUUID().slice(0, 8)}`;
  const subscriptionId = `sub_${crypto.randomUUID().slice(0, 12)}`;
  const paid = event("invoice.payment_succeeded", invoice(userId, planId, subscriptionId, 1_790_000_000));
  assert.equal((await deliver(paid)).status, 404);
  assert.equal((await deliver(paid)).status, 404);
  assert.equal(await count("select count(*) from ops.alerts where kind = 'plan_not_found' and stripe_object_id = $1", subscriptionId), 1);
  const sql = connectDatabase(1);
  try {
    await sql`insert into credits.plans (plan_id, monthly_credits, stripe_price_id) values (${planId}, 75, ${planId})`;
  } finally {
    await sql.end();
  }
  assert.equal((await deliver(paid)).status, 200);
  assert.equal(await creditBalance(userId), 75);
});

Deno.test("invoice.payment_succeeded: an invoice that is not a credit subscription is acknowledged and ignored", async () => {
  const result = await deliver(event("invoice.payment_succeeded", { id: "in_x", object: "invoice", lines: { data: [] } }));
  assert.equal(result.status, 200);
  assert.equal(result.body.outcome, "ignored_not_a_subscription_invoice");
});
