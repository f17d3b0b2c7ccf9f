-- ledger_reconcile() ties every business record to the transfers of its operation and checks the
-- sign of each kind of system account. Each test corrupts one record (inside this transaction,
-- which is rolled back; the append-only guards are switched off for it) and asserts that the
-- check names exactly that record.
begin;
create extension if not exists pgtap with schema extensions;
select plan(14);

-- A little of everything, so that every check has records to look at.
select public.sp_process_bar_order('DEMO-0091', '[{"product_id": "beer", "quantity": 2}, {"product_id": "cup-deposit", "quantity": 1}]',
  'main-bar', 'tie-order', '00000000-0000-4000-8000-00000000b001');
select public.sp_process_checkpoint_recharge('DEMO-0092', null, 'card', 'camping', '00000000-0000-4000-8000-00000000c002',
  'tie-recharge', 'MIDI');
insert into auth.users (id, aud, role, email) values
  ('00000000-0000-4000-8000-0000000e0001', 'authenticated', 'authenticated', 'tie-1@practice.test'),
  ('00000000-0000-4000-8000-0000000e0002', 'authenticated', 'authenticated', 'tie-2@practice.test');
select public.allocate_monthly_credits('00000000-0000-4000-8000-0000000e0001', 30, 'sub_tie', '2026-11-01', '2026-12-01',
  'tie-allocation');

select is_empty('select * from public.ledger_reconcile()', 'a healthy ledger has no discrepancy');

-- Bar orders
alter table festival.bar_orders disable trigger bar_orders_append_only;
update festival.bar_orders set total_cents = total_cents + 1 where client_request_id = 'tie-order';
select set_eq(
  $$ select check_name, detail ~ ('^bar order ' || (select id from festival.bar_orders where client_request_id = 'tie-order') || ':')
     from public.ledger_reconcile() $$,
  $$ values ('bar_order_total', true) $$,
  'an order whose total differs from what its operation charged is named (twice: transfers and lines)');
update festival.bar_orders set total_cents = total_cents - 1 where client_request_id = 'tie-order';
alter table festival.bar_orders enable trigger bar_orders_append_only;

alter table festival.bar_order_items disable trigger bar_order_items_append_only;
update festival.bar_order_items set line_total_cents = line_total_cents - 50
where order_id = (select id from festival.bar_orders where client_request_id = 'tie-order') and line_number = 1;
select results_eq(
  $$ select check_name, expected_cents, actual_cents from public.ledger_reconcile() $$,
  $$ values ('bar_order_total', 1100::bigint, 1050::bigint), ('bar_order_revenue', 850::bigint, 900::bigint) $$,
  'an order whose lines do not add up to its total is named, and so is the revenue its items should have made');
update festival.bar_order_items set line_total_cents = line_total_cents + 50
where order_id = (select id from festival.bar_orders where client_request_id = 'tie-order') and line_number = 1;
alter table festival.bar_order_items enable trigger bar_order_items_append_only;

-- Recharges
update festival.recharges set bonus_cents = 0 where client_request_id = 'tie-recharge';
select results_eq(
  $$ select check_name, expected_cents, actual_cents, detail ~ '^recharge \d+:' from public.ledger_reconcile() $$,
  $$ values ('recharge_amount', 5000::bigint, 5250::bigint, true), ('recharge_source', 0::bigint, -250::bigint, true) $$,
  'a recharge whose amount plus bonus differs from what its operation credited is named, and so is its bonus source');
update festival.recharges set bonus_cents = 250 where client_request_id = 'tie-recharge';

-- The deposits counter
update festival.deposits_outstanding set held_cents = held_cents + 200 where shard = ledger.shard_for('DEMO-0091');
select results_eq(
  $$ select check_name, expected_cents, actual_cents from public.ledger_reconcile() $$,
  $$ values ('deposits_outstanding', 200::bigint, 400::bigint) $$,
  'a deposits counter that differs from the ledger is named with its shard');
update festival.deposits_outstanding set held_cents = held_cents - 200 where shard = ledger.shard_for('DEMO-0091');

-- Credits: allocations
alter table credits.allocations disable trigger allocations_append_only;
update credits.allocations set credits = 31 where subscription_id = 'sub_tie';
select results_eq(
  $$ select check_name, expected_cents, actual_cents, detail ~ '^allocation sub_tie' from public.ledger_reconcile()
      $$,
  $$ values ('allocation_journal', 31::bigint, 30::bigint, true) $$,
  'an allocation whose journal row differs is named');
update credits.allocations set credits = 30 where subscription_id = 'sub_tie';
alter table credits.allocations enable trigger allocations_append_only;

-- Credits: bookings, holds and purchases, each with its journal
select public.process_peer_booking_credits('00000000-0000-4000-8000-0000000e0001', '00000000-0000-4000-8000-0000000e0002',
  5, 'tie-booking', 'tie-booking-key');
alter table credits.booking_payments disable trigger booking_payments_append_only;
update credits.booking_payments set credits = 6 where booking_id = 'tie-booking';
select results_eq(
  $$ select check_name, detail ~ '^booking tie-booking:' from public.ledger_reconcile()  $$,
  $$ values ('booking_journal', true) $$,
  'a booking whose journal rows differ is named');
update credits.booking_payments set credits = 5 where booking_id = 'tie-booking';
alter table credits.booking_payments enable trigger booking_payments_append_only;

-- Online top-up refunds: MIDI online on DEMO-0094, then half refunded.
create temp table tie_online as
select public.sp_prepare_online_recharge('DEMO-0094', null, 'MIDI', 'tie-online') as pending;
select public.sp_attach_checkout_session((select (pending ->> 'recharge_id')::bigint from tie_online), 'cs_tie',
  'https://checkout.stripe.test/c/pay/cs_tie');
select public.sp_process_stripe_recharge('DEMO-0094', 5000, 'eur', 'cs_tie', 'evt_tie_paid', 'pi_tie', 250,
  jsonb_build_object('recharge_id', (select pending ->> 'recharge_id' from tie_online), 'package_code', 'MIDI'));
select public.sp_process_stripe_refund('pi_tie', 'ch_tie', 2500, 'eur', 'evt_tie_refund');
select is_empty('select * from public.ledger_reconcile()', 'a credited and half-refunded online top-up ties out');
update festival.recharges set refunded_cents = 2000 where stripe_session_id = 'cs_tie';
select results_eq(
  $$ select check_name, expected_cents, actual_cents from public.ledger_reconcile() $$,
  $$ values ('refund_reversal', 2125::bigint, 2625::bigint) $$,
  'a recharge whose refunded total differs from what its refund operations moved back is named');
update festival.recharges set refunded_cents = 2500 where stripe_session_id = 'cs_tie';

-- Escrow: a hold released to someone else than its client.
select public.lock_credits('00000000-0000-4000-8000-0000000e0002', '00000000-0000-4000-8000-0000000e0001', 3,
  'tie-order', 'tie-lock');
select public.unlock_credits('00000000-0000-4000-8000-0000000e0002', 'tie-order', '00000000-0000-4000-8000-0000000e0002',
  'tie-unlock');
select is_empty('select * from public.ledger_reconcile()', 'a locked and unlocked hold ties out');
alter table credits.escrow_holds disable trigger user;
update credits.escrow_holds set status = 'paid_out' where order_id = 'tie-order';
select results_eq(
  $$ select check_name, detail ~ '^hold tie-order of' from public.ledger_reconcile() $$,
  $$ values ('hold_release', true) $$,
  'a hold whose release did not go to the party its status names is named');
update credits.escrow_holds set status = 'unlocked' where order_id = 'tie-order';
alter table credits.escrow_holds enable trigger user;

-- Credit purchase refunds: 30 credits for 3000 cents, a third refunded.
insert into credits.credit_packages (code, credits, price_cents, currency) values ('TIE-30', 30, 3000, 'EUR');
create temp table tie_purchase as
select public.sp_prepare_credit_purchase('00000000-0000-4000-8000-0000000e0001', 'TIE-30', 'tie-prepare') as pending;
select public.sp_attach_credit_checkout_session((select (pending ->> 'purchase_id')::bigint from tie_purchase), 'cs_tie_credits',
  'https://checkout.stripe.test/c/pay/cs_tie_credits');
select public.sp_process_credit_purchase('cs_tie_credits', 3000, 'eur', 'paid', 'pi_tie_credits', 'evt_tie_credits',
  '00000000-0000-4000-8000-0000000e0001', 30, (select (pending ->> 'purchase_id')::bigint from tie_purchase));
select public.sp_process_stripe_refund('pi_tie_credits', 'ch_tie_credits', 1000, 'eur', 'evt_tie_credits_refund');
select is_empty('select * from public.ledger_reconcile()', 'a bought and partly refunded credit purchase ties out');
update credits.credit_purchases set credits_reversed = credits_reversed + 1 where stripe_session_id = 'cs_tie_credits';
select results_eq(
  $$ select check_name, expected_cents, actual_cents from public.ledger_reconcile() $$,
  $$ values ('purchase_refund', 11::bigint, 10::bigint) $$,
  'a purchase whose reversed credits differ from what its refunds took back and left owed is named');
update credits.credit_purchases set credits_reversed = credits_reversed - 1 where stripe_session_id = 'cs_tie_credits';

-- Signs of system accounts: a transfer that takes money out of a bar's revenue into a card.
select ledger.post_transfers(
  ledger.create_operation('test_corruption', null, null, '{}'),
  array[(ledger.system_account_id('bar_revenue', 'vip-bar', 'x'), (select account_id from festival.cards where id = 'DEMO-0093'),
    100)::ledger.transfer_leg]);
select results_eq(
  $$ select check_name, account_code, actual_cents from public.ledger_reconcile() $$,
  $$ values ('system_account_sign', 'bar_revenue:vip-bar', -100::bigint) $$,
  'bar revenue below zero is named');

select * from finish();
rollback;
