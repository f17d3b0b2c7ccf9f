-- Practitioner credits through Stripe (issue 6; purchases only against a pending purchase since
-- issue 9): credit purchases (sp_process_credit_purchase,
-- sp_close_credit_purchase), their refunds through the replaced sp_process_stripe_refund (card
-- recharge refunds keep working), unmatched payments for users who do not exist yet, and
-- subscription invoices that allocate a period's credits (sp_process_subscription_invoice).
-- Success, each outcome, replay, invalid arguments, denied roles, and a reconciled ledger after.
begin;
create extension if not exists pgtap with schema extensions;
select plan(106);

-- ---------------------------------------------------------------------------------------------
-- Helpers and users (temporary, gone with the transaction)
-- ---------------------------------------------------------------------------------------------

create function pg_temp.buyer() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b01'::uuid $$;
create function pg_temp.pender() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b02'::uuid $$;
create function pg_temp.disputed() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b03'::uuid $$;
-- Signs up later in this file (not in auth.users at first).
create function pg_temp.latecomer() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b04'::uuid $$;
create function pg_temp.spender() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b05'::uuid $$;
create function pg_temp.peer() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b06'::uuid $$;
create function pg_temp.early() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b07'::uuid $$;
create function pg_temp.closer() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b08'::uuid $$;
create function pg_temp.subscriber() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b09'::uuid $$;
-- Subscribes before signing up (not in auth.users at first).
create function pg_temp.late_subscriber() returns uuid language sql immutable as $$ select 'd0000000-0000-4000-8000-000000000b0a'::uuid $$;

insert into auth.users (id, aud, role, email) values
  (pg_temp.buyer(), 'authenticated', 'authenticated', 'buyer@credits-stripe.test'),
  (pg_temp.pender(), 'authenticated', 'authenticated', 'pender@credits-stripe.test'),
  (pg_temp.disputed(), 'authenticated', 'authenticated', 'disputed@credits-stripe.test'),
  (pg_temp.spender(), 'authenticated', 'authenticated', 'spender@credits-stripe.test'),
  (pg_temp.peer(), 'authenticated', 'authenticated', 'peer@credits-stripe.test'),
  (pg_temp.early(), 'authenticated', 'authenticated', 'early@credits-stripe.test'),
  (pg_temp.closer(), 'authenticated', 'authenticated', 'closer@credits-stripe.test'),
  (pg_temp.subscriber(), 'authenticated', 'authenticated', 'subscriber@credits-stripe.test');

insert into credits.plans (plan_id, monthly_credits, active, stripe_price_id) values
  ('pro', 300, true, 'pro'), ('legacy', 100, false, 'legacy');

-- Credits are sold only from the price list, against a pending purchase (issue 9): these test
-- packages keep this file's amounts.
insert into credits.credit_packages (code, credits, price_cents, currency, allow_promotion_codes) values
  ('T-100-5000', 100, 5000, 'EUR', false), ('T-50-2500', 50, 2500, 'EUR', false),
  ('T-30-1500', 30, 1500, 'EUR', false), ('T-10-500', 10, 500, 'EUR', false), ('T-15-PROMO', 15, 1500, 'EUR', true);

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.pick(p_object jsonb, p_keys text[]) returns jsonb
language sql immutable as $$
  select coalesce(jsonb_object_agg(key, value), '{}'::jsonb) from jsonb_each(p_object) where key = any(p_keys)
$$;

-- ok, replayed and the error without its message: what a business failure is asserted on.
create function pg_temp.failure(p_result jsonb) returns jsonb
language sql immutable as $$
  select pg_temp.pick(p_result, array['ok', 'replayed']) || ((p_result -> 'error') - 'message')
$$;

create function pg_temp.balance(p_user_id uuid) returns bigint
language sql stable as $$
  select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
    where ua.user_id = p_user_id), 0)
$$;

create function pg_temp.journal_count(p_user_id uuid) returns bigint
language sql stable as $$ select count(*) from credits.credit_transactions where user_id = p_user_id $$;

create function pg_temp.alert_count(p_kind text, p_stripe_object_id text) returns bigint
language sql stable as $$
  select count(*) from ops.alerts where kind = p_kind and stripe_object_id is not distinct from p_stripe_object_id
$$;

-- 'credit_issuance:platform' for (any shard of) a system account, the account code otherwise.
create function pg_temp.account_label(p_account_id bigint) returns text
language sql stable as $$
  select case when kind = 'system' then system_purpose || ':' || owner_ref else code end
  from ledger.accounts where id = p_account_id
$$;

-- Transfers of the operations behind a Stripe event id, in posting order.
create function pg_temp.transfers_of(p_event_id text)
returns table (from_account text, to_account text, amount bigint,
  from_before bigint, from_after bigint, to_before bigint, to_after bigint)
language sql stable as $$
  select pg_temp.account_label(t.from_account_id), pg_temp.account_label(t.to_account_id), t.amount_cents,
    t.from_balance_before_cents, t.from_balance_after_cents, t.to_balance_before_cents, t.to_balance_after_cents
  from ledger.transfers t join ledger.operations o on o.id = t.operation_id
  where o.client_request_id = p_event_id
  order by t.id
$$;

create function pg_temp.card_balance(p_card_id text) returns bigint
language sql stable as $$
  select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id
$$;

-- What create-credit-checkout does before the session is paid: a pending purchase of a package,
-- with its Stripe session attached.
create function pg_temp.pending(p_user_id uuid, p_package_code text, p_session_id text)
returns jsonb
language sql as $$
  select public.sp_attach_credit_checkout_session(
    (public.sp_prepare_credit_purchase(p_user_id, p_package_code, 'prep-' || p_session_id) ->> 'purchase_id')::bigint,
    p_session_id, 'https://checkout.stripe.test/c/pay/' || p_session_id)
$$;

-- The session as the webhook reports it; user and credits are what its metadata claims.
create function pg_temp.purchase(p_user_id uuid, p_credits bigint, p_amount_cents bigint, p_currency text,
  p_session_id text, p_event_id text, p_payment_intent_id text, p_payment_status text)
returns jsonb
language sql as $$
  select public.sp_process_credit_purchase(stripe_session_id => p_session_id, amount_cents => p_amount_cents,
    currency => p_currency, payment_status => p_payment_status, stripe_payment_intent_id => p_payment_intent_id,
    stripe_event_id => p_event_id, user_id => p_user_id, credits => p_credits)
$$;

create function pg_temp.close(p_session_id text, p_user_id uuid, p_credits bigint, p_amount_cents bigint,
  p_currency text, p_status text, p_event_id text)
returns jsonb
language sql as $$
  select public.sp_close_credit_purchase(stripe_session_id => p_session_id, user_id => p_user_id, credits => p_credits,
    amount_cents => p_amount_cents, currency => p_currency, status => p_status, stripe_event_id => p_event_id)
$$;

-- An invoice billing the price `p_plan_id` (plans are keyed by their Stripe price), paid.
create function pg_temp.invoice(p_user_id uuid, p_plan_id text, p_subscription_id text, p_start timestamptz,
  p_end timestamptz, p_event_id text)
returns jsonb
language sql as $$
  select public.sp_process_subscription_invoice(user_id => p_user_id, stripe_price_id => p_plan_id,
    subscription_id => p_subscription_id, period_start => p_start, period_end => p_end, amount_paid_cents => 2900,
    currency => 'EUR', stripe_invoice_id => 'in_' || p_event_id, stripe_payment_intent_id => 'pi_' || p_event_id,
    stripe_event_id => p_event_id)
$$;

-- ---------------------------------------------------------------------------------------------
-- sp_process_credit_purchase: a paid session credits once
-- ---------------------------------------------------------------------------------------------

insert into responses select 'pending-cs_buy_1', pg_temp.pending(pg_temp.buyer(), 'T-100-5000', 'cs_buy_1');
insert into responses
select 'buy', pg_temp.purchase(pg_temp.buyer(), 100, 5000, 'eur', 'cs_buy_1', 'evt_buy_1', 'pi_buy_1', 'paid');

select is(
  pg_temp.response('buy') - 'transaction_id' - 'purchase_id',
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'credited', 'user_id', pg_temp.buyer(),
    'stripe_session_id', 'cs_buy_1', 'credits', 100, 'amount_cents', 5000, 'balance_before_credits', 0,
    'balance_after_credits', 100),
  'purchase: credited with the balance before and after (lowercase currency accepted)'
);
select is(pg_temp.balance(pg_temp.buyer()), 100::bigint, 'purchase: the user holds 100 credits');
select results_eq(
  $$ select type, amount_credits, balance_before_credits, balance_after_credits, operation_id
     from credits.credit_transactions where user_id = pg_temp.buyer() $$,
  $$ values ('purchase', 100::bigint, 0::bigint, 100::bigint, (pg_temp.response('buy') ->> 'transaction_id')::bigint) $$,
  'purchase: one purchase journal row'
);
select results_eq(
  $$ select * from pg_temp.transfers_of('evt_buy_1') $$,
  $$ values ('credit_issuance:platform', 'user_credit:' || pg_temp.buyer(), 100::bigint, null::bigint, null::bigint,
       0::bigint, 100::bigint) $$,
  'purchase: one transfer from the credit issuance account to the user'
);
select results_eq(
  $$ select user_id, credits, amount_cents, currency, status, stripe_payment_intent_id, operation_id,
       completed_at is not null, refunded_cents, credits_reversed
     from credits.credit_purchases where stripe_session_id = 'cs_buy_1' $$,
  $$ values (pg_temp.buyer(), 100::bigint, 5000::bigint, 'EUR', 'completed', 'pi_buy_1',
       (pg_temp.response('buy') ->> 'transaction_id')::bigint, true, 0::bigint, 0::bigint) $$,
  'purchase: the credit_purchases row is completed with its payment intent and operation'
);
select results_eq(
  $$ select type, result from festival.stripe_events where event_id = 'evt_buy_1' $$,
  $$ values ('credit_purchase', pg_temp.response('buy')) $$,
  'purchase: the event is stored with its result'
);
select results_eq(
  $$ select operation_type, status, amount_cents, balance_before_cents, balance_after_cents, operation_id
     from ops.app_transaction_log where client_request_id = 'evt_buy_1' $$,
  $$ values ('credit_purchase', 'success', 100::bigint, 0::bigint, 100::bigint,
       (pg_temp.response('buy') ->> 'transaction_id')::bigint) $$,
  'purchase: one log row'
);

-- The same event again, and another event of the same session.
insert into responses
select 'buy-replay', pg_temp.purchase(pg_temp.buyer(), 100, 5000, 'eur', 'cs_buy_1', 'evt_buy_1', 'pi_buy_1', 'paid');
insert into responses
select 'buy-other-event', pg_temp.purchase(pg_temp.buyer(), 100, 5000, 'EUR', 'cs_buy_1', 'evt_buy_1b', 'pi_buy_1', 'paid');
insert into responses
select 'buy-other-event-replay', pg_temp.purchase(pg_temp.buyer(), 100, 5000, 'EUR', 'cs_buy_1', 'evt_buy_1b', 'pi_buy_1',
  'paid');

select is(pg_temp.response('buy-replay'), pg_temp.response('buy') || '{"replayed": true}',
  'purchase replay: the stored result, marked replayed');
select is(
  pg_temp.pick(pg_temp.response('buy-other-event'), array['ok', 'replayed', 'outcome', 'transaction_id', 'user_id']),
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'already_credited',
    'transaction_id', pg_temp.response('buy') -> 'transaction_id', 'user_id', pg_temp.buyer()),
  'purchase: another event of the same session is already_credited'
);
select is(pg_temp.response('buy-other-event-replay'), pg_temp.response('buy-other-event') || '{"replayed": true}',
  'purchase: the second event again replays its own stored result');
select ok(
  pg_temp.balance(pg_temp.buyer()) = 100 and pg_temp.journal_count(pg_temp.buyer()) = 1
    and (select count(*) from ledger.operations where kind = 'credit_purchase' and metadata ->> 'stripe_session_id' = 'cs_buy_1') = 1,
  'purchase: replays and other events move nothing'
);
select results_eq(
  $$ select client_request_id, status from ops.app_transaction_log where client_request_id like 'evt_buy_1%' order by id $$,
  $$ values ('evt_buy_1', 'success'), ('evt_buy_1', 'replayed'), ('evt_buy_1b', 'success'), ('evt_buy_1b', 'replayed') $$,
  'purchase: every call is logged, replays as replayed'
);

-- ---------------------------------------------------------------------------------------------
-- An unpaid session is recorded as pending; its paid event credits it
-- ---------------------------------------------------------------------------------------------

insert into responses select 'pending-cs_pend_2', pg_temp.pending(pg_temp.pender(), 'T-50-2500', 'cs_pend_2');
insert into responses
select 'pend', pg_temp.purchase(pg_temp.pender(), 50, 2500, 'EUR', 'cs_pend_2', 'evt_pend_a', null, 'unpaid');

select is(
  pg_temp.pick(pg_temp.response('pend'), array['ok', 'replayed', 'outcome', 'stripe_session_id', 'user_id']),
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'payment_pending', 'stripe_session_id', 'cs_pend_2',
    'user_id', pg_temp.pender()),
  'unpaid: payment_pending'
);
select results_eq(
  $$ select user_id, credits, amount_cents, currency, status, operation_id, stripe_payment_intent_id
     from credits.credit_purchases where stripe_session_id = 'cs_pend_2' $$,
  $$ values (pg_temp.pender(), 50::bigint, 2500::bigint, 'EUR', 'pending', null::bigint, null::text) $$,
  'unpaid: the purchase row is pending, without operation'
);
select ok(
  pg_temp.balance(pg_temp.pender()) = 0 and pg_temp.journal_count(pg_temp.pender()) = 0
    and not exists (select 1 from ledger.operations where metadata ->> 'stripe_session_id' = 'cs_pend_2'),
  'unpaid: no balance change, no journal row, no operation'
);

insert into responses
select 'pend-paid', pg_temp.purchase(pg_temp.pender(), 50, 2500, 'EUR', 'cs_pend_2', 'evt_pend_b', 'pi_pend_2', 'paid');
select is(
  pg_temp.pick(pg_temp.response('pend-paid'), array['ok', 'replayed', 'outcome', 'credits', 'balance_before_credits',
    'balance_after_credits']),
  '{"ok": true, "replayed": false, "outcome": "credited", "credits": 50, "balance_before_credits": 0,
    "balance_after_credits": 50}'::jsonb,
  'unpaid then paid: the paid event credits the pending purchase'
);
select results_eq(
  $$ select status, stripe_payment_intent_id, operation_id, pg_temp.balance(pg_temp.pender()),
       pg_temp.journal_count(pg_temp.pender())
     from credits.credit_purchases where stripe_session_id = 'cs_pend_2' $$,
  $$ values ('completed', 'pi_pend_2', (pg_temp.response('pend-paid') ->> 'transaction_id')::bigint, 50::bigint, 1::bigint) $$,
  'unpaid then paid: the row is completed, credited once'
);

-- ---------------------------------------------------------------------------------------------
-- Payment mismatches: another currency, or other credits, amount or user for a known session
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'mm-usd', pg_temp.purchase(pg_temp.disputed(), 100, 5000, 'usd', 'cs_mm_3', 'evt_mm_usd', 'pi_mm_3', 'paid');
select is(
  pg_temp.failure(pg_temp.response('mm-usd')),
  '{"ok": false, "replayed": false, "code": "payment_mismatch", "stripe_session_id": "cs_mm_3",
    "reason": "no_pending_purchase"}'::jsonb,
  'mismatch: a session without a pending purchase (here in another currency) is payment_mismatch'
);
select results_eq(
  $$ select kind, severity, user_id from ops.alerts where stripe_object_id = 'cs_mm_3' $$,
  $$ values ('payment_mismatch', 'critical', pg_temp.disputed()) $$,
  'mismatch: one critical payment_mismatch alert for the session'
);
select ok(
  pg_temp.balance(pg_temp.disputed()) = 0
    and not exists (select 1 from credits.user_accounts where user_id = pg_temp.disputed())
    and not exists (select 1 from credits.credit_purchases where stripe_session_id = 'cs_mm_3')
    and (select result #>> '{error,code}' from festival.stripe_events where event_id = 'evt_mm_usd') = 'payment_mismatch',
  'mismatch: nothing moves, no purchase row, the outcome is stored under the event'
);

insert into responses select 'pending-cs_mm_3', pg_temp.pending(pg_temp.disputed(), 'T-100-5000', 'cs_mm_3');
insert into responses
select 'mm-pending', pg_temp.purchase(pg_temp.disputed(), 100, 5000, 'EUR', 'cs_mm_3', 'evt_mm_pending', null, 'unpaid');
insert into responses
select 'mm-credits', pg_temp.purchase(pg_temp.disputed(), 200, 5000, 'EUR', 'cs_mm_3', 'evt_mm_credits', 'pi_mm_3', 'paid');
insert into responses
select 'mm-amount', pg_temp.purchase(pg_temp.disputed(), 100, 4000, 'EUR', 'cs_mm_3', 'evt_mm_amount', 'pi_mm_3', 'paid');
insert into responses
select 'mm-user', pg_temp.purchase(pg_temp.buyer(), 100, 5000, 'EUR', 'cs_mm_3', 'evt_mm_user', 'pi_mm_3', 'paid');
select is(
  jsonb_build_array(pg_temp.response('mm-pending') ->> 'outcome', pg_temp.response('mm-credits') #>> '{error,code}',
    pg_temp.response('mm-amount') #>> '{error,code}', pg_temp.response('mm-user') #>> '{error,code}'),
  '["payment_pending", "payment_mismatch", "payment_mismatch", "payment_mismatch"]'::jsonb,
  'mismatch: other credits, amount or user than the pending purchase are payment_mismatch'
);
select results_eq(
  $$ select kind, user_id, occurrence_count from ops.alerts where stripe_object_id = 'cs_mm_3' order by id $$,
  $$ values ('payment_mismatch', pg_temp.disputed(), 4) $$,
  'mismatch: one alert for the session (deduplicated), counted once per mismatching event'
);
select ok(
  (select (user_id, credits, amount_cents, status) = (pg_temp.disputed(), 100::bigint, 5000::bigint, 'pending'::text)
     from credits.credit_purchases where stripe_session_id = 'cs_mm_3')
    and pg_temp.balance(pg_temp.disputed()) = 0 and pg_temp.journal_count(pg_temp.disputed()) = 0
    and pg_temp.balance(pg_temp.buyer()) = 100 and pg_temp.journal_count(pg_temp.buyer()) = 1,
  'mismatch: the pending purchase is unchanged and nobody is credited'
);
insert into responses
select 'mm-ok', pg_temp.purchase(pg_temp.disputed(), 100, 5000, 'EUR', 'cs_mm_3', 'evt_mm_ok', 'pi_mm_3', 'paid');
select ok(
  pg_temp.response('mm-ok') ->> 'outcome' = 'credited' and pg_temp.balance(pg_temp.disputed()) = 100,
  'mismatch: the matching paid event still credits the purchase'
);

-- ---------------------------------------------------------------------------------------------
-- A user who does not exist: no pending purchase can exist for them, so nothing is credited
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'late-prepare', public.sp_prepare_credit_purchase(pg_temp.latecomer(), 'T-50-2500', 'prep-late');
select is(pg_temp.response('late-prepare') #>> '{error,code}', 'user_not_found',
  'unknown user: no purchase can be prepared for a user who does not exist');
insert into responses
select 'late', pg_temp.purchase(pg_temp.latecomer(), 40, 2000, 'EUR', 'cs_late_4', 'evt_late_4', 'pi_late_4', 'paid');
select is(
  pg_temp.failure(pg_temp.response('late')),
  '{"ok": false, "replayed": false, "code": "payment_mismatch", "stripe_session_id": "cs_late_4",
    "reason": "no_pending_purchase"}'::jsonb,
  'unknown user: a session naming them is payment_mismatch (no pending purchase), not unmatched'
);
select results_eq(
  $$ select kind, severity, user_id from ops.alerts where stripe_object_id = 'cs_late_4' $$,
  $$ values ('payment_mismatch', 'critical', pg_temp.latecomer()) $$,
  'unknown user: one critical payment_mismatch alert'
);
select is_empty(
  $$ select 1 from credits.unmatched_payments where stripe_object_id = 'cs_late_4'
     union all select 1 from credits.credit_purchases where stripe_session_id = 'cs_late_4'
     union all select 1 from credits.user_accounts where user_id = pg_temp.latecomer()
     union all select 1 from credits.credit_transactions where user_id = pg_temp.latecomer()
     union all select 1 from auth.users where id = pg_temp.latecomer() $$,
  'unknown user: no unmatched row, no purchase, no account, no journal, no user created'
);
select is((select result from festival.stripe_events where event_id = 'evt_late_4'), pg_temp.response('late'),
  'unknown user: the outcome is final and stored under the event');

-- ---------------------------------------------------------------------------------------------
-- sp_close_credit_purchase: failed and cancelled sessions are recorded, nothing moves
-- ---------------------------------------------------------------------------------------------

insert into responses select 'pending-cs_close_5', pg_temp.pending(pg_temp.closer(), 'T-30-1500', 'cs_close_5');
insert into responses
select 'close-pending', pg_temp.purchase(pg_temp.closer(), 30, 1500, 'EUR', 'cs_close_5', 'evt_close_pending', null, 'unpaid');
insert into responses
select 'close-fail', pg_temp.close('cs_close_5', pg_temp.closer(), 30, 1500, 'EUR', 'failed', 'evt_close_fail');
select is(
  pg_temp.pick(pg_temp.response('close-fail'), array['ok', 'replayed', 'outcome']),
  '{"ok": true, "replayed": false, "outcome": "marked_failed"}'::jsonb,
  'close: a pending purchase is marked failed'
);
select results_eq(
  $$ select status, failure_reason is not null, operation_id from credits.credit_purchases where stripe_session_id = 'cs_close_5' $$,
  $$ values ('failed', true, null::bigint) $$,
  'close: the row is failed with a reason, no operation'
);
select ok(
  pg_temp.balance(pg_temp.closer()) = 0 and pg_temp.journal_count(pg_temp.closer()) = 0
    and (select type from festival.stripe_events where event_id = 'evt_close_fail') = 'credit_purchase_closed',
  'close: no balance change; the event is stored'
);
insert into responses
select 'close-fail-replay', pg_temp.close('cs_close_5', pg_temp.closer(), 30, 1500, 'EUR', 'failed', 'evt_close_fail');
select is(pg_temp.response('close-fail-replay'), pg_temp.response('close-fail') || '{"replayed": true}',
  'close replay: the stored result, marked replayed');

insert into responses
select 'close-unknown', pg_temp.close('cs_close_new', pg_temp.closer(), 20, 1000, 'eur', 'cancelled', 'evt_close_new');
select is(pg_temp.response('close-unknown') ->> 'outcome', 'marked_cancelled', 'close: an unknown session is recorded as cancelled');
select results_eq(
  $$ select user_id, credits, amount_cents, currency, status, operation_id from credits.credit_purchases
     where stripe_session_id = 'cs_close_new' $$,
  $$ values (pg_temp.closer(), 20::bigint, 1000::bigint, 'EUR', 'cancelled', null::bigint) $$,
  'close: the unknown session gets a cancelled row'
);

insert into responses
select 'close-credited', pg_temp.close('cs_buy_1', pg_temp.buyer(), 100, 5000, 'EUR', 'cancelled', 'evt_close_buy');
select is(
  pg_temp.pick(pg_temp.response('close-credited'), array['ok', 'outcome']),
  '{"ok": true, "outcome": "already_credited"}'::jsonb,
  'close after the credit: already_credited'
);
select ok(
  (select status = 'completed' and failure_reason is null from credits.credit_purchases where stripe_session_id = 'cs_buy_1')
    and pg_temp.balance(pg_temp.buyer()) = 100,
  'close after the credit: the purchase stays completed and the credits stay'
);

-- ---------------------------------------------------------------------------------------------
-- Refunds of a credit purchase (running totals): credits in proportion, never below zero
-- ---------------------------------------------------------------------------------------------

-- The buyer holds 100 credits bought for 5000 cents with pi_buy_1.
insert into responses
select 'ref-1', public.sp_process_stripe_refund('pi_buy_1', 'ch_buy_1', 1000, 'eur', 'evt_ref_1');
select is(
  pg_temp.pick(pg_temp.response('ref-1'), array['ok', 'replayed', 'outcome', 'user_id', 'stripe_session_id',
    'refund_cents', 'credits_reversed', 'taken_from_balance_credits', 'receivable_credits', 'balance_before_credits',
    'balance_after_credits']),
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_applied', 'user_id', pg_temp.buyer(),
    'stripe_session_id', 'cs_buy_1', 'refund_cents', 1000, 'credits_reversed', 20, 'taken_from_balance_credits', 20,
    'receivable_credits', 0, 'balance_before_credits', 100, 'balance_after_credits', 80),
  'refund 1000 of 5000: 20 of 100 credits reversed'
);
select results_eq(
  $$ select type, amount_credits, balance_before_credits, balance_after_credits, operation_id
     from credits.credit_transactions where user_id = pg_temp.buyer() and type = 'refund' $$,
  $$ values ('refund', -20::bigint, 100::bigint, 80::bigint, (pg_temp.response('ref-1') ->> 'transaction_id')::bigint) $$,
  'refund 1000: a refund journal row of -20'
);
select results_eq(
  $$ select * from pg_temp.transfers_of('evt_ref_1') $$,
  $$ values ('user_credit:' || pg_temp.buyer(), 'credit_issuance:platform', 20::bigint, 100::bigint, 80::bigint,
       null::bigint, null::bigint) $$,
  'refund 1000: the credits go back to the credit issuance account'
);
select results_eq(
  $$ select refunded_cents, credits_reversed, status from credits.credit_purchases where stripe_session_id = 'cs_buy_1' $$,
  $$ values (1000::bigint, 20::bigint, 'completed') $$,
  'refund 1000: the purchase records the refunded cents and reversed credits'
);

insert into responses
select 'ref-late', public.sp_process_stripe_refund('pi_buy_1', 'ch_buy_1', 500, 'EUR', 'evt_ref_late');
insert into responses
select 'ref-1-replay', public.sp_process_stripe_refund('pi_buy_1', 'ch_buy_1', 1000, 'eur', 'evt_ref_1');
select is(pg_temp.response('ref-late') ->> 'outcome', 'refund_already_applied',
  'refund: a smaller running total arriving late is refund_already_applied');
select is(pg_temp.response('ref-1-replay'), pg_temp.response('ref-1') || '{"replayed": true}',
  'refund replay: the stored result, marked replayed');
select ok(
  pg_temp.balance(pg_temp.buyer()) = 80
    and (select count(*) from credits.credit_transactions where user_id = pg_temp.buyer() and type = 'refund') = 1
    and (select (refunded_cents, credits_reversed) = (1000::bigint, 20::bigint) from credits.credit_purchases
         where stripe_session_id = 'cs_buy_1'),
  'refund: the late total and the replay move nothing'
);

insert into responses
select 'ref-full', public.sp_process_stripe_refund('pi_buy_1', 'ch_buy_1', 5000, 'EUR', 'evt_ref_full');
select is(
  pg_temp.pick(pg_temp.response('ref-full'), array['outcome', 'refund_cents', 'credits_reversed',
    'taken_from_balance_credits', 'receivable_credits', 'balance_before_credits', 'balance_after_credits']),
  '{"outcome": "refund_applied", "refund_cents": 4000, "credits_reversed": 80, "taken_from_balance_credits": 80,
    "receivable_credits": 0, "balance_before_credits": 80, "balance_after_credits": 0}'::jsonb,
  'full refund: the remaining 80 credits reversed'
);
select ok(
  pg_temp.balance(pg_temp.buyer()) = 0
    and (select (refunded_cents, credits_reversed) = (5000::bigint, 100::bigint) from credits.credit_purchases
         where stripe_session_id = 'cs_buy_1')
    and not exists (select 1 from credits.receivables where user_id = pg_temp.buyer())
    and pg_temp.alert_count('refund_receivable', 'ch_buy_1') = 0,
  'full refund: nothing left, the purchase fully refunded, no receivable'
);

-- Refund in another currency: a mismatch, nothing moves.
insert into responses
select 'ref-usd', public.sp_process_stripe_refund('pi_mm_3', 'ch_mm_3', 1000, 'usd', 'evt_ref_usd');
select ok(
  pg_temp.response('ref-usd') #>> '{error,code}' = 'payment_mismatch' and pg_temp.balance(pg_temp.disputed()) = 100
    and pg_temp.alert_count('payment_mismatch', 'ch_mm_3') = 1
    and (select refunded_cents from credits.credit_purchases where stripe_session_id = 'cs_mm_3') = 0,
  'refund in another currency: payment_mismatch with an alert, nothing moves'
);

-- The spender bought 100 credits for 5000 cents and paid 70 of them to a peer.
insert into responses select 'pending-cs_spend_6', pg_temp.pending(pg_temp.spender(), 'T-100-5000', 'cs_spend_6');
insert into responses
select 'spend-buy', pg_temp.purchase(pg_temp.spender(), 100, 5000, 'EUR', 'cs_spend_6', 'evt_spend_buy', 'pi_spend_6', 'paid');
insert into responses
select 'spend-book', public.process_peer_booking_credits(pg_temp.spender(), pg_temp.peer(), 70, 'booking-spend-6',
  'cr-booking-spend-6');
select ok(
  pg_temp.response('spend-buy') ->> 'outcome' = 'credited' and (pg_temp.response('spend-book') ->> 'ok')::boolean
    and pg_temp.balance(pg_temp.spender()) = 30 and pg_temp.balance(pg_temp.peer()) = 70,
  'setup: the spender bought 100 credits and spent 70'
);

insert into responses
select 'ref-spent-half', public.sp_process_stripe_refund('pi_spend_6', 'ch_spend_6', 2500, 'EUR', 'evt_ref_spent_half');
insert into responses
select 'ref-spent-full', public.sp_process_stripe_refund('pi_spend_6', 'ch_spend_6', 5000, 'EUR', 'evt_ref_spent_full');
select is(
  jsonb_build_array(
    pg_temp.pick(pg_temp.response('ref-spent-half'), array['outcome', 'credits_reversed', 'taken_from_balance_credits',
      'receivable_credits', 'balance_before_credits', 'balance_after_credits']),
    pg_temp.pick(pg_temp.response('ref-spent-full'), array['outcome', 'credits_reversed', 'taken_from_balance_credits',
      'receivable_credits', 'balance_before_credits', 'balance_after_credits'])),
  '[{"outcome": "refund_applied", "credits_reversed": 50, "taken_from_balance_credits": 30, "receivable_credits": 20,
     "balance_before_credits": 30, "balance_after_credits": 0},
    {"outcome": "refund_applied", "credits_reversed": 50, "taken_from_balance_credits": 0, "receivable_credits": 50,
     "balance_before_credits": 0, "balance_after_credits": 0}]'::jsonb,
  'refund of spent credits: what is left is taken, the rest is owed'
);
select ok(
  pg_temp.balance(pg_temp.spender()) = 0 and pg_temp.balance(pg_temp.peer()) = 70,
  'refund of spent credits: the balance stops at zero, the peer keeps what was paid'
);
select results_eq(
  $$ select user_id, stripe_session_id, amount_credits, status, operation_id from credits.receivables
     where user_id = pg_temp.spender() order by id $$,
  $$ values (pg_temp.spender(), 'cs_spend_6', 20::bigint, 'open', (pg_temp.response('ref-spent-half') ->> 'transaction_id')::bigint),
            (pg_temp.spender(), 'cs_spend_6', 50::bigint, 'open', (pg_temp.response('ref-spent-full') ->> 'transaction_id')::bigint) $$,
  'refund of spent credits: open receivables for the credits the balance could not cover'
);
select results_eq(
  $$ select kind, user_id, (details ->> 'receivable_credits')::bigint, occurrence_count from ops.alerts
     where stripe_object_id = 'ch_spend_6' order by id $$,
  $$ values ('refund_receivable', pg_temp.spender(), 50::bigint, 2) $$,
  'refund of spent credits: one refund_receivable alert for the charge (deduplicated), counted per receivable'
);
select results_eq(
  $$ select type, amount_credits, balance_before_credits, balance_after_credits from credits.credit_transactions
     where user_id = pg_temp.spender() order by id $$,
  $$ values ('purchase', 100::bigint, 0::bigint, 100::bigint), ('peer_booking_debit', -70::bigint, 100::bigint, 30::bigint),
            ('refund', -30::bigint, 30::bigint, 0::bigint) $$,
  'refund of spent credits: the journal shows only what was taken'
);
select results_eq(
  $$ select refunded_cents, credits_reversed from credits.credit_purchases where stripe_session_id = 'cs_spend_6' $$,
  $$ values (5000::bigint, 100::bigint) $$,
  'refund of spent credits: the purchase is fully refunded'
);

-- A refund that arrives before the purchase is credited is parked and applied with the credit.
insert into responses
select 'early-ref', public.sp_process_stripe_refund('pi_early_7', 'ch_early_7', 1000, 'EUR', 'evt_early_ref');
select is(pg_temp.response('early-ref') ->> 'outcome', 'refund_parked_until_credit', 'early refund: parked until the credit');
select results_eq(
  $$ select amount_refunded_cents, currency, last_event_id from festival.stripe_refunds_pending
     where stripe_payment_intent_id = 'pi_early_7' $$,
  $$ values (1000::bigint, 'EUR', 'evt_early_ref') $$,
  'early refund: the running total is parked'
);
insert into responses select 'pending-cs_early_7', pg_temp.pending(pg_temp.early(), 'T-100-5000', 'cs_early_7');
insert into responses
select 'early-buy', pg_temp.purchase(pg_temp.early(), 100, 5000, 'EUR', 'cs_early_7', 'evt_early_buy', 'pi_early_7', 'paid');
select is(
  pg_temp.pick(pg_temp.response('early-buy'), array['outcome', 'balance_after_credits'])
    || jsonb_build_object('refund', pg_temp.pick(pg_temp.response('early-buy') -> 'refund',
      array['outcome', 'credits_reversed', 'receivable_credits', 'balance_after_credits'])),
  '{"outcome": "credited", "balance_after_credits": 100,
    "refund": {"outcome": "refund_applied", "credits_reversed": 20, "receivable_credits": 0, "balance_after_credits": 80}}'::jsonb,
  'early refund: the credit applies the parked refund'
);
select ok(
  pg_temp.balance(pg_temp.early()) = 80
    and not exists (select 1 from festival.stripe_refunds_pending where stripe_payment_intent_id = 'pi_early_7')
    and (select (status, refunded_cents, credits_reversed) = ('completed'::text, 1000::bigint, 20::bigint)
         from credits.credit_purchases where stripe_session_id = 'cs_early_7'),
  'early refund: 80 credits left, the parked row is gone, the purchase records the refund'
);
select results_eq(
  $$ select type, amount_credits, balance_before_credits, balance_after_credits from credits.credit_transactions
     where user_id = pg_temp.early() order by id $$,
  $$ values ('purchase', 100::bigint, 0::bigint, 100::bigint), ('refund', -20::bigint, 100::bigint, 80::bigint) $$,
  'early refund: the journal has the purchase, then the refund'
);

-- Card recharges are still refunded through the replaced procedure.
insert into responses
select 'card-prep', public.sp_prepare_online_recharge('DEMO-0040', null, 'MINI', 'st-card-prep-40');
insert into responses
select 'card-attach', public.sp_attach_checkout_session((pg_temp.response('card-prep') ->> 'recharge_id')::bigint,
  'cs_card_40', 'https://checkout.stripe.test/c/pay/cs_card_40');
insert into responses
select 'card-credit', public.sp_process_stripe_recharge('DEMO-0040', 2000, 'EUR', 'cs_card_40', 'evt_card_credit_40',
  'pi_card_40', 0, jsonb_build_object('recharge_id', pg_temp.response('card-prep') ->> 'recharge_id', 'package_code', 'MINI'));
select ok(
  pg_temp.response('card-credit') ->> 'outcome' = 'credited' and pg_temp.card_balance('DEMO-0040') = 2000,
  'setup: DEMO-0040 paid a MINI online'
);
insert into responses
select 'card-refund', public.sp_process_stripe_refund('pi_card_40', 'ch_card_40', 500, 'EUR', 'evt_card_refund_40');
select is(
  pg_temp.pick(pg_temp.response('card-refund'), array['ok', 'outcome', 'card_id', 'refund_cents', 'receivable_cents',
    'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "refund_applied", "card_id": "DEMO-0040", "refund_cents": 500, "receivable_cents": 0,
    "previous_balance_cents": 2000, "new_balance_cents": 1500}'::jsonb,
  'card recharge refund: still applied to the card'
);
select ok(
  pg_temp.card_balance('DEMO-0040') = 1500
    and (select refunded_cents from festival.recharges where client_request_id = 'st-card-prep-40') = 500,
  'card recharge refund: the card and the recharge record it'
);

-- ---------------------------------------------------------------------------------------------
-- sp_process_subscription_invoice: the plan's credits once per period
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'inv-jan', pg_temp.invoice(pg_temp.subscriber(), 'pro', 'sub_pro_9', '2026-01-01 00:00+00', '2026-02-01 00:00+00',
  'evt_inv_jan');
select is(
  pg_temp.pick(pg_temp.response('inv-jan'), array['ok', 'replayed', 'user_id', 'subscription_id', 'credits',
    'source_event_id', 'balance_before_credits', 'balance_after_credits']),
  jsonb_build_object('ok', true, 'replayed', false, 'user_id', pg_temp.subscriber(), 'subscription_id', 'sub_pro_9',
    'credits', 300, 'source_event_id', 'evt_inv_jan', 'balance_before_credits', 0, 'balance_after_credits', 300),
  'invoice: the plan''s 300 monthly credits allocated'
);
select results_eq(
  $$ select user_id, credits, period_end, source_event_id, operation_id, response from credits.allocations
     where subscription_id = 'sub_pro_9' and period_start = '2026-01-01 00:00+00' $$,
  $$ values (pg_temp.subscriber(), 300::bigint, '2026-02-01 00:00+00'::timestamptz, 'evt_inv_jan',
       (pg_temp.response('inv-jan') ->> 'transaction_id')::bigint, pg_temp.response('inv-jan')) $$,
  'invoice: one allocations row for the period'
);
select results_eq(
  $$ select type, amount_credits, balance_before_credits, balance_after_credits, subscription_id, period_start, operation_id
     from credits.credit_transactions where user_id = pg_temp.subscriber() $$,
  $$ values ('monthly_allocation', 300::bigint, 0::bigint, 300::bigint, 'sub_pro_9', '2026-01-01 00:00+00'::timestamptz,
       (pg_temp.response('inv-jan') ->> 'transaction_id')::bigint) $$,
  'invoice: one monthly_allocation journal row'
);
select results_eq(
  $$ select type, result from festival.stripe_events where event_id = 'evt_inv_jan' $$,
  $$ values ('invoice.payment_succeeded', pg_temp.response('inv-jan')) $$,
  'invoice: the event is stored with its result'
);

insert into responses
select 'inv-jan-replay', pg_temp.invoice(pg_temp.subscriber(), 'pro', 'sub_pro_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_jan');
insert into responses
select 'inv-jan-other', pg_temp.invoice(pg_temp.subscriber(), 'pro', 'sub_pro_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_jan_2');
select is(pg_temp.response('inv-jan-replay'), pg_temp.response('inv-jan') || '{"replayed": true}',
  'invoice replay: the stored result, marked replayed');
select is(pg_temp.response('inv-jan-other'), pg_temp.response('inv-jan') || '{"replayed": true}',
  'invoice: another event for the same period replays the first allocation');
select ok(
  pg_temp.balance(pg_temp.subscriber()) = 300 and pg_temp.journal_count(pg_temp.subscriber()) = 1
    and (select count(*) from credits.allocations where subscription_id = 'sub_pro_9') = 1,
  'invoice: one allocation, credited once'
);

insert into responses
select 'inv-feb', pg_temp.invoice(pg_temp.subscriber(), 'pro', 'sub_pro_9', '2026-02-01 00:00+00', '2026-03-01 00:00+00',
  'evt_inv_feb');
select ok(
  pg_temp.pick(pg_temp.response('inv-feb'), array['ok', 'replayed', 'credits', 'balance_after_credits'])
      = '{"ok": true, "replayed": false, "credits": 300, "balance_after_credits": 600}'::jsonb
    and (select count(*) from credits.allocations where subscription_id = 'sub_pro_9') = 2,
  'invoice: the next period allocates again'
);

-- Unknown or inactive plan: plan_not_found, one alert, the event not stored.
insert into responses
select 'inv-noplan', pg_temp.invoice(pg_temp.subscriber(), 'enterprise', 'sub_ent_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_noplan');
insert into responses
select 'inv-noplan-again', pg_temp.invoice(pg_temp.subscriber(), 'enterprise', 'sub_ent_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_noplan');
insert into responses
select 'inv-inactive', pg_temp.invoice(pg_temp.subscriber(), 'legacy', 'sub_legacy_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_inactive');
select is(
  jsonb_build_array(pg_temp.failure(pg_temp.response('inv-noplan')), pg_temp.failure(pg_temp.response('inv-noplan-again')),
    pg_temp.failure(pg_temp.response('inv-inactive'))),
  '[{"ok": false, "replayed": false, "code": "plan_not_found", "stripe_price_id": "enterprise"},
    {"ok": false, "replayed": false, "code": "plan_not_found", "stripe_price_id": "enterprise"},
    {"ok": false, "replayed": false, "code": "plan_not_found", "stripe_price_id": "legacy"}]'::jsonb,
  'invoice: an unknown or inactive plan is plan_not_found'
);
select results_eq(
  $$ select stripe_object_id, severity, user_id from ops.alerts where kind = 'plan_not_found' order by id $$,
  $$ values ('sub_ent_9', 'critical', pg_temp.subscriber()), ('sub_legacy_9', 'critical', pg_temp.subscriber()) $$,
  'invoice: one plan_not_found alert per subscription, none for the retry'
);
select is_empty(
  $$ select 1 from festival.stripe_events where event_id in ('evt_inv_noplan', 'evt_inv_inactive')
     union all select 1 from credits.allocations where subscription_id in ('sub_ent_9', 'sub_legacy_9') $$,
  'invoice: plan_not_found stores no event and no allocation'
);
select is(pg_temp.balance(pg_temp.subscriber()), 600::bigint, 'invoice: plan_not_found credits nothing');

insert into credits.plans (plan_id, monthly_credits, stripe_price_id) values ('enterprise', 1000, 'enterprise');
update credits.plans set active = true where plan_id = 'legacy';
insert into responses
select 'inv-noplan-retry', pg_temp.invoice(pg_temp.subscriber(), 'enterprise', 'sub_ent_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_noplan');
insert into responses
select 'inv-inactive-retry', pg_temp.invoice(pg_temp.subscriber(), 'legacy', 'sub_legacy_9', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_inactive');
select is(
  jsonb_build_array(
    pg_temp.pick(pg_temp.response('inv-noplan-retry'), array['ok', 'replayed', 'credits', 'balance_after_credits']),
    pg_temp.pick(pg_temp.response('inv-inactive-retry'), array['ok', 'replayed', 'credits', 'balance_after_credits'])),
  '[{"ok": true, "replayed": false, "credits": 1000, "balance_after_credits": 1600},
    {"ok": true, "replayed": false, "credits": 100, "balance_after_credits": 1700}]'::jsonb,
  'invoice: once the plan exists (or is active) the same event allocates'
);
select ok(
  pg_temp.balance(pg_temp.subscriber()) = 1700
    and (select count(*) from festival.stripe_events where event_id in ('evt_inv_noplan', 'evt_inv_inactive')) = 2
    and (select count(*) from ops.alerts where kind = 'plan_not_found') = 2,
  'invoice: the retried events are stored now, no further alert'
);

-- Unknown user: unmatched, the event not stored; allocated once the user exists.
insert into responses
select 'inv-late', pg_temp.invoice(pg_temp.late_subscriber(), 'pro', 'sub_late_10', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_late');
insert into responses
select 'inv-late-again', pg_temp.invoice(pg_temp.late_subscriber(), 'pro', 'sub_late_10', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_late');
select is(
  jsonb_build_array(pg_temp.response('inv-late') #>> '{error,code}', pg_temp.response('inv-late') #>> '{error,user_id}',
    pg_temp.response('inv-late-again') #>> '{error,code}'),
  jsonb_build_array('unmatched_payment', pg_temp.late_subscriber(), 'unmatched_payment'),
  'invoice: an unknown user is unmatched_payment'
);
select results_eq(
  $$ select kind, last_event_id, attempts, resolved_at is null,
       (select count(*) from ops.alerts a where a.kind = 'unmatched_payment' and a.user_id = pg_temp.late_subscriber())
     from credits.unmatched_payments where user_id = pg_temp.late_subscriber() $$,
  $$ values ('subscription_invoice', 'evt_inv_late', 2, true, 1::bigint) $$,
  'invoice: one open unmatched row with two attempts, one alert'
);
select is_empty(
  $$ select 1 from festival.stripe_events where event_id = 'evt_inv_late'
     union all select 1 from credits.allocations where subscription_id = 'sub_late_10'
     union all select 1 from credits.user_accounts where user_id = pg_temp.late_subscriber() $$,
  'invoice: unmatched stores no event, no allocation, no account'
);
insert into auth.users (id, aud, role, email)
values (pg_temp.late_subscriber(), 'authenticated', 'authenticated', 'late-subscriber@credits-stripe.test');
insert into responses
select 'inv-late-retry', pg_temp.invoice(pg_temp.late_subscriber(), 'pro', 'sub_late_10', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'evt_inv_late');
select ok(
  pg_temp.response('inv-late-retry') ->> 'ok' = 'true' and pg_temp.balance(pg_temp.late_subscriber()) = 300
    and (select resolved_at is not null from credits.unmatched_payments where user_id = pg_temp.late_subscriber())
    and exists (select 1 from festival.stripe_events where event_id = 'evt_inv_late'),
  'invoice: once the user exists the same event allocates and resolves the unmatched row'
);

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select pg_temp.purchase(pg_temp.buyer(), 10, null, 'EUR', 'cs_bad_1', 'evt_bad_1', null, 'paid') $$,
  '22023', null, 'purchase: null amount');
select throws_ok($$ select public.sp_prepare_credit_purchase(pg_temp.buyer(), '', 'cr-bad-2') $$,
  '22023', null, 'prepare: empty package code');
select throws_ok($$ select pg_temp.purchase(pg_temp.buyer(), 10, -1, 'EUR', 'cs_bad_3', 'evt_bad_3', null, 'paid') $$,
  '22023', null, 'purchase: negative amount (zero is a session that needed no payment)');
select throws_ok($$ select pg_temp.purchase(pg_temp.buyer(), 10, 500, 'EURO', 'cs_bad_4', 'evt_bad_4', null, 'paid') $$,
  '22023', null, 'purchase: a currency that is not 3 letters');
select throws_ok($$ select pg_temp.purchase(pg_temp.buyer(), 10, 500, 'EUR', '', 'evt_bad_5', null, 'paid') $$,
  '22023', null, 'purchase: empty session id');
select throws_ok($$ select pg_temp.purchase(pg_temp.buyer(), 10, 500, 'EUR', 'cs_bad_6', 'evt_bad_6', null, 'maybe') $$,
  '22023', null, 'purchase: unknown payment status');
select throws_ok($$ select pg_temp.close('cs_bad_7', pg_temp.buyer(), 10, 500, 'EUR', 'done', 'evt_bad_7') $$,
  '22023', null, 'close: a status other than failed or cancelled');
select throws_ok($$ select pg_temp.invoice(pg_temp.subscriber(), '', 'sub_bad_8', '2026-05-01', '2026-06-01', 'evt_bad_8') $$,
  '22023', null, 'invoice: empty plan id');
select throws_ok($$ select pg_temp.invoice(null, 'pro', 'sub_bad_9', '2026-05-01', '2026-06-01', 'evt_bad_9') $$,
  '22023', null, 'invoice: null user');
select is_empty(
  $$ select 1 from festival.stripe_events where event_id like 'evt_bad_%'
     union all select 1 from ops.app_transaction_log where client_request_id like 'evt_bad_%'
     union all select 1 from credits.credit_purchases where stripe_session_id like 'cs_bad_%'
     union all select 1 from credits.allocations where subscription_id like 'sub_bad_%' $$,
  'invalid arguments record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.sp_process_credit_purchase('cs_role_anon', 500, 'EUR', 'paid', null,
  'evt_role_anon_1') $$, '42501', null, 'anon cannot execute sp_process_credit_purchase');
select throws_ok($$ select public.sp_close_credit_purchase('cs_role_anon', 'd0000000-0000-4000-8000-000000000b01', 10, 500,
  'EUR', 'failed', 'evt_role_anon_2') $$, '42501', null, 'anon cannot execute sp_close_credit_purchase');
select throws_ok($$ select public.sp_process_subscription_invoice('d0000000-0000-4000-8000-000000000b09', 'pro', 'sub_role_anon',
  '2026-05-01', '2026-06-01', 2900, 'EUR', 'in_role_anon', null, 'evt_role_anon_3') $$, '42501', null,
  'anon cannot execute sp_process_subscription_invoice');
select throws_ok($$ select public.sp_process_stripe_refund('pi_role', 'ch_role', 100, 'EUR', 'evt_role_anon_4') $$,
  '42501', null, 'anon cannot execute the replaced sp_process_stripe_refund');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_process_credit_purchase('cs_role_auth', 500, 'EUR', 'paid', null,
  'evt_role_auth_1') $$, '42501', null, 'authenticated cannot execute sp_process_credit_purchase');
select throws_ok($$ select public.sp_close_credit_purchase('cs_role_auth', 'd0000000-0000-4000-8000-000000000b01', 10, 500,
  'EUR', 'failed', 'evt_role_auth_2') $$, '42501', null, 'authenticated cannot execute sp_close_credit_purchase');
select throws_ok($$ select public.sp_process_subscription_invoice('d0000000-0000-4000-8000-000000000b09', 'pro', 'sub_role_auth',
  '2026-05-01', '2026-06-01', 2900, 'EUR', 'in_role_auth', null, 'evt_role_auth_3') $$, '42501', null,
  'authenticated cannot execute sp_process_subscription_invoice');
reset role;
insert into responses select 'pending-cs_role_service', pg_temp.pending(pg_temp.buyer(), 'T-10-500', 'cs_role_service');
set local role service_role;
select is(public.sp_process_credit_purchase('cs_role_service', 500, 'EUR', 'paid', 'pi_role_service',
  'evt_role_service_1') ->> 'outcome', 'credited', 'service_role can execute sp_process_credit_purchase');
select is(public.sp_close_credit_purchase('cs_role_service_close', 'd0000000-0000-4000-8000-000000000b01', 10, 500, 'EUR',
  'failed', 'evt_role_service_2') ->> 'outcome', 'marked_failed', 'service_role can execute sp_close_credit_purchase');
select is(public.sp_process_subscription_invoice('d0000000-0000-4000-8000-000000000b09', 'pro', 'sub_role_service',
  '2026-05-01', '2026-06-01', 2900, 'EUR', 'in_role_service', null, 'evt_role_service_3') ->> 'ok', 'true',
  'service_role can execute sp_process_subscription_invoice');
reset role;
select is_empty(
  $$ select 1 from festival.stripe_events where event_id like 'evt_role_anon_%' or event_id like 'evt_role_auth_%'
     union all select 1 from credits.credit_purchases where stripe_session_id in ('cs_role_anon', 'cs_role_auth') $$,
  'denied roles record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- The ledger afterwards
-- ---------------------------------------------------------------------------------------------

select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

-- A session that needed no payment (a 100 % coupon) is credited at once, for a package that allows codes.
insert into responses select 'pending-cs_free_coupon', pg_temp.pending(pg_temp.buyer(), 'T-15-PROMO', 'cs_free_coupon');
select is(pg_temp.purchase(pg_temp.buyer(), 15, 0, 'eur', 'cs_free_coupon', 'evt_free_coupon', null,
  'no_payment_required') ->> 'outcome', 'credited', 'purchase: no_payment_required credits the user');

select throws_ok($$ select public.sp_close_credit_purchase('cs_bad_close_user', null, 10, 500, 'eur', 'failed', 'evt_bad_close_user') $$,
  '22023', null, 'close: a null user is an invalid argument, not a constraint error');
select throws_ok($$ select public.sp_close_credit_purchase('cs_bad_close_cur', pg_temp.buyer(), 10, 500, 'EURO', 'failed', 'evt_bad_close_cur') $$,
  '22023', null, 'close: a currency that is not 3 letters');
select throws_ok($$ select public.sp_process_subscription_invoice(pg_temp.buyer(), 'plan-x', null, now(), now() + interval '30 days',
  2900, 'EUR', 'in_bad_sub', null, 'evt_bad_sub') $$,
  '22023', null, 'invoice: a null subscription id');

select * from finish();
rollback;
