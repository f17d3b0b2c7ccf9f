-- Stripe integrity for festival cards: a dispute holds only the disputed money (the card stays
-- usable) and charge.dispute.closed releases or writes it off; a failed refund restores what it
-- reversed; refused events become invalid_event alerts; proportions in numeric near the bigint
-- limit; pending online top-ups and open dispute holds count toward the card maximum.
begin;
create extension if not exists pgtap with schema extensions;
select plan(82);

-- ---------------------------------------------------------------------------------------------
-- Helpers (temporary, gone with the transaction)
-- ---------------------------------------------------------------------------------------------

create temp table responses (name text primary key, result jsonb not null);

create function pg_temp.keep(p_name text, p_result jsonb) returns jsonb
language sql as $$ insert into responses values (p_name, p_result) returning result $$;

create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.card_balance(p_card_id text) returns bigint
language sql stable as $$
  select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id
$$;

create function pg_temp.hold_balance(p_dispute_id text) returns bigint
language sql stable as $$ select balance_cents from ledger.accounts where code = 'dispute_hold:' || p_dispute_id $$;

create function pg_temp.system_total(p_purpose text) returns numeric
language sql stable as $$
  select coalesce(sum(balance_cents), 0) from ledger.account_balances where kind = 'system' and system_purpose = p_purpose
$$;

-- A paid session of ours without a pending row (the package named in metadata gives the bonus).
create function pg_temp.credit(p_card_id text, p_amount_cents bigint, p_bonus_cents bigint, p_package_code text,
  p_intent text) returns jsonb
language sql as $$
  select public.sp_process_stripe_recharge(p_card_id, p_amount_cents, 'eur', 'cs_' || p_intent, 'evt_credit_' || p_intent,
    p_intent, p_bonus_cents, jsonb_build_object('kind', 'card_recharge', 'package_code', p_package_code))
$$;

create function pg_temp.spend(p_card_id text, p_product text, p_quantity integer, p_key text) returns jsonb
language sql as $$
  select public.sp_process_bar_order(p_card_id, jsonb_build_array(jsonb_build_object('product_id', p_product,
    'quantity', p_quantity)), 'main-bar', p_key, '00000000-0000-4000-8000-00000000b001')
$$;

create function pg_temp.cash(p_card_id text, p_amount_cents bigint, p_key text) returns jsonb
language sql as $$
  select public.sp_process_checkpoint_recharge(p_card_id, p_amount_cents, 'cash', 'entrance',
    '00000000-0000-4000-8000-00000000c001', p_key)
$$;

-- ---------------------------------------------------------------------------------------------
-- Item 8: a dispute holds the disputed money; the card stays usable
-- ---------------------------------------------------------------------------------------------

-- DEMO-0041: 20000 in cash plus a MINI (2000) paid online; the MINI is disputed.
select pg_temp.cash('DEMO-0041', 20000, 'fi-cash-41');
select pg_temp.credit('DEMO-0041', 2000, 0, 'MINI', 'pi_d41');
select pg_temp.keep('dispute-41', public.sp_process_stripe_dispute('pi_d41', 'ch_d41', 'dp_41', 2000, 'evt_dp_41'));

select is(
  (select jsonb_build_object('outcome', r ->> 'outcome', 'held', r -> 'held_cents', 'receivable', r -> 'receivable_cents')
   from pg_temp.response('dispute-41') r),
  '{"outcome": "dispute_hold_opened", "held": 2000, "receivable": 0}'::jsonb,
  'dispute: the disputed 2000 are held, nothing owed');
select is((select status from festival.cards where id = 'DEMO-0041'), 'active', 'dispute: the card stays active');
select is(pg_temp.card_balance('DEMO-0041'), 20000::bigint, 'dispute: the card keeps everything but the disputed 2000');
select is(pg_temp.hold_balance('dp_41'), 2000::bigint, 'dispute: the hold account holds 2000');
select is((select kind from ledger.accounts where code = 'dispute_hold:dp_41'), 'dispute_hold',
  'dispute: the hold is a customer-kind account (locked, never below zero)');
select is(pg_temp.spend('DEMO-0041', 'beer', 1, 'fi-beer-41') ->> 'ok', 'true', 'dispute: the card still sells');
select is(pg_temp.card_balance('DEMO-0041'), 19550::bigint, 'dispute: the sale took its 450');
select results_eq(
  $$ select stripe_payment_intent_id, card_id, status, amount_cents, bonus_cents, from_card_cents, receivable_cents
     from festival.card_disputes where stripe_dispute_id = 'dp_41' $$,
  $$ values ('pi_d41', 'DEMO-0041', 'open', 2000::bigint, 0::bigint, 2000::bigint, 0::bigint) $$,
  'dispute: the dispute row records what is held');
select is((select count(*) from ops.alerts where kind = 'dispute' and stripe_object_id = 'dp_41'), 1::bigint,
  'dispute: one dispute alert');

select pg_temp.keep('dispute-41-replay', public.sp_process_stripe_dispute('pi_d41', 'ch_d41', 'dp_41', 2000, 'evt_dp_41'));
select pg_temp.keep('dispute-41-again', public.sp_process_stripe_dispute('pi_d41', 'ch_d41', 'dp_41', 2000, 'evt_dp_41_b'));
select ok((pg_temp.response('dispute-41-replay') ->> 'replayed')::boolean
    and pg_temp.response('dispute-41-replay') - 'replayed' = pg_temp.response('dispute-41') - 'replayed',
  'dispute replay: the stored result');
select is(pg_temp.response('dispute-41-again') ->> 'outcome', 'dispute_already_recorded',
  'dispute: the same dispute under another event id holds nothing more');
select is(pg_temp.hold_balance('dp_41') + pg_temp.card_balance('DEMO-0041'), 21550::bigint,
  'dispute: replays moved nothing');

-- Won: the hold goes back to the card.
select pg_temp.keep('won-41', public.sp_close_stripe_dispute('pi_d41', 'ch_d41', 'dp_41', 2000, 'won', 'evt_dpc_41'));
select is(pg_temp.response('won-41') ->> 'outcome', 'dispute_won_released', 'dispute won: released');
select is(pg_temp.card_balance('DEMO-0041'), 21550::bigint, 'dispute won: the card has its 2000 back');
select is(pg_temp.hold_balance('dp_41'), 0::bigint, 'dispute won: the hold is empty');
select is((select status from festival.card_disputes where stripe_dispute_id = 'dp_41'), 'won', 'dispute won: status won');
select is(public.sp_close_stripe_dispute('pi_d41', 'ch_d41', 'dp_41', 2000, 'lost', 'evt_dpc_41_b') ->> 'outcome',
  'dispute_already_closed', 'dispute: a second close (even lost) moves nothing');
select is(pg_temp.card_balance('DEMO-0041'), 21550::bigint, 'dispute: the second close left the card alone');
select is(public.sp_close_stripe_dispute('pi_d41', 'ch_d41', 'dp_41', 2000, 'won', 'evt_dpc_41') ->> 'replayed',
  'true', 'dispute close replay: the stored result');

-- DEMO-0040: MIDI (5000 + 250 bonus) online, 900 spent, then the whole payment disputed and lost.
select pg_temp.credit('DEMO-0040', 5000, 250, 'MIDI', 'pi_d40');
select pg_temp.spend('DEMO-0040', 'cocktail', 1, 'fi-cocktail-40');
select pg_temp.keep('dispute-40', public.sp_process_stripe_dispute('pi_d40', 'ch_d40', 'dp_40', 5000, 'evt_dp_40'));
select is(
  (select jsonb_build_object('held', r -> 'held_cents', 'bonus', r -> 'bonus_held_cents', 'from_card', r -> 'from_card_cents',
     'receivable', r -> 'receivable_cents') from pg_temp.response('dispute-40') r),
  '{"held": 5250, "bonus": 250, "from_card": 4350, "receivable": 900}'::jsonb,
  'dispute of a spent card: the card gives what it has (4350), 900 are owed');
select is(pg_temp.card_balance('DEMO-0040'), 0::bigint, 'dispute of a spent card: the card is at 0');
select is(pg_temp.hold_balance('dp_40'), 5250::bigint, 'dispute of a spent card: the hold holds all 5250');
select results_eq(
  $$ select amount_cents, status, reason from festival.receivables where card_id = 'DEMO-0040' $$,
  $$ values (900::bigint, 'open', 'stripe_dispute') $$,
  'dispute of a spent card: an open receivable of 900');
select is((select count(*) from ops.alerts where kind = 'dispute_receivable' and card_id = 'DEMO-0040'), 1::bigint,
  'dispute of a spent card: a dispute_receivable alert');

create temp table before_lost as select pg_temp.system_total('stripe_clearing') as clearing,
  pg_temp.system_total('promotions') as promotions, pg_temp.system_total('receivables') as receivables;
select pg_temp.keep('lost-40', public.sp_close_stripe_dispute('pi_d40', 'ch_d40', 'dp_40', 5000, 'lost', 'evt_dpc_40'));
select is(pg_temp.response('lost-40') ->> 'outcome', 'dispute_lost_written_off', 'dispute lost: written off');
select is(pg_temp.hold_balance('dp_40'), 0::bigint, 'dispute lost: the hold is empty');
select ok(pg_temp.system_total('stripe_clearing') = (select clearing from before_lost) + 5000
    and pg_temp.system_total('promotions') = (select promotions from before_lost) + 250
    and pg_temp.system_total('receivables') = (select receivables from before_lost),
  'dispute lost: the money goes to Stripe clearing, the bonus back to promotions, the receivable stays');
select is((select status from festival.receivables where card_id = 'DEMO-0040'), 'open',
  'dispute lost: the holder still owes the 900');
select is(pg_temp.card_balance('DEMO-0040'), 0::bigint, 'dispute lost: the card is untouched');

-- DEMO-0042: MIDI, 900 spent, disputed, won: the card gets back what it gave, the receivable is cancelled.
select pg_temp.credit('DEMO-0042', 5000, 250, 'MIDI', 'pi_d42');
select pg_temp.spend('DEMO-0042', 'cocktail', 1, 'fi-cocktail-42');
select public.sp_process_stripe_dispute('pi_d42', 'ch_d42', 'dp_42', 5000, 'evt_dp_42');
select public.sp_close_stripe_dispute('pi_d42', 'ch_d42', 'dp_42', 5000, 'won', 'evt_dpc_42');
select is(pg_temp.card_balance('DEMO-0042'), 4350::bigint, 'dispute won after spending: the card has its 4350 back');
select is((select status from festival.receivables where card_id = 'DEMO-0042'), 'cancelled',
  'dispute won after spending: the receivable is cancelled');
select is(pg_temp.hold_balance('dp_42'), 0::bigint, 'dispute won after spending: the hold is empty');

-- A dispute that arrives before the credit: parked, then held when the credit lands.
select is(public.sp_process_stripe_dispute('pi_d43', 'ch_d43', 'dp_43', 1000, 'evt_dp_43') ->> 'outcome',
  'dispute_unmatched', 'early dispute: parked until the credit');
select pg_temp.keep('credit-43', pg_temp.credit('DEMO-0043', 5000, 250, 'MIDI', 'pi_d43'));
select is(pg_temp.response('credit-43') #>> '{dispute,outcome}', 'dispute_hold_opened',
  'early dispute: the hold is opened with the credit');
select is((select status from festival.cards where id = 'DEMO-0043'), 'active', 'early dispute: the card stays active');
select is(pg_temp.card_balance('DEMO-0043'), 4200::bigint,
  'early dispute: 1000 and its bonus share (50) are held, the rest is usable');
select is(pg_temp.hold_balance('dp_43'), 1050::bigint, 'early dispute: the hold holds 1050');

-- Created and closed (won) before the credit: the credit lands whole.
select public.sp_process_stripe_dispute('pi_d44', 'ch_d44', 'dp_44', 2000, 'evt_dp_44');
select is(public.sp_close_stripe_dispute('pi_d44', 'ch_d44', 'dp_44', 2000, 'won', 'evt_dpc_44') ->> 'outcome',
  'dispute_close_parked', 'early close: parked with the dispute');
select pg_temp.credit('DEMO-0044', 2000, 0, 'MINI', 'pi_d44');
select is(pg_temp.card_balance('DEMO-0044'), 2000::bigint, 'early close won: the card ends with the whole credit');
select is((select status from festival.card_disputes where stripe_dispute_id = 'dp_44'), 'won',
  'early close won: the dispute is recorded as won');

-- Closed (lost) arrives after the credit but before the created event.
select pg_temp.credit('DEMO-0045', 2000, 0, 'MINI', 'pi_d45');
select is(public.sp_close_stripe_dispute('pi_d45', 'ch_d45', 'dp_45', 2000, 'lost', 'evt_dpc_45') ->> 'outcome',
  'dispute_lost_written_off', 'close before created: opened and written off at once');
select is(public.sp_process_stripe_dispute('pi_d45', 'ch_d45', 'dp_45', 2000, 'evt_dp_45') ->> 'outcome',
  'dispute_already_recorded', 'close before created: the late created event holds nothing');
select is(pg_temp.card_balance('DEMO-0045'), 0::bigint, 'close before created: the disputed 2000 left the card once');

select throws_ok($$ select public.sp_close_stripe_dispute('pi_d45', 'ch_d45', 'dp_45', 2000, 'needs_response', 'evt_bad_status') $$,
  '22023', null, 'close: a status that does not close a dispute raises 22023');

-- ---------------------------------------------------------------------------------------------
-- Item 8: a failed refund restores what it reversed, exactly once
-- ---------------------------------------------------------------------------------------------

-- DEMO-0047: MAXI (10000 + 1000); 4000 refunded (with 400 bonus), then that refund fails.
select pg_temp.credit('DEMO-0047', 10000, 1000, 'MAXI', 'pi_r47');
select public.sp_process_stripe_refund('pi_r47', 'ch_r47', 4000, 'eur', 'evt_refund_47');
select is(pg_temp.card_balance('DEMO-0047'), 6600::bigint, 'setup: the refund took 4000 and 400 of bonus');
select pg_temp.keep('failed-47', public.sp_process_stripe_refund_failure('pi_r47', 'ch_r47', 're_47', 4000, 'eur',
  'evt_refund_failed_47'));
select is(
  (select jsonb_build_object('outcome', r ->> 'outcome', 'money', r -> 'restored_cents', 'bonus', r -> 'bonus_restored_cents')
   from pg_temp.response('failed-47') r),
  '{"outcome": "refund_failure_restored", "money": 4000, "bonus": 400}'::jsonb,
  'failed refund: the 4000 and the 400 of bonus are restored');
select is(pg_temp.card_balance('DEMO-0047'), 11000::bigint, 'failed refund: the card is whole again');
select is((select refunded_cents from festival.recharges where stripe_payment_intent_id = 'pi_r47'), 0::bigint,
  'failed refund: the recharge counts nothing refunded');
select is(public.sp_process_stripe_refund_failure('pi_r47', 'ch_r47', 're_47', 4000, 'eur', 'evt_refund_failed_47')
  ->> 'replayed', 'true', 'failed refund replay: the stored result');
select is(public.sp_process_stripe_refund_failure('pi_r47', 'ch_r47', 're_47', 4000, 'eur', 'evt_refund_failed_47_b')
  ->> 'outcome', 'refund_failure_already_applied', 'failed refund: the same refund under another event restores nothing');
select is(pg_temp.card_balance('DEMO-0047'), 11000::bigint, 'failed refund: replays moved nothing');
-- A later refund (Stripe's running total without the failed one) is reversed normally.
select public.sp_process_stripe_refund('pi_r47', 'ch_r47', 2000, 'eur', 'evt_refund_47_b');
select is(pg_temp.card_balance('DEMO-0047'), 8800::bigint, 'a refund after the failure is reversed (2000 + 200)');

-- Out of order: the failure arrives before the charge.refunded that contained it (Stripe's times:
-- refund created at 10:00, its total taken at 10:00, the refund failed the next day).
select pg_temp.credit('DEMO-0048', 2000, 0, 'MINI', 'pi_r48');
select is(public.sp_process_stripe_refund_failure('pi_r48', 'ch_r48', 're_48', 1000, 'eur', 'evt_refund_failed_48',
  '2026-11-20 10:00:00+00', '2026-11-21 10:00:00+00') ->> 'outcome', 'refund_failure_recorded',
  'failure first: recorded, nothing to restore yet');
select public.sp_process_stripe_refund('pi_r48', 'ch_r48', 1000, 'eur', 'evt_refund_48', '2026-11-20 10:00:00+00');
select is(pg_temp.card_balance('DEMO-0048'), 2000::bigint, 'failure first: the late refund of the failed 1000 moves nothing');
-- A second refund of 500 after the failure (Stripe's total: 500) is reversed, whatever the order.
select public.sp_process_stripe_refund('pi_r48', 'ch_r48', 500, 'eur', 'evt_refund_48_b', '2026-11-21 11:00:00+00');
select is(pg_temp.card_balance('DEMO-0048'), 1500::bigint, 'failure first: a later refund of 500 is reversed');

-- Two refunds (1000, then 500 more), the first fails; the second total arrives after the failure.
select pg_temp.credit('DEMO-0035', 2000, 0, 'MINI', 'pi_r35');
select public.sp_process_stripe_refund('pi_r35', 'ch_r35', 1000, 'eur', 'evt_refund_35_a', '2026-11-20 10:00:00+00');
select public.sp_process_stripe_refund_failure('pi_r35', 'ch_r35', 're_35', 1000, 'eur', 'evt_refund_failed_35',
  '2026-11-20 10:00:00+00', '2026-11-22 10:00:00+00');
select is(pg_temp.card_balance('DEMO-0035'), 2000::bigint, 'stale total: the failure restored the 1000');
select public.sp_process_stripe_refund('pi_r35', 'ch_r35', 1500, 'eur', 'evt_refund_35_b', '2026-11-21 10:00:00+00');
select is(pg_temp.card_balance('DEMO-0035'), 1500::bigint,
  'stale total: a total taken before the failure (1500) reverses only the 500 that did not fail');

-- Both before the credit: refund parked, failure parked, then the credit.
select public.sp_process_stripe_refund('pi_r49', 'ch_r49', 500, 'eur', 'evt_refund_49');
select public.sp_process_stripe_refund_failure('pi_r49', 'ch_r49', 're_49', 500, 'eur', 'evt_refund_failed_49');
select pg_temp.credit('DEMO-0049', 2000, 0, 'MINI', 'pi_r49');
select is(pg_temp.card_balance('DEMO-0049'), 2000::bigint, 'refund and failure before the credit: the card ends whole');

-- The refund left a receivable; the failure cancels what is owed first, then gives the card the rest.
select pg_temp.credit('DEMO-0039', 2000, 0, 'MINI', 'pi_r39');
select pg_temp.spend('DEMO-0039', 'cocktail', 2, 'fi-cocktail-39');
select public.sp_process_stripe_refund('pi_r39', 'ch_r39', 2000, 'eur', 'evt_refund_39');
select is(pg_temp.card_balance('DEMO-0039'), 0::bigint, 'setup: the refund took the 200 left, 1800 owed');
select public.sp_process_stripe_refund_failure('pi_r39', 'ch_r39', 're_39', 2000, 'eur', 'evt_refund_failed_39');
select is(pg_temp.card_balance('DEMO-0039'), 200::bigint, 'failed refund with a receivable: the card gets its 200 back');
select is((select string_agg(status, ',' order by id) from festival.receivables where card_id = 'DEMO-0039'), 'cancelled',
  'failed refund with a receivable: the 1800 are no longer owed');

-- ---------------------------------------------------------------------------------------------
-- Item 9: refused events are alerted; proportions never overflow
-- ---------------------------------------------------------------------------------------------

select pg_temp.keep('invalid', public.sp_record_invalid_stripe_event('evt_invalid_1', 'charge.refunded',
  'sp_process_stripe_refund', '22023', 'amount_refunded_cents: must be positive'));
select is(pg_temp.response('invalid') ->> 'ok', 'true', 'invalid event: recorded');
select results_eq(
  $$ select kind, severity, stripe_object_id, details ->> 'event_type', details ->> 'sqlstate' from ops.alerts
     where kind = 'invalid_event' $$,
  $$ values ('invalid_event', 'critical', 'evt_invalid_1', 'charge.refunded', '22023') $$,
  'invalid event: one critical invalid_event alert naming the event');
select public.sp_record_invalid_stripe_event('evt_invalid_1', 'charge.refunded', 'sp_process_stripe_refund', '22023', 'again');
select is((select count(*) from ops.alerts where kind = 'invalid_event'), 1::bigint,
  'invalid event: the same event again adds no second alert');
select throws_ok($$ select public.sp_record_invalid_stripe_event('', 'x', 'y', '22023', 'z') $$, '22023', null,
  'invalid event: an empty event id raises 22023');

-- Amounts near the bigint limit: a package of 4e18 + 2e18 bonus (only SQL can reach such amounts).
insert into festival.topup_packages (code, name, price_cents, bonus_cents)
values ('HUGE', 'Huge', 4000000000000000000, 2000000000000000000);
select pg_temp.credit('DEMO-0038', 4000000000000000000, 2000000000000000000, 'HUGE', 'pi_huge_38');
select pg_temp.keep('huge-refund', public.sp_process_stripe_refund('pi_huge_38', 'ch_huge_38', 3000000000000000000, 'eur',
  'evt_huge_refund'));
select is(pg_temp.response('huge-refund') -> 'bonus_reversed_cents', '1500000000000000000'::jsonb,
  'near bigint limits: the bonus share of a refund is computed without overflow');
select pg_temp.credit('DEMO-0037', 4000000000000000000, 2000000000000000000, 'HUGE', 'pi_huge_37');
select pg_temp.keep('huge-dispute', public.sp_process_stripe_dispute('pi_huge_37', 'ch_huge_37', 'dp_huge_37',
  3000000000000000000, 'evt_huge_dispute'));
select is(pg_temp.response('huge-dispute') -> 'bonus_held_cents', '1500000000000000000'::jsonb,
  'near bigint limits: the bonus share of a dispute is computed without overflow');
select is(public.sp_process_stripe_refund_failure('pi_huge_38', 'ch_huge_38', 're_huge_38', 1000000000000000000, 'eur',
  'evt_huge_failed') -> 'bonus_restored_cents', '500000000000000000'::jsonb,
  'near bigint limits: the bonus share of a failed refund is computed without overflow');

-- ---------------------------------------------------------------------------------------------
-- Item 10: pending online top-ups (until they expire) and open dispute holds count toward the maximum
-- ---------------------------------------------------------------------------------------------

select pg_temp.cash('DEMO-0036', 25000, 'fi-cash-36-a');
select pg_temp.cash('DEMO-0036', 20000, 'fi-cash-36-b');
select pg_temp.keep('pending-36', public.sp_prepare_online_recharge('DEMO-0036', 3000, null, 'fi-online-36-a'));
select ok((pg_temp.response('pending-36') ->> 'expires_at')::timestamptz between now() + interval '30 minutes'
    and now() + interval '32 minutes',
  'pending top-up: expires 30 minutes (plus a minute of margin) from now');
select is((select expires_at from festival.recharges where client_request_id = 'fi-online-36-a'),
  (pg_temp.response('pending-36') ->> 'expires_at')::timestamptz, 'pending top-up: the expiry is stored on the row');
select is(public.sp_prepare_online_recharge('DEMO-0036', 3000, null, 'fi-online-36-b') #>> '{error,code}', 'limit_exceeded',
  'pending top-up: a second one would pass the maximum with the first (45000 + 3000 + 3000)');
select is(pg_temp.cash('DEMO-0036', 3000, 'fi-cash-36-c') #>> '{error,code}', 'limit_exceeded',
  'pending top-up: a checkpoint recharge counts it too');
update festival.recharges set expires_at = now() - interval '1 second' where client_request_id = 'fi-online-36-a';
select is(public.sp_prepare_online_recharge('DEMO-0036', 3000, null, 'fi-online-36-d') ->> 'ok', 'true',
  'pending top-up: an expired session no longer counts');

-- DEMO-0046 at the maximum; a dispute holds 11000; what it holds still counts toward the maximum.
select pg_temp.credit('DEMO-0046', 10000, 1000, 'MAXI', 'pi_d46');
select pg_temp.cash('DEMO-0046', 25000, 'fi-cash-46-a');
select pg_temp.cash('DEMO-0046', 14000, 'fi-cash-46-b');
select public.sp_process_stripe_dispute('pi_d46', 'ch_d46', 'dp_46', 10000, 'evt_dp_46');
select is(pg_temp.card_balance('DEMO-0046'), 39000::bigint, 'dispute at the maximum: 11000 held');
select is(pg_temp.cash('DEMO-0046', 5000, 'fi-cash-46-c') #>> '{error,code}', 'limit_exceeded',
  'dispute at the maximum: a top-up that a won dispute would push over the maximum is refused');
select is(public.sp_prepare_online_recharge('DEMO-0046', 5000, null, 'fi-online-46') #>> '{error,code}', 'limit_exceeded',
  'dispute at the maximum: online too');

-- ---------------------------------------------------------------------------------------------
-- Roles and the ledger
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.sp_close_stripe_dispute('pi', 'ch', 'dp', 1, 'won', 'evt_role') $$, '42501', null,
  'anon cannot execute sp_close_stripe_dispute');
select throws_ok($$ select public.sp_process_stripe_refund_failure('pi', 'ch', 're', 1, 'eur', 'evt_role') $$, '42501', null,
  'anon cannot execute sp_process_stripe_refund_failure');
select throws_ok($$ select public.sp_record_invalid_stripe_event('evt_role', 'x', 'y', '22023', 'z') $$, '42501', null,
  'anon cannot execute sp_record_invalid_stripe_event');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_close_stripe_dispute('pi', 'ch', 'dp', 1, 'won', 'evt_role') $$, '42501', null,
  'authenticated cannot execute sp_close_stripe_dispute');
reset role;
select ok(
  (select bool_and(has_function_privilege(r, f, 'execute'))
   from unnest(array['service_role', 'edge_functions']) r, unnest(array[
    'public.sp_close_stripe_dispute(text, text, text, bigint, text, text)',
    'public.sp_process_stripe_refund_failure(text, text, text, bigint, text, text, timestamptz, timestamptz)',
    'public.sp_record_invalid_stripe_event(text, text, text, text, text)']) f),
  'service_role and edge_functions may execute the new procedures');

select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select * from finish();
rollback;
