-- Credits through Stripe without trusting metadata (issue 9, items 1, 3 and 7):
--   credit packages and pending purchases (sp_prepare_credit_purchase, sp_attach_credit_checkout_session,
--   sp_process_credit_purchase), subscription invoices by billed price and billing period
--   (sp_process_subscription_invoice), refunds of invoices (sp_process_credit_invoice_refund) and
--   disputes of credit purchases (sp_process_credit_dispute, sp_close_credit_dispute).
-- Success, each outcome, replay, invalid arguments, denied roles, the records tying out with the
-- ledger, and a reconciled ledger after.
begin;
create extension if not exists pgtap with schema extensions;
select plan(85);

-- ---------------------------------------------------------------------------------------------
-- Helpers and users
-- ---------------------------------------------------------------------------------------------

create function pg_temp.alice() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000c01'::uuid $$;
create function pg_temp.bob() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000c02'::uuid $$;
create function pg_temp.carol() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000c03'::uuid $$;
create function pg_temp.dave() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000c04'::uuid $$;
create function pg_temp.peer() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000c05'::uuid $$;
create function pg_temp.cashier() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000c001'::uuid $$;

insert into auth.users (id, aud, role, email) values
  (pg_temp.alice(), 'authenticated', 'authenticated', 'alice@integrity.test'),
  (pg_temp.bob(), 'authenticated', 'authenticated', 'bob@integrity.test'),
  (pg_temp.carol(), 'authenticated', 'authenticated', 'carol@integrity.test'),
  (pg_temp.dave(), 'authenticated', 'authenticated', 'dave@integrity.test'),
  (pg_temp.peer(), 'authenticated', 'authenticated', 'peer@integrity.test');

insert into credits.credit_packages (code, credits, price_cents, currency, active, allow_promotion_codes) values
  ('T-PROMO-20', 20, 2000, 'EUR', true, true),
  ('T-RETIRED', 5, 500, 'EUR', false, false),
  -- Large enough that credits × cents overflows bigint: proportions must be numeric.
  ('T-HUGE', 9000000000000, 10000000, 'EUR', true, false);
insert into credits.plans (plan_id, monthly_credits, stripe_price_id, trial_earns_credits) values
  ('basic', 100, 'price_basic', false),
  ('trial-friendly', 40, 'price_trial', true),
  -- Large enough that credits × cents overflows bigint: proportions must be numeric.
  ('huge', 9000000000000, 'price_huge', false);

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.code(p_result jsonb) returns text language sql immutable as $$ select p_result #>> '{error,code}' $$;

create function pg_temp.pick(p_object jsonb, p_keys text[]) returns jsonb
language sql immutable as $$
  select coalesce(jsonb_object_agg(key, value), '{}'::jsonb) from jsonb_each(p_object) where key = any(p_keys)
$$;

create function pg_temp.balance(p_user_id uuid) returns bigint
language sql stable as $$
  select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
    where ua.user_id = p_user_id), 0)
$$;

-- Credits frozen by disputes: the derived balance of the credit_disputes system account.
create function pg_temp.disputed_held() returns bigint
language sql stable as $$
  select coalesce(sum(balance_cents), 0)::bigint from ledger.account_balances
  where system_purpose = 'credit_disputes' and owner_ref = 'platform'
$$;

create function pg_temp.prepare(p_user_id uuid, p_package text, p_key text) returns jsonb
language sql as $$
  select public.sp_prepare_credit_purchase(user_id => p_user_id, package_code => p_package, client_request_id => p_key)
$$;

create function pg_temp.attach(p_purchase jsonb, p_session_id text) returns jsonb
language sql as $$
  select public.sp_attach_credit_checkout_session(purchase_id => (p_purchase ->> 'purchase_id')::bigint,
    stripe_session_id => p_session_id, checkout_url => 'https://checkout.stripe.test/c/pay/' || p_session_id)
$$;

create function pg_temp.paid(p_session_id text, p_amount_cents bigint, p_event_id text, p_intent text,
  p_status text default 'paid', p_currency text default 'eur', p_purchase_id bigint default null)
returns jsonb
language sql as $$
  select public.sp_process_credit_purchase(stripe_session_id => p_session_id, amount_cents => p_amount_cents,
    currency => p_currency, payment_status => p_status, stripe_payment_intent_id => p_intent,
    stripe_event_id => p_event_id, purchase_id => p_purchase_id)
$$;

create function pg_temp.invoice(p_user_id uuid, p_price text, p_subscription text, p_start timestamptz, p_end timestamptz,
  p_amount_paid bigint, p_invoice text, p_event text)
returns jsonb
language sql as $$
  select public.sp_process_subscription_invoice(user_id => p_user_id, stripe_price_id => p_price,
    subscription_id => p_subscription, period_start => p_start, period_end => p_end, amount_paid_cents => p_amount_paid,
    currency => 'EUR', stripe_invoice_id => p_invoice, stripe_payment_intent_id => 'pi_' || p_invoice,
    stripe_event_id => p_event)
$$;

create function pg_temp.invoice_refund(p_invoice text, p_refunded bigint, p_event text, p_currency text default 'eur')
returns jsonb
language sql as $$
  select public.sp_process_credit_invoice_refund(stripe_payment_intent_id => 'pi_' || p_invoice,
    stripe_invoice_id => p_invoice, stripe_charge_id => 'ch_' || p_invoice, amount_refunded_cents => p_refunded,
    currency => p_currency, stripe_event_id => p_event)
$$;

create function pg_temp.dispute(p_intent text, p_dispute text, p_amount bigint, p_event text) returns jsonb
language sql as $$
  select public.sp_process_credit_dispute(stripe_payment_intent_id => p_intent, stripe_charge_id => 'ch_' || p_intent,
    stripe_dispute_id => p_dispute, amount_cents => p_amount, stripe_event_id => p_event)
$$;

create function pg_temp.close_dispute(p_intent text, p_dispute text, p_amount bigint, p_status text, p_event text)
returns jsonb
language sql as $$
  select public.sp_close_credit_dispute(stripe_payment_intent_id => p_intent, stripe_charge_id => 'ch_' || p_intent,
    stripe_dispute_id => p_dispute, amount_cents => p_amount, status => p_status, stripe_event_id => p_event)
$$;

-- ---------------------------------------------------------------------------------------------
-- The price list (seed) and preparing a purchase
-- ---------------------------------------------------------------------------------------------

select results_eq(
  $$ select code, credits, price_cents, currency, active from credits.credit_packages where code like 'CREDITS-%' order by credits $$,
  $$ values ('CREDITS-10', 10::bigint, 1000::bigint, 'EUR', true), ('CREDITS-50', 50::bigint, 4500::bigint, 'EUR', true),
            ('CREDITS-100', 100::bigint, 8000::bigint, 'EUR', true) $$,
  'seed: the three credit packages'
);

insert into responses select 'prep', pg_temp.prepare(pg_temp.alice(), 'CREDITS-50', 'prep-alice-1');
select is(
  pg_temp.response('prep') - 'purchase_id' - 'expires_at',
  jsonb_build_object('ok', true, 'replayed', false, 'user_id', pg_temp.alice(), 'package_code', 'CREDITS-50',
    'credits', 50, 'amount_cents', 4500, 'currency', 'EUR', 'allow_promotion_codes', false, 'status', 'pending',
    'session_id', null, 'checkout_url', null),
  'prepare: a pending purchase at the package''s price'
);
select ok(
  (pg_temp.response('prep') ->> 'expires_at')::timestamptz between now() + interval '30 minutes' and now() + interval '32 minutes',
  'prepare: the session will expire about 30 minutes from now (Stripe''s minimum, plus a minute)'
);
select ok(pg_temp.balance(pg_temp.alice()) = 0 and not exists (select 1 from ledger.operations where metadata ->> 'user_id' = pg_temp.alice()::text),
  'prepare: nothing moves');

insert into responses select 'prep-replay', pg_temp.prepare(pg_temp.alice(), 'CREDITS-50', 'prep-alice-1');
select is(pg_temp.response('prep-replay'), pg_temp.response('prep') || '{"replayed": true}', 'prepare replay: the same purchase');
insert into responses select 'prep-reuse', pg_temp.prepare(pg_temp.alice(), 'CREDITS-10', 'prep-alice-1');
select is(pg_temp.code(pg_temp.response('prep-reuse')), 'idempotency_key_reused', 'prepare: the same key for another package');
insert into responses select 'prep-other-user', pg_temp.prepare(pg_temp.bob(), 'CREDITS-50', 'prep-alice-1');
select ok(pg_temp.code(pg_temp.response('prep-other-user')) = 'idempotency_key_reused'
    and pg_temp.response('prep-other-user') -> 'purchase_id' is null,
  'prepare: another user''s key never answers their purchase');

select is(pg_temp.code(pg_temp.prepare(pg_temp.alice(), 'CREDITS-7', 'prep-alice-unknown')), 'unknown_package',
  'prepare: unknown package');
select is(pg_temp.code(pg_temp.prepare(pg_temp.alice(), 'T-RETIRED', 'prep-alice-retired')), 'unknown_package',
  'prepare: inactive package');
select is(pg_temp.code(pg_temp.prepare(pg_temp.cashier(), 'CREDITS-10', 'prep-cashier')), 'forbidden',
  'prepare: festival staff cannot buy credits');
select is(pg_temp.code(pg_temp.prepare('e0000000-0000-4000-8000-0000000000ff', 'CREDITS-10', 'prep-nobody')), 'user_not_found',
  'prepare: a user who does not exist');
select is(pg_temp.prepare(pg_temp.alice(), 'CREDITS-7', 'prep-alice-unknown'),
  pg_temp.prepare(pg_temp.alice(), 'CREDITS-7', 'prep-alice-unknown'),
  'prepare: a business failure replays as recorded');
select is_empty(
  $$ select 1 from credits.credit_purchases where client_request_id in ('prep-alice-unknown', 'prep-alice-retired', 'prep-cashier', 'prep-nobody') $$,
  'prepare: failures store no purchase'
);
select throws_ok($$ select pg_temp.prepare(null, 'CREDITS-10', 'prep-null') $$, '22023', null, 'prepare: null user');
select throws_ok($$ select pg_temp.prepare(pg_temp.alice(), 'CREDITS-10', '') $$, '22023', null, 'prepare: empty key');

insert into responses select 'attach', pg_temp.attach(pg_temp.response('prep'), 'cs_alice_1');
insert into responses select 'attach-again', pg_temp.attach(pg_temp.response('prep'), 'cs_alice_other');
select ok(
  pg_temp.response('attach') ->> 'session_id' = 'cs_alice_1' and pg_temp.response('attach-again') ->> 'session_id' = 'cs_alice_1',
  'attach: the first session wins'
);
select is(pg_temp.code(public.sp_attach_credit_checkout_session(-1, 'cs_none', 'https://x.test')), 'purchase_not_found',
  'attach: unknown purchase');
select is(pg_temp.prepare(pg_temp.alice(), 'CREDITS-50', 'prep-alice-1') ->> 'session_id', 'cs_alice_1',
  'prepare replay after attach: the same session');

-- ---------------------------------------------------------------------------------------------
-- Crediting only the pending purchase
-- ---------------------------------------------------------------------------------------------

insert into responses select 'forged', pg_temp.paid('cs_forged', 0, 'evt_forged', null, 'no_payment_required');
select is(pg_temp.response('forged') -> 'error' ->> 'reason', 'no_pending_purchase', 'a session without a pending purchase: mismatch');
select ok(
  (select count(*) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = 'cs_forged') = 1
    and exists (select 1 from festival.stripe_events where event_id = 'evt_forged'),
  'a session without a pending purchase: one alert, the outcome stored under the event'
);

insert into responses select 'alice-less', pg_temp.paid('cs_alice_1', 4499, 'evt_alice_less', 'pi_alice_1');
insert into responses select 'alice-usd', pg_temp.paid('cs_alice_1', 4500, 'evt_alice_usd', 'pi_alice_1', 'paid', 'usd');
insert into responses select 'alice-free', pg_temp.paid('cs_alice_1', 0, 'evt_alice_free', null, 'no_payment_required');
insert into responses select 'alice-claims', public.sp_process_credit_purchase(stripe_session_id => 'cs_alice_1',
  amount_cents => 4500, currency => 'eur', payment_status => 'paid', stripe_payment_intent_id => 'pi_alice_1',
  stripe_event_id => 'evt_alice_claims', user_id => pg_temp.alice(), credits => 500);
select is(
  jsonb_build_array(pg_temp.response('alice-less') #>> '{error,reason}', pg_temp.response('alice-usd') #>> '{error,reason}',
    pg_temp.response('alice-free') #>> '{error,reason}', pg_temp.response('alice-claims') #>> '{error,reason}'),
  '["amount", "currency", "amount", "credits_or_user"]'::jsonb,
  'mismatch: less money, another currency, a free session without promotion codes, other claimed credits'
);
select ok(
  pg_temp.balance(pg_temp.alice()) = 0
    and (select (count(*), sum(occurrence_count)) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = 'cs_alice_1') = (1::bigint, 4::bigint)
    and (select status from credits.credit_purchases where stripe_session_id = 'cs_alice_1') = 'pending',
  'mismatch: nothing credited, one alert counting each mismatch, the purchase still pending'
);

insert into responses select 'alice-paid', public.sp_process_credit_purchase(stripe_session_id => 'cs_alice_1',
  amount_cents => 4500, currency => 'eur', payment_status => 'paid', stripe_payment_intent_id => 'pi_alice_1',
  stripe_event_id => 'evt_alice_paid', user_id => pg_temp.alice(), credits => 50);
select is(
  pg_temp.pick(pg_temp.response('alice-paid'), array['ok', 'outcome', 'user_id', 'credits', 'amount_cents',
    'balance_before_credits', 'balance_after_credits']),
  jsonb_build_object('ok', true, 'outcome', 'credited', 'user_id', pg_temp.alice(), 'credits', 50, 'amount_cents', 4500,
    'balance_before_credits', 0, 'balance_after_credits', 50),
  'paid: the purchase''s credits, to the purchase''s user'
);
select is(pg_temp.paid('cs_alice_1', 4500, 'evt_alice_paid', 'pi_alice_1'), pg_temp.response('alice-paid') || '{"replayed": true}',
  'paid replay: the stored result');
select is(pg_temp.paid('cs_alice_1', 4500, 'evt_alice_paid_2', 'pi_alice_1') ->> 'outcome', 'already_credited',
  'paid: another event of the session is already_credited');
select ok(pg_temp.balance(pg_temp.alice()) = 50
    and (select count(*) from credits.credit_transactions where user_id = pg_temp.alice() and type = 'purchase') = 1,
  'paid: credited once');

-- A session created at Stripe but never attached: the purchase it names is found, once.
insert into responses select 'bob-prep', pg_temp.prepare(pg_temp.bob(), 'CREDITS-10', 'prep-bob-1');
insert into responses select 'bob-paid', pg_temp.paid('cs_bob_unattached', 1000, 'evt_bob_paid', 'pi_bob_1', 'paid', 'eur',
  (pg_temp.response('bob-prep') ->> 'purchase_id')::bigint);
insert into responses select 'bob-other', pg_temp.paid('cs_bob_second', 1000, 'evt_bob_other', 'pi_bob_2', 'paid', 'eur',
  (pg_temp.response('bob-prep') ->> 'purchase_id')::bigint);
select ok(
  pg_temp.response('bob-paid') ->> 'outcome' = 'credited'
    and (select stripe_session_id from credits.credit_purchases where id = (pg_temp.response('bob-prep') ->> 'purchase_id')::bigint) = 'cs_bob_unattached',
  'unattached: the paid session finds its pending purchase and attaches itself'
);
select ok(pg_temp.response('bob-other') #>> '{error,reason}' = 'no_pending_purchase' and pg_temp.balance(pg_temp.bob()) = 10,
  'unattached: a second session naming the same purchase is not credited');

-- Promotion codes: only packages that allow them, a partial discount too; refunds follow what was paid.
insert into responses select 'promo-prep', pg_temp.prepare(pg_temp.carol(), 'T-PROMO-20', 'prep-carol-promo');
insert into responses select 'promo-attach', pg_temp.attach(pg_temp.response('promo-prep'), 'cs_carol_promo');
insert into responses select 'promo-paid', pg_temp.paid('cs_carol_promo', 1000, 'evt_carol_promo', 'pi_carol_promo');
select ok(
  pg_temp.response('promo-paid') ->> 'outcome' = 'credited' and pg_temp.balance(pg_temp.carol()) = 20
    and (select amount_cents from credits.credit_purchases where stripe_session_id = 'cs_carol_promo') = 1000,
  'promotion code: a discounted session is credited, the purchase records what was paid'
);
insert into responses select 'promo-refund', public.sp_process_stripe_refund('pi_carol_promo', 'ch_carol_promo', 500, 'EUR',
  'evt_carol_promo_refund');
select is(pg_temp.response('promo-refund') ->> 'credits_reversed', '10', 'promotion code: half of what was paid back, half the credits');
insert into responses select 'promo-free-prep', pg_temp.prepare(pg_temp.carol(), 'T-PROMO-20', 'prep-carol-free');
insert into responses select 'promo-free-attach', pg_temp.attach(pg_temp.response('promo-free-prep'), 'cs_carol_free');
select is(pg_temp.paid('cs_carol_free', 0, 'evt_carol_free', null, 'no_payment_required') ->> 'outcome', 'credited',
  'promotion code: a 100 % discount is credited for a package that allows codes');
select is(pg_temp.balance(pg_temp.carol()), 30::bigint, 'promotion code: 20 - 10 refunded + 20 free');

select throws_ok($$ select pg_temp.paid('', 100, 'evt_bad_paid_1', null) $$, '22023', null, 'paid: empty session id');
select throws_ok($$ select pg_temp.paid('cs_bad', -1, 'evt_bad_paid_2', null) $$, '22023', null, 'paid: negative amount');
select throws_ok($$ select pg_temp.paid('cs_bad', 100, 'evt_bad_paid_3', null, 'maybe') $$, '22023', null, 'paid: unknown status');

-- ---------------------------------------------------------------------------------------------
-- Subscription invoices: billed price, paid or trial-earning, one allocation per period
-- ---------------------------------------------------------------------------------------------

insert into responses select 'inv-1', pg_temp.invoice(pg_temp.dave(), 'price_basic', 'sub_dave', '2026-03-01 00:00+00',
  '2026-04-01 00:00+00', 3000, 'in_dave_1', 'evt_inv_dave_1');
select ok(pg_temp.response('inv-1') ->> 'credits' = '100' and pg_temp.balance(pg_temp.dave()) = 100,
  'invoice: the billed price''s plan allocates its credits');
select results_eq(
  $$ select stripe_payment_intent_id, subscription_id, period_start, user_id, credits, amount_paid_cents, currency
     from credits.allocation_payments where stripe_invoice_id = 'in_dave_1' $$,
  $$ values ('pi_in_dave_1', 'sub_dave', '2026-03-01 00:00+00'::timestamptz, pg_temp.dave(), 100::bigint, 3000::bigint, 'EUR') $$,
  'invoice: what was paid for the period is recorded'
);
insert into responses select 'inv-unpaid', pg_temp.invoice(pg_temp.alice(), 'price_basic', 'sub_alice', '2026-03-01 00:00+00',
  '2026-04-01 00:00+00', 0, 'in_alice_trial', 'evt_inv_alice_trial');
select ok(pg_temp.response('inv-unpaid') ->> 'outcome' = 'not_allocated_unpaid' and pg_temp.balance(pg_temp.alice()) = 50
    and exists (select 1 from festival.stripe_events where event_id = 'evt_inv_alice_trial'),
  'invoice: an invoice of 0 allocates nothing when the plan does not say trials earn credits (final, stored)');
insert into responses select 'inv-trial', pg_temp.invoice(pg_temp.alice(), 'price_trial', 'sub_alice_trial',
  '2026-03-01 00:00+00', '2026-04-01 00:00+00', 0, 'in_alice_trial_2', 'evt_inv_alice_trial_2');
select ok(pg_temp.response('inv-trial') ->> 'credits' = '40' and pg_temp.balance(pg_temp.alice()) = 90,
  'invoice: a trial invoice allocates when its plan says trials earn credits');
insert into responses select 'inv-proration', pg_temp.invoice(pg_temp.dave(), 'price_basic', 'sub_dave', '2026-03-16 00:00+00',
  '2026-04-01 00:00+00', 1500, 'in_dave_proration', 'evt_inv_dave_proration');
select is(
  pg_temp.pick(pg_temp.response('inv-proration'), array['ok', 'outcome', 'allocated_period_start']),
  jsonb_build_object('ok', true, 'outcome', 'period_already_allocated',
    'allocated_period_start', '2026-03-01 00:00+00'::timestamptz),
  'invoice: a period overlapping an allocated one allocates nothing'
);
insert into responses select 'inv-same', pg_temp.invoice(pg_temp.dave(), 'price_basic', 'sub_dave', '2026-03-01 00:00+00',
  '2026-04-01 00:00+00', 3000, 'in_dave_1_again', 'evt_inv_dave_1_again');
select ok((pg_temp.response('inv-same') ->> 'replayed')::boolean and pg_temp.balance(pg_temp.dave()) = 100
    and not exists (select 1 from credits.allocation_payments where stripe_invoice_id = 'in_dave_1_again'),
  'invoice: the same period again replays the allocation, records no second payment');
insert into responses select 'inv-2', pg_temp.invoice(pg_temp.dave(), 'price_basic', 'sub_dave', '2026-04-01 00:00+00',
  '2026-05-01 00:00+00', 3000, 'in_dave_2', 'evt_inv_dave_2');
select ok(pg_temp.response('inv-2') ->> 'outcome' is null and pg_temp.balance(pg_temp.dave()) = 200,
  'invoice: the next period allocates');
insert into responses select 'inv-noprice', pg_temp.invoice(pg_temp.dave(), 'price_unknown', 'sub_dave_x', '2026-03-01 00:00+00',
  '2026-04-01 00:00+00', 3000, 'in_dave_x', 'evt_inv_dave_x');
select ok(pg_temp.code(pg_temp.response('inv-noprice')) = 'plan_not_found'
    and not exists (select 1 from festival.stripe_events where event_id = 'evt_inv_dave_x'),
  'invoice: an unknown price is plan_not_found, not stored (retried)');
select throws_ok($$ select pg_temp.invoice(pg_temp.dave(), 'price_basic', 'sub_dave', '2026-03-01', '2026-04-01', -1, 'in_bad', 'evt_bad_inv') $$,
  '22023', null, 'invoice: negative amount paid');
select throws_ok($$ select pg_temp.invoice(pg_temp.dave(), 'price_basic', 'sub_dave', '2026-03-01', '2026-04-01', 10, '', 'evt_bad_inv') $$,
  '22023', null, 'invoice: empty invoice id');

-- ---------------------------------------------------------------------------------------------
-- Refunds of invoices: the period's credits in proportion, never below zero
-- ---------------------------------------------------------------------------------------------

select is(public.sp_process_credit_invoice_refund('pi_nobody', null, 'ch_nobody', 100, 'eur', 'evt_ref_nobody') ->> 'outcome',
  'not_a_subscription_invoice', 'invoice refund: a charge that names no invoice and is no allocated payment');
select ok(not exists (select 1 from festival.stripe_events where event_id = 'evt_ref_nobody'),
  'invoice refund: not_a_subscription_invoice records no event (the festival procedure takes it next)');

-- Dave: 200 credits (two periods of 100 for 3000 each). A third of the first invoice back.
insert into responses select 'ref-1', pg_temp.invoice_refund('in_dave_1', 1000, 'evt_ref_dave_1');
select is(
  pg_temp.pick(pg_temp.response('ref-1'), array['outcome', 'refund_cents', 'credits_reversed', 'taken_from_balance_credits',
    'receivable_credits', 'balance_before_credits', 'balance_after_credits']),
  '{"outcome": "refund_applied", "refund_cents": 1000, "credits_reversed": 33, "taken_from_balance_credits": 33,
    "receivable_credits": 0, "balance_before_credits": 200, "balance_after_credits": 167}'::jsonb,
  'invoice refund: a third of the money takes 33 of 100 credits (rounded down)'
);
select results_eq(
  $$ select type, amount_credits, subscription_id, period_start from credits.credit_transactions
     where operation_id = (pg_temp.response('ref-1') ->> 'transaction_id')::bigint $$,
  $$ values ('refund', -33::bigint, 'sub_dave', '2026-03-01 00:00+00'::timestamptz) $$,
  'invoice refund: a refund journal row naming the period'
);
select is(pg_temp.invoice_refund('in_dave_1', 1000, 'evt_ref_dave_1'), pg_temp.response('ref-1') || '{"replayed": true}',
  'invoice refund replay');
select is(pg_temp.invoice_refund('in_dave_1', 900, 'evt_ref_dave_late') ->> 'outcome', 'refund_already_applied',
  'invoice refund: a smaller running total arriving late');
select is(pg_temp.code(pg_temp.invoice_refund('in_dave_1', 2000, 'evt_ref_dave_usd', 'usd')), 'payment_mismatch',
  'invoice refund: another currency is a mismatch');

-- Dave spends 160 of his 167 credits; the rest of the first invoice is refunded: 67 to take, 7 left.
insert into responses select 'dave-book', public.process_peer_booking_credits(pg_temp.dave(), pg_temp.peer(), 160,
  'booking-dave', 'cr-booking-dave');
insert into responses select 'ref-full', pg_temp.invoice_refund('in_dave_1', 3000, 'evt_ref_dave_full');
select is(
  pg_temp.pick(pg_temp.response('ref-full'), array['credits_reversed', 'taken_from_balance_credits', 'receivable_credits',
    'balance_after_credits']),
  '{"credits_reversed": 67, "taken_from_balance_credits": 7, "receivable_credits": 60, "balance_after_credits": 0}'::jsonb,
  'invoice refund: never below zero, the rest owed'
);
select ok(
  (select (amount_credits, status, subscription_id) = (60::bigint, 'open'::text, 'sub_dave'::text) from credits.receivables
    where user_id = pg_temp.dave())
    and (select count(*) from ops.alerts where kind = 'refund_receivable' and user_id = pg_temp.dave()) = 1
    and (select (refunded_cents, credits_reversed) = (3000::bigint, 100::bigint) from credits.allocation_payments
      where stripe_invoice_id = 'in_dave_1'),
  'invoice refund: a receivable and an alert; the payment fully refunded'
);

-- Proportions in numeric: 9e12 credits for 10 000 000 cents, 3 333 333 refunded.
insert into responses select 'huge-inv', pg_temp.invoice(pg_temp.peer(), 'price_huge', 'sub_huge', '2026-03-01 00:00+00',
  '2026-04-01 00:00+00', 10000000, 'in_huge', 'evt_inv_huge');
insert into responses select 'huge-ref', pg_temp.invoice_refund('in_huge', 3333333, 'evt_ref_huge');
select is(pg_temp.response('huge-ref') ->> 'credits_reversed', '2999999700000',
  'invoice refund: the proportion is computed without bigint overflow');

-- A purchase refund in proportion, in numeric too: 9e12 credits for 10 000 000 cents, 3 333 333 refunded.
insert into responses select 'huge-prep', pg_temp.prepare(pg_temp.peer(), 'T-HUGE', 'prep-peer-huge');
insert into responses select 'huge-attach', pg_temp.attach(pg_temp.response('huge-prep'), 'cs_peer_huge');
insert into responses select 'huge-paid', pg_temp.paid('cs_peer_huge', 10000000, 'evt_peer_huge', 'pi_peer_huge');
select is(public.sp_process_stripe_refund('pi_peer_huge', 'ch_peer_huge', 3333333, 'EUR', 'evt_peer_huge_refund')
  ->> 'credits_reversed', '2999999700000', 'purchase refund: the proportion is computed without bigint overflow');

-- ---------------------------------------------------------------------------------------------
-- Disputes of credit purchases: hold, then release (won) or retire (lost)
-- ---------------------------------------------------------------------------------------------

select is(pg_temp.dispute('pi_card_somewhere', 'dp_card', 500, 'evt_dp_card') ->> 'outcome', 'not_a_credit_purchase',
  'dispute: a payment that is not a credit purchase');
select ok(not exists (select 1 from festival.stripe_events where event_id = 'evt_dp_card')
    and not exists (select 1 from credits.dispute_holds where stripe_dispute_id = 'dp_card'),
  'dispute: not_a_credit_purchase records nothing (the festival procedure takes the event next)');
select is(pg_temp.close_dispute('pi_card_somewhere', 'dp_card', 500, 'lost', 'evt_dp_card_closed') ->> 'outcome',
  'not_a_credit_purchase', 'dispute closed: not a credit purchase either');

-- Alice holds 90 credits (50 bought for 4500 with pi_alice_1, 40 from a trial). 2700 of 4500 disputed: 30 credits.
insert into responses select 'dp-a', pg_temp.dispute('pi_alice_1', 'dp_alice', 2700, 'evt_dp_alice');
select is(
  pg_temp.pick(pg_temp.response('dp-a'), array['outcome', 'disputed_credits', 'held_credits', 'uncovered_credits',
    'balance_before_credits', 'balance_after_credits']),
  '{"outcome": "credits_held_for_dispute", "disputed_credits": 30, "held_credits": 30, "uncovered_credits": 0,
    "balance_before_credits": 90, "balance_after_credits": 60}'::jsonb,
  'dispute: the disputed share of the credits is frozen'
);
select ok(pg_temp.disputed_held() = 30
    and (select count(*) from ops.alerts where kind = 'dispute' and stripe_object_id = 'dp_alice') = 1
    and (select type from credits.credit_transactions where operation_id = (pg_temp.response('dp-a') ->> 'transaction_id')::bigint) = 'dispute_hold',
  'dispute: the credits sit in credit_disputes, a dispute_hold journal row, an alert');
select is(pg_temp.dispute('pi_alice_1', 'dp_alice', 2700, 'evt_dp_alice'), pg_temp.response('dp-a') || '{"replayed": true}',
  'dispute replay');
select is(pg_temp.dispute('pi_alice_1', 'dp_alice', 2700, 'evt_dp_alice_2') ->> 'outcome', 'dispute_already_recorded',
  'dispute: another event for the same dispute holds nothing more');
insert into responses select 'dp-a-won', pg_temp.close_dispute('pi_alice_1', 'dp_alice', 2700, 'won', 'evt_dp_alice_won');
select ok(pg_temp.response('dp-a-won') ->> 'outcome' = 'dispute_won_credits_released' and pg_temp.balance(pg_temp.alice()) = 90
    and pg_temp.disputed_held() = 0
    and (select status from credits.dispute_holds where stripe_dispute_id = 'dp_alice') = 'won',
  'dispute won: the credits are back');
select is(pg_temp.close_dispute('pi_alice_1', 'dp_alice', 2700, 'lost', 'evt_dp_alice_lost') ->> 'outcome', 'dispute_already_closed',
  'dispute: closed once');
select is(pg_temp.close_dispute('pi_alice_1', 'dp_alice', 2700, 'won', 'evt_dp_alice_won'), pg_temp.response('dp-a-won') || '{"replayed": true}',
  'dispute closed replay');

-- Bob: 10 credits bought for 1000, spends 6, then the whole payment is disputed and lost.
insert into responses select 'bob-book', public.process_peer_booking_credits(pg_temp.bob(), pg_temp.peer(), 6, 'booking-bob',
  'cr-booking-bob');
insert into responses select 'dp-b', pg_temp.dispute('pi_bob_1', 'dp_bob', 1000, 'evt_dp_bob');
select ok(pg_temp.response('dp-b') ->> 'held_credits' = '4' and pg_temp.response('dp-b') ->> 'uncovered_credits' = '6'
    and pg_temp.balance(pg_temp.bob()) = 0,
  'dispute: what the balance still has is held, the rest uncovered');
insert into responses select 'dp-b-lost', pg_temp.close_dispute('pi_bob_1', 'dp_bob', 1000, 'lost', 'evt_dp_bob_lost');
select ok(pg_temp.response('dp-b-lost') ->> 'outcome' = 'dispute_lost_credits_reversed' and pg_temp.balance(pg_temp.bob()) = 0
    and pg_temp.disputed_held() = 0
    and (select (amount_credits, reason, stripe_dispute_id) = (6::bigint, 'stripe_dispute_lost'::text, 'dp_bob'::text)
      from credits.receivables where user_id = pg_temp.bob()),
  'dispute lost: the held credits are retired, the uncovered rest is a receivable');
select results_eq(
  $$ select o.kind, t.amount_cents from ledger.transfers t join ledger.operations o on o.id = t.operation_id
     where o.client_request_id = 'evt_dp_bob_lost' $$,
  $$ values ('credit_dispute_loss', 4::bigint) $$,
  'dispute lost: one transfer of the held credits out of credit_disputes'
);

-- Carol: a dispute closed (warning_closed) whose creation never arrived is held and released at once.
insert into responses select 'dp-c', pg_temp.close_dispute('pi_carol_promo', 'dp_carol', 1000, 'warning_closed', 'evt_dp_carol');
select ok(pg_temp.response('dp-c') ->> 'outcome' = 'dispute_won_credits_released' and pg_temp.balance(pg_temp.carol()) = 30
    and (select status from credits.dispute_holds where stripe_dispute_id = 'dp_carol') = 'won',
  'dispute closed without a created event: held then released, nothing lost');
select throws_ok($$ select pg_temp.close_dispute('pi_alice_1', 'dp_alice', 2700, 'needs_response', 'evt_bad_close') $$,
  '22023', null, 'dispute closed: a status that is not final');

-- ---------------------------------------------------------------------------------------------
-- Out of order: refunds before the allocation, a dispute before the credit
-- ---------------------------------------------------------------------------------------------

-- A refund naming its invoice before the invoice allocated (an unknown price retried for hours).
insert into responses select 'early-ref', pg_temp.invoice_refund('in_early', 1500, 'evt_ref_early');
select is(pg_temp.response('early-ref') ->> 'outcome', 'refund_parked_until_allocation',
  'invoice refund before the allocation: parked');
insert into responses select 'early-inv', pg_temp.invoice(pg_temp.carol(), 'price_basic', 'sub_carol_early',
  '2026-03-01 00:00+00', '2026-04-01 00:00+00', 3000, 'in_early', 'evt_inv_early');
select ok(
  pg_temp.response('early-inv') #>> '{refund,credits_reversed}' = '50' and pg_temp.balance(pg_temp.carol()) = 80
    and not exists (select 1 from credits.invoice_refunds_pending where stripe_invoice_id = 'in_early'),
  'invoice refund before the allocation: applied with it (100 allocated, 50 taken back)'
);
-- A refund that did not name its invoice was parked by the card refund procedure.
insert into responses select 'early-ref-2', public.sp_process_stripe_refund('pi_in_early_2', 'ch_in_early_2', 3000, 'EUR',
  'evt_ref_early_2');
insert into responses select 'early-inv-2', pg_temp.invoice(pg_temp.carol(), 'price_basic', 'sub_carol_early_2',
  '2026-03-01 00:00+00', '2026-04-01 00:00+00', 3000, 'in_early_2', 'evt_inv_early_2');
select ok(
  pg_temp.response('early-ref-2') ->> 'outcome' = 'refund_parked_until_credit'
    and pg_temp.response('early-inv-2') #>> '{refund,credits_reversed}' = '100' and pg_temp.balance(pg_temp.carol()) = 80
    and not exists (select 1 from festival.stripe_refunds_pending where stripe_payment_intent_id = 'pi_in_early_2'),
  'invoice refund parked by the card procedure: applied with the allocation'
);

-- A dispute that arrived before the purchase was credited (parked by the card dispute procedure).
insert into responses select 'early-dp', public.sp_process_stripe_dispute('pi_dave_early', 'ch_dave_early', 'dp_dave_early',
  1000, 'evt_dp_dave_early');
insert into responses select 'early-dp-prep', pg_temp.prepare(pg_temp.dave(), 'CREDITS-10', 'prep-dave-early');
insert into responses select 'early-dp-attach', pg_temp.attach(pg_temp.response('early-dp-prep'), 'cs_dave_early');
insert into responses select 'early-dp-paid', pg_temp.paid('cs_dave_early', 1000, 'evt_dave_early_paid', 'pi_dave_early');
select ok(
  pg_temp.response('early-dp-paid') ->> 'outcome' = 'credited'
    and pg_temp.response('early-dp-paid') #>> '{dispute,held_credits}' = '10' and pg_temp.balance(pg_temp.dave()) = 0
    and (select status from credits.dispute_holds where stripe_dispute_id = 'dp_dave_early') = 'held'
    and not exists (select 1 from festival.stripe_disputes_pending where stripe_payment_intent_id = 'pi_dave_early'),
  'dispute before the credit: the credit lands and is held at once'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role authenticated;
select throws_ok($$ select public.sp_prepare_credit_purchase('e0000000-0000-4000-8000-000000000c01', 'CREDITS-10', 'role-1') $$,
  '42501', null, 'authenticated cannot execute sp_prepare_credit_purchase');
select throws_ok($$ select public.sp_attach_credit_checkout_session(1, 'cs_role', 'https://x.test') $$,
  '42501', null, 'authenticated cannot execute sp_attach_credit_checkout_session');
select throws_ok($$ select public.sp_process_credit_invoice_refund('pi', 'in', 'ch', 1, 'EUR', 'evt_role_1') $$,
  '42501', null, 'authenticated cannot execute sp_process_credit_invoice_refund');
select throws_ok($$ select public.sp_process_credit_dispute('pi', 'ch', 'dp', 1, 'evt_role_2') $$,
  '42501', null, 'authenticated cannot execute sp_process_credit_dispute');
select throws_ok($$ select public.sp_close_credit_dispute('pi', 'ch', 'dp', 1, 'won', 'evt_role_3') $$,
  '42501', null, 'authenticated cannot execute sp_close_credit_dispute');
reset role;
set local role anon;
select throws_ok($$ select public.sp_prepare_credit_purchase('e0000000-0000-4000-8000-000000000c01', 'CREDITS-10', 'role-2') $$,
  '42501', null, 'anon cannot execute sp_prepare_credit_purchase');
reset role;

-- ---------------------------------------------------------------------------------------------
-- The records tie out with the ledger, and the ledger reconciles
-- ---------------------------------------------------------------------------------------------

select is_empty(
  $$ select p.id from credits.credit_purchases p
     where p.status = 'completed' and p.package_code is not null
       and (select coalesce(sum(t.amount_cents), 0) from ledger.transfers t where t.operation_id = p.operation_id) <> p.credits $$,
  'tie-out: every completed purchase''s operation credited exactly its credits'
);
select is_empty(
  $$ select h.stripe_dispute_id from credits.dispute_holds h
     where h.held_credits > 0
       and (select coalesce(sum(t.amount_cents), 0) from ledger.transfers t where t.operation_id = h.hold_operation_id)
         <> h.held_credits $$,
  'tie-out: every dispute hold''s operation moved exactly its held credits'
);
select is(pg_temp.disputed_held(), (select coalesce(sum(held_credits), 0)::bigint from credits.dispute_holds where status = 'held'),
  'tie-out: credit_disputes holds exactly the credits of open disputes');
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select * from finish();
rollback;
