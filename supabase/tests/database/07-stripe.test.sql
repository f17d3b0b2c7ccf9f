-- Online recharges through Stripe: top-up packages (also at checkpoints), sp_prepare_online_recharge
-- and sp_attach_checkout_session, crediting a paid session exactly once (sp_process_stripe_recharge),
-- failures, refunds (running totals, bonus in proportion, receivables), disputes, unmatched payments,
-- invalid arguments, denied roles, and a reconciled ledger afterwards.
begin;
create extension if not exists pgtap with schema extensions;
select plan(136);

-- ---------------------------------------------------------------------------------------------
-- Helpers (temporary, gone with the transaction)
-- ---------------------------------------------------------------------------------------------

create temp table responses (name text primary key, result jsonb not null);

create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.card_balance(p_card_id text) returns bigint
language sql stable as $$
  select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id
$$;

-- 'card:DEMO-0051' for customer accounts, 'promotions:festival' for (any shard of) a system account.
create function pg_temp.account_label(p_account_id bigint) returns text
language sql stable as $$
  select case when kind = 'system' then system_purpose || ':' || owner_ref else code end
  from ledger.accounts where id = p_account_id
$$;

create function pg_temp.pick(p_object jsonb, p_keys text[]) returns jsonb
language sql immutable as $$
  select coalesce(jsonb_object_agg(key, value), '{}'::jsonb) from jsonb_each(p_object) where key = any(p_keys)
$$;

-- Transfers of the operations behind a client request id or Stripe event id, in posting order.
create function pg_temp.transfers_of(p_client_request_id text)
returns table (from_account text, to_account text, amount_cents bigint,
  from_before bigint, from_after bigint, to_before bigint, to_after bigint)
language sql stable as $$
  select pg_temp.account_label(t.from_account_id), pg_temp.account_label(t.to_account_id), t.amount_cents,
    t.from_balance_before_cents, t.from_balance_after_cents, t.to_balance_before_cents, t.to_balance_after_cents
  from ledger.transfers t join ledger.operations o on o.id = t.operation_id
  where o.client_request_id = p_client_request_id
  order by t.id
$$;

-- Every transfer touching a card (both directions), to prove that nothing moved.
create function pg_temp.card_transfer_count(p_card_id text) returns bigint
language sql stable as $$
  select count(*) from ledger.transfers t join festival.cards c on c.account_id in (t.from_account_id, t.to_account_id)
  where c.id = p_card_id
$$;

create function pg_temp.alert_count(p_kind text, p_stripe_object_id text) returns bigint
language sql stable as $$
  select count(*) from ops.alerts where kind = p_kind and stripe_object_id is not distinct from p_stripe_object_id
$$;

create temp table system_balances_before as
select system_purpose, owner_ref, sum(balance_cents)::bigint as balance_cents
from ledger.account_balances where kind = 'system' group by system_purpose, owner_ref;

-- An inactive package: as unknown as a package that does not exist.
insert into festival.topup_packages (code, name, price_cents, bonus_cents, active) values ('OLD', 'Old', 1000, 100, false);

-- ---------------------------------------------------------------------------------------------
-- Top-up packages at checkpoints
-- ---------------------------------------------------------------------------------------------

-- DEMO-0010 is empty.
insert into responses
select 'pkg-midi', public.sp_process_checkpoint_recharge('DEMO-0010', null, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'st-pkg-midi', package_code => 'MIDI');

select is(
  pg_temp.pick(pg_temp.response('pkg-midi'),
    array['ok', 'replayed', 'package_code', 'amount_cents', 'bonus_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "replayed": false, "package_code": "MIDI", "amount_cents": 5000, "bonus_cents": 250,
    "previous_balance_cents": 0, "new_balance_cents": 5250}'::jsonb,
  'checkpoint package: MIDI credits price plus bonus'
);
select is(pg_temp.card_balance('DEMO-0010'), 5250::bigint, 'checkpoint package: the card holds 5250');
select results_eq(
  $$ select * from pg_temp.transfers_of('st-pkg-midi') $$,
  $$ values ('cash_drawer:entrance', 'card:DEMO-0010', 5000::bigint, null::bigint, null::bigint, 0::bigint, 5000::bigint),
            ('promotions:festival', 'card:DEMO-0010', 250::bigint, null::bigint, null::bigint, 5000::bigint, 5250::bigint) $$,
  'checkpoint package: the price from the cash drawer, the bonus from promotions'
);
select results_eq(
  $$ select amount_cents, bonus_cents, package_code, payment_method, status from festival.recharges
     where client_request_id = 'st-pkg-midi' $$,
  $$ values (5000::bigint, 250::bigint, 'MIDI', 'cash', 'completed') $$,
  'checkpoint package: the recharge row names the package and its bonus'
);

insert into responses
select 'pkg-unknown', public.sp_process_checkpoint_recharge('DEMO-0011', null, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'st-pkg-unknown', package_code => 'GIGA');
insert into responses
select 'pkg-inactive', public.sp_process_checkpoint_recharge('DEMO-0011', null, 'card', 'camping',
  '00000000-0000-4000-8000-00000000c001', 'st-pkg-inactive', package_code => 'OLD');

select is(
  jsonb_build_array(
    pg_temp.pick(pg_temp.response('pkg-unknown'), array['ok']) || pg_temp.pick(pg_temp.response('pkg-unknown') -> 'error', array['code', 'package_code']),
    pg_temp.pick(pg_temp.response('pkg-inactive'), array['ok']) || pg_temp.pick(pg_temp.response('pkg-inactive') -> 'error', array['code', 'package_code'])),
  '[{"ok": false, "code": "unknown_package", "package_code": "GIGA"},
    {"ok": false, "code": "unknown_package", "package_code": "OLD"}]'::jsonb,
  'checkpoint package: unknown and inactive packages are unknown_package'
);
select ok(
  pg_temp.card_balance('DEMO-0011') = 0 and pg_temp.card_transfer_count('DEMO-0011') = 0
    and not exists (select 1 from festival.recharges where client_request_id in ('st-pkg-unknown', 'st-pkg-inactive'))
    and not exists (select 1 from ledger.operations where client_request_id in ('st-pkg-unknown', 'st-pkg-inactive')),
  'checkpoint package: an unknown package moves nothing and writes no recharge'
);
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 5000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'st-pkg-both', package_code => 'MIDI') $$, '22023', null,
  'checkpoint package: amount and package both given raise 22023');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', null, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'st-pkg-neither', package_code => null) $$, '22023', null,
  'checkpoint package: neither amount nor package raises 22023');

-- ---------------------------------------------------------------------------------------------
-- sp_prepare_online_recharge and sp_attach_checkout_session
-- ---------------------------------------------------------------------------------------------

-- DEMO-0012 is empty.
insert into responses
select 'prep', public.sp_prepare_online_recharge('DEMO-0012', null, 'MIDI', 'st-prep-midi');

select is(
  pg_temp.pick(pg_temp.response('prep'),
    array['ok', 'replayed', 'card_id', 'package_code', 'amount_cents', 'bonus_cents', 'currency', 'status', 'session_id']),
  '{"ok": true, "replayed": false, "card_id": "DEMO-0012", "package_code": "MIDI", "amount_cents": 5000,
    "bonus_cents": 250, "currency": "EUR", "status": "pending", "session_id": null}'::jsonb,
  'prepare: a pending recharge for the package, no session yet'
);
select results_eq(
  $$ select id, card_id, status, payment_method, currency, amount_cents, bonus_cents, package_code, operation_id,
       stripe_session_id
     from festival.recharges where client_request_id = 'st-prep-midi' $$,
  $$ select (pg_temp.response('prep') ->> 'recharge_id')::bigint, 'DEMO-0012', 'pending', 'stripe', 'EUR', 5000::bigint,
       250::bigint, 'MIDI', null::bigint, null::text $$,
  'prepare: the recharges row is pending, stripe, EUR, amount and bonus from the package, no operation'
);
select is(pg_temp.card_transfer_count('DEMO-0012'), 0::bigint, 'prepare: nothing is credited yet');

insert into responses
select 'attach', public.sp_attach_checkout_session((pg_temp.response('prep') ->> 'recharge_id')::bigint,
  'cs_test_midi_12', 'https://checkout.stripe.test/c/pay/cs_test_midi_12');
insert into responses
select 'attach-again', public.sp_attach_checkout_session((pg_temp.response('prep') ->> 'recharge_id')::bigint,
  'cs_test_other_12', 'https://checkout.stripe.test/c/pay/cs_test_other_12');
insert into responses
select 'prep-replay', public.sp_prepare_online_recharge('DEMO-0012', null, 'MIDI', 'st-prep-midi');

select is(
  pg_temp.pick(pg_temp.response('attach'), array['ok', 'session_id', 'checkout_url', 'status']),
  '{"ok": true, "session_id": "cs_test_midi_12", "checkout_url": "https://checkout.stripe.test/c/pay/cs_test_midi_12",
    "status": "pending"}'::jsonb,
  'attach: the session is recorded on the pending recharge'
);
select is(
  pg_temp.pick(pg_temp.response('attach-again'), array['session_id', 'checkout_url']),
  '{"session_id": "cs_test_midi_12", "checkout_url": "https://checkout.stripe.test/c/pay/cs_test_midi_12"}'::jsonb,
  'attach: first wins, a second session answers the first one'
);
select results_eq(
  $$ select stripe_session_id, checkout_url from festival.recharges where client_request_id = 'st-prep-midi' $$,
  $$ values ('cs_test_midi_12', 'https://checkout.stripe.test/c/pay/cs_test_midi_12') $$,
  'attach: the second session does not replace the first in the row'
);
select is(
  pg_temp.pick(pg_temp.response('prep-replay'), array['replayed', 'recharge_id', 'session_id', 'checkout_url', 'status']),
  jsonb_build_object('replayed', true, 'recharge_id', pg_temp.response('prep') -> 'recharge_id',
    'session_id', 'cs_test_midi_12', 'checkout_url', 'https://checkout.stripe.test/c/pay/cs_test_midi_12',
    'status', 'pending'),
  'prepare replay: the same recharge, replayed, with its attached session'
);
select is(
  public.sp_attach_checkout_session(-1, 'cs_test_nothing', 'https://checkout.stripe.test/x') #>> '{error,code}',
  'recharge_not_found',
  'attach: an unknown recharge is recharge_not_found'
);

-- Business failures of prepare: none writes a recharge.
insert into responses
select 'prep-reused', public.sp_prepare_online_recharge('DEMO-0012', null, 'MAXI', 'st-prep-midi');
insert into responses
select 'prep-reused-amount', public.sp_prepare_online_recharge('DEMO-0012', 5000, null, 'st-prep-midi');
insert into responses
select 'prep-reused-checkpoint', public.sp_prepare_online_recharge('DEMO-0010', null, 'MIDI', 'st-pkg-midi');
insert into responses
select 'prep-no-card', public.sp_prepare_online_recharge('NOPE-0001', null, 'MINI', 'st-prep-no-card');
select is(
  (public.sp_admin_block_card('DEMO-0013', '00000000-0000-4000-8000-00000000a001', 'st-block-0013') ->> 'ok')::boolean,
  true,
  'setup: DEMO-0013 blocked by the admin'
);
insert into responses
select 'prep-blocked', public.sp_prepare_online_recharge('DEMO-0013', 2000, null, 'st-prep-blocked');
insert into responses
select 'prep-unknown-package', public.sp_prepare_online_recharge('DEMO-0014', null, 'GIGA', 'st-prep-unknown-package');
insert into responses
select 'prep-inactive-package', public.sp_prepare_online_recharge('DEMO-0014', null, 'OLD', 'st-prep-inactive-package');
insert into responses
select 'prep-too-small', public.sp_prepare_online_recharge('DEMO-0014', 100, null, 'st-prep-too-small');
insert into responses
select 'prep-too-big', public.sp_prepare_online_recharge('DEMO-0014', 30000, null, 'st-prep-too-big');
-- DEMO-0015 is brought to 45000: MAXI (10000 + 1000) would pass the card maximum of 50000.
insert into responses
select 'fill-0015-a', public.sp_process_checkpoint_recharge('DEMO-0015', 25000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'st-fill-0015-a');
insert into responses
select 'fill-0015-b', public.sp_process_checkpoint_recharge('DEMO-0015', 20000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'st-fill-0015-b');
select is(pg_temp.card_balance('DEMO-0015'), 45000::bigint, 'setup: DEMO-0015 holds 45000');
insert into responses
select 'prep-card-full', public.sp_prepare_online_recharge('DEMO-0015', null, 'MAXI', 'st-prep-card-full');

select is(
  pg_temp.pick(pg_temp.response('prep-reused'), array['ok']) || pg_temp.pick(pg_temp.response('prep-reused') -> 'error', array['code']),
  '{"ok": false, "code": "idempotency_key_reused"}'::jsonb,
  'prepare: same key, another package is idempotency_key_reused'
);
select is(pg_temp.response('prep-reused-amount') #>> '{error,code}', 'idempotency_key_reused',
  'prepare: same key, an amount instead of the package is idempotency_key_reused');
select is(pg_temp.response('prep-reused-checkpoint') #>> '{error,code}', 'idempotency_key_reused',
  'prepare: a key used by a checkpoint recharge is idempotency_key_reused');
select is(pg_temp.response('prep-no-card') #>> '{error,code}', 'card_not_found', 'prepare: unknown card is card_not_found');
select is(pg_temp.response('prep-blocked') #>> '{error,code}', 'card_blocked', 'prepare: blocked card is card_blocked');
select is(
  jsonb_build_array(pg_temp.response('prep-unknown-package') #>> '{error,code}',
    pg_temp.response('prep-inactive-package') #>> '{error,code}'),
  '["unknown_package", "unknown_package"]'::jsonb,
  'prepare: unknown and inactive packages are unknown_package'
);
select is(
  jsonb_build_array(pg_temp.response('prep-too-small') #>> '{error,code}', pg_temp.response('prep-too-big') #>> '{error,code}',
    pg_temp.response('prep-card-full') #>> '{error,code}'),
  '["limit_exceeded", "limit_exceeded", "limit_exceeded"]'::jsonb,
  'prepare: 100, 30000 and MAXI on a card at 45000 are limit_exceeded'
);
select is(
  (select count(*) from festival.recharges where payment_method = 'stripe'),
  1::bigint,
  'prepare: business failures write no recharge (only the DEMO-0012 one exists)'
);
select throws_ok($$ select public.sp_prepare_online_recharge('DEMO-0014', 2000, 'MINI', 'st-prep-bad-both') $$,
  '22023', null, 'prepare: amount and package both given raise 22023');
select throws_ok($$ select public.sp_prepare_online_recharge('DEMO-0014', null, null, 'st-prep-bad-neither') $$,
  '22023', null, 'prepare: neither amount nor package raises 22023');

-- ---------------------------------------------------------------------------------------------
-- sp_process_stripe_recharge: credit once
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'credit', public.sp_process_stripe_recharge('DEMO-0012', 5000, 'eur', 'cs_test_midi_12', 'evt_credit_12',
  'pi_12', 250, jsonb_build_object('recharge_id', pg_temp.response('prep') ->> 'recharge_id', 'package_code', 'MIDI'));

select is(
  pg_temp.pick(pg_temp.response('credit'),
    array['ok', 'replayed', 'outcome', 'recharge_id', 'card_id', 'amount_cents', 'bonus_cents', 'previous_balance_cents',
      'new_balance_cents']),
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'credited',
    'recharge_id', pg_temp.response('prep') -> 'recharge_id', 'card_id', 'DEMO-0012', 'amount_cents', 5000,
    'bonus_cents', 250, 'previous_balance_cents', 0, 'new_balance_cents', 5250),
  'credit: the pending recharge is credited (lowercase currency accepted)'
);
select is(pg_temp.card_balance('DEMO-0012'), 5250::bigint, 'credit: the card holds amount plus bonus');
select results_eq(
  $$ select * from pg_temp.transfers_of('evt_credit_12') $$,
  $$ values ('stripe_clearing:stripe', 'card:DEMO-0012', 5000::bigint, null::bigint, null::bigint, 0::bigint, 5000::bigint),
            ('promotions:festival', 'card:DEMO-0012', 250::bigint, null::bigint, null::bigint, 5000::bigint, 5250::bigint) $$,
  'credit: the amount from Stripe clearing, the bonus from promotions'
);
select results_eq(
  $$ select status, operation_id, stripe_payment_intent_id, completed_at is not null from festival.recharges
     where client_request_id = 'st-prep-midi' $$,
  $$ select 'completed', (pg_temp.response('credit') ->> 'transaction_id')::bigint, 'pi_12', true $$,
  'credit: the recharge is completed with its operation and payment intent'
);
select results_eq(
  $$ select type, result from festival.stripe_events where event_id = 'evt_credit_12' $$,
  $$ select 'checkout.session.paid', pg_temp.response('credit') $$,
  'credit: the event and its result are kept'
);

insert into responses
select 'credit-replay', public.sp_process_stripe_recharge('DEMO-0012', 5000, 'eur', 'cs_test_midi_12', 'evt_credit_12',
  'pi_12', 250, jsonb_build_object('recharge_id', pg_temp.response('prep') ->> 'recharge_id', 'package_code', 'MIDI'));
insert into responses
select 'credit-other-event', public.sp_process_stripe_recharge('DEMO-0012', 5000, 'EUR', 'cs_test_midi_12',
  'evt_async_12', 'pi_12', 250, '{}');

select is(pg_temp.response('credit-replay') - 'replayed', pg_temp.response('credit') - 'replayed',
  'credit replay: the stored result');
select is(pg_temp.response('credit-replay') -> 'replayed', 'true'::jsonb, 'credit replay: marked replayed');
select is(
  pg_temp.pick(pg_temp.response('credit-other-event'), array['ok', 'outcome', 'recharge_id', 'transaction_id']),
  pg_temp.pick(pg_temp.response('credit'), array['ok', 'recharge_id', 'transaction_id'])
    || '{"outcome": "already_credited"}'::jsonb,
  'credit: another event of the same session is already_credited'
);
select ok(
  pg_temp.card_balance('DEMO-0012') = 5250 and pg_temp.card_transfer_count('DEMO-0012') = 2
    and (select count(*) from ledger.operations where kind = 'stripe_recharge'
         and metadata ->> 'stripe_session_id' = 'cs_test_midi_12') = 1,
  'credit: the replay and the second event move nothing'
);

-- Amount, currency or bonus that differ from the pending recharge: recorded and alerted, not credited.
insert into responses
select 'st-prep-mismatch', public.sp_prepare_online_recharge('DEMO-0016', null, 'MINI', 'st-prep-mismatch');
insert into responses
select 'st-prep-mismatch-attach', public.sp_attach_checkout_session((pg_temp.response('st-prep-mismatch') ->> 'recharge_id')::bigint,
  'cs_mismatch_16', 'https://checkout.stripe.test/c/pay/cs_mismatch_16');
select is(
  (select (status, stripe_session_id) from festival.recharges where client_request_id = 'st-prep-mismatch'),
  ('pending'::text, 'cs_mismatch_16'::text),
  'setup: a pending MINI recharge of DEMO-0016 with session cs_mismatch_16'
);
insert into responses
select 'mismatch-amount', public.sp_process_stripe_recharge('DEMO-0016', 1900, 'EUR', 'cs_mismatch_16',
  'evt_mismatch_amount', 'pi_mismatch_16', 0, '{}');
insert into responses
select 'mismatch-currency', public.sp_process_stripe_recharge('DEMO-0016', 2000, 'usd', 'cs_mismatch_16',
  'evt_mismatch_currency', 'pi_mismatch_16', 0, '{}');
insert into responses
select 'mismatch-bonus', public.sp_process_stripe_recharge('DEMO-0016', 2000, 'EUR', 'cs_mismatch_16',
  'evt_mismatch_bonus', 'pi_mismatch_16', 100, '{}');

select is(
  jsonb_build_array(
    pg_temp.pick(pg_temp.response('mismatch-amount'), array['ok']) || jsonb_build_object('code', pg_temp.response('mismatch-amount') #>> '{error,code}'),
    pg_temp.pick(pg_temp.response('mismatch-currency'), array['ok']) || jsonb_build_object('code', pg_temp.response('mismatch-currency') #>> '{error,code}'),
    pg_temp.pick(pg_temp.response('mismatch-bonus'), array['ok']) || jsonb_build_object('code', pg_temp.response('mismatch-bonus') #>> '{error,code}')),
  '[{"ok": false, "code": "payment_mismatch"}, {"ok": false, "code": "payment_mismatch"},
    {"ok": false, "code": "payment_mismatch"}]'::jsonb,
  'mismatch: amount, currency usd and bonus each are payment_mismatch'
);
-- Alerts are deduplicated by kind and subject (20261122000900_operations.sql): one alert, counted three times.
select results_eq(
  $$ select count(*)::integer, min(occurrence_count) from ops.alerts where kind = 'payment_mismatch' and stripe_object_id = 'cs_mismatch_16' $$,
  $$ values (1, 3) $$,
  'mismatch: one payment_mismatch alert, counted once per mismatch');
select ok(
  pg_temp.card_balance('DEMO-0016') = 0 and pg_temp.card_transfer_count('DEMO-0016') = 0
    and not exists (select 1 from ledger.operations where client_request_id like 'evt_mismatch_%'),
  'mismatch: nothing is credited'
);
select results_eq(
  $$ select status, operation_id, stripe_payment_intent_id from festival.recharges where client_request_id = 'st-prep-mismatch' $$,
  $$ values ('pending', null::bigint, null::text) $$,
  'mismatch: the recharge is still pending'
);
select is(
  (select count(*) from festival.stripe_events where event_id like 'evt_mismatch_%'),
  3::bigint,
  'mismatch: the decisions are kept under their event ids'
);
insert into responses
select 'mismatch-then-ok', public.sp_process_stripe_recharge('DEMO-0016', 2000, 'EUR', 'cs_mismatch_16',
  'evt_mismatch_ok', 'pi_mismatch_16', 0, '{}');
select ok(
  pg_temp.response('mismatch-then-ok') ->> 'outcome' = 'credited' and pg_temp.card_balance('DEMO-0016') = 2000,
  'mismatch: a matching event for the same session still credits it'
);

-- A session created but never attached is found through metadata.recharge_id.
select ok((public.sp_prepare_online_recharge('DEMO-0017', null, 'MIDI', 'st-prep-meta') ->> 'ok')::boolean,
  'setup: a pending MIDI recharge of DEMO-0017 without session');
insert into responses
select 'credit-meta', public.sp_process_stripe_recharge('DEMO-0017', 5000, 'EUR', 'cs_meta_17', 'evt_credit_meta',
  'pi_meta_17', 250,
  jsonb_build_object('recharge_id', (select id from festival.recharges where client_request_id = 'st-prep-meta')::text));
select is(
  pg_temp.pick(pg_temp.response('credit-meta'), array['outcome', 'recharge_id', 'new_balance_cents']),
  jsonb_build_object('outcome', 'credited',
    'recharge_id', (select id from festival.recharges where client_request_id = 'st-prep-meta'), 'new_balance_cents', 5250),
  'metadata: the pending recharge is credited'
);
select results_eq(
  $$ select stripe_session_id, status, stripe_payment_intent_id from festival.recharges where card_id = 'DEMO-0017' $$,
  $$ values ('cs_meta_17', 'completed', 'pi_meta_17') $$,
  'metadata: the session is attached to that recharge, no second recharge'
);

-- A paid session with no pending row at all (created outside create-checkout-session).
insert into responses
select 'credit-no-pending', public.sp_process_stripe_recharge('DEMO-0018', 3000, 'EUR', 'cs_no_pending_18',
  'evt_credit_no_pending', 'pi_no_pending_18', 0, '{}');
select is(
  pg_temp.pick(pg_temp.response('credit-no-pending'), array['ok', 'outcome', 'amount_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "credited", "amount_cents": 3000, "new_balance_cents": 3000}'::jsonb,
  'no pending row: credited'
);
select results_eq(
  $$ select id, card_id, amount_cents, bonus_cents, payment_method, status, currency, stripe_payment_intent_id, operation_id
     from festival.recharges where stripe_session_id = 'cs_no_pending_18' $$,
  $$ select (pg_temp.response('credit-no-pending') ->> 'recharge_id')::bigint, 'DEMO-0018', 3000::bigint, 0::bigint,
       'stripe', 'completed', 'EUR', 'pi_no_pending_18', (pg_temp.response('credit-no-pending') ->> 'transaction_id')::bigint $$,
  'no pending row: a completed recharge is created'
);
select is(pg_temp.card_balance('DEMO-0018'), 3000::bigint, 'no pending row: the card is credited');

-- A paid session for a card that does not exist yet.
insert into responses
select 'unmatched', public.sp_process_stripe_recharge('NEW-CARD-0001', 2000, 'eur', 'cs_unmatched', 'evt_unmatched',
  'pi_unmatched', 0, '{"source": "test"}');
insert into responses
select 'unmatched-again', public.sp_process_stripe_recharge('NEW-CARD-0001', 2000, 'eur', 'cs_unmatched', 'evt_unmatched',
  'pi_unmatched', 0, '{"source": "test"}');

select is(
  pg_temp.pick(pg_temp.response('unmatched'), array['ok', 'replayed'])
    || pg_temp.pick(pg_temp.response('unmatched') -> 'error', array['code', 'card_id', 'stripe_session_id']),
  '{"ok": false, "replayed": false, "code": "unmatched_payment", "card_id": "NEW-CARD-0001",
    "stripe_session_id": "cs_unmatched"}'::jsonb,
  'unmatched: unmatched_payment'
);
select is(pg_temp.response('unmatched-again') -> 'replayed', 'false'::jsonb,
  'unmatched: a retry before the card exists is processed again, not replayed');
select results_eq(
  $$ select card_id, amount_cents, currency, last_event_id, attempts, resolved_at is null from festival.unmatched_payments
     where stripe_session_id = 'cs_unmatched' $$,
  $$ values ('NEW-CARD-0001', 2000::bigint, 'EUR', 'evt_unmatched', 2, true) $$,
  'unmatched: recorded durably, counting attempts, open'
);
select results_eq(
  $$ select card_id, severity from ops.alerts where kind = 'unmatched_payment' and stripe_object_id = 'cs_unmatched' $$,
  $$ values ('NEW-CARD-0001', 'critical') $$,
  'unmatched: one alert for the payment, not one per Stripe retry'
);
select is_empty($$ select 1 from festival.stripe_events where event_id = 'evt_unmatched' $$,
  'unmatched: the event is not remembered, so Stripe''s retry is processed');
select is_empty(
  $$ select 1 from festival.recharges where stripe_session_id = 'cs_unmatched'
     union all select 1 from ledger.operations where client_request_id = 'evt_unmatched' $$,
  'unmatched: no recharge and no operation'
);

select ok(
  (public.sp_admin_register_cards(array['NEW-CARD-0001'], '00000000-0000-4000-8000-00000000a001', 'st-register-new')
    ->> 'ok')::boolean,
  'setup: NEW-CARD-0001 registered'
);
insert into responses
select 'unmatched-retry', public.sp_process_stripe_recharge('NEW-CARD-0001', 2000, 'eur', 'cs_unmatched', 'evt_unmatched',
  'pi_unmatched', 0, '{"source": "test"}');
select is(
  pg_temp.pick(pg_temp.response('unmatched-retry'), array['ok', 'replayed', 'outcome', 'new_balance_cents']),
  '{"ok": true, "replayed": false, "outcome": "credited", "new_balance_cents": 2000}'::jsonb,
  'unmatched: the retry after registration credits the card'
);
select is(pg_temp.card_balance('NEW-CARD-0001'), 2000::bigint, 'unmatched: the new card holds 2000');
select ok(
  (select resolved_at is not null from festival.unmatched_payments where stripe_session_id = 'cs_unmatched')
    and exists (select 1 from festival.stripe_events where event_id = 'evt_unmatched'),
  'unmatched: the unmatched payment is resolved and the event now remembered'
);

-- ---------------------------------------------------------------------------------------------
-- sp_fail_stripe_recharge
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'st-prep-fail', public.sp_prepare_online_recharge('DEMO-0019', null, 'MINI', 'st-prep-fail');
insert into responses
select 'st-prep-fail-attach', public.sp_attach_checkout_session((pg_temp.response('st-prep-fail') ->> 'recharge_id')::bigint,
  'cs_fail_19', 'https://checkout.stripe.test/c/pay/cs_fail_19');
select is(
  (select (status, stripe_session_id) from festival.recharges where client_request_id = 'st-prep-fail'),
  ('pending'::text, 'cs_fail_19'::text),
  'setup: a pending MINI recharge of DEMO-0019 with session cs_fail_19'
);
insert into responses
select 'fail', public.sp_fail_stripe_recharge('cs_fail_19', 'evt_fail_19');
insert into responses
select 'fail-replay', public.sp_fail_stripe_recharge('cs_fail_19', 'evt_fail_19');
insert into responses
select 'fail-after-credit', public.sp_fail_stripe_recharge('cs_test_midi_12', 'evt_fail_12', 'card_declined');
insert into responses
select 'fail-unknown', public.sp_fail_stripe_recharge('cs_nobody', 'evt_fail_nobody');

select is(
  pg_temp.pick(pg_temp.response('fail'), array['ok', 'replayed', 'outcome', 'recharge_id', 'card_id']),
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'marked_failed',
    'recharge_id', (select id from festival.recharges where client_request_id = 'st-prep-fail'), 'card_id', 'DEMO-0019'),
  'fail: the pending recharge is marked failed'
);
select results_eq(
  $$ select status, operation_id, failure_reason is not null from festival.recharges where client_request_id = 'st-prep-fail' $$,
  $$ values ('failed', null::bigint, true) $$,
  'fail: the row is failed with a reason, no operation'
);
select is(pg_temp.card_transfer_count('DEMO-0019'), 0::bigint, 'fail: nothing moves');
select ok(
  pg_temp.response('fail-replay') - 'replayed' = pg_temp.response('fail') - 'replayed'
    and (pg_temp.response('fail-replay') ->> 'replayed')::boolean,
  'fail replay: the stored result, marked replayed'
);
select is(
  pg_temp.pick(pg_temp.response('fail-after-credit'), array['ok', 'outcome', 'recharge_id']),
  jsonb_build_object('ok', true, 'outcome', 'already_credited', 'recharge_id', pg_temp.response('prep') -> 'recharge_id'),
  'fail after credit: already_credited'
);
select ok(
  (select status = 'completed' and failure_reason is null from festival.recharges where client_request_id = 'st-prep-midi')
    and pg_temp.card_balance('DEMO-0012') = 5250,
  'fail after credit: the recharge stays completed and the card keeps its money'
);
select is(pg_temp.response('fail-unknown') ->> 'outcome', 'unknown_session', 'fail: an unknown session is unknown_session');

-- ---------------------------------------------------------------------------------------------
-- sp_process_stripe_refund
-- ---------------------------------------------------------------------------------------------

-- DEMO-0012 holds 5250 from a MIDI (5000 + 250) paid with pi_12. Running totals 1000, 3000, then 5000.
insert into responses
select 'refund-1', public.sp_process_stripe_refund('pi_12', 'ch_12', 1000, 'eur', 'evt_refund_12_a');
select is(
  pg_temp.pick(pg_temp.response('refund-1'),
    array['ok', 'outcome', 'refund_cents', 'bonus_reversed_cents', 'taken_from_card_cents', 'receivable_cents',
      'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "refund_applied", "refund_cents": 1000, "bonus_reversed_cents": 50,
    "taken_from_card_cents": 1050, "receivable_cents": 0, "previous_balance_cents": 5250, "new_balance_cents": 4200}'::jsonb,
  'refund 1000 of 5000: 1000 and a bonus share of 50 reversed'
);
select results_eq(
  $$ select * from pg_temp.transfers_of('evt_refund_12_a') $$,
  $$ values ('card:DEMO-0012', 'stripe_clearing:stripe', 1000::bigint, 5250::bigint, 4250::bigint, null::bigint, null::bigint),
            ('card:DEMO-0012', 'promotions:festival', 50::bigint, 4250::bigint, 4200::bigint, null::bigint, null::bigint) $$,
  'refund 1000: the refund back to Stripe clearing, the bonus share back to promotions'
);

insert into responses
select 'refund-2', public.sp_process_stripe_refund('pi_12', 'ch_12', 3000, 'eur', 'evt_refund_12_b');
select is(
  pg_temp.pick(pg_temp.response('refund-2'), array['outcome', 'refund_cents', 'bonus_reversed_cents', 'new_balance_cents']),
  '{"outcome": "refund_applied", "refund_cents": 2000, "bonus_reversed_cents": 100, "new_balance_cents": 2100}'::jsonb,
  'refund running total 3000: only the new 2000 and a bonus share of 100 reversed'
);
select is(pg_temp.card_balance('DEMO-0012'), 2100::bigint, 'refunds: the card holds 5250 - 1050 - 2100');

insert into responses
select 'refund-late', public.sp_process_stripe_refund('pi_12', 'ch_12', 1000, 'eur', 'evt_refund_12_late');
insert into responses
select 'refund-2-replay', public.sp_process_stripe_refund('pi_12', 'ch_12', 3000, 'eur', 'evt_refund_12_b');
select is(pg_temp.response('refund-late') ->> 'outcome', 'refund_already_applied',
  'refund: an older running total arriving late is refund_already_applied');
select ok(
  pg_temp.response('refund-2-replay') - 'replayed' = pg_temp.response('refund-2') - 'replayed'
    and (pg_temp.response('refund-2-replay') ->> 'replayed')::boolean,
  'refund replay: the stored result, marked replayed'
);
select ok(
  pg_temp.card_balance('DEMO-0012') = 2100
    and (select count(*) from ledger.operations where kind = 'stripe_refund' and metadata ->> 'card_id' = 'DEMO-0012') = 2
    and (select (refunded_cents, bonus_reversed_cents) = (3000::bigint, 150::bigint) from festival.recharges
         where client_request_id = 'st-prep-midi'),
  'refund: the late total and the replay move nothing'
);

insert into responses
select 'refund-full', public.sp_process_stripe_refund('pi_12', 'ch_12', 5000, 'eur', 'evt_refund_12_full');
select is(
  pg_temp.pick(pg_temp.response('refund-full'), array['outcome', 'refund_cents', 'bonus_reversed_cents', 'receivable_cents',
    'new_balance_cents']),
  '{"outcome": "refund_applied", "refund_cents": 2000, "bonus_reversed_cents": 100, "receivable_cents": 0,
    "new_balance_cents": 0}'::jsonb,
  'full refund: the rest of the amount and the rest of the bonus reversed'
);
select results_eq(
  $$ select refunded_cents, bonus_reversed_cents from festival.recharges where client_request_id = 'st-prep-midi' $$,
  $$ values (5000::bigint, 250::bigint) $$,
  'full refund: the recharge is refunded in full, bonus included'
);

-- A refund that arrives before the credit is parked and applied with the credit.
insert into responses
select 'st-prep-early', public.sp_prepare_online_recharge('DEMO-0020', null, 'MIDI', 'st-prep-early');
insert into responses
select 'st-prep-early-attach', public.sp_attach_checkout_session((pg_temp.response('st-prep-early') ->> 'recharge_id')::bigint,
  'cs_early_20', 'https://checkout.stripe.test/c/pay/cs_early_20');
select is(
  (select (status, stripe_session_id) from festival.recharges where client_request_id = 'st-prep-early'),
  ('pending'::text, 'cs_early_20'::text),
  'setup: a pending MIDI recharge of DEMO-0020 with session cs_early_20'
);
insert into responses
select 'refund-early', public.sp_process_stripe_refund('pi_early_20', 'ch_early_20', 2000, 'EUR', 'evt_refund_early');
select is(pg_temp.response('refund-early') ->> 'outcome', 'refund_parked_until_credit',
  'early refund: parked until the credit');
select results_eq(
  $$ select amount_refunded_cents, currency, last_event_id from festival.stripe_refunds_pending
     where stripe_payment_intent_id = 'pi_early_20' $$,
  $$ values (2000::bigint, 'EUR', 'evt_refund_early') $$,
  'early refund: the running total is kept in stripe_refunds_pending'
);
select is(pg_temp.card_transfer_count('DEMO-0020'), 0::bigint, 'early refund: nothing moves yet');

insert into responses
select 'credit-early', public.sp_process_stripe_recharge('DEMO-0020', 5000, 'EUR', 'cs_early_20', 'evt_credit_early',
  'pi_early_20', 250, '{}');
select is(
  pg_temp.pick(pg_temp.response('credit-early'), array['outcome', 'new_balance_cents'])
    || jsonb_build_object('refund', pg_temp.pick(pg_temp.response('credit-early') -> 'refund',
      array['outcome', 'refund_cents', 'bonus_reversed_cents'])),
  '{"outcome": "credited", "new_balance_cents": 5250,
    "refund": {"outcome": "refund_applied", "refund_cents": 2000, "bonus_reversed_cents": 100}}'::jsonb,
  'early refund: the credit applies the parked refund'
);
select is(pg_temp.card_balance('DEMO-0020'), 3150::bigint, 'early refund: the card holds 5250 - 2000 - 100');
select is_empty($$ select 1 from festival.stripe_refunds_pending where stripe_payment_intent_id = 'pi_early_20' $$,
  'early refund: the parked row is gone');
select results_eq(
  $$ select status, refunded_cents, bonus_reversed_cents from festival.recharges where client_request_id = 'st-prep-early' $$,
  $$ values ('completed', 2000::bigint, 100::bigint) $$,
  'early refund: the recharge is completed and partly refunded'
);

-- A full refund of a card that has spent most of its balance: the rest becomes a receivable.
insert into responses
select 'st-prep-spent', public.sp_prepare_online_recharge('DEMO-0021', null, 'MIDI', 'st-prep-spent');
insert into responses
select 'st-prep-spent-attach', public.sp_attach_checkout_session((pg_temp.response('st-prep-spent') ->> 'recharge_id')::bigint,
  'cs_spent_21', 'https://checkout.stripe.test/c/pay/cs_spent_21');
insert into responses
select 'credit-spent', public.sp_process_stripe_recharge('DEMO-0021', 5000, 'EUR', 'cs_spent_21', 'evt_credit_spent',
  'pi_spent_21', 250, '{}');
insert into responses
select 'spend-0021', public.sp_process_bar_order('DEMO-0021', '[{"product_id": "cocktail", "quantity": 5}]', 'main-bar',
  'st-bar-0021', '00000000-0000-4000-8000-00000000b001', null, true);
select ok(
  pg_temp.response('credit-spent') ->> 'outcome' = 'credited' and (pg_temp.response('spend-0021') ->> 'ok')::boolean
    and pg_temp.card_balance('DEMO-0021') = 750,
  'setup: DEMO-0021 paid a MIDI online and spent 4500 of its 5250'
);
insert into responses
select 'refund-spent', public.sp_process_stripe_refund('pi_spent_21', 'ch_spent_21', 5000, 'EUR', 'evt_refund_spent');
select is(
  pg_temp.pick(pg_temp.response('refund-spent'), array['ok', 'outcome', 'refund_cents', 'bonus_reversed_cents',
    'taken_from_card_cents', 'receivable_cents', 'new_balance_cents']),
  '{"ok": true, "outcome": "refund_applied", "refund_cents": 5000, "bonus_reversed_cents": 250,
    "taken_from_card_cents": 750, "receivable_cents": 4500, "new_balance_cents": 0}'::jsonb,
  'spent card: the card gives what it has, 4500 is owed'
);
select is(pg_temp.card_balance('DEMO-0021'), 0::bigint, 'spent card: the card is left at 0');
select results_eq(
  $$ select * from pg_temp.transfers_of('evt_refund_spent') $$,
  $$ values ('card:DEMO-0021', 'stripe_clearing:stripe', 750::bigint, 750::bigint, 0::bigint, null::bigint, null::bigint),
            ('receivables:festival', 'stripe_clearing:stripe', 4250::bigint, null::bigint, null::bigint, null::bigint, null::bigint),
            ('receivables:festival', 'promotions:festival', 250::bigint, null::bigint, null::bigint, null::bigint, null::bigint) $$,
  'spent card: Stripe clearing and promotions are made whole, the shortfall from receivables'
);
select results_eq(
  $$ select card_id, recharge_id, amount_cents, status, operation_id from festival.receivables where card_id = 'DEMO-0021' $$,
  $$ select 'DEMO-0021', (select id from festival.recharges where client_request_id = 'st-prep-spent'), 4500::bigint, 'open',
       (pg_temp.response('refund-spent') ->> 'transaction_id')::bigint $$,
  'spent card: an open receivable of 4500'
);
select results_eq(
  $$ select card_id, (details ->> 'receivable_cents')::bigint from ops.alerts where kind = 'refund_receivable' $$,
  $$ values ('DEMO-0021', 4500::bigint) $$,
  'spent card: one refund_receivable alert (and none for the covered refunds)'
);

-- ---------------------------------------------------------------------------------------------
-- sp_process_stripe_dispute
-- ---------------------------------------------------------------------------------------------

-- DEMO-0018 was credited 3000 through pi_no_pending_18.
insert into responses
select 'dispute', public.sp_process_stripe_dispute('pi_no_pending_18', 'ch_18', 'dp_18', 3000, 'evt_dispute_18');
select is(
  pg_temp.pick(pg_temp.response('dispute'), array['ok', 'replayed', 'outcome', 'card_id', 'recharge_id']),
  jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_hold_opened', 'card_id', 'DEMO-0018',
    'recharge_id', pg_temp.response('credit-no-pending') -> 'recharge_id'),
  'dispute: the disputed money of the payment is held'
);
select is((select status from festival.cards where id = 'DEMO-0018'), 'active', 'dispute: the card stays active');
select is(
  public.sp_process_bar_order('DEMO-0018', '[{"product_id": "beer", "quantity": 1}]', 'main-bar', 'st-bar-0018',
    '00000000-0000-4000-8000-00000000b001') #>> '{error,code}',
  'insufficient_funds',
  'dispute: the card is not blocked; the held 3000 are not spendable (insufficient_funds)'
);
select results_eq(
  $$ select card_id, severity from ops.alerts where kind = 'dispute' and stripe_object_id = 'dp_18' $$,
  $$ values ('DEMO-0018', 'critical') $$,
  'dispute: an alert of kind dispute'
);
insert into responses
select 'dispute-replay', public.sp_process_stripe_dispute('pi_no_pending_18', 'ch_18', 'dp_18', 3000, 'evt_dispute_18');
select ok(
  pg_temp.response('dispute-replay') - 'replayed' = pg_temp.response('dispute') - 'replayed'
    and (pg_temp.response('dispute-replay') ->> 'replayed')::boolean
    and pg_temp.alert_count('dispute', 'dp_18') = 1,
  'dispute replay: the stored result, no second alert'
);
select is(pg_temp.card_balance('DEMO-0018'), 0::bigint, 'dispute: the 3000 moved from the card to the hold');
insert into responses
select 'dispute-unmatched', public.sp_process_stripe_dispute('pi_nobody', 'ch_nobody', 'dp_nobody', 1000, 'evt_dispute_nobody');
select is(pg_temp.response('dispute-unmatched') ->> 'outcome', 'dispute_unmatched',
  'dispute: an unknown payment intent is dispute_unmatched');
select is(pg_temp.alert_count('dispute', 'dp_nobody'), 1::bigint, 'dispute: an unmatched dispute is alerted too');

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select public.sp_process_stripe_recharge('DEMO 0030', 2000, 'EUR', 'cs_bad', 'evt_bad_card', null, 0, '{}') $$,
  '22023', null, 'recharge: card id with a space');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0030', 0, 'EUR', 'cs_bad', 'evt_bad_amount', null, 0, '{}') $$,
  '22023', null, 'recharge: amount 0');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0030', 2000, 'EUR', 'cs_bad', 'evt_bad_bonus', null, -1, '{}') $$,
  '22023', null, 'recharge: negative bonus');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0030', 2000, 'EURO', 'cs_bad', 'evt_bad_currency', null, 0, '{}') $$,
  '22023', null, 'recharge: currency EURO');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0030', 2000, 'EUR', '', 'evt_bad_session', null, 0, '{}') $$,
  '22023', null, 'recharge: empty session id');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0030', 2000, 'EUR', 'cs_bad', '', null, 0, '{}') $$,
  '22023', null, 'recharge: empty event id');
select throws_ok($$ select public.sp_fail_stripe_recharge('cs_bad', '') $$, '22023', null, 'fail: empty event id');
select throws_ok($$ select public.sp_process_stripe_refund('pi_12', 'ch_12', 0, 'EUR', 'evt_bad_refund') $$,
  '22023', null, 'refund: amount refunded 0');
select throws_ok($$ select public.sp_process_stripe_dispute('pi_12', 'ch_12', 'dp_bad', 1000, '') $$,
  '22023', null, 'dispute: empty event id');
select throws_ok($$ select public.sp_attach_checkout_session(1, '', 'https://checkout.stripe.test/x') $$,
  '22023', null, 'attach: empty session id');
select ok(
  pg_temp.card_transfer_count('DEMO-0030') = 0
    and not exists (select 1 from festival.stripe_events where event_id like 'evt_bad%' or event_id = '')
    and not exists (select 1 from ops.app_transaction_log where client_request_id like 'evt_bad%' or client_request_id = '')
    and not exists (select 1 from festival.recharges where stripe_session_id = 'cs_bad'),
  'invalid arguments record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.sp_prepare_online_recharge('DEMO-0031', 2000, null, 'st-role-anon') $$,
  '42501', null, 'anon cannot execute sp_prepare_online_recharge');
select throws_ok($$ select public.sp_attach_checkout_session(1, 'cs_role', 'https://checkout.stripe.test/x') $$,
  '42501', null, 'anon cannot execute sp_attach_checkout_session');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0031', 2000, 'EUR', 'cs_role', 'evt_role', null, 0, '{}') $$,
  '42501', null, 'anon cannot execute sp_process_stripe_recharge');
select throws_ok($$ select public.sp_fail_stripe_recharge('cs_role', 'evt_role') $$,
  '42501', null, 'anon cannot execute sp_fail_stripe_recharge');
select throws_ok($$ select public.sp_process_stripe_refund('pi_role', 'ch_role', 1000, 'EUR', 'evt_role') $$,
  '42501', null, 'anon cannot execute sp_process_stripe_refund');
select throws_ok($$ select public.sp_process_stripe_dispute('pi_role', 'ch_role', 'dp_role', 1000, 'evt_role') $$,
  '42501', null, 'anon cannot execute sp_process_stripe_dispute');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_prepare_online_recharge('DEMO-0031', 2000, null, 'st-role-authenticated') $$,
  '42501', null, 'authenticated cannot execute sp_prepare_online_recharge');
select throws_ok($$ select public.sp_attach_checkout_session(1, 'cs_role', 'https://checkout.stripe.test/x') $$,
  '42501', null, 'authenticated cannot execute sp_attach_checkout_session');
select throws_ok($$ select public.sp_process_stripe_recharge('DEMO-0031', 2000, 'EUR', 'cs_role', 'evt_role', null, 0, '{}') $$,
  '42501', null, 'authenticated cannot execute sp_process_stripe_recharge');
select throws_ok($$ select public.sp_fail_stripe_recharge('cs_role', 'evt_role') $$,
  '42501', null, 'authenticated cannot execute sp_fail_stripe_recharge');
select throws_ok($$ select public.sp_process_stripe_refund('pi_role', 'ch_role', 1000, 'EUR', 'evt_role') $$,
  '42501', null, 'authenticated cannot execute sp_process_stripe_refund');
select throws_ok($$ select public.sp_process_stripe_dispute('pi_role', 'ch_role', 'dp_role', 1000, 'evt_role') $$,
  '42501', null, 'authenticated cannot execute sp_process_stripe_dispute');
reset role;
select ok(
  (select bool_and(has_function_privilege('service_role', f, 'execute')) from unnest(array[
    'public.sp_prepare_online_recharge(text, bigint, text, text)',
    'public.sp_attach_checkout_session(bigint, text, text)',
    'public.sp_process_stripe_recharge(text, bigint, text, text, text, text, bigint, jsonb)',
    'public.sp_fail_stripe_recharge(text, text, text)',
    'public.sp_process_stripe_refund(text, text, bigint, text, text, timestamptz)',
    'public.sp_process_stripe_dispute(text, text, text, bigint, text)']) as f),
  'service_role may execute all six procedures'
);
set local role service_role;
create temp table service_results (step integer primary key, result jsonb not null);
insert into service_results
select 1, public.sp_prepare_online_recharge('DEMO-0031', 2000, null, 'st-role-service');
insert into service_results
select 2, public.sp_attach_checkout_session((select (result ->> 'recharge_id')::bigint from service_results where step = 1),
  'cs_role_service', 'https://checkout.stripe.test/c/pay/cs_role_service');
insert into service_results
select 3, public.sp_process_stripe_recharge('DEMO-0031', 2000, 'EUR', 'cs_role_service', 'evt_role_service',
  'pi_role_service', 0, '{}');
insert into service_results
select 4, public.sp_process_stripe_refund('pi_role_service', 'ch_role_service', 500, 'EUR', 'evt_role_service_refund');
insert into service_results
select 5, public.sp_fail_stripe_recharge('cs_role_nobody', 'evt_role_service_fail');
insert into service_results
select 6, public.sp_process_stripe_dispute('pi_role_nobody', 'ch_role_nobody', 'dp_role_nobody', 500,
  'evt_role_service_dispute');
reset role;
select results_eq(
  $$ select coalesce(result ->> 'outcome', result ->> 'session_id', result ->> 'status') from service_results order by step $$,
  $$ values ('pending'), ('cs_role_service'), ('credited'), ('refund_applied'), ('unknown_session'), ('dispute_unmatched') $$,
  'service_role can execute all six procedures'
);
select ok(
  not exists (select 1 from festival.recharges where client_request_id in ('st-role-anon', 'st-role-authenticated'))
    and not exists (select 1 from festival.stripe_events where event_id = 'evt_role')
    and pg_temp.card_balance('DEMO-0031') = 1500,
  'denied calls did nothing; the service_role calls did'
);

-- ---------------------------------------------------------------------------------------------
-- Ledger
-- ---------------------------------------------------------------------------------------------

select results_eq(
  $$ select b.system_purpose || ':' || b.owner_ref, b.balance_cents - coalesce(s.balance_cents, 0)
     from (select system_purpose, owner_ref, sum(balance_cents)::bigint as balance_cents
           from ledger.account_balances where kind = 'system' group by 1, 2) b
     left join system_balances_before s using (system_purpose, owner_ref)
     where b.balance_cents <> coalesce(s.balance_cents, 0)
     order by 1 $$,
  $$ values ('bar_revenue:main-bar', 4500::bigint),
            ('cash_drawer:entrance', -5000::bigint - 25000 - 20000),
            -- bonuses 0010, 0012, 0017, 0020, 0021 given; 0012 and 0021 fully, 0020 partly (100) taken back
            ('promotions:festival', -5 * 250::bigint + 250 + 250 + 100),
            ('receivables:festival', -4500::bigint),
            -- credits 0012, 0016, 0017, 0018, NEW-CARD-0001, 0020, 0021, 0031; refunds 0012, 0020, 0021, 0031
            ('stripe_clearing:stripe', -(5000::bigint + 2000 + 5000 + 3000 + 2000 + 5000 + 5000 + 2000)
              + 5000 + 2000 + 5000 + 500) $$,
  'system accounts moved by exactly the credits, refunds, the sale and the checkpoint recharges'
);
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

-- A business failure of prepare is a recorded outcome (docs/architecture.md §5): after the card is unblocked,
-- the same key still answers card_blocked, and no recharge appears.
select public.sp_admin_block_card('DEMO-0030', '00000000-0000-4000-8000-00000000a001', 'st-block-30');
select is(public.sp_prepare_online_recharge('DEMO-0030', 1000, null, 'st-prep-blocked-30') #>> '{error,code}',
  'card_blocked', 'prepare failure: a blocked card');
select public.sp_admin_unblock_card('DEMO-0030', '00000000-0000-4000-8000-00000000a001', 'st-unblock-30');
select is(
  pg_temp.pick(public.sp_prepare_online_recharge('DEMO-0030', 1000, null, 'st-prep-blocked-30'), array['ok', 'replayed'])
    || jsonb_build_object('code', public.sp_prepare_online_recharge('DEMO-0030', 1000, null, 'st-prep-blocked-30') #>> '{error,code}'),
  '{"ok": false, "replayed": true, "code": "card_blocked"}'::jsonb,
  'prepare failure: the same key replays the failure after the unblock');
select is_empty($$ select 1 from festival.recharges where client_request_id = 'st-prep-blocked-30' $$,
  'prepare failure: no recharge was created by the replay');

-- A dispute that arrives before its payment is credited is parked; the credit then opens its hold.
select is(public.sp_process_stripe_dispute('pi_dispute_first', 'ch_dispute_first', 'dp_first', 1000, 'evt_dispute_first')
  ->> 'outcome', 'dispute_unmatched', 'early dispute: parked until the credit');
select is(public.sp_process_stripe_recharge('DEMO-0031', 1000, 'eur', 'cs_dispute_first', 'evt_credit_dispute_first',
  'pi_dispute_first', 0, '{}') #>> '{dispute,outcome}', 'dispute_hold_opened', 'early dispute: applied with the credit');
select is((select status from festival.cards where id = 'DEMO-0031'), 'active', 'early dispute: the card stays active');
select is_empty($$ select 1 from festival.stripe_disputes_pending where stripe_payment_intent_id = 'pi_dispute_first' $$,
  'early dispute: no longer pending');

-- A session without a pending recharge cannot invent a bonus through its metadata.
select is(public.sp_process_stripe_recharge('DEMO-0032', 100, 'eur', 'cs_invented_bonus', 'evt_invented_bonus',
  'pi_invented_bonus', 999999999, '{"kind": "card_recharge"}') #>> '{error,code}', 'payment_mismatch',
  'foreign session: a bonus that is not its package''s is payment_mismatch');
select is(public.sp_process_stripe_recharge('DEMO-0032', 5000, 'eur', 'cs_package_bonus', 'evt_package_bonus',
  'pi_package_bonus', 250, '{"kind": "card_recharge", "package_code": "MIDI"}') ->> 'new_balance_cents', '5250',
  'foreign session: the named package''s bonus for its price is credited');

select * from finish();
rollback;
