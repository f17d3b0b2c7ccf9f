-- Practitioner credits (issue 6): public.allocate_monthly_credits. One allocation per subscription
-- period whatever retries or duplicate events arrive; the event id is the idempotency key; a user
-- who does not exist yet is answered user_not_found and the same event allocates once they exist.
begin;
create extension if not exists pgtap with schema extensions;
select plan(43);

create function pg_temp.member() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000a01'::uuid $$;
-- Signs up later in this file.
create function pg_temp.latecomer() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000a02'::uuid $$;

insert into auth.users (id, aud, role, email) values
  (pg_temp.member(), 'authenticated', 'authenticated', 'member@credits.test');

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.balance(p_user_id uuid) returns bigint
language sql stable as $$
  select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
    where ua.user_id = p_user_id), 0)
$$;

create function pg_temp.issued() returns bigint
language sql stable as $$
  select -coalesce(sum(balance_cents), 0)::bigint from ledger.account_balances
  where system_purpose = 'credit_issuance' and owner_ref = 'platform'
$$;

create function pg_temp.allocate(p_user_id uuid, p_credits bigint, p_subscription_id text, p_start timestamptz,
  p_end timestamptz, p_event text)
returns jsonb
language sql as $$
  select public.allocate_monthly_credits(user_id => p_user_id, credits => p_credits, subscription_id => p_subscription_id,
    period_start => p_start, period_end => p_end, source_event_id => p_event)
$$;

create temp table issued_before as select pg_temp.issued() as credits;

-- ---------------------------------------------------------------------------------------------
-- Success
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'january', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-jan');

select is(
  pg_temp.response('january') - 'transaction_id' - 'period_start' - 'period_end',
  jsonb_build_object('ok', true, 'replayed', false, 'user_id', pg_temp.member(), 'subscription_id', 'sub-a',
    'credits', 200, 'source_event_id', 'evt-jan', 'balance_before_credits', 0, 'balance_after_credits', 200),
  'success: the allocation with the balance before and after'
);
select results_eq(
  $$ select (pg_temp.response('january') ->> 'period_start')::timestamptz, (pg_temp.response('january') ->> 'period_end')::timestamptz $$,
  $$ values ('2026-01-01 00:00+00'::timestamptz, '2026-02-01 00:00+00'::timestamptz) $$,
  'success: the period in the response'
);
select is(pg_temp.balance(pg_temp.member()), 200::bigint, 'success: the user is credited');
select is(pg_temp.issued() - (select credits from issued_before), 200::bigint,
  'success: the credits come from the credit issuance account (its balance goes negative)');
select results_eq(
  $$ select user_id, type, amount_credits, balance_before_credits, balance_after_credits, subscription_id, period_start,
       period_end, operation_id
     from credits.credit_transactions where subscription_id = 'sub-a' $$,
  $$ values (pg_temp.member(), 'monthly_allocation', 200::bigint, 0::bigint, 200::bigint, 'sub-a',
       '2026-01-01 00:00+00'::timestamptz, '2026-02-01 00:00+00'::timestamptz,
       (pg_temp.response('january') ->> 'transaction_id')::bigint) $$,
  'success: one monthly_allocation journal row for the period'
);
select results_eq(
  $$ select user_id, credits, source_event_id, operation_id, response from credits.allocations where subscription_id = 'sub-a' $$,
  $$ values (pg_temp.member(), 200::bigint, 'evt-jan', (pg_temp.response('january') ->> 'transaction_id')::bigint,
       pg_temp.response('january')) $$,
  'success: the allocation row keeps the response'
);
select results_eq(
  $$ select operation_type, status, amount_cents, balance_before_cents, balance_after_cents, operation_id
     from ops.app_transaction_log where client_request_id = 'evt-jan' $$,
  $$ values ('monthly_allocation', 'success', 200::bigint, 0::bigint, 200::bigint,
       (pg_temp.response('january') ->> 'transaction_id')::bigint) $$,
  'success: one log row'
);

-- ---------------------------------------------------------------------------------------------
-- Once per period: the same event again, other events, other amounts, another time zone
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'same-event', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-jan');
insert into responses
select 'other-event', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-jan-retry');
insert into responses
select 'other-amount', pg_temp.allocate(pg_temp.member(), 999, 'sub-a', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-jan-bigger');
insert into responses
select 'other-zone', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-01-01 01:00+01', '2026-02-01 01:00+01', 'evt-jan-zone');

select is(pg_temp.response('same-event'), pg_temp.response('january') || '{"replayed": true}',
  'the same event again: the first response, replayed');
select is(pg_temp.response('other-event'), pg_temp.response('january') || '{"replayed": true}',
  'another event for the same period: the first response, replayed');
select is(pg_temp.response('other-amount'), pg_temp.response('january') || '{"replayed": true}',
  'another amount for the same period: still the first response');
select is(pg_temp.response('other-zone'), pg_temp.response('january') || '{"replayed": true}',
  'the same period start written in another time zone is the same period');
select results_eq(
  $$ select pg_temp.balance(pg_temp.member()), (select count(*) from credits.allocations where subscription_id = 'sub-a'),
       (select count(*) from credits.credit_transactions where subscription_id = 'sub-a') $$,
  $$ values (200::bigint, 1::bigint, 1::bigint) $$,
  'one allocation, one journal row, credited once'
);
select results_eq(
  $$ select client_request_id, status from ops.app_transaction_log
     where client_request_id like 'evt-jan%' order by id $$,
  $$ values ('evt-jan', 'success'), ('evt-jan', 'replayed'), ('evt-jan-retry', 'replayed'),
            ('evt-jan-bigger', 'replayed'), ('evt-jan-zone', 'replayed') $$,
  'every later call is logged as replayed'
);
insert into responses
select 'other-event-again', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-01-01 00:00+00', '2026-02-01 00:00+00',
  'evt-jan-retry');
select is(pg_temp.response('other-event-again'), pg_temp.response('january') || '{"replayed": true}',
  'the second event again: still the first response');

-- The next period and another subscription are new allocations.
insert into responses
select 'february', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-02-01 00:00+00', '2026-03-01 00:00+00', 'evt-feb');
insert into responses
select 'second-subscription', pg_temp.allocate(pg_temp.member(), 50, 'sub-b', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-b-jan');
select results_eq(
  $$ select pg_temp.response('february') -> 'balance_after_credits', pg_temp.response('second-subscription') -> 'balance_after_credits',
       pg_temp.response('february') -> 'replayed' $$,
  $$ values ('400'::jsonb, '450'::jsonb, 'false'::jsonb) $$,
  'the next period and another subscription allocate again'
);
select is(pg_temp.balance(pg_temp.member()), 450::bigint, 'three allocations credited');

-- ---------------------------------------------------------------------------------------------
-- Key reuse
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'reused', pg_temp.allocate(pg_temp.member(), 200, 'sub-a', '2026-03-01 00:00+00', '2026-04-01 00:00+00', 'evt-feb');
select is(pg_temp.response('reused') #>> '{error,code}', 'idempotency_key_reused',
  'the same event id for another period: idempotency_key_reused');
select is_empty($$ select 1 from credits.allocations where period_start = '2026-03-01 00:00+00' $$,
  'key reuse: no allocation');
select is((select response from ledger.idempotency_keys where key = 'evt-feb'), pg_temp.response('february'),
  'key reuse: the original response stays under the key');
select is(pg_temp.balance(pg_temp.member()), 450::bigint, 'key reuse: nothing credited');

-- ---------------------------------------------------------------------------------------------
-- A user who does not exist yet: user_not_found, not stored; the retry after sign-up allocates
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'not-yet', pg_temp.allocate(pg_temp.latecomer(), 100, 'sub-late', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-late');
select is((pg_temp.response('not-yet') -> 'error') - 'message',
  jsonb_build_object('code', 'user_not_found', 'user_id', pg_temp.latecomer()), 'unknown user: user_not_found');
select is_empty(
  $$ select 1 from ledger.idempotency_keys where key = 'evt-late'
     union all select 1 from credits.allocations where subscription_id = 'sub-late'
     union all select 1 from credits.user_accounts where user_id = pg_temp.latecomer() $$,
  'unknown user: no key stored, no allocation, no account (payments never create users)'
);
select is((select status || ':' || error_code from ops.app_transaction_log where client_request_id = 'evt-late'),
  'failed:user_not_found', 'unknown user: logged as failed');

insert into auth.users (id, aud, role, email) values (pg_temp.latecomer(), 'authenticated', 'authenticated', 'late@credits.test');
insert into responses
select 'after-signup', pg_temp.allocate(pg_temp.latecomer(), 100, 'sub-late', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'evt-late');
select is(pg_temp.response('after-signup') ->> 'ok', 'true', 'the same event once the user exists: allocated');
select is(pg_temp.balance(pg_temp.latecomer()), 100::bigint, 'the late user is credited once');

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, 'sub-bad', '2026-05-01', '2026-06-01', null) $$,
  '22023', null, 'null source_event_id');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, 'sub-bad', '2026-05-01', '2026-06-01', '') $$,
  '22023', null, 'empty source_event_id');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, 'sub-bad', '2026-05-01', '2026-06-01', repeat('e', 256)) $$,
  '22023', null, '256-character source_event_id');
select throws_ok($$ select pg_temp.allocate(null, 10, 'sub-bad', '2026-05-01', '2026-06-01', 'evt-bad-1') $$,
  '22023', null, 'null user');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 0, 'sub-bad', '2026-05-01', '2026-06-01', 'evt-bad-2') $$,
  '22023', null, 'zero credits');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), -10, 'sub-bad', '2026-05-01', '2026-06-01', 'evt-bad-3') $$,
  '22023', null, 'negative credits');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, '', '2026-05-01', '2026-06-01', 'evt-bad-4') $$,
  '22023', null, 'empty subscription id');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, null, '2026-05-01', '2026-06-01', 'evt-bad-5') $$,
  '22023', null, 'null subscription id');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, 'sub-bad', null, '2026-06-01', 'evt-bad-6') $$,
  '22023', null, 'null period start');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, 'sub-bad', '2026-05-01', '2026-05-01', 'evt-bad-7') $$,
  '22023', null, 'empty period (end = start)');
select throws_ok($$ select pg_temp.allocate(pg_temp.member(), 10, 'sub-bad', '2026-05-01', '2026-04-01', 'evt-bad-8') $$,
  '22023', null, 'period end before start');
select is_empty(
  $$ select 1 from ops.app_transaction_log where client_request_id like 'evt-bad-%'
     union all select 1 from ledger.idempotency_keys where key like 'evt-bad-%'
     union all select 1 from credits.allocations where subscription_id = 'sub-bad' $$,
  'invalid arguments record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- Roles, plans, ledger
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.allocate_monthly_credits('c0000000-0000-4000-8000-000000000a01', 10, 'sub-role',
  '2026-05-01', '2026-06-01', 'evt-role-anon') $$, '42501', null, 'anon cannot execute');
reset role;
set local role authenticated;
select throws_ok($$ select public.allocate_monthly_credits('c0000000-0000-4000-8000-000000000a01', 10, 'sub-role',
  '2026-05-01', '2026-06-01', 'evt-role-authenticated') $$, '42501', null, 'authenticated cannot execute');
reset role;
set local role service_role;
select is(public.allocate_monthly_credits('c0000000-0000-4000-8000-000000000a01', 10, 'sub-role',
  '2026-05-01', '2026-06-01', 'evt-role-service') ->> 'ok', 'true', 'service_role can execute');
reset role;

select throws_ok($$ insert into credits.plans (plan_id, monthly_credits) values ('free', 0) $$, '23514', null,
  'a plan allocates a positive number of credits');
select is(pg_temp.issued() - (select credits from issued_before), 200::bigint + 200 + 50 + 100 + 10,
  'the issuance account issued exactly the allocated credits');
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select * from finish();
rollback;
