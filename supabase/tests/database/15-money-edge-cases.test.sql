-- Money edge cases that no other file pins (issue 15):
--   1. the card maximum counts the bonus: at a checkpoint, when an online session is created, and
--      what crediting a paid session does when price plus bonus no longer fits;
--   2. a full refund takes back exactly what is left, rounding remainders included (a card top-up
--      with a 333-cent bonus, a purchase of 100 credits for 3000 cents);
--   3. spending exactly the whole balance succeeds, one unit more is insufficient_funds (bar order,
--      peer booking, escrow lock).
-- And a reconciled ledger afterwards. Every card and user here is new, so the seed does not matter.
begin;
create extension if not exists pgtap with schema extensions;
select plan(41);

-- ---------------------------------------------------------------------------------------------
-- Helpers, cards and users (temporary, gone with the transaction)
-- ---------------------------------------------------------------------------------------------

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

create function pg_temp.card_balance(p_card_id text) returns bigint
language sql stable as $$
  select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id
$$;

-- Every transfer touching a card (both directions), to prove that nothing moved.
create function pg_temp.card_transfer_count(p_card_id text) returns bigint
language sql stable as $$
  select count(*) from ledger.transfers t join festival.cards c on c.account_id in (t.from_account_id, t.to_account_id)
  where c.id = p_card_id
$$;

-- 'card:EDGE-0001' for customer accounts, 'promotions:festival' for (any shard of) a system account.
create function pg_temp.account_label(p_account_id bigint) returns text
language sql stable as $$
  select case when kind = 'system' then system_purpose || ':' || owner_ref else code end
  from ledger.accounts where id = p_account_id
$$;

-- Transfers of the operations behind a client request id or Stripe event id, in posting order.
create function pg_temp.transfers_of(p_client_request_id text)
returns table (from_account text, to_account text, amount_cents bigint)
language sql stable as $$
  select pg_temp.account_label(t.from_account_id), pg_temp.account_label(t.to_account_id), t.amount_cents
  from ledger.transfers t join ledger.operations o on o.id = t.operation_id
  where o.client_request_id = p_client_request_id
  order by t.id
$$;

create function pg_temp.cash_recharge(p_card_id text, p_amount_cents bigint, p_key text) returns jsonb
language sql as $$
  select public.sp_process_checkpoint_recharge(p_card_id, p_amount_cents, 'cash', 'entrance',
    '00000000-0000-4000-8000-00000000c001', p_key)
$$;

create function pg_temp.credit_balance(p_user_id uuid) returns bigint
language sql stable as $$
  select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
    where ua.user_id = p_user_id), 0)
$$;

create function pg_temp.buyer() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000f01'::uuid $$;
create function pg_temp.exact_booker() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000f02'::uuid $$;
create function pg_temp.short_booker() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000f03'::uuid $$;
create function pg_temp.treating() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000f04'::uuid $$;
create function pg_temp.exact_locker() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000f05'::uuid $$;
create function pg_temp.short_locker() returns uuid language sql immutable as $$ select 'e0000000-0000-4000-8000-000000000f06'::uuid $$;

insert into auth.users (id, aud, role, email) values
  (pg_temp.buyer(), 'authenticated', 'authenticated', 'buyer@edge-cases.test'),
  (pg_temp.exact_booker(), 'authenticated', 'authenticated', 'exact-booker@edge-cases.test'),
  (pg_temp.short_booker(), 'authenticated', 'authenticated', 'short-booker@edge-cases.test'),
  (pg_temp.treating(), 'authenticated', 'authenticated', 'treating@edge-cases.test'),
  (pg_temp.exact_locker(), 'authenticated', 'authenticated', 'exact-locker@edge-cases.test'),
  (pg_temp.short_locker(), 'authenticated', 'authenticated', 'short-locker@edge-cases.test');

-- A package whose bonus does not divide evenly by any partial refund below.
insert into festival.topup_packages (code, name, price_cents, bonus_cents) values ('ODD-BONUS', 'Odd bonus', 1000, 333);

select is(
  (public.sp_admin_register_cards(
    array['EDGE-0001', 'EDGE-0002', 'EDGE-0003', 'EDGE-0004', 'EDGE-0005', 'EDGE-0006', 'EDGE-0007', 'EDGE-0008'],
    '00000000-0000-4000-8000-00000000a001', 'edge-register') ->> 'ok')::boolean,
  true,
  'setup: eight new empty cards EDGE-0001 to EDGE-0008'
);

-- ---------------------------------------------------------------------------------------------
-- 1. The card maximum (50000) counts the bonus. MAXI is 10000 + 1000: on a card at 40000 the
--    price alone fits exactly (50000), price plus bonus (51000) does not.
-- ---------------------------------------------------------------------------------------------

-- EDGE-0001 at 40000, EDGE-0002 at 39000 (MAXI fills it to exactly the maximum).
insert into responses select 'fill-1a', pg_temp.cash_recharge('EDGE-0001', 25000, 'edge-fill-1a');
insert into responses select 'fill-1b', pg_temp.cash_recharge('EDGE-0001', 15000, 'edge-fill-1b');
insert into responses select 'fill-2a', pg_temp.cash_recharge('EDGE-0002', 25000, 'edge-fill-2a');
insert into responses select 'fill-2b', pg_temp.cash_recharge('EDGE-0002', 14000, 'edge-fill-2b');
select is(
  array[pg_temp.card_balance('EDGE-0001'), pg_temp.card_balance('EDGE-0002')],
  array[40000, 39000]::bigint[],
  'setup: EDGE-0001 holds 40000, EDGE-0002 holds 39000'
);

insert into responses
select 'checkpoint-maxi-over', public.sp_process_checkpoint_recharge('EDGE-0001', null, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'edge-checkpoint-maxi-over', package_code => 'MAXI');
select is(
  pg_temp.failure(pg_temp.response('checkpoint-maxi-over')),
  '{"ok": false, "replayed": false, "code": "limit_exceeded", "amount_cents": 10000, "bonus_cents": 1000,
    "balance_cents": 40000, "card_balance_max_cents": 50000}'::jsonb,
  'card maximum, checkpoint: MAXI on a card at 40000 (price fits, price plus bonus does not) is limit_exceeded'
);
select ok(
  pg_temp.card_balance('EDGE-0001') = 40000 and pg_temp.card_transfer_count('EDGE-0001') = 2
    and not exists (select 1 from festival.recharges where client_request_id = 'edge-checkpoint-maxi-over')
    and not exists (select 1 from ledger.operations where client_request_id = 'edge-checkpoint-maxi-over'),
  'card maximum, checkpoint: the refused package moves nothing and writes no recharge'
);

insert into responses
select 'checkpoint-maxi-fits', public.sp_process_checkpoint_recharge('EDGE-0002', null, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'edge-checkpoint-maxi-fits', package_code => 'MAXI');
select is(
  pg_temp.pick(pg_temp.response('checkpoint-maxi-fits'), array['ok', 'amount_cents', 'bonus_cents', 'new_balance_cents']),
  '{"ok": true, "amount_cents": 10000, "bonus_cents": 1000, "new_balance_cents": 50000}'::jsonb,
  'card maximum, checkpoint: MAXI on a card at 39000 fills it to exactly the maximum'
);

-- The online session on cards of its own (EDGE-0007 at 40000, EDGE-0008 at 39000), so that it does
-- not depend on what the checkpoint did above.
insert into responses select 'fill-7a', pg_temp.cash_recharge('EDGE-0007', 25000, 'edge-fill-7a');
insert into responses select 'fill-7b', pg_temp.cash_recharge('EDGE-0007', 15000, 'edge-fill-7b');
insert into responses select 'fill-8a', pg_temp.cash_recharge('EDGE-0008', 25000, 'edge-fill-8a');
insert into responses select 'fill-8b', pg_temp.cash_recharge('EDGE-0008', 14000, 'edge-fill-8b');
select is(
  array[pg_temp.card_balance('EDGE-0007'), pg_temp.card_balance('EDGE-0008')],
  array[40000, 39000]::bigint[],
  'setup: EDGE-0007 holds 40000, EDGE-0008 holds 39000'
);
insert into responses
select 'prepare-maxi-over', public.sp_prepare_online_recharge('EDGE-0007', null, 'MAXI', 'edge-prepare-maxi-over');
select is(
  pg_temp.failure(pg_temp.response('prepare-maxi-over')),
  '{"ok": false, "replayed": false, "code": "limit_exceeded", "amount_cents": 10000, "bonus_cents": 1000,
    "balance_cents": 40000, "card_balance_max_cents": 50000}'::jsonb,
  'card maximum, online session: MAXI on a card at 40000 is limit_exceeded when the session is created'
);
select ok(
  not exists (select 1 from festival.recharges where client_request_id = 'edge-prepare-maxi-over'),
  'card maximum, online session: the refused session writes no pending recharge'
);
insert into responses
select 'prepare-maxi-fits', public.sp_prepare_online_recharge('EDGE-0008', null, 'MAXI', 'edge-prepare-maxi-fits');
select is(
  pg_temp.pick(pg_temp.response('prepare-maxi-fits'), array['ok', 'amount_cents', 'bonus_cents', 'status']),
  '{"ok": true, "amount_cents": 10000, "bonus_cents": 1000, "status": "pending"}'::jsonb,
  'card maximum, online session: MAXI on a card at 39000 (exactly the maximum with the bonus) is a pending session'
);

-- Crediting: EDGE-0003 at 39000 prepares MAXI (it fits then), then receives 1000 at a checkpoint
-- before Stripe reports the payment. Price (50000) still fits, price plus bonus (51000) does not.
insert into responses select 'fill-3a', pg_temp.cash_recharge('EDGE-0003', 25000, 'edge-fill-3a');
insert into responses select 'fill-3b', pg_temp.cash_recharge('EDGE-0003', 14000, 'edge-fill-3b');
insert into responses
select 'prepare-maxi-3', public.sp_prepare_online_recharge('EDGE-0003', null, 'MAXI', 'edge-prepare-maxi-3');
insert into responses
select 'attach-maxi-3', public.sp_attach_checkout_session((pg_temp.response('prepare-maxi-3') ->> 'recharge_id')::bigint,
  'cs_edge_maxi_3', 'https://checkout.stripe.test/c/pay/cs_edge_maxi_3');
-- While the session is open it counts toward the maximum (issue 9, item 10): the 1000 is refused.
insert into responses select 'fill-3c-pending', pg_temp.cash_recharge('EDGE-0003', 1000, 'edge-fill-3c-pending');
select is(pg_temp.response('fill-3c-pending') #>> '{error,code}', 'limit_exceeded',
  'card maximum: a pending MAXI session counts toward the maximum, a checkpoint 1000 on top is refused');
-- Once its expiry has passed it no longer counts; the paid event below then stands for a payment
-- Stripe reports anyway (the crediting rule under test).
update festival.recharges set expires_at = now() - interval '1 second' where stripe_session_id = 'cs_edge_maxi_3';
insert into responses select 'fill-3c', pg_temp.cash_recharge('EDGE-0003', 1000, 'edge-fill-3c');
select is(
  jsonb_build_array(pg_temp.response('prepare-maxi-3') ->> 'ok', pg_temp.response('attach-maxi-3') ->> 'session_id',
    pg_temp.card_balance('EDGE-0003')),
  '["true", "cs_edge_maxi_3", 40000]'::jsonb,
  'setup: a pending MAXI session for EDGE-0003, which now holds 40000'
);

-- Today: the payment is real, so it is credited in full even though the card passes its maximum
-- (festival.credit_stripe_session: "credited even if the card filled up"). Refusing it with
-- limit_exceeded here would leave a paid session uncredited.
insert into responses
select 'credit-maxi-over', public.sp_process_stripe_recharge('EDGE-0003', 10000, 'eur', 'cs_edge_maxi_3',
  'evt_edge_credit_maxi_3', 'pi_edge_maxi_3', 1000,
  jsonb_build_object('recharge_id', pg_temp.response('prepare-maxi-3') ->> 'recharge_id', 'package_code', 'MAXI'));
select is(
  pg_temp.pick(pg_temp.response('credit-maxi-over'),
    array['ok', 'outcome', 'amount_cents', 'bonus_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "credited", "amount_cents": 10000, "bonus_cents": 1000,
    "previous_balance_cents": 40000, "new_balance_cents": 51000}'::jsonb,
  'card maximum, crediting: a paid MAXI session is credited in full (price plus bonus) although the card passes its maximum'
);
select results_eq(
  $$ select * from pg_temp.transfers_of('evt_edge_credit_maxi_3') $$,
  $$ values ('stripe_clearing:stripe', 'card:EDGE-0003', 10000::bigint),
            ('promotions:festival', 'card:EDGE-0003', 1000::bigint) $$,
  'card maximum, crediting: the price from Stripe clearing, the bonus from promotions'
);
select ok(
  pg_temp.card_balance('EDGE-0003') = 51000
    and (select status from festival.recharges where stripe_session_id = 'cs_edge_maxi_3') = 'completed',
  'card maximum, crediting: the card holds 51000 and the recharge is completed'
);
-- Past the maximum, the card takes no further top-up, even the smallest.
insert into responses select 'over-max-topup', pg_temp.cash_recharge('EDGE-0003', 500, 'edge-over-max-topup');
select is(pg_temp.response('over-max-topup') #>> '{error,code}', 'limit_exceeded',
  'card maximum, crediting: a card above its maximum refuses the next top-up with limit_exceeded');

-- ---------------------------------------------------------------------------------------------
-- 2. A full refund takes back exactly what is left, rounding remainders included.
-- ---------------------------------------------------------------------------------------------

-- Card top-up: ODD-BONUS (1000 + 333) online on the empty EDGE-0004.
insert into responses
select 'prepare-odd', public.sp_prepare_online_recharge('EDGE-0004', null, 'ODD-BONUS', 'edge-prepare-odd');
insert into responses
select 'attach-odd', public.sp_attach_checkout_session((pg_temp.response('prepare-odd') ->> 'recharge_id')::bigint,
  'cs_edge_odd', 'https://checkout.stripe.test/c/pay/cs_edge_odd');
insert into responses
select 'credit-odd', public.sp_process_stripe_recharge('EDGE-0004', 1000, 'eur', 'cs_edge_odd', 'evt_edge_credit_odd',
  'pi_edge_odd', 333, jsonb_build_object('recharge_id', pg_temp.response('prepare-odd') ->> 'recharge_id',
    'package_code', 'ODD-BONUS'));
select is(
  pg_temp.pick(pg_temp.response('credit-odd'), array['ok', 'outcome', 'new_balance_cents']),
  '{"ok": true, "outcome": "credited", "new_balance_cents": 1333}'::jsonb,
  'setup: EDGE-0004 credited 1000 plus a 333-cent bonus'
);

-- Half the price: the bonus share is 166.5, rounded down to 166.
insert into responses
select 'refund-odd-part', public.sp_process_stripe_refund('pi_edge_odd', 'ch_edge_odd', 500, 'eur', 'evt_edge_refund_odd_1');
select is(
  pg_temp.pick(pg_temp.response('refund-odd-part'),
    array['ok', 'outcome', 'refund_cents', 'bonus_reversed_cents', 'receivable_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "refund_applied", "refund_cents": 500, "bonus_reversed_cents": 166, "receivable_cents": 0,
    "new_balance_cents": 667}'::jsonb,
  'refund remainder, card: half the price refunded takes 500 and 166 of the bonus (rounded down)'
);

insert into responses
select 'refund-odd-full', public.sp_process_stripe_refund('pi_edge_odd', 'ch_edge_odd', 1000, 'eur', 'evt_edge_refund_odd_2');
select is(
  pg_temp.pick(pg_temp.response('refund-odd-full'),
    array['ok', 'outcome', 'refund_cents', 'bonus_reversed_cents', 'receivable_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "refund_applied", "refund_cents": 500, "bonus_reversed_cents": 167, "receivable_cents": 0,
    "new_balance_cents": 0}'::jsonb,
  'refund remainder, card: the full refund takes the other 500 and the remaining 167 of the bonus'
);
select is(
  (select (refunded_cents, bonus_reversed_cents) from festival.recharges where stripe_session_id = 'cs_edge_odd'),
  (1000::bigint, 333::bigint),
  'refund remainder, card: the recharge ends fully refunded with the whole 333-cent bonus reversed'
);
select results_eq(
  $$ select to_account, sum(amount_cents)::bigint from (
       select * from pg_temp.transfers_of('evt_edge_refund_odd_1')
       union all select * from pg_temp.transfers_of('evt_edge_refund_odd_2')) refunds
     group by to_account order by to_account $$,
  $$ values ('promotions:festival', 333::bigint), ('stripe_clearing:stripe', 1000::bigint) $$,
  'refund remainder, card: the two refunds return exactly 1000 to Stripe clearing and 333 to promotions'
);
select ok(
  pg_temp.card_balance('EDGE-0004') = 0
    and not exists (select 1 from festival.receivables where card_id = 'EDGE-0004'),
  'refund remainder, card: the card ends at zero and owes nothing'
);

-- Credit purchase: 100 credits for 3000 cents, bought the only way credits are sold: a package,
-- a pending purchase, its Checkout session, then the paid event.
insert into credits.credit_packages (code, credits, price_cents, currency) values ('EDGE-100', 100, 3000, 'EUR');
create temp table edge_purchase as
select public.sp_prepare_credit_purchase(pg_temp.buyer(), 'EDGE-100', 'edge-prepare-100') as pending;
select public.sp_attach_credit_checkout_session((select (pending ->> 'purchase_id')::bigint from edge_purchase),
  'cs_edge_credits_100', 'https://checkout.stripe.test/cs_edge_credits_100');
insert into responses
select 'purchase-100', public.sp_process_credit_purchase('cs_edge_credits_100', 3000, 'eur', 'paid', 'pi_edge_credits_100',
  'evt_edge_purchase_100', pg_temp.buyer(), 100, (select (pending ->> 'purchase_id')::bigint from edge_purchase));
select is(
  jsonb_build_array(pg_temp.response('purchase-100') ->> 'outcome', pg_temp.credit_balance(pg_temp.buyer())),
  '["credited", 100]'::jsonb,
  'setup: the buyer holds 100 credits bought for 3000 cents'
);

-- A third of the money: 33.3 credits, rounded down to 33.
insert into responses
select 'refund-credits-part', public.sp_process_stripe_refund('pi_edge_credits_100', 'ch_edge_credits_100', 1000, 'eur',
  'evt_edge_refund_credits_1');
select is(
  pg_temp.pick(pg_temp.response('refund-credits-part'),
    array['ok', 'outcome', 'refund_cents', 'credits_reversed', 'receivable_credits', 'balance_after_credits']),
  '{"ok": true, "outcome": "refund_applied", "refund_cents": 1000, "credits_reversed": 33, "receivable_credits": 0,
    "balance_after_credits": 67}'::jsonb,
  'refund remainder, credits: a third of the money refunded takes 33 credits (rounded down)'
);

insert into responses
select 'refund-credits-full', public.sp_process_stripe_refund('pi_edge_credits_100', 'ch_edge_credits_100', 3000, 'eur',
  'evt_edge_refund_credits_2');
select is(
  pg_temp.pick(pg_temp.response('refund-credits-full'),
    array['ok', 'outcome', 'refund_cents', 'credits_reversed', 'receivable_credits', 'balance_after_credits']),
  '{"ok": true, "outcome": "refund_applied", "refund_cents": 2000, "credits_reversed": 67, "receivable_credits": 0,
    "balance_after_credits": 0}'::jsonb,
  'refund remainder, credits: the full refund takes the remaining 67 credits'
);
select is(
  (select (refunded_cents, credits_reversed) from credits.credit_purchases where stripe_session_id = 'cs_edge_credits_100'),
  (3000::bigint, 100::bigint),
  'refund remainder, credits: the purchase ends fully refunded with every one of its 100 credits reversed'
);
select ok(
  pg_temp.credit_balance(pg_temp.buyer()) = 0
    and (select sum(amount_credits) from credits.credit_transactions where user_id = pg_temp.buyer() and type = 'refund') = -100
    and not exists (select 1 from credits.receivables where user_id = pg_temp.buyer()),
  'refund remainder, credits: the buyer ends at zero, the journal shows 100 credits refunded, nothing owed'
);

-- ---------------------------------------------------------------------------------------------
-- 3. Exactly the whole balance can be spent; one unit more is insufficient_funds.
-- ---------------------------------------------------------------------------------------------

-- Bar order: a cocktail is 900. EDGE-0005 holds 900, EDGE-0006 holds 899.
insert into responses select 'fill-5', pg_temp.cash_recharge('EDGE-0005', 900, 'edge-fill-5');
insert into responses select 'fill-6', pg_temp.cash_recharge('EDGE-0006', 899, 'edge-fill-6');
insert into responses
select 'order-exact', public.sp_process_bar_order('EDGE-0005', '[{"product_id": "cocktail", "quantity": 1}]', 'main-bar',
  'edge-order-exact', '00000000-0000-4000-8000-00000000b001');
insert into responses
select 'order-short', public.sp_process_bar_order('EDGE-0006', '[{"product_id": "cocktail", "quantity": 1}]', 'main-bar',
  'edge-order-short', '00000000-0000-4000-8000-00000000b001');
select is(
  pg_temp.pick(pg_temp.response('order-exact'), array['ok', 'total_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "total_cents": 900, "previous_balance_cents": 900, "new_balance_cents": 0}'::jsonb,
  'whole balance, bar order: a 900 order on a card holding 900 succeeds'
);
select is(pg_temp.card_balance('EDGE-0005'), 0::bigint, 'whole balance, bar order: the card ends at exactly zero');
select is(
  pg_temp.failure(pg_temp.response('order-short')),
  '{"ok": false, "replayed": false, "code": "insufficient_funds", "balance_cents": 899, "total_cents": 900,
    "missing_cents": 1}'::jsonb,
  'whole balance, bar order: a 900 order on a card holding 899 is insufficient_funds, 1 cent missing'
);
select ok(
  pg_temp.card_balance('EDGE-0006') = 899 and pg_temp.card_transfer_count('EDGE-0006') = 1
    and not exists (select 1 from festival.bar_orders where client_request_id = 'edge-order-short'),
  'whole balance, bar order: the refused order moves nothing'
);

-- Peer booking: both bookers hold 80 credits.
select ok(
  (public.allocate_monthly_credits(pg_temp.exact_booker(), 80, 'edge-sub-exact-booker', '2026-01-01 00:00+00',
    '2026-02-01 00:00+00', 'edge-fund-exact-booker') ->> 'ok')::boolean
  and (public.allocate_monthly_credits(pg_temp.short_booker(), 80, 'edge-sub-short-booker', '2026-01-01 00:00+00',
    '2026-02-01 00:00+00', 'edge-fund-short-booker') ->> 'ok')::boolean,
  'setup: two bookers hold 80 credits each'
);
insert into responses
select 'booking-exact', public.process_peer_booking_credits(pg_temp.exact_booker(), pg_temp.treating(), 80,
  'edge-booking-exact', 'edge-booking-exact');
insert into responses
select 'booking-short', public.process_peer_booking_credits(pg_temp.short_booker(), pg_temp.treating(), 81,
  'edge-booking-short', 'edge-booking-short');
select is(
  pg_temp.pick(pg_temp.response('booking-exact'), array['ok', 'credits'])
    || pg_temp.pick(pg_temp.response('booking-exact') -> 'booking_practitioner',
      array['balance_before_credits', 'balance_after_credits']),
  '{"ok": true, "credits": 80, "balance_before_credits": 80, "balance_after_credits": 0}'::jsonb,
  'whole balance, peer booking: booking 80 credits with 80 succeeds'
);
select is(
  array[pg_temp.credit_balance(pg_temp.exact_booker()), pg_temp.credit_balance(pg_temp.treating())],
  array[0, 80]::bigint[],
  'whole balance, peer booking: the booker ends at exactly zero, the treating practitioner holds 80'
);
select is(
  pg_temp.failure(pg_temp.response('booking-short')),
  '{"ok": false, "replayed": false, "code": "insufficient_funds", "balance_credits": 80, "credits": 81,
    "missing_credits": 1}'::jsonb,
  'whole balance, peer booking: booking 81 credits with 80 is insufficient_funds, 1 credit missing'
);
select ok(
  pg_temp.credit_balance(pg_temp.short_booker()) = 80
    and not exists (select 1 from credits.booking_payments where booking_id = 'edge-booking-short'),
  'whole balance, peer booking: the refused booking moves nothing'
);

-- Escrow lock: both clients hold 50 credits.
select ok(
  (public.allocate_monthly_credits(pg_temp.exact_locker(), 50, 'edge-sub-exact-locker', '2026-01-01 00:00+00',
    '2026-02-01 00:00+00', 'edge-fund-exact-locker') ->> 'ok')::boolean
  and (public.allocate_monthly_credits(pg_temp.short_locker(), 50, 'edge-sub-short-locker', '2026-01-01 00:00+00',
    '2026-02-01 00:00+00', 'edge-fund-short-locker') ->> 'ok')::boolean,
  'setup: two clients hold 50 credits each'
);
insert into responses
select 'lock-exact', public.lock_credits(pg_temp.exact_locker(), pg_temp.treating(), 50, 'edge-order-exact', 'edge-lock-exact');
insert into responses
select 'lock-short', public.lock_credits(pg_temp.short_locker(), pg_temp.treating(), 51, 'edge-order-short', 'edge-lock-short');
select is(
  pg_temp.pick(pg_temp.response('lock-exact'),
    array['ok', 'status', 'amount_credits', 'balance_before_credits', 'balance_after_credits']),
  '{"ok": true, "status": "held", "amount_credits": 50, "balance_before_credits": 50, "balance_after_credits": 0}'::jsonb,
  'whole balance, escrow lock: locking 50 credits with 50 succeeds'
);
select is(
  array[pg_temp.credit_balance(pg_temp.exact_locker()),
    (select a.balance_cents from credits.escrow_holds h join ledger.accounts a on a.id = h.account_id
     where h.order_id = 'edge-order-exact')],
  array[0, 50]::bigint[],
  'whole balance, escrow lock: the client ends at exactly zero, the hold holds 50'
);
select is(
  pg_temp.failure(pg_temp.response('lock-short')),
  '{"ok": false, "replayed": false, "code": "insufficient_funds", "balance_credits": 50, "amount_credits": 51,
    "missing_credits": 1}'::jsonb,
  'whole balance, escrow lock: locking 51 credits with 50 is insufficient_funds, 1 credit missing'
);
select ok(
  pg_temp.credit_balance(pg_temp.short_locker()) = 50
    and not exists (select 1 from credits.escrow_holds where order_id = 'edge-order-short'),
  'whole balance, escrow lock: the refused lock moves nothing and creates no hold'
);

-- ---------------------------------------------------------------------------------------------
-- The ledger afterwards
-- ---------------------------------------------------------------------------------------------

select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select * from finish();
rollback;
