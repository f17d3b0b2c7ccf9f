-- Ledger kernel (docs/architecture.md §4, §5, §7): post_transfers, append-only history, derived system
-- balances, shards, idempotency keys, the purge job, reconciliation and who may call what.
begin;
create extension if not exists pgtap with schema extensions;
select plan(64);

-- Test accounts of our own, so that the assertions do not depend on the seed's balances.
insert into ledger.accounts (kind, code) values
  ('card', 'test:card-a'),
  ('card', 'test:card-b'),
  ('user_credit', 'test:credit-c');
insert into ledger.accounts (kind, code, balance_cents_max) values ('card', 'test:card-capped', 1000);

select is_empty('select * from public.ledger_reconcile()', 'the seeded ledger reconciles');

create function pg_temp.account(p_code text) returns bigint
language sql stable
as $$ select id from ledger.accounts where code = p_code $$;

create function pg_temp.leg(p_from bigint, p_to bigint, p_amount_cents bigint) returns ledger.transfer_leg
language sql immutable
as $$ select (p_from, p_to, p_amount_cents)::ledger.transfer_leg $$;

-- The system shard the test customer 'test-customer' uses.
create temp table fixture as
select
  ledger.system_account_id('promotions', 'festival', 'test-customer') as system_id,
  ledger.create_operation('test_transfer', null, null, '{"test": true}') as operation_id;

-- ---------------------------------------------------------------------------------------------
-- post_transfers: moves money, records balances of customer accounts only, legs in order
-- ---------------------------------------------------------------------------------------------

create temp table posted as
select ledger.post_transfers(
  (select operation_id from fixture),
  array[
    pg_temp.leg((select system_id from fixture), pg_temp.account('test:card-a'), 1000),
    pg_temp.leg(pg_temp.account('test:card-a'), pg_temp.account('test:card-b'), 300),
    pg_temp.leg(pg_temp.account('test:card-b'), pg_temp.account('test:credit-c'), 100)
  ]) as transfer_ids;

select is(cardinality((select transfer_ids from posted)), 3, 'post_transfers returns one transfer id per leg');
select ok(
  (select transfer_ids[1] < transfer_ids[2] and transfer_ids[2] < transfer_ids[3] from posted),
  'transfer ids follow the order of the legs'
);
select results_eq(
  $$ select code, balance_cents from ledger.accounts where code in ('test:card-a', 'test:card-b', 'test:credit-c') order by code $$,
  $$ values ('test:card-a', 700::bigint), ('test:card-b', 200::bigint), ('test:credit-c', 100::bigint) $$,
  'customer balances are updated by every leg'
);
select is(
  (select balance_cents from ledger.accounts where id = (select system_id from fixture)),
  0::bigint,
  'the system account row stores no balance'
);
select is(
  (select balance_cents::bigint from ledger.account_balances where account_id = (select system_id from fixture)),
  -1000::bigint,
  'account_balances derives the system balance from its transfers'
);
select results_eq(
  $$
    select from_balance_before_cents, from_balance_after_cents, to_balance_before_cents, to_balance_after_cents
    from ledger.transfers where id in (select unnest(transfer_ids) from posted) order by id
  $$,
  $$ values (null::bigint, null::bigint, 0::bigint, 1000::bigint), (1000, 700, 0, 300), (300, 200, 0, 100) $$,
  'balances before and after are recorded for customer accounts, null for system accounts, leg after leg'
);
select is(
  (select count(*)::integer from ledger.transfers where operation_id = (select operation_id from fixture)),
  3,
  'every transfer belongs to the operation'
);

-- A leg may spend what an earlier leg of the same call credited: legs apply in the given order.
select lives_ok(
  format($$ select ledger.post_transfers(%s, array[
      pg_temp.leg(%s, pg_temp.account('test:card-b'), 500),
      pg_temp.leg(pg_temp.account('test:card-b'), %s, 700)]) $$,
    (select operation_id from fixture), (select system_id from fixture), (select system_id from fixture)),
  'a later leg can spend what an earlier leg credited'
);
select is(
  (select balance_cents from ledger.accounts where code = 'test:card-b'),
  0::bigint,
  'card-b ends at zero after credit then debit'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[
      pg_temp.leg(pg_temp.account('test:card-b'), %s, 700),
      pg_temp.leg(%s, pg_temp.account('test:card-b'), 500)]) $$,
    (select operation_id from fixture), (select system_id from fixture), (select system_id from fixture)),
  '23514',
  null,
  'the same legs in the other order overdraw the card (check violation)'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[pg_temp.leg(pg_temp.account('test:card-a'), %s, 701)]) $$,
    (select operation_id from fixture), (select system_id from fixture)),
  '23514',
  null,
  'a customer account cannot go below zero'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[
      pg_temp.leg(pg_temp.account('test:card-a'), %s, 100),
      pg_temp.leg(pg_temp.account('test:credit-c'), %s, 101)]) $$,
    (select operation_id from fixture), (select system_id from fixture), (select system_id from fixture)),
  '23514',
  null,
  'an overdraw in a later leg aborts the whole call'
);
select is(
  (select balance_cents from ledger.accounts where code = 'test:card-a'),
  700::bigint,
  'the failed calls changed no balance'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[pg_temp.leg(%s, pg_temp.account('test:card-capped'), 1001)]) $$,
    (select operation_id from fixture), (select system_id from fixture)),
  '23514',
  null,
  'an account cannot exceed its maximum balance'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[pg_temp.leg(%s, pg_temp.account('test:card-a'), 0)]) $$,
    (select operation_id from fixture), (select system_id from fixture)),
  '22023',
  null,
  'a zero amount is refused'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[pg_temp.leg(%s, pg_temp.account('test:card-a'), -5)]) $$,
    (select operation_id from fixture), (select system_id from fixture)),
  '22023',
  null,
  'a negative amount is refused'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[pg_temp.leg(%s, pg_temp.account('test:card-a'), null)]) $$,
    (select operation_id from fixture), (select system_id from fixture)),
  '22023',
  null,
  'a null amount is refused'
);
select throws_ok(
  $$ insert into ledger.transfers (operation_id, from_account_id, to_account_id, amount_cents)
     select id, pg_temp.account('test:card-a'), pg_temp.account('test:card-b'), 0 from ledger.operations limit 1 $$,
  '23514',
  null,
  'the transfers table itself refuses amounts <= 0'
);
select throws_ok(
  format($$ select ledger.post_transfers(%s, array[pg_temp.leg(pg_temp.account('test:card-a'), pg_temp.account('test:card-a'), 1)]) $$,
    (select operation_id from fixture)),
  '23514',
  null,
  'a transfer from an account to itself is refused'
);

-- ---------------------------------------------------------------------------------------------
-- History is append-only
-- ---------------------------------------------------------------------------------------------

select throws_ok('update ledger.transfers set amount_cents = amount_cents + 1', '42501', null, 'transfers cannot be updated');
select throws_ok('delete from ledger.transfers', '42501', null, 'transfers cannot be deleted');
select throws_ok('truncate ledger.transfers', '42501', null, 'transfers cannot be truncated');
select throws_ok($$ update ledger.operations set kind = 'changed' $$, '42501', null, 'operations cannot be updated');
select throws_ok('delete from ledger.operations', '42501', null, 'operations cannot be deleted');
-- Without cascade the foreign keys refuse first (0A000); with it the triggers still refuse.
select throws_ok('truncate ledger.operations cascade', '42501', null, 'operations cannot be truncated');

-- ---------------------------------------------------------------------------------------------
-- System accounts: never a stored balance, sum of all balances zero, shards
-- ---------------------------------------------------------------------------------------------

select is_empty(
  $$ select id from ledger.accounts where kind = 'system' and balance_cents <> 0 $$,
  'no system account stores a balance'
);
select throws_ok(
  $$ update ledger.accounts set balance_cents = 1 where kind = 'system' $$,
  '23514',
  null,
  'a system account cannot be given a stored balance'
);
select is(
  (select sum(balance_cents)::bigint from ledger.account_balances),
  0::bigint,
  'the sum of all account balances is zero'
);
select results_eq(
  $$ select balance_cents::bigint from ledger.account_balances where kind <> 'system' order by account_id $$,
  $$ select balance_cents from ledger.accounts where kind <> 'system' order by id $$,
  'account_balances shows the stored balance of customer accounts'
);

select is(ledger.shard_for('DEMO-0001'), ledger.shard_for('DEMO-0001'), 'shard_for is stable');
select ok(
  (select bool_and(ledger.shard_for('card-' || n) between 0 and 15) from generate_series(1, 2000) as n),
  'shard_for is always between 0 and 15'
);
select is(
  (select count(distinct ledger.shard_for('card-' || n))::integer from generate_series(1, 2000) as n),
  16,
  'shard_for spreads keys over all 16 shards'
);
select is(
  ledger.system_account_id('bar_revenue', 'main-bar', 'DEMO-0001'),
  (select id from ledger.accounts
   where kind = 'system' and system_purpose = 'bar_revenue' and owner_ref = 'main-bar'
     and shard = ledger.shard_for('DEMO-0001')),
  'system_account_id picks the shard of the key'
);
select is(
  (select count(*)::integer from ledger.accounts where kind = 'system' and system_purpose = 'bar_revenue' and owner_ref = 'main-bar'),
  16,
  'a system account has 16 shards'
);
select throws_ok(
  $$ select ledger.system_account_id('bar_revenue', 'no-such-bar', 'DEMO-0001') $$,
  'P0002',
  null,
  'an unknown system account raises no_data_found'
);

-- ---------------------------------------------------------------------------------------------
-- Idempotency keys
-- ---------------------------------------------------------------------------------------------

create temp table first_begin as
select * from ledger.idempotency_begin('test-key-1', 'test_operation', '{"a": 1, "b": "x"}');

select is((select outcome from first_begin), 'new', 'an unknown key starts a new operation');
select is((select response from first_begin), null, 'a new operation has no stored response');
select is_empty($$ select 1 from ledger.idempotency_keys where key = 'test-key-1' $$, 'begin stores nothing');

select lives_ok(
  $$ select ledger.idempotency_finish('test-key-1', 'test_operation', (select fingerprint from first_begin),
       '{"ok": true, "replayed": false, "value": 42}') $$,
  'finish stores the response under the key'
);

select is(
  (select row(outcome, response)::text from ledger.idempotency_begin('test-key-1', 'test_operation', '{"a": 1, "b": "x"}')),
  row('replay', '{"ok": true, "replayed": true, "value": 42}'::jsonb)::text,
  'same key and request replay the stored response with replayed true'
);
select is(
  (select outcome from ledger.idempotency_begin('test-key-1', 'test_operation', '{"b": "x", "a": 1}')),
  'replay',
  'the fingerprint ignores the key order of the request'
);
select is(
  (select response #>> '{error,code}' from ledger.idempotency_begin('test-key-1', 'test_operation', '{"a": 2, "b": "x"}')),
  'idempotency_key_reused',
  'same key with another request is reused'
);
select is(
  (select outcome from ledger.idempotency_begin('test-key-1', 'test_operation', '{"a": 2, "b": "x"}')),
  'reused',
  'same key with another request has outcome reused'
);
select is(
  (select row(outcome, response #>> '{error,code}', response ->> 'ok')::text
   from ledger.idempotency_begin('test-key-1', 'other_operation', '{"a": 1, "b": "x"}')),
  row('reused', 'idempotency_key_reused', 'false')::text,
  'same key and request for another operation is reused'
);
select is(
  (select response from ledger.idempotency_keys where key = 'test-key-1'),
  '{"ok": true, "replayed": false, "value": 42}'::jsonb,
  'reuse attempts leave the stored response unchanged'
);
select throws_ok(
  $$ select ledger.idempotency_finish('test-key-1', 'test_operation', 'f', '{}') $$,
  '23505',
  null,
  'a key cannot be stored twice'
);

-- ---------------------------------------------------------------------------------------------
-- Purge of expired keys
-- ---------------------------------------------------------------------------------------------

-- Keys that expired before this test (an old local database) must not disturb the counts.
create temp table purged_before as select public.purge_expired_idempotency_keys() as deleted;
select lives_ok(
  $$ select ledger.idempotency_finish('test-key-expired', 'test_operation', 'f', '{"ok": true}') $$,
  'a second key is stored'
);
update ledger.idempotency_keys set expires_at = now() - interval '1 minute' where key = 'test-key-expired';
create temp table keys_before as select count(*) as total from ledger.idempotency_keys;

select is(public.purge_expired_idempotency_keys(), 1, 'purge deletes exactly the expired key');
select is_empty($$ select 1 from ledger.idempotency_keys where key = 'test-key-expired' $$, 'the expired key is gone');
select is(
  (select count(*) from ledger.idempotency_keys),
  (select total - 1 from keys_before),
  'keys that have not expired are kept'
);

-- ---------------------------------------------------------------------------------------------
-- Reconciliation
-- ---------------------------------------------------------------------------------------------

select is_empty('select * from public.ledger_reconcile()', 'the ledger reconciles after the test transfers');

-- A stored balance that does not match the history; it also breaks the zero sum (which cannot
-- break on its own: transfers always sum to zero, so nonzero_total comes with a mismatch).
update ledger.accounts set balance_cents = balance_cents + 100 where code = 'test:card-a';
select results_eq(
  $$ select check_name, account_code, expected_cents, actual_cents from public.ledger_reconcile() order by check_name $$,
  $$ values ('balance_mismatch', 'test:card-a', 700::bigint, 800::bigint), ('nonzero_total', null, 0, 100) $$,
  'a wrong stored balance is reported as balance_mismatch and nonzero_total'
);
update ledger.accounts set balance_cents = balance_cents - 100 where code = 'test:card-a';

-- A negative customer balance is impossible with the CHECK; drop it (rolled back) to prove the report.
alter table ledger.accounts drop constraint customer_balance_not_negative;
update ledger.accounts set balance_cents = -50 where code = 'test:card-b';
select results_eq(
  $$ select check_name, account_code, expected_cents, actual_cents from public.ledger_reconcile() order by check_name $$,
  $$ values ('balance_mismatch', 'test:card-b', 0::bigint, -50::bigint), ('negative_balance', 'test:card-b', 0, -50),
       ('nonzero_total', null, 0, -50) $$,
  'a customer account below zero is reported as negative_balance'
);
update ledger.accounts set balance_cents = 0 where code = 'test:card-b';
alter table ledger.accounts add constraint customer_balance_not_negative check (kind = 'system' or balance_cents >= 0);

-- A transfer whose balance before does not continue the account's chain (sums still agree).
insert into ledger.transfers (operation_id, from_account_id, to_account_id, amount_cents,
  to_balance_before_cents, to_balance_after_cents)
values ((select operation_id from fixture), (select system_id from fixture), pg_temp.account('test:card-a'), 50, 900, 950);
update ledger.accounts set balance_cents = balance_cents + 50 where code = 'test:card-a';
select results_eq(
  $$ select check_name, account_id, expected_cents, actual_cents from public.ledger_reconcile() $$,
  format($$ values ('balance_chain', %s::bigint, 700::bigint, 900::bigint) $$, pg_temp.account('test:card-a')),
  'a broken balance chain is reported as balance_chain'
);
alter table ledger.transfers disable trigger transfers_append_only;
delete from ledger.transfers where amount_cents = 50 and to_balance_before_cents = 900
  and to_account_id = pg_temp.account('test:card-a');
alter table ledger.transfers enable trigger transfers_append_only;
update ledger.accounts set balance_cents = balance_cents - 50 where code = 'test:card-a';
select is_empty('select * from public.ledger_reconcile()', 'the ledger reconciles again once repaired');

-- ---------------------------------------------------------------------------------------------
-- Security: who may call, RLS
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok('select * from public.ledger_reconcile()', '42501', null, 'anon cannot execute ledger_reconcile');
select throws_ok('select public.purge_expired_idempotency_keys()', '42501', null, 'anon cannot execute purge_expired_idempotency_keys');
reset role;
set local role authenticated;
select throws_ok('select * from public.ledger_reconcile()', '42501', null, 'authenticated cannot execute ledger_reconcile');
select throws_ok('select public.purge_expired_idempotency_keys()', '42501', null, 'authenticated cannot execute purge_expired_idempotency_keys');
reset role;
set local role service_role;
select is_empty('select * from public.ledger_reconcile()', 'service_role can execute ledger_reconcile');
select is(public.purge_expired_idempotency_keys(), 0, 'service_role can execute purge_expired_idempotency_keys');
reset role;

select is_empty(
  $$
    select c.oid::regclass::text
    from pg_class c
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname in ('ledger', 'ops') and c.relkind in ('r', 'p') and not c.relrowsecurity
  $$,
  'every table in ledger and ops has RLS enabled'
);
select ok(
  not has_schema_privilege('anon', 'ledger', 'usage') and not has_schema_privilege('authenticated', 'ledger', 'usage')
  and not has_schema_privilege('anon', 'ops', 'usage') and not has_schema_privilege('authenticated', 'ops', 'usage'),
  'anon and authenticated cannot use the ledger and ops schemas'
);

select * from finish();
rollback;
