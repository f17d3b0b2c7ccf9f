// Practitioner credits through Stripe, end to end over the webhook: credit purchases (exactly once,
// pending / failed / cancelled recorded without balance change, refunds never below zero, unknown
// users retried) and subscription invoices allocating a period once, even delivered concurrently.

import assert from "node:assert/strict";
import { connectDatabase } from "./http_helpers.ts";
import { deliver, event } from "./stripe_helpers.ts";
import { assertLedgerReconciles, book, createUsers, creditBalance, rpcClient } from "./credits_fixtures.ts";

function purchaseSession(userId: string, credits: number, amountCents: number, paymentStatus = "paid") {
  const id = crypto.randomUUID().replaceAll("-", "");
  return {
    id: `cs_credit_${id}`,
    object: "checkout.session",
    amount_total: amountCents,
    currency: "eur",
    payment_status: paymentStatus,
    payment_intent: `pi_credit_${id}`,
    metadata: { kind: "credit_purchase", user_id: userId, credits: String(credits) },
  };
}

function invoice(userId: string, planId: string, subscriptionId: string, periodStart: number) {
  return {
    id: `in_${crypto.randomUUID().replaceAll("-", "")}`,
    object: "invoice",
    parent: { subscription_details: { subscription: subscriptionId, metadata: { user_id: userId, plan_id: planId } } },
    lines: { data: [{ period: { start: periodStart, end: periodStart + 30 * 24 * 3600 } }] },
  };
}

async function createPlan(monthlyCredits: number): Promise<string> {
  const planId = `plan_${crypto.randomUUID().slice(0, 8)}`;
  const sql = connectDatabase(1);
  try {
    await sql`insert into credits.plans (plan_id, monthly_credits) values (${planId}, ${monthlyCredits})`;
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
  const session = purchaseSession(userId, 120, 6000);
  const completed = event("checkout.session.completed", session);
  const results = await Promise.all([
    ...Array.from({ length: 10 }, () => deliver(completed)),
    deliver(event("checkout.session.async_payment_succeeded", session)),
  ]);
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.status)));
  // One delivery credits; the other deliveries of that event replay its result, the other event finds it done.
  assert.equal(results.filter((result) => result.body.outcome === "credited" && result.body.result.replayed === false).length, 1);
  assert.equal(results.filter((result) => result.body.result.replayed === true).length, 9);
  assert.equal(await creditBalance(userId), 120);
  assert.equal(await count("select count(*) from credits.credit_transactions where user_id = $1 and type = 'purchase'", userId), 1);
  await assertLedgerReconciles();
});

Deno.test("credit purchase: pending, failed and cancelled payments are recorded and change no balance", async () => {
  const [userId] = await createUsers(1);
  const pending = purchaseSession(userId, 50, 2500, "unpaid");
  const waiting = await deliver(event("checkout.session.completed", pending));
  assert.equal(waiting.body.outcome, "payment_pending");
  const failed = await deliver(event("checkout.session.async_payment_failed", pending));
  assert.equal(failed.body.outcome, "marked_failed");
  const expired = purchaseSession(userId, 50, 2500, "unpaid");
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
  const session = purchaseSession(buyer, 100, 5000);
  await deliver(event("checkout.session.completed", session));
  const charge = (refunded: number) => ({ id: `ch_${session.payment_intent}`, object: "charge", payment_intent: session.payment_intent, amount: 5000, amount_refunded: refunded, currency: "eur" });
  const partial = await deliver(event("charge.refunded", charge(1000)));
  assert.equal(partial.body.result.credits_reversed, 20);
  assert.equal(await creditBalance(buyer), 80);
  // The buyer spends 70 credits, then the rest of the payment is refunded: 80 more to take, 10 left.
  const client = rpcClient(1);
  const booked = await book(client, buyer, other, 70);
  await client.end();
  assert.equal(booked.ok, true);
  const full = await deliver(event("charge.refunded", charge(5000)));
  assert.equal(full.body.result.credits_reversed, 80);
  assert.equal(full.body.result.taken_from_balance_credits, 10);
  assert.equal(full.body.result.receivable_credits, 70);
  assert.equal(await creditBalance(buyer), 0);
  assert.equal(await count("select count(*) from credits.receivables where user_id = $1 and status = 'open' and amount_credits = 70", buyer), 1);
  assert.equal(await count("select count(*) from ops.alerts where user_id = $1 and kind = 'refund_receivable'", buyer), 1);
  await assertLedgerReconciles();
});

Deno.test("credit purchase: a user who does not exist is 404 (recorded), and the retry credits once the user exists", async () => {
  const userId = crypto.randomUUID();
  const completed = event("checkout.session.completed", purchaseSession(userId, 40, 2000));
  const first = await deliver(completed);
  assert.equal(first.status, 404);
  assert.equal(first.body.error.code, "unmatched_payment");
  assert.equal(await count("select count(*) from credits.unmatched_payments where user_id = $1 and resolved_at is null", userId), 1);
  assert.equal(await count("select count(*) from credits.user_accounts where user_id = $1", userId), 0, "payments never create users");
  const sql = connectDatabase(1);
  try {
    await sql`insert into auth.users (id, aud, role, email) values (${userId}, 'authenticated', 'authenticated', ${`${userId}@late.test`})`;
  } finally {
    await sql.end();
  }
  const retry = await deliver(completed);
  assert.equal(retry.status, 200);
  assert.equal(retry.body.outcome, "credited");
  assert.equal(await creditBalance(userId), 40);
  assert.equal(await count("select count(*) from credits.unmatched_payments where user_id = $1 and resolved_at is not null", userId), 1);
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
    await sql`insert into credits.plans (plan_id, monthly_credits) values (${planId}, 75)`;
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
