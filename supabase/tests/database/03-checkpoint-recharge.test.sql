-- public.sp_process_checkpoint_recharge: cash and card recharges, limits, every error code,
-- replay, key reuse, invalid arguments, denied roles, and a reconciled ledger afterwards.
begin;
create extension if not exists pgtap with schema extensions;
select plan(62);

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

create function pg_temp.account_label(p_account_id bigint) returns text
language sql stable as $$
  select case when kind = 'system' then system_purpose || ':' || owner_ref else code end
  from ledger.accounts where id = p_account_id
$$;

create function pg_temp.pick(p_object jsonb, p_keys text[]) returns jsonb
language sql immutable as $$
  select coalesce(jsonb_object_agg(key, value), '{}'::jsonb) from jsonb_each(p_object) where key = any(p_keys)
$$;

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

create temp table system_balances_before as
select system_purpose, owner_ref, sum(balance_cents)::bigint as balance_cents
from ledger.account_balances where kind = 'system' group by system_purpose, owner_ref;

-- ---------------------------------------------------------------------------------------------
-- Success: cash into the checkpoint's drawer, card payments into its terminal
-- ---------------------------------------------------------------------------------------------

-- DEMO-0006 and DEMO-0007 are empty.
insert into responses
select 'cash', public.sp_process_checkpoint_recharge(
  card_id => 'DEMO-0006', amount_cents => 2000, payment_method => 'cash', checkpoint_id => 'entrance',
  staff_user_id => '00000000-0000-4000-8000-00000000c001', client_request_id => 'rc-cash');
-- Admins may recharge too.
insert into responses
select 'card', public.sp_process_checkpoint_recharge('DEMO-0007', 2500, 'card', 'camping',
  '00000000-0000-4000-8000-00000000a001', 'rc-card');

select is(
  pg_temp.pick(pg_temp.response('cash'),
    array['ok', 'replayed', 'amount_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "replayed": false, "amount_cents": 2000, "previous_balance_cents": 0, "new_balance_cents": 2000}'::jsonb,
  'cash: ok, amount and balances before and after'
);
select is(
  (pg_temp.response('cash') ->> 'recharge_id')::bigint,
  (select id from festival.recharges where client_request_id = 'rc-cash'),
  'cash: recharge_id is the recharges row'
);
select is(
  (pg_temp.response('cash') ->> 'transaction_id')::bigint,
  (select operation_id from festival.recharges where client_request_id = 'rc-cash'),
  'cash: transaction_id is the ledger operation of the recharge'
);
select is(pg_temp.card_balance('DEMO-0006'), 2000::bigint, 'cash: the card account is credited');
select results_eq(
  $$ select * from pg_temp.transfers_of('rc-cash') $$,
  $$ values ('cash_drawer:entrance', 'card:DEMO-0006', 2000::bigint, null::bigint, null::bigint, 0::bigint, 2000::bigint) $$,
  'cash: one transfer from the checkpoint cash drawer to the card'
);
select is(
  (select t.from_account_id from ledger.transfers t join ledger.operations o on o.id = t.operation_id
   where o.client_request_id = 'rc-cash'),
  ledger.system_account_id('cash_drawer', 'entrance', 'DEMO-0006'),
  'cash: the drawer shard is the one chosen for the card'
);
select results_eq(
  $$ select card_id, amount_cents, bonus_cents, payment_method, staff_user_id, checkpoint_id, status, stripe_session_id
     from festival.recharges where client_request_id = 'rc-cash' $$,
  $$ values ('DEMO-0006', 2000::bigint, 0::bigint, 'cash', '00000000-0000-4000-8000-00000000c001'::uuid, 'entrance',
       'completed', null::text) $$,
  'cash: one completed recharges row'
);
select results_eq(
  $$ select operation_type, status, error_code, card_id, account_id, amount_cents, balance_before_cents,
       balance_after_cents, operation_id, actor_user_id
     from ops.app_transaction_log where client_request_id = 'rc-cash' $$,
  $$ select 'checkpoint_recharge', 'success', null::text, 'DEMO-0006', c.account_id, 2000::bigint, 0::bigint,
       2000::bigint, r.operation_id, '00000000-0000-4000-8000-00000000c001'::uuid
     from festival.cards c, festival.recharges r where c.id = 'DEMO-0006' and r.client_request_id = 'rc-cash' $$,
  'cash: one log row with amount and balances'
);
select results_eq(
  $$ select operation, response from ledger.idempotency_keys where key = 'rc-cash' $$,
  $$ select 'checkpoint_recharge', pg_temp.response('cash') $$,
  'cash: the response is stored under the key'
);

select is(
  pg_temp.pick(pg_temp.response('card'), array['ok', 'amount_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "amount_cents": 2500, "previous_balance_cents": 0, "new_balance_cents": 2500}'::jsonb,
  'card: ok, amount and balances'
);
select results_eq(
  $$ select * from pg_temp.transfers_of('rc-card') $$,
  $$ values ('card_terminal:camping', 'card:DEMO-0007', 2500::bigint, null::bigint, null::bigint, 0::bigint, 2500::bigint) $$,
  'card: one transfer from the checkpoint card terminal to the card'
);
select results_eq(
  $$ select payment_method, checkpoint_id, staff_user_id from festival.recharges where client_request_id = 'rc-card' $$,
  $$ values ('card', 'camping', '00000000-0000-4000-8000-00000000a001'::uuid) $$,
  'card: recharges row with method, checkpoint and staff'
);

-- ---------------------------------------------------------------------------------------------
-- Limits: 500 to 25000 per recharge, 50000 on the card
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'min', public.sp_process_checkpoint_recharge('DEMO-0009', 500, 'cash', 'camping',
  '00000000-0000-4000-8000-00000000c002', 'rc-min');
insert into responses
select 'err-below-min', public.sp_process_checkpoint_recharge('DEMO-0010', 499, 'cash', 'camping',
  '00000000-0000-4000-8000-00000000c002', 'rc-err-below-min');
insert into responses
select 'err-above-max', public.sp_process_checkpoint_recharge('DEMO-0010', 25001, 'cash', 'camping',
  '00000000-0000-4000-8000-00000000c002', 'rc-err-above-max');
-- DEMO-0062 holds 5000: +25000 (the maximum) +15000 = 45000.
insert into responses
select 'fill-1', public.sp_process_checkpoint_recharge('DEMO-0062', 25000, 'card', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-fill-1');
insert into responses
select 'fill-2', public.sp_process_checkpoint_recharge('DEMO-0062', 15000, 'card', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-fill-2');
insert into responses
select 'err-card-max', public.sp_process_checkpoint_recharge('DEMO-0062', 5001, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-err-card-max');
insert into responses
select 'to-card-max', public.sp_process_checkpoint_recharge('DEMO-0062', 5000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-to-card-max');

select is(pg_temp.response('min') ->> 'new_balance_cents', '500', 'limits: exactly the minimum (500) is accepted');
select is(
  pg_temp.pick(pg_temp.response('err-below-min') -> 'error', array['code', 'amount_cents']),
  '{"code": "limit_exceeded", "amount_cents": 499}'::jsonb,
  'limits: 499 is limit_exceeded'
);
select is(
  pg_temp.pick(pg_temp.response('err-above-max') -> 'error', array['code', 'amount_cents']),
  '{"code": "limit_exceeded", "amount_cents": 25001}'::jsonb,
  'limits: 25001 is limit_exceeded'
);
select is(
  (pg_temp.response('fill-1') ->> 'ok')::boolean and (pg_temp.response('fill-2') ->> 'ok')::boolean,
  true,
  'limits: exactly the maximum (25000) is accepted'
);
select is(
  pg_temp.pick(pg_temp.response('err-card-max') -> 'error', array['code', 'amount_cents', 'balance_cents']),
  '{"code": "limit_exceeded", "amount_cents": 5001, "balance_cents": 45000}'::jsonb,
  'limits: a balance above 50000 is limit_exceeded'
);
select is(
  pg_temp.pick(pg_temp.response('to-card-max'), array['ok', 'new_balance_cents']),
  '{"ok": true, "new_balance_cents": 50000}'::jsonb,
  'limits: exactly the card maximum (50000) is accepted'
);

-- ---------------------------------------------------------------------------------------------
-- Business errors: returned, logged, nothing moved
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'err-card-not-found', public.sp_process_checkpoint_recharge('NOPE-0002', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-err-card-not-found');

select ok((public.sp_admin_block_card('DEMO-0008', '00000000-0000-4000-8000-00000000a001', 'rc-block-0008') ->> 'ok')::boolean,
  'setup: DEMO-0008 blocked by the admin');
insert into responses
select 'err-card-blocked', public.sp_process_checkpoint_recharge('DEMO-0008', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-err-card-blocked');

insert into responses
select 'err-forbidden-bartender', public.sp_process_checkpoint_recharge('DEMO-0010', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000b001', 'rc-err-forbidden-bartender');
insert into responses
select 'err-forbidden-unknown', public.sp_process_checkpoint_recharge('DEMO-0010', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000ffff', 'rc-err-forbidden-unknown');

insert into responses
select 'err-checkpoint', public.sp_process_checkpoint_recharge('DEMO-0010', 1000, 'card', 'no-such-checkpoint',
  '00000000-0000-4000-8000-00000000c001', 'rc-err-checkpoint');

select is(
  pg_temp.pick(pg_temp.response('err-card-not-found'), array['ok', 'replayed']) || jsonb_build_object('code', pg_temp.response('err-card-not-found') #>> '{error,code}'),
  '{"ok": false, "replayed": false, "code": "card_not_found"}'::jsonb,
  'unknown card: card_not_found'
);
select is(pg_temp.response('err-card-blocked') #>> '{error,code}', 'card_blocked', 'blocked card: card_blocked');
select is(pg_temp.response('err-forbidden-bartender') #>> '{error,code}', 'forbidden', 'a bartender cannot recharge: forbidden');
select is(pg_temp.response('err-forbidden-unknown') #>> '{error,code}', 'forbidden', 'an unknown user cannot recharge: forbidden');
select is(pg_temp.response('err-checkpoint') #>> '{error,code}', 'checkpoint_not_found', 'unknown checkpoint: checkpoint_not_found');

-- Key reuse: the same key with another payload, and a key first used by a bar order.
insert into responses
select 'err-reused', public.sp_process_checkpoint_recharge('DEMO-0006', 2100, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-cash');
select ok((public.sp_process_bar_order('DEMO-0063', '[{"product_id": "beer", "quantity": 1}]', 'main-bar', 'rc-cross',
  '00000000-0000-4000-8000-00000000b001') ->> 'ok')::boolean, 'setup: a bar order uses key rc-cross');
insert into responses
select 'err-reused-cross', public.sp_process_checkpoint_recharge('DEMO-0063', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-cross');

select is(pg_temp.response('err-reused') #>> '{error,code}', 'idempotency_key_reused',
  'same key, other payload: idempotency_key_reused');
select is(pg_temp.response('err-reused-cross') #>> '{error,code}', 'idempotency_key_reused',
  'same key used by a bar order, then a recharge: idempotency_key_reused');
select results_eq(
  $$ select key, operation, response from ledger.idempotency_keys where key in ('rc-cash', 'rc-cross') order by key $$,
  $$ select 'rc-cash', 'checkpoint_recharge', pg_temp.response('cash')
     union all select 'rc-cross', 'bar_order', (select response from ledger.idempotency_keys where key = 'rc-cross') $$,
  'key reuse stores nothing: the original responses stay under their keys'
);
select results_eq(
  $$ select pg_temp.card_balance(id) from unnest(array['DEMO-0006', 'DEMO-0063']) as id $$,
  $$ values (2000::bigint), (5000::bigint - 450) $$,
  'key reuse: no card is credited'
);
select is(
  (select count(*) from festival.recharges where client_request_id in ('rc-cash', 'rc-cross')),
  1::bigint,
  'key reuse: no new recharge'
);
select results_eq(
  $$ select status, error_code from ops.app_transaction_log
     where client_request_id in ('rc-cash', 'rc-cross') and operation_type = 'checkpoint_recharge' order by id $$,
  $$ values ('success', null::text), ('rejected', 'idempotency_key_reused'), ('rejected', 'idempotency_key_reused') $$,
  'key reuse: logged as rejected'
);

-- Every failure: one failed log row with its code, no operation, no recharge, no money moved.
select results_eq(
  $$ select client_request_id, status, error_code, count(*) from ops.app_transaction_log
     where client_request_id like 'rc-err-%' group by 1, 2, 3 order by 1 $$,
  $$ values ('rc-err-above-max', 'failed', 'limit_exceeded', 1::bigint),
            ('rc-err-below-min', 'failed', 'limit_exceeded', 1::bigint),
            ('rc-err-card-blocked', 'failed', 'card_blocked', 1::bigint),
            ('rc-err-card-max', 'failed', 'limit_exceeded', 1::bigint),
            ('rc-err-card-not-found', 'failed', 'card_not_found', 1::bigint),
            ('rc-err-checkpoint', 'failed', 'checkpoint_not_found', 1::bigint),
            ('rc-err-forbidden-bartender', 'failed', 'forbidden', 1::bigint),
            ('rc-err-forbidden-unknown', 'failed', 'forbidden', 1::bigint) $$,
  'each failure writes one failed log row with its error code'
);
select is_empty(
  $$ select 1 from festival.recharges where client_request_id like 'rc-err-%' or client_request_id = 'rc-cross' $$,
  'failures leave no recharge'
);
select is_empty(
  $$ select 1 from ledger.operations where client_request_id like 'rc-err-%'
     union all select 1 from ledger.transfers t join ledger.operations o on o.id = t.operation_id
       where o.client_request_id like 'rc-err-%' $$,
  'failures create no ledger operation and no transfer'
);
select results_eq(
  $$ select pg_temp.card_balance(id) from unnest(array['DEMO-0008', 'DEMO-0010', 'DEMO-0062']) as id $$,
  $$ values (0::bigint), (0::bigint), (50000::bigint) $$,
  'failures leave the card balances untouched'
);

-- ---------------------------------------------------------------------------------------------
-- Replay
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'replay', public.sp_process_checkpoint_recharge('DEMO-0006', 2000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-cash');

select is(pg_temp.response('replay') - 'replayed', pg_temp.response('cash') - 'replayed',
  'replay: the stored response, unchanged');
select is(pg_temp.response('replay') -> 'replayed', 'true'::jsonb, 'replay: marked replayed');
select is(pg_temp.card_balance('DEMO-0006'), 2000::bigint, 'replay: the card is not credited again');
select is(
  (select count(*) from pg_temp.transfers_of('rc-cash'))
    + (select count(*) from festival.recharges where client_request_id = 'rc-cash'),
  2::bigint,
  'replay: no new transfer and no new recharge'
);
select is(
  (select status from ops.app_transaction_log where client_request_id = 'rc-cash' order by id desc limit 1),
  'replayed',
  'replay: logged as replayed'
);

-- A business failure is a recorded outcome: it replays even once the card is unblocked.
select ok((public.sp_admin_unblock_card('DEMO-0008', '00000000-0000-4000-8000-00000000a001', 'rc-unblock-0008') ->> 'ok')::boolean,
  'setup: DEMO-0008 unblocked');
insert into responses
select 'replay-blocked', public.sp_process_checkpoint_recharge('DEMO-0008', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-err-card-blocked');
insert into responses
select 'after-unblock', public.sp_process_checkpoint_recharge('DEMO-0008', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-after-unblock');

select is(pg_temp.response('replay-blocked') - 'replayed', pg_temp.response('err-card-blocked') - 'replayed',
  'replayed failure: the same card_blocked response');
select is(pg_temp.response('replay-blocked') -> 'replayed', 'true'::jsonb, 'replayed failure: marked replayed');
select is(
  pg_temp.pick(pg_temp.response('after-unblock'), array['ok', 'new_balance_cents']),
  '{"ok": true, "new_balance_cents": 1000}'::jsonb,
  'replayed failure: only the new key credited the unblocked card'
);

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', null) $$, '22023', null, 'null client_request_id');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', '') $$, '22023', null, 'empty client_request_id');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', repeat('k', 256)) $$, '22023', null, '256-character client_request_id');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO 0011', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-bad-card-space') $$, '22023', null, 'card id with a space');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO/0011''', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-bad-card-chars') $$, '22023', null, 'card id with / and quote');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 0, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-bad-amount-0') $$, '22023', null, 'amount_cents 0');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', -1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-bad-amount-negative') $$, '22023', null, 'negative amount_cents');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 1000, 'bitcoin', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-bad-method-bitcoin') $$, '22023', null, 'payment_method bitcoin');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 1000, 'stripe', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-bad-method-stripe') $$, '22023', null,
  'payment_method stripe (online recharges have their own flow)');
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0011', 1000, 'cash', 'entrance',
  null, 'rc-bad-staff') $$, '22023', null, 'null staff');
select is_empty(
  $$ select 1 from ops.app_transaction_log where client_request_id like 'rc-bad-%' or client_request_id is null
       or client_request_id = '' or length(client_request_id) > 255
     union all select 1 from ledger.idempotency_keys where key like 'rc-bad-%'
     union all select 1 from festival.recharges where client_request_id like 'rc-bad-%' $$,
  'invalid arguments record nothing'
);
select is(pg_temp.card_balance('DEMO-0011'), 0::bigint, 'invalid arguments move no money');

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0012', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-role-anon') $$, '42501', null, 'anon cannot execute');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_process_checkpoint_recharge('DEMO-0012', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'rc-role-authenticated') $$, '42501', null, 'authenticated cannot execute');
reset role;
set local role service_role;
select is(
  public.sp_process_checkpoint_recharge('DEMO-0012', 1000, 'cash', 'entrance',
    '00000000-0000-4000-8000-00000000c001', 'rc-role-service') ->> 'ok',
  'true',
  'service_role can execute'
);
reset role;
select is(pg_temp.card_balance('DEMO-0012'), 1000::bigint, 'only the service_role recharge was credited');

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
  $$ values ('bar_revenue:main-bar', 450::bigint),
            ('card_terminal:camping', -2500::bigint),
            ('card_terminal:entrance', -40000::bigint),
            ('cash_drawer:camping', -500::bigint),
            ('cash_drawer:entrance', -2000::bigint - 5000 - 1000 - 1000) $$,
  'system accounts moved by exactly the successful recharges and the setup order'
);
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select * from finish();
rollback;
