-- Practitioner credits (issue 6): public.process_peer_booking_credits and public.credits_balance.
-- Success, both directions, every error code, replay, key reuse, invalid arguments, denied roles,
-- the journal next to the ledger, and a reconciled ledger afterwards.
begin;
create extension if not exists pgtap with schema extensions;
select plan(69);

-- ---------------------------------------------------------------------------------------------
-- Helpers and users (temporary, gone with the transaction)
-- ---------------------------------------------------------------------------------------------

create function pg_temp.booker() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000b01'::uuid $$;
create function pg_temp.treating() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000b02'::uuid $$;
-- A user who never had credits (no credit account).
create function pg_temp.newcomer() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000b03'::uuid $$;
-- Not in auth.users.
create function pg_temp.ghost() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000b99'::uuid $$;

insert into auth.users (id, aud, role, email) values
  (pg_temp.booker(), 'authenticated', 'authenticated', 'booker@credits.test'),
  (pg_temp.treating(), 'authenticated', 'authenticated', 'treating@credits.test'),
  (pg_temp.newcomer(), 'authenticated', 'authenticated', 'newcomer@credits.test');

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.balance(p_user_id uuid) returns bigint
language sql stable as $$
  select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
    where ua.user_id = p_user_id), 0)
$$;

create function pg_temp.book(p_booker uuid, p_treating uuid, p_credits bigint, p_booking_id text, p_key text)
returns jsonb
language sql as $$
  select public.process_peer_booking_credits(
    booking_practitioner_id => p_booker, treating_practitioner_id => p_treating, credits => p_credits,
    booking_id => p_booking_id, client_request_id => p_key)
$$;

-- The booker receives 100 credits through the real allocation procedure.
select ok((public.allocate_monthly_credits(pg_temp.booker(), 100, 'pb-subscription', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'pb-fund') ->> 'ok')::boolean, 'setup: the booker holds 100 credits');

-- ---------------------------------------------------------------------------------------------
-- Success
-- ---------------------------------------------------------------------------------------------

insert into responses select 'success', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 30, 'booking-1', 'pb-success');

select is(
  pg_temp.response('success') - 'transaction_id',
  jsonb_build_object(
    'ok', true, 'replayed', false, 'booking_id', 'booking-1', 'credits', 30,
    'booking_practitioner', jsonb_build_object('user_id', pg_temp.booker(),
      'balance_before_credits', 100, 'balance_after_credits', 70),
    'treating_practitioner', jsonb_build_object('user_id', pg_temp.treating(),
      'balance_before_credits', 0, 'balance_after_credits', 30)),
  'success: both practitioners with their balances before and after'
);
select is(
  (pg_temp.response('success') ->> 'transaction_id')::bigint,
  (select operation_id from credits.booking_payments where booking_id = 'booking-1'),
  'success: transaction_id is the ledger operation recorded for the booking'
);
select results_eq(
  $$ select booking_practitioner_id, treating_practitioner_id, credits, client_request_id
     from credits.booking_payments where booking_id = 'booking-1' $$,
  $$ values (pg_temp.booker(), pg_temp.treating(), 30::bigint, 'pb-success') $$,
  'success: one booking payment row'
);
select results_eq(
  $$ select pg_temp.balance(pg_temp.booker()), pg_temp.balance(pg_temp.treating()) $$,
  $$ values (70::bigint, 30::bigint) $$,
  'success: the booker is debited, the treating practitioner credited'
);
select results_eq(
  $$ select a.kind, a.code from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
     where ua.user_id = pg_temp.treating() $$,
  $$ values ('user_credit', 'user_credit:' || pg_temp.treating()::text) $$,
  'success: the treating practitioner''s credit account was created on first use'
);
select results_eq(
  $$ select f.code, t.code, tr.amount_cents, tr.from_balance_before_cents, tr.from_balance_after_cents,
       tr.to_balance_before_cents, tr.to_balance_after_cents
     from ledger.transfers tr
     join ledger.accounts f on f.id = tr.from_account_id
     join ledger.accounts t on t.id = tr.to_account_id
     where tr.operation_id = (pg_temp.response('success') ->> 'transaction_id')::bigint $$,
  $$ values ('user_credit:' || pg_temp.booker()::text, 'user_credit:' || pg_temp.treating()::text, 30::bigint,
       100::bigint, 70::bigint, 0::bigint, 30::bigint) $$,
  'success: one transfer between the two credit accounts with both balances before and after'
);
select results_eq(
  $$ select user_id, type, amount_credits, balance_before_credits, balance_after_credits, booking_id
     from credits.credit_transactions
     where operation_id = (pg_temp.response('success') ->> 'transaction_id')::bigint order by id $$,
  $$ values (pg_temp.booker(), 'peer_booking_debit', -30::bigint, 100::bigint, 70::bigint, 'booking-1'),
            (pg_temp.treating(), 'session_earning', 30::bigint, 0::bigint, 30::bigint, 'booking-1') $$,
  'success: journal rows peer_booking_debit (negative) and session_earning (positive)'
);
select results_eq(
  $$ select operation_type, status, error_code, account_id, amount_cents, balance_before_cents, balance_after_cents,
       operation_id, actor_user_id
     from ops.app_transaction_log where client_request_id = 'pb-success' $$,
  $$ select 'peer_booking', 'success', null::text, ua.account_id, 30::bigint, 100::bigint, 70::bigint,
       (pg_temp.response('success') ->> 'transaction_id')::bigint, pg_temp.booker()
     from credits.user_accounts ua where ua.user_id = pg_temp.booker() $$,
  'success: one log row with the booker''s account, amount and balances'
);
select results_eq(
  $$ select operation, response from ledger.idempotency_keys where key = 'pb-success' $$,
  $$ select 'peer_booking', pg_temp.response('success') $$,
  'success: the response is stored under the key'
);

-- The other direction between the same two practitioners.
insert into responses select 'reverse', pg_temp.book(pg_temp.treating(), pg_temp.booker(), 10, 'booking-2', 'pb-reverse');
select is(
  pg_temp.response('reverse') -> 'booking_practitioner',
  jsonb_build_object('user_id', pg_temp.treating(), 'balance_before_credits', 30, 'balance_after_credits', 20),
  'reverse direction: the treating practitioner books back'
);
select results_eq(
  $$ select pg_temp.balance(pg_temp.booker()), pg_temp.balance(pg_temp.treating()) $$,
  $$ values (80::bigint, 20::bigint) $$,
  'reverse direction: balances'
);

-- ---------------------------------------------------------------------------------------------
-- Business errors: returned, logged, nothing moved
-- ---------------------------------------------------------------------------------------------

create temp table before_errors as
select (select count(*) from ledger.operations) as operations, (select count(*) from ledger.transfers) as transfers,
  (select count(*) from credits.credit_transactions) as journal, (select count(*) from ledger.accounts) as accounts;

insert into responses select 'err-self', pg_temp.book(pg_temp.booker(), pg_temp.booker(), 10, 'booking-self', 'pb-err-self');
insert into responses select 'err-paid', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 30, 'booking-1', 'pb-err-paid');
insert into responses select 'err-ghost-booker', pg_temp.book(pg_temp.ghost(), pg_temp.treating(), 10, 'booking-3', 'pb-err-ghost-booker');
insert into responses select 'err-ghost-treating', pg_temp.book(pg_temp.booker(), pg_temp.ghost(), 10, 'booking-4', 'pb-err-ghost-treating');
insert into responses select 'err-funds', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 81, 'booking-5', 'pb-err-funds');
insert into responses select 'err-funds-newcomer', pg_temp.book(pg_temp.newcomer(), pg_temp.treating(), 1, 'booking-6', 'pb-err-funds-newcomer');

select is((pg_temp.response('err-self') -> 'error') - 'message',
  jsonb_build_object('code', 'self_booking', 'user_id', pg_temp.booker()), 'booking oneself: self_booking');
select is((pg_temp.response('err-paid') -> 'error') - 'message',
  jsonb_build_object('code', 'booking_already_paid', 'booking_id', 'booking-1',
    'transaction_id', pg_temp.response('success') -> 'transaction_id'),
  'the same booking under another key: booking_already_paid with the original transaction');
select is((pg_temp.response('err-ghost-booker') -> 'error') - 'message',
  jsonb_build_object('code', 'user_not_found', 'user_id', pg_temp.ghost()), 'unknown booker: user_not_found');
select is((pg_temp.response('err-ghost-treating') -> 'error') - 'message',
  jsonb_build_object('code', 'user_not_found', 'user_id', pg_temp.ghost()), 'unknown treating practitioner: user_not_found');
select is((pg_temp.response('err-funds') -> 'error') - 'message',
  '{"code": "insufficient_funds", "balance_credits": 80, "credits": 81, "missing_credits": 1}'::jsonb,
  'one credit short: insufficient_funds with the balance and the credits asked');
select is(pg_temp.response('err-funds-newcomer') #>> '{error,code}', 'insufficient_funds',
  'a user without a credit account: insufficient_funds');
select is(pg_temp.response('err-funds-newcomer') #>> '{error,balance_credits}', '0',
  'a user without a credit account has balance 0');
select ok(
  (select bool_and(result ->> 'ok' = 'false' and result ->> 'replayed' = 'false') from responses where name like 'err-%'),
  'every failure is ok false, replayed false'
);
select results_eq(
  $$ select client_request_id, status, error_code from ops.app_transaction_log
     where client_request_id like 'pb-err-%' order by client_request_id $$,
  $$ values ('pb-err-funds', 'failed', 'insufficient_funds'),
            ('pb-err-funds-newcomer', 'failed', 'insufficient_funds'),
            ('pb-err-ghost-booker', 'failed', 'user_not_found'),
            ('pb-err-ghost-treating', 'failed', 'user_not_found'),
            ('pb-err-paid', 'failed', 'booking_already_paid'),
            ('pb-err-self', 'failed', 'self_booking') $$,
  'each failure writes one failed log row with its code'
);
select results_eq(
  $$ select (select count(*) from ledger.operations), (select count(*) from ledger.transfers),
       (select count(*) from credits.credit_transactions), (select count(*) from ledger.accounts) $$,
  $$ select operations, transfers, journal, accounts from before_errors $$,
  'failures create no operation, transfer, journal row or account'
);
select is_empty(
  $$ select 1 from credits.booking_payments where booking_id <> 'booking-1' and booking_id <> 'booking-2' $$,
  'failures record no booking payment'
);
select results_eq(
  $$ select pg_temp.balance(pg_temp.booker()), pg_temp.balance(pg_temp.treating()),
       (select count(*) from credits.user_accounts where user_id = pg_temp.newcomer()) $$,
  $$ values (80::bigint, 20::bigint, 0::bigint) $$,
  'failures move no credits and create no credit account'
);

-- ---------------------------------------------------------------------------------------------
-- Replay and key reuse
-- ---------------------------------------------------------------------------------------------

insert into responses select 'replay', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 30, 'booking-1', 'pb-success');
select is(pg_temp.response('replay'), pg_temp.response('success') || '{"replayed": true}',
  'replay: the stored response, unchanged, with replayed true');
select results_eq(
  $$ select pg_temp.balance(pg_temp.booker()), pg_temp.balance(pg_temp.treating()),
       (select count(*) from ledger.transfers where operation_id = (pg_temp.response('success') ->> 'transaction_id')::bigint) $$,
  $$ values (80::bigint, 20::bigint, 1::bigint) $$,
  'replay: nothing moves'
);
select is((select status from ops.app_transaction_log where client_request_id = 'pb-success' order by id desc limit 1),
  'replayed', 'replay: logged as replayed');

-- A failure is a recorded outcome: it replays even once the booker could pay.
select ok((public.allocate_monthly_credits(pg_temp.booker(), 100, 'pb-subscription', '2026-02-01 00:00+00',
  '2026-03-01 00:00+00', 'pb-fund-2') ->> 'ok')::boolean, 'setup: the booker receives 100 more credits');
insert into responses select 'replay-funds', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 81, 'booking-5', 'pb-err-funds');
select is(pg_temp.response('replay-funds'), pg_temp.response('err-funds') || '{"replayed": true}',
  'replayed failure: the same insufficient_funds response');
select is(pg_temp.balance(pg_temp.booker()), 180::bigint, 'replayed failure: nothing charged');

insert into responses select 'reused', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 31, 'booking-1', 'pb-success');
insert into responses select 'reused-other-booking', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 30, 'booking-7', 'pb-success');
select ok((public.lock_credits(pg_temp.booker(), pg_temp.treating(), 5, 'pb-order', 'pb-cross') ->> 'ok')::boolean,
  'setup: a credit lock uses key pb-cross');
insert into responses select 'reused-cross', pg_temp.book(pg_temp.booker(), pg_temp.treating(), 5, 'booking-8', 'pb-cross');
select is(pg_temp.response('reused') #>> '{error,code}', 'idempotency_key_reused', 'same key, other credits: idempotency_key_reused');
select is(pg_temp.response('reused-other-booking') #>> '{error,code}', 'idempotency_key_reused',
  'same key, other booking: idempotency_key_reused');
select is(pg_temp.response('reused-cross') #>> '{error,code}', 'idempotency_key_reused',
  'a key used by a credit lock, then a booking: idempotency_key_reused');
select results_eq(
  $$ select key, operation, response = pg_temp.response('success') or key = 'pb-cross' from ledger.idempotency_keys
     where key in ('pb-success', 'pb-cross') order by key $$,
  $$ values ('pb-cross', 'credit_lock', true), ('pb-success', 'peer_booking', true) $$,
  'key reuse stores nothing: the original responses stay under their keys'
);
select results_eq(
  $$ select pg_temp.balance(pg_temp.booker()), pg_temp.balance(pg_temp.treating()),
       (select count(*) from credits.booking_payments where booking_id in ('booking-7', 'booking-8')) $$,
  $$ values (175::bigint, 20::bigint, 0::bigint) $$,
  'key reuse: no booking, nothing moved (the setup lock took 5)'
);
select results_eq(
  $$ select status, error_code from ops.app_transaction_log
     where client_request_id in ('pb-success', 'pb-cross') and operation_type = 'peer_booking' order by id $$,
  $$ values ('success', null::text), ('replayed', null), ('rejected', 'idempotency_key_reused'),
            ('rejected', 'idempotency_key_reused'), ('rejected', 'idempotency_key_reused') $$,
  'key reuse: logged as rejected'
);

-- After the key expired (purged), the booking payment's own unique request id still refuses it.
delete from ledger.idempotency_keys where key = 'pb-success';
select is(pg_temp.book(pg_temp.booker(), pg_temp.treating(), 30, 'booking-1', 'pb-success') #>> '{error,code}',
  'booking_already_paid', 'a very late replay of a paid booking cannot pay twice: booking_already_paid');
delete from ledger.idempotency_keys where key = 'pb-success';
select is(pg_temp.book(pg_temp.booker(), pg_temp.treating(), 30, 'booking-9', 'pb-success') #>> '{error,code}',
  'idempotency_key_reused', 'an expired key used for another booking: idempotency_key_reused');

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), 1, 'bad-1', null) $$, '22023', null, 'null key');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), 1, 'bad-2', '') $$, '22023', null, 'empty key');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), 1, 'bad-3', repeat('k', 256)) $$, '22023', null,
  '256-character key');
select throws_ok($$ select pg_temp.book(null, pg_temp.treating(), 1, 'bad-4', 'pb-bad-4') $$, '22023', null, 'null booker');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), null, 1, 'bad-5', 'pb-bad-5') $$, '22023', null, 'null treating');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), 0, 'bad-6', 'pb-bad-6') $$, '22023', null, 'zero credits');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), -5, 'bad-7', 'pb-bad-7') $$, '22023', null,
  'negative credits');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), null, 'bad-8', 'pb-bad-8') $$, '22023', null,
  'null credits');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), 1, '', 'pb-bad-9') $$, '22023', null,
  'empty booking id');
select throws_ok($$ select pg_temp.book(pg_temp.booker(), pg_temp.treating(), 1, repeat('b', 256), 'pb-bad-10') $$, '22023', null,
  '256-character booking id');
select is_empty(
  $$ select 1 from ops.app_transaction_log where client_request_id like 'pb-bad-%' or operation_type = 'peer_booking'
       and (client_request_id is null or client_request_id = '' or length(client_request_id) > 255)
     union all select 1 from ledger.idempotency_keys where key like 'pb-bad-%'
     union all select 1 from credits.booking_payments where booking_id like 'bad-%' $$,
  'invalid arguments record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.process_peer_booking_credits('c0000000-0000-4000-8000-000000000b01',
  'c0000000-0000-4000-8000-000000000b02', 1, 'role-anon', 'pb-role-anon') $$, '42501', null, 'anon cannot execute');
select throws_ok($$ select public.credits_balance('c0000000-0000-4000-8000-000000000b01') $$, '42501', null,
  'anon cannot read a credit balance');
reset role;
set local role authenticated;
select throws_ok($$ select public.process_peer_booking_credits('c0000000-0000-4000-8000-000000000b01',
  'c0000000-0000-4000-8000-000000000b02', 1, 'role-authenticated', 'pb-role-authenticated') $$, '42501', null,
  'authenticated cannot execute');
select throws_ok($$ select public.credits_balance('c0000000-0000-4000-8000-000000000b01') $$, '42501', null,
  'authenticated cannot read a credit balance');
reset role;
set local role service_role;
select is(public.process_peer_booking_credits('c0000000-0000-4000-8000-000000000b01',
  'c0000000-0000-4000-8000-000000000b02', 1, 'role-service', 'pb-role-service') ->> 'ok', 'true',
  'service_role can execute');
reset role;
select is(pg_temp.balance(pg_temp.booker()), 174::bigint, 'only the service_role booking was charged');

-- ---------------------------------------------------------------------------------------------
-- credits_balance: the balance and the newest journal rows
-- ---------------------------------------------------------------------------------------------

select is(public.credits_balance(pg_temp.treating()) - 'transactions',
  jsonb_build_object('ok', true, 'user_id', pg_temp.treating(), 'balance_credits', 21),
  'credits_balance: the balance');
select is(
  (select jsonb_agg(jsonb_build_array(t ->> 'type', (t ->> 'amount_credits')::bigint, (t ->> 'balance_after_credits')::bigint,
     t ->> 'booking_id'))
   from jsonb_array_elements(public.credits_balance(pg_temp.treating()) -> 'transactions') t),
  '[["session_earning", 1, 21, "role-service"], ["peer_booking_debit", -10, 20, "booking-2"],
    ["session_earning", 30, 30, "booking-1"]]'::jsonb,
  'credits_balance: journal rows newest first, signed from the user''s side'
);
select is(jsonb_array_length(public.credits_balance(pg_temp.booker(), 2) -> 'transactions'), 2,
  'credits_balance: transaction_limit caps the list');
select is(public.credits_balance(pg_temp.newcomer()) - 'user_id',
  '{"ok": true, "balance_credits": 0, "transactions": []}'::jsonb, 'credits_balance: a user without credits');
select is(public.credits_balance(pg_temp.ghost()) #>> '{error,code}', 'user_not_found', 'credits_balance: unknown user');
select throws_ok($$ select public.credits_balance(null) $$, '22023', null, 'credits_balance: null user');
select throws_ok($$ select public.credits_balance(pg_temp.booker(), 0) $$, '22023', null, 'credits_balance: limit 0');
select throws_ok($$ select public.credits_balance(pg_temp.booker(), 101) $$, '22023', null, 'credits_balance: limit 101');

-- ---------------------------------------------------------------------------------------------
-- Ledger and journal
-- ---------------------------------------------------------------------------------------------

select is(
  (select sum(amount_credits) from credits.credit_transactions where user_id = pg_temp.booker())::bigint,
  pg_temp.balance(pg_temp.booker()),
  'the booker''s journal adds up to the balance'
);
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select throws_ok($$ update credits.credit_transactions set amount_credits = 1 where user_id = pg_temp.booker() $$,
  '42501', null, 'the journal is append-only');
select throws_ok($$ delete from credits.booking_payments where booking_id = 'booking-1' $$,
  '42501', null, 'booking payments are append-only');

-- A journal row without its transfer is reported, per user.
insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits, balance_after_credits,
  operation_id)
values (pg_temp.treating(), 'correction', 5, 21, 26, 0);
select results_eq(
  $$ select check_name, account_code, expected_cents, actual_cents from public.ledger_reconcile() $$,
  $$ values ('credit_journal_mismatch', 'user_credit:' || pg_temp.treating()::text, 21::bigint, 26::bigint) $$,
  'ledger_reconcile() reports credit_journal_mismatch for a journal that disagrees with the balance'
);

select * from finish();
rollback;
