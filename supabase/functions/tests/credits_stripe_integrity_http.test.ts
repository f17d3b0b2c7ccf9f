// Credits through Stripe, hardened: credits are sold only from the price list through
// create-credit-checkout (a pending purchase we created; metadata alone buys nothing), subscription
// invoices allocate from the billed price and the invoice's own period, refunded invoices take their
// credits back in proportion, and disputes freeze the disputed credits until Stripe decides.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { deliver, event } from "./stripe_helpers.ts";
import {
  assertLedgerReconciles,
  book,
  createUsers,
  creditBalance,
  rpcClient,
  uniqueKey,
} from "./credits_fixtures.ts";
import { DEMO_STAFF, signToken, userToken } from "../../../scripts/lib/tokens.ts";
import { checkoutExpiry, checkoutSessionParams } from "../_shared/checkout.ts";
import type { RpcCall } from "../_shared/rpc.ts";
import { createCreditCheckoutHandler } from "../create-credit-checkout/handler.ts";

const RETURN_URLS = {
  success_url: "http://127.0.0.1:3000/credits/ok",
  cancel_url: "http://127.0.0.1:3000/credits/cancel",
};

async function query(text: string, ...values: unknown[]) {
  const sql = connectDatabase(1);
  try {
    return [...await sql.unsafe(text, values as never[])];
  } finally {
    await sql.end();
  }
}

async function count(text: string, ...values: unknown[]): Promise<number> {
  const [row] = await query(text, ...values);
  return Number(row.count);
}

function checkout(token: string, json: Record<string, unknown>, headers: Record<string, string> = {}) {
  return call("create-credit-checkout", { method: "POST", token, json, headers });
}

/** The session Stripe sends back for what create-credit-checkout created, paid. */
function paidSession(
  created: Record<string, unknown>,
  userId: string,
  overrides: Record<string, unknown> = {},
) {
  return {
    id: String(created.session_id),
    object: "checkout.session",
    amount_total: Number(created.amount_cents),
    currency: String(created.currency).toLowerCase(),
    payment_status: "paid",
    payment_intent: `pi_cc_${crypto.randomUUID().replaceAll("-", "")}`,
    metadata: {
      kind: "credit_purchase",
      user_id: userId,
      credits: String(created.credits),
      purchase_id: String(created.purchase_id),
    },
    ...overrides,
  };
}

async function buy(userId: string, packageCode: string) {
  const created = await checkout(await userToken(userId), {
    package_code: packageCode,
    client_request_id: uniqueKey("credit-checkout"),
    ...RETURN_URLS,
  });
  assert.equal(created.status, 200, JSON.stringify(created.body));
  return created.body;
}

// ---------------------------------------------------------------------------------------------
// Item 1: credits are sold only from the price list, against a pending purchase we created
// ---------------------------------------------------------------------------------------------

Deno.test("metadata alone buys nothing: a session saying credit_purchase for 1000 credits at 0 cents is not credited, alerted, 200", async () => {
  const [userId] = await createUsers(1);
  const id = crypto.randomUUID().replaceAll("-", "");
  const forged = {
    id: `cs_forged_${id}`,
    object: "checkout.session",
    amount_total: 0,
    currency: "eur",
    payment_status: "no_payment_required",
    payment_intent: null,
    metadata: { kind: "credit_purchase", user_id: userId, credits: "1000" },
  };
  const result = await deliver(event("checkout.session.completed", forged));
  assert.equal(result.status, 200, JSON.stringify(result.body));
  assert.equal(await creditBalance(userId), 0);
  assert.equal(
    await count(
      "select count(*) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = $1",
      forged.id,
    ),
    1,
  );
  // Paid, in the right currency, still without a pending purchase: not credited either.
  const paid = {
    ...forged,
    id: `cs_forged_paid_${id}`,
    amount_total: 5000,
    payment_status: "paid",
    payment_intent: `pi_forged_${id}`,
  };
  const second = await deliver(event("checkout.session.completed", paid));
  assert.equal(second.status, 200);
  assert.equal(await creditBalance(userId), 0);
  assert.equal(
    await count(
      "select count(*) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = $1",
      paid.id,
    ),
    1,
  );
  await assertLedgerReconciles();
});

Deno.test("create-credit-checkout: a pending purchase at the package's price, one Stripe session per key", async () => {
  const [userId] = await createUsers(1);
  const token = await userToken(userId);
  const key = uniqueKey("credit-checkout-same");
  const first = await checkout(token, { package_code: "CREDITS-50", client_request_id: key, ...RETURN_URLS });
  assert.equal(first.status, 200, JSON.stringify(first.body));
  assert.match(String(first.body.session_id), /^cs_test_/);
  assert.match(String(first.body.checkout_url), /^https:\/\//);
  assert.equal(first.body.credits, 50);
  assert.equal(first.body.amount_cents, 4500);
  assert.equal(first.body.currency, "EUR");
  assert.equal(first.body.replayed, false);
  const expiresAt = Date.parse(String(first.body.expires_at));
  assert.ok(
    expiresAt > Date.now() + 25 * 60_000 && expiresAt <= Date.now() + 31 * 60_000,
    String(first.body.expires_at),
  );
  // The same key (as a header this time) answers the same session.
  const again = await checkout(token, { package_code: "CREDITS-50", ...RETURN_URLS }, {
    "Idempotency-Key": key,
  });
  assert.equal(again.status, 200);
  assert.equal(again.body.session_id, first.body.session_id);
  assert.equal(again.body.replayed, true);
  const rows = await query(
    "select status, credits, amount_cents, currency, stripe_session_id from credits.credit_purchases where user_id = $1",
    userId,
  );
  assert.deepEqual(rows.map((row) => ({ ...row })), [{
    status: "pending",
    credits: "50",
    amount_cents: "4500",
    currency: "EUR",
    stripe_session_id: first.body.session_id,
  }]);
  assert.equal(await creditBalance(userId), 0, "nothing is credited before payment");
  // The same key for another package is a reused key.
  const reused = await checkout(token, {
    package_code: "CREDITS-10",
    client_request_id: key,
    ...RETURN_URLS,
  });
  assert.equal(reused.status, 422);
  assert.equal((reused.body.error as { code: string }).code, "idempotency_key_reused");
});

Deno.test("create-credit-checkout: the same key sent 5 times concurrently gives one purchase and one session", async () => {
  const [userId] = await createUsers(1);
  const token = await userToken(userId);
  const key = uniqueKey("credit-checkout-race");
  const results = await Promise.all(
    Array.from({ length: 5 }, () => checkout(token, { package_code: "CREDITS-10", client_request_id: key, ...RETURN_URLS })),
  );
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.body)));
  assert.equal(new Set(results.map((result) => result.body.session_id)).size, 1);
  assert.equal(results.filter((result) => result.body.replayed === false).length, 1);
  assert.equal(await count("select count(*) from credits.credit_purchases where user_id = $1", userId), 1);
});

Deno.test("create-credit-checkout: unknown package 400, staff 403, anonymous sign-in 403, anon key 403, foreign return URL 400, no key 400", async () => {
  const [userId] = await createUsers(1);
  const token = await userToken(userId);
  const unknown = await checkout(token, {
    package_code: "CREDITS-7",
    client_request_id: uniqueKey("cc"),
    ...RETURN_URLS,
  });
  assert.equal(unknown.status, 400);
  assert.equal((unknown.body.error as { code: string }).code, "unknown_package");
  const staff = await checkout(await userToken(DEMO_STAFF.cashier), {
    package_code: "CREDITS-10",
    client_request_id: uniqueKey("cc"),
    ...RETURN_URLS,
  });
  assert.equal(staff.status, 403);
  assert.equal((staff.body.error as { code: string }).code, "forbidden");
  const anonymousSignIn = await signToken({
    sub: userId,
    role: "authenticated",
    aud: "authenticated",
    is_anonymous: true,
  });
  const anonymous = await checkout(anonymousSignIn, {
    package_code: "CREDITS-10",
    client_request_id: uniqueKey("cc"),
    ...RETURN_URLS,
  });
  assert.equal(anonymous.status, 403);
  const anonKey = await signToken({ role: "anon" });
  assert.equal(
    (await checkout(anonKey, {
      package_code: "CREDITS-10",
      client_request_id: uniqueKey("cc"),
      ...RETURN_URLS,
    })).status,
    403,
  );
  const foreign = await checkout(token, {
    package_code: "CREDITS-10",
    client_request_id: uniqueKey("cc"),
    success_url: "https://evil.example/ok",
    cancel_url: RETURN_URLS.cancel_url,
  });
  assert.equal(foreign.status, 400);
  assert.equal((foreign.body.error as { code: string }).code, "invalid_input");
  const noKey = await checkout(token, { package_code: "CREDITS-10", ...RETURN_URLS });
  assert.equal(noKey.status, 400);
  const sneaky = await checkout(token, {
    package_code: "CREDITS-10",
    credits: 1000,
    client_request_id: uniqueKey("cc"),
    ...RETURN_URLS,
  });
  assert.equal(sneaky.status, 400, "the client cannot name the credits");
  assert.equal(await count("select count(*) from credits.credit_purchases where user_id = $1", userId), 0);
});

Deno.test("credit checkout paid: completed and async_payment_succeeded delivered concurrently (5 times each) credit once", async () => {
  const [userId] = await createUsers(1);
  const created = await buy(userId, "CREDITS-100");
  const session = paidSession(created, userId);
  const completed = event("checkout.session.completed", session);
  const succeeded = event("checkout.session.async_payment_succeeded", session);
  const results = await Promise.all([
    ...Array.from({ length: 5 }, () => deliver(completed)),
    ...Array.from({ length: 5 }, () => deliver(succeeded)),
  ]);
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.body)));
  assert.equal(
    results.filter((result) => result.body.outcome === "credited" && result.body.result.replayed === false)
      .length,
    1,
  );
  assert.equal(await creditBalance(userId), 100);
  assert.equal(
    await count(
      "select count(*) from credits.credit_transactions where user_id = $1 and type = 'purchase'",
      userId,
    ),
    1,
  );
  const [row] = await query(
    "select status, stripe_payment_intent_id from credits.credit_purchases where stripe_session_id = $1",
    session.id,
  );
  assert.deepEqual({ ...row }, { status: "completed", stripe_payment_intent_id: session.payment_intent });
  await assertLedgerReconciles();
});

Deno.test("credit checkout: another amount, currency or credits than the pending purchase is not credited, alerted, 200", async () => {
  const [userId] = await createUsers(1);
  for (const overrides of [{ amount_total: 100 }, { currency: "usd" }]) {
    const created = await buy(userId, "CREDITS-10");
    const session = paidSession(created, userId, overrides);
    const result = await deliver(event("checkout.session.completed", session));
    assert.equal(result.status, 200);
    assert.equal(result.body.outcome, "payment_mismatch");
    assert.equal(
      await count(
        "select count(*) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = $1",
        session.id,
      ),
      1,
    );
  }
  const created = await buy(userId, "CREDITS-10");
  const session = paidSession(created, userId);
  session.metadata.credits = "100";
  const result = await deliver(event("checkout.session.completed", session));
  assert.equal(result.body.outcome, "payment_mismatch");
  assert.equal(await creditBalance(userId), 0);
  assert.equal(
    await count(
      "select count(*) from credits.credit_purchases where user_id = $1 and status = 'pending'",
      userId,
    ),
    3,
  );
  await assertLedgerReconciles();
});

Deno.test("credit checkout: a 100 % discount is credited only for a package that allows promotion codes", async () => {
  const [userId] = await createUsers(1);
  const promoCode = `PROMO-${crypto.randomUUID().slice(0, 8)}`;
  await query(
    "insert into credits.credit_packages (code, credits, price_cents, currency, active, allow_promotion_codes) values ($1, 20, 1500, 'EUR', true, true)",
    promoCode,
  );
  const promo = await buy(userId, promoCode);
  const free = paidSession(promo, userId, {
    amount_total: 0,
    payment_status: "no_payment_required",
    payment_intent: null,
  });
  const credited = await deliver(event("checkout.session.completed", free));
  assert.equal(credited.status, 200);
  assert.equal(credited.body.outcome, "credited");
  assert.equal(await creditBalance(userId), 20);
  const plain = await buy(userId, "CREDITS-10");
  const notAllowed = paidSession(plain, userId, {
    amount_total: 0,
    payment_status: "no_payment_required",
    payment_intent: null,
  });
  const refused = await deliver(event("checkout.session.completed", notAllowed));
  assert.equal(refused.status, 200);
  assert.equal(refused.body.outcome, "payment_mismatch");
  assert.equal(await creditBalance(userId), 20);
  assert.equal(
    await count(
      "select count(*) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = $1",
      notAllowed.id,
    ),
    1,
  );
  await assertLedgerReconciles();
});

Deno.test("credit checkout: created at Stripe but never attached (a crash), the paid event still finds its pending purchase", async () => {
  const [userId] = await createUsers(1);
  const prepared = await query(
    "select public.sp_prepare_credit_purchase(user_id => $1, package_code => 'CREDITS-10', client_request_id => $2) as result",
    userId,
    uniqueKey("crash"),
  );
  const purchase = prepared[0].result;
  const session = paidSession(
    { ...purchase, session_id: `cs_unattached_${crypto.randomUUID().slice(0, 8)}` },
    userId,
  );
  const result = await deliver(event("checkout.session.completed", session));
  assert.equal(result.body.outcome, "credited", JSON.stringify(result.body));
  assert.equal(await creditBalance(userId), 10);
  await assertLedgerReconciles();
});

// ---------------------------------------------------------------------------------------------
// Item 3: subscription invoices allocate from the billed price and the invoice's billing period
// ---------------------------------------------------------------------------------------------

interface InvoiceOptions {
  userId: string;
  subscriptionId: string;
  priceId: string;
  periodStart: number;
  periodEnd?: number;
  amountPaid?: number;
  metadataPlanId?: string;
  lines?: unknown[];
  billingReason?: string;
}

function invoice(options: InvoiceOptions) {
  const periodEnd = options.periodEnd ?? options.periodStart + 30 * 24 * 3600;
  const id = crypto.randomUUID().replaceAll("-", "");
  return {
    id: `in_${id}`,
    object: "invoice",
    amount_paid: options.amountPaid ?? 2900,
    currency: "eur",
    billing_reason: options.billingReason ?? "subscription_cycle",
    payment_intent: `pi_in_${id}`,
    period_start: options.periodStart - 30 * 24 * 3600,
    period_end: options.periodStart,
    parent: {
      subscription_details: {
        subscription: options.subscriptionId,
        metadata: {
          user_id: options.userId,
          ...(options.metadataPlanId ? { plan_id: options.metadataPlanId } : {}),
        },
      },
    },
    lines: {
      data: options.lines ?? [{
        period: { start: options.periodStart, end: periodEnd },
        amount: options.amountPaid ?? 2900,
        pricing: { price_details: { price: options.priceId } },
        parent: { subscription_item_details: { proration: false } },
      }],
    },
  };
}

async function createPricedPlan(monthlyCredits: number, trialEarnsCredits = false): Promise<string> {
  const priceId = `price_${crypto.randomUUID().slice(0, 12)}`;
  await query(
    "insert into credits.plans (plan_id, monthly_credits, stripe_price_id, trial_earns_credits) values ($1, $2, $1, $3)",
    priceId,
    monthlyCredits,
    trialEarnsCredits,
  );
  return priceId;
}

Deno.test("invoice: the billed price decides the credits, not metadata.plan_id", async () => {
  const [userId] = await createUsers(1);
  const cheap = await createPricedPlan(10);
  const expensive = await createPricedPlan(1000);
  const subscriptionId = `sub_${crypto.randomUUID().slice(0, 12)}`;
  const paid = await deliver(event(
    "invoice.payment_succeeded",
    invoice({
      userId,
      subscriptionId,
      priceId: cheap,
      metadataPlanId: expensive,
      periodStart: 1_790_000_000,
    }),
  ));
  assert.equal(paid.status, 200, JSON.stringify(paid.body));
  assert.equal(await creditBalance(userId), 10);
  await assertLedgerReconciles();
});

Deno.test("invoice: amount_paid 0 allocates only when the plan says trials earn credits", async () => {
  const [trialist, earner] = await createUsers(2);
  const plain = await createPricedPlan(100);
  const generous = await createPricedPlan(40, true);
  const unpaid = await deliver(event(
    "invoice.payment_succeeded",
    invoice({
      userId: trialist,
      subscriptionId: `sub_${crypto.randomUUID().slice(0, 12)}`,
      priceId: plain,
      amountPaid: 0,
      periodStart: 1_790_000_000,
    }),
  ));
  assert.equal(unpaid.status, 200);
  assert.equal(await creditBalance(trialist), 0);
  const trial = await deliver(event(
    "invoice.payment_succeeded",
    invoice({
      userId: earner,
      subscriptionId: `sub_${crypto.randomUUID().slice(0, 12)}`,
      priceId: generous,
      amountPaid: 0,
      periodStart: 1_790_000_000,
    }),
  ));
  assert.equal(trial.status, 200);
  assert.equal(await creditBalance(earner), 40);
  await assertLedgerReconciles();
});

Deno.test("invoice: a mid-period proration invoice does not allocate a second period", async () => {
  const [userId] = await createUsers(1);
  const priceId = await createPricedPlan(300);
  const subscriptionId = `sub_${crypto.randomUUID().slice(0, 12)}`;
  const start = 1_790_000_000;
  const end = start + 30 * 24 * 3600;
  await deliver(
    event(
      "invoice.payment_succeeded",
      invoice({ userId, subscriptionId, priceId, periodStart: start, periodEnd: end }),
    ),
  );
  assert.equal(await creditBalance(userId), 300);
  const middle = start + 15 * 24 * 3600;
  const proration = await deliver(event(
    "invoice.payment_succeeded",
    invoice({
      userId,
      subscriptionId,
      priceId,
      periodStart: middle,
      billingReason: "subscription_update",
      amountPaid: 1450,
      lines: [
        {
          period: { start: middle, end },
          amount: 1450,
          pricing: { price_details: { price: priceId } },
          parent: { subscription_item_details: { proration: true } },
        },
      ],
    }),
  ));
  assert.equal(proration.status, 200, JSON.stringify(proration.body));
  assert.equal(await creditBalance(userId), 300, "the proration invoice allocates nothing");
  // The same when the proration line claims a full-looking period starting mid-period.
  const overlapping = await deliver(event(
    "invoice.payment_succeeded",
    invoice({
      userId,
      subscriptionId,
      priceId,
      periodStart: middle,
      periodEnd: middle + 30 * 24 * 3600,
    }),
  ));
  assert.equal(overlapping.status, 200);
  assert.equal(await creditBalance(userId), 300, "an overlapping period allocates nothing");
  // The next period does.
  await deliver(
    event("invoice.payment_succeeded", invoice({ userId, subscriptionId, priceId, periodStart: end })),
  );
  assert.equal(await creditBalance(userId), 600);
  await assertLedgerReconciles();
});

// ---------------------------------------------------------------------------------------------
// Item 7: refunds of subscription invoices and disputes of credit purchases
// ---------------------------------------------------------------------------------------------

Deno.test("invoice refund: reverses the period's allocation in proportion, never below zero, the rest a receivable", async () => {
  const [userId, peer] = await createUsers(2);
  const priceId = await createPricedPlan(300);
  const paidInvoice = invoice({
    userId,
    subscriptionId: `sub_${crypto.randomUUID().slice(0, 12)}`,
    priceId,
    periodStart: 1_790_000_000,
    amountPaid: 3000,
  });
  assert.equal((await deliver(event("invoice.payment_succeeded", paidInvoice))).status, 200);
  assert.equal(await creditBalance(userId), 300);
  const charge = (refunded: number) => ({
    id: `ch_${paidInvoice.payment_intent}`,
    object: "charge",
    payment_intent: paidInvoice.payment_intent,
    invoice: paidInvoice.id,
    amount: 3000,
    amount_refunded: refunded,
    currency: "eur",
  });
  const partial = await deliver(event("charge.refunded", charge(1000)));
  assert.equal(partial.status, 200, JSON.stringify(partial.body));
  assert.equal(await creditBalance(userId), 200, "a third of the money back takes a third of the credits");
  const client = rpcClient(1);
  try {
    assert.equal((await book(client, userId, peer, 150)).ok, true);
  } finally {
    await client.end();
  }
  const full = await deliver(event("charge.refunded", charge(3000)));
  assert.equal(full.status, 200);
  assert.equal(await creditBalance(userId), 0);
  assert.equal(
    await count(
      "select count(*) from credits.receivables where user_id = $1 and status = 'open' and amount_credits = 150",
      userId,
    ),
    1,
  );
  assert.equal(
    await count("select count(*) from ops.alerts where user_id = $1 and kind = 'refund_receivable'", userId),
    1,
  );
  await assertLedgerReconciles();
});

Deno.test("credit dispute: the disputed credits are frozen; won releases them, lost reverses them", async () => {
  const [winner, loser] = await createUsers(2);
  const sessions: Record<string, ReturnType<typeof paidSession>> = {};
  for (const userId of [winner, loser]) {
    const created = await buy(userId, "CREDITS-100");
    sessions[userId] = paidSession(created, userId);
    assert.equal(
      (await deliver(event("checkout.session.completed", sessions[userId]))).body.outcome,
      "credited",
    );
  }
  const dispute = (userId: string, status: string) => ({
    id: `dp_${sessions[userId].payment_intent}`,
    object: "dispute",
    amount: 4000,
    currency: "eur",
    charge: `ch_${sessions[userId].payment_intent}`,
    payment_intent: sessions[userId].payment_intent,
    status,
  });
  for (const userId of [winner, loser]) {
    const created = await deliver(event("charge.dispute.created", dispute(userId, "needs_response")));
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.equal(await creditBalance(userId), 50, "half the money disputed freezes half the credits");
  }
  const won = await deliver(event("charge.dispute.closed", dispute(winner, "won")));
  assert.equal(won.status, 200);
  assert.equal(await creditBalance(winner), 100);
  const lost = await deliver(event("charge.dispute.closed", dispute(loser, "lost")));
  assert.equal(lost.status, 200);
  assert.equal(await creditBalance(loser), 50);
  await assertLedgerReconciles();
});

Deno.test("credit dispute: the same dispute delivered concurrently (5 times, two event ids) holds once; a card dispute is not taken for credits", async () => {
  const [userId] = await createUsers(1);
  const created = await buy(userId, "CREDITS-50");
  const session = paidSession(created, userId);
  assert.equal((await deliver(event("checkout.session.completed", session))).body.outcome, "credited");
  const dispute = {
    id: `dp_${session.payment_intent}`,
    object: "dispute",
    amount: 4500,
    currency: "eur",
    charge: `ch_${session.payment_intent}`,
    payment_intent: session.payment_intent,
    status: "needs_response",
  };
  const first = event("charge.dispute.created", dispute);
  const results = await Promise.all([
    ...Array.from({ length: 4 }, () => deliver(first)),
    deliver(event("charge.dispute.created", dispute)),
  ]);
  assert.ok(results.every((result) => result.status === 200), JSON.stringify(results.map((r) => r.body)));
  assert.equal(
    results.filter((result) =>
      result.body.outcome === "credits_held_for_dispute" && !result.body.result.replayed
    ).length,
    1,
  );
  assert.equal(await creditBalance(userId), 0);
  assert.equal(
    await count(
      "select count(*) from credits.dispute_holds where stripe_dispute_id = $1 and held_credits = 50",
      dispute.id,
    ),
    1,
  );
  // A dispute of a payment that is no credit purchase goes on to the festival's procedure.
  const other = {
    ...dispute,
    id: `dp_other_${crypto.randomUUID().slice(0, 8)}`,
    payment_intent: `pi_other_${crypto.randomUUID().slice(0, 8)}`,
  };
  const festival = await deliver(event("charge.dispute.created", other));
  assert.equal(festival.status, 200);
  assert.notEqual(festival.body.outcome, "not_a_credit_purchase");
  assert.equal(
    await count("select count(*) from credits.dispute_holds where stripe_dispute_id = $1", other.id),
    0,
  );
  await assertLedgerReconciles();
});

// ---------------------------------------------------------------------------------------------
// The shared Checkout module and the handler without a database
// ---------------------------------------------------------------------------------------------

Deno.test("checkout params: the session expires when the pending row says, promotion codes only when the package allows", () => {
  const request = {
    referenceId: "credit-purchase-1",
    idempotencyKey: "checkout-session-credit-purchase-1",
    amountCents: 1000,
    currency: "EUR",
    productName: "10 credits",
    successUrl: RETURN_URLS.success_url,
    cancelUrl: RETURN_URLS.cancel_url,
    metadata: { kind: "credit_purchase", purchase_id: "1" },
  };
  const plain = checkoutSessionParams(request, 1_800_000_000);
  assert.equal(plain.expires_at, 1_800_000_000);
  assert.equal(plain.line_items[0].price_data.currency, "eur");
  assert.equal(plain.line_items[0].price_data.unit_amount, 1000);
  assert.equal("allow_promotion_codes" in plain, false);
  assert.equal(
    checkoutSessionParams({ ...request, allowPromotionCodes: true }, 1_800_000_000).allow_promotion_codes,
    true,
  );
  const now = Date.UTC(2026, 10, 22, 9, 0, 0);
  assert.equal(checkoutExpiry(now), now / 1000 + 30 * 60);
});

Deno.test("create-credit-checkout: Stripe unreachable is 502 and attaches nothing; the same key retried creates the session", async () => {
  const calls: string[] = [];
  const prepared = {
    ok: true,
    replayed: false,
    purchase_id: 7,
    user_id: "e0000000-0000-4000-8000-0000000000aa",
    package_code: "CREDITS-10",
    credits: 10,
    amount_cents: 1000,
    currency: "EUR",
    allow_promotion_codes: false,
    status: "pending",
    session_id: null,
    checkout_url: null,
    expires_at: "2026-11-22T10:00:00+00:00",
  };
  const stub: RpcCall = (procedure) => {
    calls.push(procedure);
    return Promise.resolve(
      procedure === "sp_attach_credit_checkout_session"
        ? { ...prepared, session_id: "cs_stub", checkout_url: "https://checkout.stripe.test/c/pay/cs_stub" }
        : prepared,
    );
  };
  const sessions: string[] = [];
  let stripeUp = false;
  const handler = createCreditCheckoutHandler(stub, (request) => {
    if (!stripeUp) return Promise.reject(new Error("connection refused"));
    sessions.push(request.idempotencyKey);
    assert.equal(request.expiresAt, Date.parse(prepared.expires_at) / 1000);
    return Promise.resolve({
      id: "cs_stub",
      url: "https://checkout.stripe.test/c/pay/cs_stub",
      expiresAt: request.expiresAt!,
    });
  });
  const send = async () =>
    handler(
      new Request("http://localhost/", {
        method: "POST",
        headers: {
          authorization: `Bearer ${await userToken(prepared.user_id)}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({ package_code: "CREDITS-10", client_request_id: "stub-key", ...RETURN_URLS }),
      }),
    );
  const down = await send();
  assert.equal(down.status, 502);
  assert.equal((await down.json()).error.code, "payment_provider_unavailable");
  assert.deepEqual(calls, ["sp_prepare_credit_purchase"]);
  stripeUp = true;
  const up = await send();
  assert.equal(up.status, 200);
  assert.equal((await up.json()).session_id, "cs_stub");
  assert.deepEqual(sessions, ["checkout-session-credit-purchase-7"]);
});
