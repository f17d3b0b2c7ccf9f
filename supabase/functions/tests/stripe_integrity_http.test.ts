// Stripe integrity for festival cards, end to end: return URLs on the allow-list, sessions that
// expire after 30 minutes and count toward the card maximum until then, disputes that hold only
// the disputed money (also racing a sale, also delivered concurrently), charge.dispute.closed,
// failed refunds, and signed events the database refuses (an invalid_event alert, then 200).
// Every test that moves money ends with ledger_reconcile() empty.

import assert from "node:assert/strict";
import { call, connectDatabase } from "./http_helpers.ts";
import { deliver, event } from "./stripe_helpers.ts";
import { order, recharge, registerCards, rpcClient, uniqueKey } from "./festival_fixtures.ts";
import { anonKey } from "../../../scripts/lib/tokens.ts";

const anon = await anonKey();
const sql = connectDatabase(2);
const RETURN_URL = "http://127.0.0.1:54323/topup";

interface Session {
  id: string;
  amount_total: number;
  currency: string;
  metadata: Record<string, string>;
  payment_intent: string | null;
  payment_status: string;
}

async function checkout(
  cardId: string,
  purchase: { amount_cents?: number; package_code?: string },
  urls: { success_url?: string; cancel_url?: string } = {},
) {
  return await call("create-checkout-session", {
    method: "POST",
    token: anon,
    json: {
      card_id: cardId,
      ...purchase,
      success_url: urls.success_url ?? `${RETURN_URL}/ok`,
      cancel_url: urls.cancel_url ?? `${RETURN_URL}/cancel`,
      client_request_id: uniqueKey("integrity-checkout"),
    },
  });
}

/** A paid card top-up session as Stripe would send it for what create-checkout-session created. */
async function paidSession(cardId: string, purchase: { amount_cents?: number; package_code?: string }): Promise<Session> {
  const created = await checkout(cardId, purchase);
  assert.equal(created.status, 200, JSON.stringify(created.body));
  return {
    id: String(created.body.session_id),
    amount_total: Number(created.body.amount_cents),
    currency: "eur",
    payment_intent: `pi_int_${crypto.randomUUID().replaceAll("-", "")}`,
    payment_status: "paid",
    metadata: {
      kind: "card_recharge",
      card_id: cardId,
      recharge_id: String(created.body.recharge_id),
      package_code: String(created.body.package_code ?? ""),
      amount_cents: String(created.body.amount_cents),
      bonus_cents: String(created.body.bonus_cents),
    },
  };
}

function dispute(session: Session, amount: number, id = `dp_${crypto.randomUUID()}`, status = "needs_response") {
  return { id, object: "dispute", amount, charge: `ch_${session.payment_intent}`, payment_intent: session.payment_intent, currency: "eur", status };
}

function refund(session: Session, amount: number, status: string, id = `re_${crypto.randomUUID()}`) {
  return { id, object: "refund", amount, charge: `ch_${session.payment_intent}`, payment_intent: session.payment_intent, currency: "eur", status };
}

function charge(session: Session, amountRefunded: number) {
  return { id: `ch_${session.payment_intent}`, object: "charge", payment_intent: session.payment_intent, amount: session.amount_total, amount_refunded: amountRefunded, currency: "eur" };
}

async function balance(cardId: string): Promise<number> {
  const [row] = await sql`select a.balance_cents::int as cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = ${cardId}`;
  return row.cents;
}

async function holdBalance(disputeId: string): Promise<number> {
  const [row] = await sql`select balance_cents::int as cents from ledger.accounts where code = ${"dispute_hold:" + disputeId}`;
  return row?.cents ?? 0;
}

async function reconcileIsEmpty(): Promise<void> {
  assert.deepEqual([...await sql`select * from public.ledger_reconcile()`], []);
}

async function newCards(count: number): Promise<string[]> {
  const client = rpcClient(1);
  try {
    return await registerCards(client, count, "FSI");
  } finally {
    await client.end();
  }
}

async function fund(cardId: string, cents: number): Promise<void> {
  const client = rpcClient(1);
  try {
    const result = await recharge(client, cardId, cents);
    assert.equal(result.ok, true, JSON.stringify(result));
  } finally {
    await client.end();
  }
}

// ---------------------------------------------------------------------------------------------
// Item 15: return URLs on the allow-list
// ---------------------------------------------------------------------------------------------

Deno.test("checkout: success_url or cancel_url outside CHECKOUT_ALLOWED_ORIGINS is 400 and creates nothing", async () => {
  const [cardId] = await newCards(1);
  for (const urls of [{ success_url: "https://evil.example/ok" }, { cancel_url: "https://festival.test.evil.example/x" }]) {
    const response = await checkout(cardId, { amount_cents: 1000 }, urls);
    assert.equal(response.status, 400, JSON.stringify(response.body));
    const error = response.body.error as { code: string; fields: { path: string }[] };
    assert.equal(error.code, "invalid_input");
    assert.deepEqual(error.fields.map((field) => field.path), [Object.keys(urls)[0]]);
  }
  const [{ count }] = await sql`select count(*)::int from festival.recharges where card_id = ${cardId}`;
  assert.equal(count, 0);
  const allowed = await checkout(cardId, { amount_cents: 1000 }, { success_url: "http://localhost:5173/ok" });
  assert.equal(allowed.status, 200, JSON.stringify(allowed.body));
});

// ---------------------------------------------------------------------------------------------
// Item 10: sessions expire after 30 minutes and count toward the maximum until then
// ---------------------------------------------------------------------------------------------

Deno.test("checkout: the session expires 30 minutes out (Stripe gets expires_at), stored on the pending row", async () => {
  const [cardId] = await newCards(1);
  const created = await checkout(cardId, { amount_cents: 1000 });
  assert.equal(created.status, 200, JSON.stringify(created.body));
  const expiresAt = Date.parse(String(created.body.expires_at));
  const minutes = (expiresAt - Date.now()) / 60_000;
  assert.ok(minutes > 30 && minutes <= 32, `expires in ${minutes} minutes`);
  const [row] = await sql`select expires_at from festival.recharges where id = ${Number(created.body.recharge_id)}`;
  assert.equal(row.expires_at.getTime(), expiresAt);
  // The Stripe stand-in keeps what it was sent, like Stripe's GET /v1/checkout/sessions/:id.
  const session = await fetch(
    `http://127.0.0.1:${Deno.env.get("STRIPE_API_PORT")}/v1/checkout/sessions/${created.body.session_id}`,
    { headers: { authorization: "Bearer sk_test_local_stand_in" } },
  ).then((response) => response.json());
  assert.equal(session.expires_at, Math.floor(expiresAt / 1000));
});

Deno.test("checkout: pending sessions count toward the card maximum until checkout.session.expired closes them", async () => {
  const [cardId] = await newCards(1);
  await fund(cardId, 25000);
  await fund(cardId, 20000);
  const first = await paidSession(cardId, { amount_cents: 3000 });
  const second = await checkout(cardId, { amount_cents: 3000 });
  assert.equal(second.status, 422, JSON.stringify(second.body));
  assert.equal((second.body.error as { code: string }).code, "limit_exceeded");
  const expired = await deliver(event("checkout.session.expired", { ...first, payment_status: "unpaid", payment_intent: null }));
  assert.equal(expired.body.outcome, "marked_failed");
  const third = await checkout(cardId, { amount_cents: 3000 });
  assert.equal(third.status, 200, JSON.stringify(third.body));
});

// ---------------------------------------------------------------------------------------------
// Item 8: disputes hold the disputed money; the card stays usable
// ---------------------------------------------------------------------------------------------

Deno.test("webhook: a dispute holds only the disputed amount, the card keeps selling; won releases it", async () => {
  const [cardId] = await newCards(1);
  await fund(cardId, 20000);
  const session = await paidSession(cardId, { amount_cents: 500 });
  assert.equal((await deliver(event("checkout.session.completed", session))).body.outcome, "credited");
  const disputed = dispute(session, 500);
  const created = await deliver(event("charge.dispute.created", disputed));
  assert.equal(created.status, 200);
  assert.equal(created.body.outcome, "dispute_hold_opened");
  const [card] = await sql`select status from festival.cards where id = ${cardId}`;
  assert.equal(card.status, "active");
  assert.equal(await balance(cardId), 20000);
  assert.equal(await holdBalance(disputed.id), 500);
  const client = rpcClient(1);
  const sale = await order(client, cardId, [{ product_id: "beer", quantity: 1 }]);
  await client.end();
  assert.equal(sale.ok, true, JSON.stringify(sale));
  const closed = await deliver(event("charge.dispute.closed", { ...disputed, status: "won" }));
  assert.equal(closed.status, 200);
  assert.equal(closed.body.outcome, "dispute_won_released");
  assert.equal(await balance(cardId), 20050);
  assert.equal(await holdBalance(disputed.id), 0);
  await reconcileIsEmpty();
});

Deno.test("webhook: a lost dispute is written off against the hold; the rest of the card stays usable", async () => {
  const [cardId] = await newCards(1);
  await fund(cardId, 5000);
  const session = await paidSession(cardId, { package_code: "MIDI" }); // 5000 + 250 bonus
  await deliver(event("checkout.session.completed", session));
  const disputed = dispute(session, 5000);
  await deliver(event("charge.dispute.created", disputed));
  assert.equal(await balance(cardId), 5000);
  const closed = await deliver(event("charge.dispute.closed", { ...disputed, status: "lost" }));
  assert.equal(closed.body.outcome, "dispute_lost_written_off");
  assert.equal(await balance(cardId), 5000);
  assert.equal(await holdBalance(disputed.id), 0);
  await reconcileIsEmpty();
});

Deno.test("webhook: one dispute event delivered 8 times concurrently holds once", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 2000 });
  await deliver(event("checkout.session.completed", session));
  const created = event("charge.dispute.created", dispute(session, 2000));
  const results = await Promise.all(Array.from({ length: 8 }, () => deliver(created)));
  assert.ok(results.every((result) => result.status === 200));
  assert.equal(results.filter((result) => result.body.result?.replayed === false).length, 1);
  assert.equal(await balance(cardId), 0);
  const [{ holds }] = await sql`select count(*)::int as holds from festival.card_disputes where card_id = ${cardId}`;
  assert.equal(holds, 1);
  await reconcileIsEmpty();
});

Deno.test("webhook: a dispute racing sales on the same card never loses or invents a cent", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 5000 });
  await deliver(event("checkout.session.completed", session));
  const disputed = dispute(session, 5000);
  const client = rpcClient(4);
  try {
    const [disputeResult, ...sales] = await Promise.all([
      deliver(event("charge.dispute.created", disputed)),
      ...Array.from({ length: 4 }, () => order(client, cardId, [{ product_id: "cocktail", quantity: 1 }])),
    ]);
    assert.equal(disputeResult.status, 200);
    const sold = sales.filter((sale) => sale.ok).length * 900;
    const result = disputeResult.body.result as { from_card_cents: number; receivable_cents: number };
    assert.equal(result.from_card_cents + result.receivable_cents, 5000);
    // Card + hold + sales always equals what was credited; what the sales took before the hold is owed.
    assert.equal(await balance(cardId) + await holdBalance(disputed.id) - result.receivable_cents + sold, 5000);
  } finally {
    await client.end();
  }
  await reconcileIsEmpty();
});

Deno.test("webhook: created and closed (won) of one dispute delivered concurrently, each twice, end with the card whole", async () => {
  const [cardId] = await newCards(1);
  await fund(cardId, 1000);
  const session = await paidSession(cardId, { package_code: "MIDI" });
  await deliver(event("checkout.session.completed", session));
  const disputed = dispute(session, 5000);
  const created = event("charge.dispute.created", disputed);
  const closed = event("charge.dispute.closed", { ...disputed, status: "won" });
  const client = rpcClient(2);
  try {
    const results = await Promise.all([
      deliver(created),
      deliver(closed),
      deliver(created),
      deliver(closed),
      order(client, cardId, [{ product_id: "water", quantity: 1 }]),
      order(client, cardId, [{ product_id: "water", quantity: 1 }]),
    ]);
    assert.ok(results.slice(0, 4).every((result) => (result as { status: number }).status === 200));
    const sold = results.slice(4).filter((sale) => (sale as { ok: boolean }).ok).length * 200;
    const [row] = await sql`select status from festival.card_disputes where stripe_dispute_id = ${disputed.id}`;
    assert.equal(row.status, "won");
    assert.equal(await holdBalance(disputed.id), 0);
    assert.equal(await balance(cardId), 6250 - sold);
    const [{ open }] = await sql`select count(*)::int as open from festival.receivables where card_id = ${cardId} and status = 'open'`;
    assert.equal(open, 0);
  } finally {
    await client.end();
  }
  await reconcileIsEmpty();
});

Deno.test("webhook: a dispute close with a status that does not close a dispute is an invalid_event, 200", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { amount_cents: 1000 });
  await deliver(event("checkout.session.completed", session));
  const closed = event("charge.dispute.closed", dispute(session, 1000, undefined, "needs_response"));
  const result = await deliver(closed);
  assert.equal(result.status, 200);
  assert.equal(result.body.outcome, "invalid_event_data");
  const [{ alerts }] = await sql`select count(*)::int as alerts from ops.alerts where kind = 'invalid_event' and stripe_object_id = ${closed.id}`;
  assert.equal(alerts, 1);
  assert.equal(await balance(cardId), 1000);
});

Deno.test("webhook: charge.refund.updated with status failed restores what the refund reversed, once", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { package_code: "MAXI" }); // 10000 + 1000 bonus
  await deliver(event("checkout.session.completed", session));
  await deliver(event("charge.refunded", charge(session, 4000)));
  assert.equal(await balance(cardId), 6600);
  // Stripe reports a failure later than the refund it fails (times are whole seconds).
  const later = Math.floor(Date.now() / 1000) + 60;
  const failed = { ...event("charge.refund.updated", refund(session, 4000, "failed")), created: later };
  const sameRefundOtherEvent = { ...event(failed.type, failed.data.object), created: later };
  const results = await Promise.all([deliver(failed), deliver(failed), deliver(sameRefundOtherEvent)]);
  assert.ok(results.every((result) => result.status === 200));
  const restored = results.filter((result) => result.body.result?.replayed === false && result.body.outcome === "refund_failure_restored");
  assert.equal(restored.length, 1, JSON.stringify(results.map((result) => result.body)));
  assert.equal(await balance(cardId), 11000);
  const succeeded = await deliver(event("charge.refund.updated", refund(session, 1000, "succeeded")));
  assert.equal(succeeded.body.outcome, "ignored_refund_not_failed");
  await reconcileIsEmpty();
});

Deno.test("webhook: a refunded total taken before a failure but delivered after it reverses only what did not fail", async () => {
  const [cardId] = await newCards(1);
  const session = await paidSession(cardId, { package_code: "MAXI" }); // 10000 + 1000 bonus
  await deliver(event("checkout.session.completed", session));
  const t0 = Math.floor(Date.now() / 1000);
  const first = refund(session, 4000, "failed");
  await deliver({ ...event("charge.refunded", charge(session, 4000)), created: t0 });
  assert.equal(await balance(cardId), 6600);
  const failure = await deliver({ ...event("charge.refund.updated", { ...first, created: t0 }), created: t0 + 120 });
  assert.equal(failure.body.outcome, "refund_failure_restored");
  assert.equal(await balance(cardId), 11000);
  // A second refund of 2000 was made before the first failed; its charge.refunded arrives last.
  const late = await deliver({ ...event("charge.refunded", charge(session, 6000)), created: t0 + 60 });
  assert.equal(late.body.result.refund_cents, 2000);
  assert.equal(await balance(cardId), 8800);
  await reconcileIsEmpty();
});

// ---------------------------------------------------------------------------------------------
// Item 9: signed events the database refuses
// ---------------------------------------------------------------------------------------------

Deno.test("webhook: a signed event the database refuses is answered 200 after an invalid_event alert", async () => {
  const session: Session = {
    id: `cs_refused_${crypto.randomUUID()}`,
    amount_total: 1000,
    currency: "eur",
    payment_intent: `pi_refused_${crypto.randomUUID()}`,
    payment_status: "paid",
    metadata: {},
  };
  const refused = event("charge.refunded", charge(session, 0));
  const result = await deliver(refused);
  assert.equal(result.status, 200);
  assert.equal(result.body.outcome, "invalid_event_data");
  const alerts = await sql`select kind, severity, details ->> 'event_type' as type, details ->> 'sqlstate' as sqlstate
    from ops.alerts where kind = 'invalid_event' and stripe_object_id = ${refused.id}`;
  assert.deepEqual(alerts.map((row) => ({ ...row })), [{ kind: "invalid_event", severity: "critical", type: "charge.refunded", sqlstate: "22023" }]);
});

Deno.test({
  name: "stripe integrity tests: close the database connection",
  fn: async () => {
    await sql.end();
  },
});
