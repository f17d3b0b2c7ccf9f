-- Escrow and booking integrity (issue 9, items 4 and 5):
--   * the provider of an order is named when its credits are locked; only that provider may
--     accept, and a payout pays only that provider, whoever triggers it;
--   * festival staff and anonymous sign-ins cannot use credits (every credits procedure refuses
--     them with `forbidden`);
--   * booking ids and order ids are scoped to their payer: someone else using the same id neither
--     blocks nor touches the payer's booking or hold.
begin;
create extension if not exists pgtap with schema extensions;
select plan(102);

-- ---------------------------------------------------------------------------------------------
-- Helpers and users
-- ---------------------------------------------------------------------------------------------

create function pg_temp.client() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000001401'::uuid $$;
create function pg_temp.provider() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000001402'::uuid $$;
create function pg_temp.impostor() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000001403'::uuid $$;
create function pg_temp.admin() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000001404'::uuid $$;
create function pg_temp.anonymous() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000001405'::uuid $$;
create function pg_temp.ghost() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000001499'::uuid $$;
-- A seeded festival cashier (festival.staff) who is also made a platform admin below: staff are
-- refused even where a platform role would otherwise allow the call.
create function pg_temp.staff() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000c001'::uuid $$;

insert into auth.users (id, aud, role, email, is_anonymous) values
  (pg_temp.client(), 'authenticated', 'authenticated', 'client@integrity.test', false),
  (pg_temp.provider(), 'authenticated', 'authenticated', 'provider@integrity.test', false),
  (pg_temp.impostor(), 'authenticated', 'authenticated', 'impostor@integrity.test', false),
  (pg_temp.admin(), 'authenticated', 'authenticated', 'admin@integrity.test', false),
  (pg_temp.anonymous(), 'authenticated', 'authenticated', null, true);
insert into credits.platform_roles (user_id, role) values (pg_temp.admin(), 'admin'), (pg_temp.staff(), 'admin');

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;
create function pg_temp.code(p_name text) returns text
language sql stable as $$ select result #>> '{error,code}' from responses where name = p_name $$;

create function pg_temp.balance(p_user_id uuid) returns bigint
language sql stable as $$
  select coalesce((select a.balance_cents from credits.user_accounts ua join ledger.accounts a on a.id = ua.account_id
    where ua.user_id = p_user_id), 0)
$$;
create function pg_temp.hold(p_client uuid, p_order_id text) returns credits.escrow_holds
language sql stable as $$ select * from credits.escrow_holds where client_user_id = p_client and order_id = p_order_id $$;
create function pg_temp.hold_balance(p_client uuid, p_order_id text) returns bigint
language sql stable as $$
  select a.balance_cents from credits.escrow_holds h join ledger.accounts a on a.id = h.account_id
  where h.client_user_id = p_client and h.order_id = p_order_id
$$;

create function pg_temp.lock(p_user_id uuid, p_provider_id uuid, p_amount bigint, p_order_id text, p_key text) returns jsonb
language sql as $$
  select public.lock_credits(user_id => p_user_id, provider_id => p_provider_id, amount => p_amount, order_id => p_order_id,
    client_request_id => p_key)
$$;
create function pg_temp.accept(p_client uuid, p_order_id text, p_provider_id uuid, p_key text) returns jsonb
language sql as $$
  select public.accept_credit_order(client_user_id => p_client, order_id => p_order_id, provider_id => p_provider_id,
    client_request_id => p_key)
$$;
create function pg_temp.unlock(p_client uuid, p_order_id text, p_actor uuid, p_key text) returns jsonb
language sql as $$
  select public.unlock_credits(client_user_id => p_client, order_id => p_order_id, actor_user_id => p_actor,
    client_request_id => p_key)
$$;
create function pg_temp.payout(p_client uuid, p_order_id text, p_key text, p_actor uuid default null) returns jsonb
language sql as $$
  select public.payout_to_provider(client_user_id => p_client, order_id => p_order_id, client_request_id => p_key,
    actor_user_id => p_actor)
$$;
create function pg_temp.book(p_booker uuid, p_treating uuid, p_credits bigint, p_booking_id text, p_key text) returns jsonb
language sql as $$
  select public.process_peer_booking_credits(booking_practitioner_id => p_booker, treating_practitioner_id => p_treating,
    credits => p_credits, booking_id => p_booking_id, client_request_id => p_key)
$$;

-- Everyone who could be refused holds credits, so that a refusal can only come from who they are.
select ok(bool_and((public.allocate_monthly_credits(u.id, u.credits, 'integrity-' || u.id, '2026-01-01 00:00+00',
    '2026-02-01 00:00+00', 'integrity-fund-' || u.id) ->> 'ok')::boolean),
  'setup: client 1000, impostor 100, staff 100, anonymous 100 credits')
from (values (pg_temp.client(), 1000), (pg_temp.impostor(), 100), (pg_temp.staff(), 100), (pg_temp.anonymous(), 100))
  as u(id, credits);

-- ---------------------------------------------------------------------------------------------
-- The contract: the provider is named at lock; the old signatures are gone
-- ---------------------------------------------------------------------------------------------

select hasnt_function('public', 'lock_credits', array['uuid', 'bigint', 'text', 'text'],
  'lock_credits without a provider no longer exists');
select hasnt_function('public', 'accept_credit_order', array['text', 'uuid', 'text'],
  'accept_credit_order by order id alone no longer exists');
select hasnt_function('public', 'unlock_credits', array['text', 'uuid', 'text'],
  'unlock_credits by order id alone no longer exists');
select hasnt_function('public', 'payout_to_provider', array['text', 'uuid', 'text', 'uuid'],
  'payout_to_provider naming any provider no longer exists');
select has_function('public', 'lock_credits', array['uuid', 'uuid', 'bigint', 'text', 'text'], 'lock_credits names the provider');
select has_function('public', 'accept_credit_order', array['uuid', 'text', 'uuid', 'text'], 'accept names the hold by client and order');
select has_function('public', 'unlock_credits', array['uuid', 'text', 'uuid', 'text'], 'unlock names the hold by client and order');
select has_function('public', 'payout_to_provider', array['uuid', 'text', 'text', 'uuid'], 'payout names the hold, not a recipient');

-- ---------------------------------------------------------------------------------------------
-- lock_credits with a provider
-- ---------------------------------------------------------------------------------------------

insert into responses select 'lock', pg_temp.lock(pg_temp.client(), pg_temp.provider(), 100, 'order-1', 'ei-lock');
select is(pg_temp.response('lock') - 'transaction_id',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-1', 'status', 'held', 'user_id', pg_temp.client(),
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(), 'amount_credits', 100,
    'balance_before_credits', 1000, 'balance_after_credits', 900),
  'lock: the hold names its provider');
select results_eq(
  $$ select h.status, h.provider_id, h.accepted_at is null, a.kind, a.balance_cents, a.code
     from credits.escrow_holds h join ledger.accounts a on a.id = h.account_id
     where h.client_user_id = pg_temp.client() and h.order_id = 'order-1' $$,
  $$ values ('held', pg_temp.provider(), true, 'escrow_hold', 100::bigint,
       'escrow_hold:' || pg_temp.client() || ':' || (pg_temp.response('lock') ->> 'transaction_id')) $$,
  'lock: stored with the provider, not yet accepted, in an escrow account of its own'
);
select is(pg_temp.lock(pg_temp.client(), pg_temp.provider(), 100, 'order-1', 'ei-lock'),
  pg_temp.response('lock') || '{"replayed": true}', 'lock replay: the stored response');
select is(pg_temp.lock(pg_temp.client(), pg_temp.impostor(), 100, 'order-1', 'ei-lock') #>> '{error,code}',
  'idempotency_key_reused', 'lock: same key, another provider: idempotency_key_reused');

insert into responses select 'lock-self', pg_temp.lock(pg_temp.client(), pg_temp.client(), 10, 'order-self', 'ei-lock-self');
insert into responses select 'lock-ghost-provider', pg_temp.lock(pg_temp.client(), pg_temp.ghost(), 10, 'order-ghost', 'ei-lock-ghost');
insert into responses select 'lock-staff-provider', pg_temp.lock(pg_temp.client(), pg_temp.staff(), 10, 'order-staff', 'ei-lock-staff-provider');
insert into responses select 'lock-anonymous-provider', pg_temp.lock(pg_temp.client(), pg_temp.anonymous(), 10, 'order-anon', 'ei-lock-anon-provider');
insert into responses select 'lock-by-staff', pg_temp.lock(pg_temp.staff(), pg_temp.provider(), 10, 'order-by-staff', 'ei-lock-by-staff');
insert into responses select 'lock-by-anonymous', pg_temp.lock(pg_temp.anonymous(), pg_temp.provider(), 10, 'order-by-anon', 'ei-lock-by-anon');
select is(pg_temp.code('lock-self'), 'self_booking', 'lock naming the client as provider: self_booking');
select is(pg_temp.code('lock-ghost-provider'), 'user_not_found', 'lock naming an unknown provider: user_not_found');
select is(pg_temp.code('lock-staff-provider'), 'forbidden', 'lock naming festival staff as provider: forbidden');
select is(pg_temp.code('lock-anonymous-provider'), 'forbidden', 'lock naming an anonymous sign-in as provider: forbidden');
select is(pg_temp.code('lock-by-staff'), 'forbidden', 'festival staff cannot lock credits: forbidden');
select is(pg_temp.code('lock-by-anonymous'), 'forbidden', 'an anonymous sign-in cannot lock credits: forbidden');
select results_eq(
  $$ select pg_temp.balance(pg_temp.client()), pg_temp.balance(pg_temp.staff()), pg_temp.balance(pg_temp.anonymous()),
       (select count(*) from credits.escrow_holds where order_id <> 'order-1'),
       (select count(*) from ledger.operations where client_request_id like 'ei-lock-%') $$,
  $$ values (900::bigint, 100::bigint, 100::bigint, 0::bigint, 0::bigint) $$,
  'refused locks move nothing and create no hold or operation'
);
select throws_ok($$ select pg_temp.lock(pg_temp.client(), null, 1, 'order-bad', 'ei-bad-1') $$, '22023', null,
  'lock: a missing provider is an invalid argument');

-- ---------------------------------------------------------------------------------------------
-- accept_credit_order: only the named provider
-- ---------------------------------------------------------------------------------------------

insert into responses select 'accept-impostor', pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.impostor(), 'ei-accept-impostor');
insert into responses select 'accept-client', pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.client(), 'ei-accept-client');
insert into responses select 'accept-staff', pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.staff(), 'ei-accept-staff');
insert into responses select 'accept-admin', pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.admin(), 'ei-accept-admin');
insert into responses select 'accept-wrong-client', pg_temp.accept(pg_temp.impostor(), 'order-1', pg_temp.provider(), 'ei-accept-wrong-client');
select is(pg_temp.code('accept-impostor'), 'forbidden', 'a user who is not the named provider cannot accept: forbidden');
select is(pg_temp.code('accept-client'), 'forbidden', 'the client cannot accept their own order: forbidden');
select is(pg_temp.code('accept-staff'), 'forbidden', 'festival staff cannot accept: forbidden');
select is(pg_temp.code('accept-admin'), 'forbidden', 'a platform admin cannot accept in the provider''s place: forbidden');
select is(pg_temp.code('accept-wrong-client'), 'hold_not_found', 'the order id under another client: hold_not_found');
select results_eq(
  $$ select status, provider_id, accepted_at is null from credits.escrow_holds where order_id = 'order-1' $$,
  $$ values ('held', pg_temp.provider(), true) $$,
  'refused accepts change nothing: still held, for the named provider'
);

insert into responses select 'accept', pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.provider(), 'ei-accept');
select is(pg_temp.response('accept') - 'accepted_at',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-1', 'status', 'accepted',
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(), 'amount_credits', 100),
  'the named provider accepts');
select is(pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.provider(), 'ei-accept'),
  pg_temp.response('accept') || '{"replayed": true}', 'accept replay');
select is(pg_temp.accept(pg_temp.impostor(), 'order-1', pg_temp.provider(), 'ei-accept') #>> '{error,code}',
  'idempotency_key_reused', 'accept: same key, another client: idempotency_key_reused');
select is(pg_temp.accept(pg_temp.client(), 'order-1', pg_temp.impostor(), 'ei-accept-impostor-after') #>> '{error,code}',
  'forbidden', 'after acceptance another user still cannot accept: forbidden');
select results_eq(
  $$ select client_request_id, status, error_code, actor_user_id from ops.app_transaction_log
     where client_request_id in ('ei-accept-impostor', 'ei-accept') order by id $$,
  $$ values ('ei-accept-impostor', 'failed', 'forbidden', pg_temp.impostor()),
            ('ei-accept', 'success', null::text, pg_temp.provider()),
            ('ei-accept', 'replayed', null, pg_temp.provider()),
            ('ei-accept', 'rejected', 'idempotency_key_reused', pg_temp.provider()) $$,
  'accept attempts are logged with the acting user'
);

-- ---------------------------------------------------------------------------------------------
-- payout_to_provider: always to the named provider
-- ---------------------------------------------------------------------------------------------

insert into responses select 'payout-by-impostor', pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout-impostor', pg_temp.impostor());
insert into responses select 'payout-by-staff-admin', pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout-staff', pg_temp.staff());
insert into responses select 'payout-by-provider', pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout-provider', pg_temp.provider());
select is(pg_temp.code('payout-by-impostor'), 'forbidden', 'a user who is not an admin cannot pay out: forbidden');
select is(pg_temp.code('payout-by-staff-admin'), 'forbidden', 'festival staff cannot pay out, even with a platform role: forbidden');
select is(pg_temp.code('payout-by-provider'), 'forbidden', 'the provider cannot pay themselves out: forbidden');

insert into responses select 'payout', pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout', pg_temp.admin());
select is(pg_temp.response('payout') - 'transaction_id',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-1', 'status', 'paid_out', 'user_id', pg_temp.provider(),
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(), 'amount_credits', 100,
    'balance_before_credits', 0, 'balance_after_credits', 100),
  'an admin''s payout goes to the named provider');
select results_eq(
  $$ select pg_temp.balance(pg_temp.provider()), pg_temp.balance(pg_temp.impostor()), pg_temp.balance(pg_temp.admin()),
       pg_temp.hold_balance(pg_temp.client(), 'order-1') $$,
  $$ values (100::bigint, 100::bigint, 0::bigint, 0::bigint) $$,
  'payout: only the provider gained'
);
select is(pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout', pg_temp.admin()),
  pg_temp.response('payout') || '{"replayed": true}', 'payout replay');
select is(pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout') #>> '{error,code}', 'idempotency_key_reused',
  'payout: same key, another actor: idempotency_key_reused');
select is(pg_temp.payout(pg_temp.client(), 'order-1', 'ei-payout-twice') #>> '{error,code}', 'hold_already_released',
  'payout twice: hold_already_released');

-- The service (no actor) pays a held order: to its named provider too.
select ok((pg_temp.lock(pg_temp.client(), pg_temp.provider(), 40, 'order-2', 'ei-lock-2') ->> 'ok')::boolean, 'setup: order-2 locked');
insert into responses select 'payout-service', pg_temp.payout(pg_temp.client(), 'order-2', 'ei-payout-service');
select results_eq(
  $$ select pg_temp.response('payout-service') ->> 'user_id', pg_temp.response('payout-service') ->> 'status',
       pg_temp.balance(pg_temp.provider()) $$,
  $$ values (pg_temp.provider()::text, 'paid_out', 140::bigint) $$,
  'the service pays a held order to its named provider'
);

-- ---------------------------------------------------------------------------------------------
-- unlock_credits: the named provider may decline; others as before; staff never
-- ---------------------------------------------------------------------------------------------

select ok((pg_temp.lock(pg_temp.client(), pg_temp.provider(), 30, 'order-3', 'ei-lock-3') ->> 'ok')::boolean, 'setup: order-3 locked');
insert into responses select 'unlock-impostor', pg_temp.unlock(pg_temp.client(), 'order-3', pg_temp.impostor(), 'ei-unlock-impostor');
insert into responses select 'unlock-staff', pg_temp.unlock(pg_temp.client(), 'order-3', pg_temp.staff(), 'ei-unlock-staff');
insert into responses select 'unlock-wrong-client', pg_temp.unlock(pg_temp.impostor(), 'order-3', pg_temp.impostor(), 'ei-unlock-wrong-client');
select is(pg_temp.code('unlock-impostor'), 'forbidden', 'a stranger cannot unlock: forbidden');
select is(pg_temp.code('unlock-staff'), 'forbidden', 'festival staff cannot unlock, even with a platform role: forbidden');
select is(pg_temp.code('unlock-wrong-client'), 'hold_not_found', 'unlock under another client: hold_not_found');
insert into responses select 'unlock-provider', pg_temp.unlock(pg_temp.client(), 'order-3', pg_temp.provider(), 'ei-unlock-provider');
select results_eq(
  $$ select pg_temp.response('unlock-provider') ->> 'status', pg_temp.response('unlock-provider') ->> 'user_id',
       pg_temp.balance(pg_temp.client()) $$,
  $$ values ('unlocked', pg_temp.client()::text, 860::bigint) $$,
  'the named provider declines a held order: the credits go back to the client'
);
select is(pg_temp.unlock(pg_temp.client(), 'order-3', pg_temp.provider(), 'ei-unlock-provider'),
  pg_temp.response('unlock-provider') || '{"replayed": true}', 'unlock replay');
select is(pg_temp.unlock(pg_temp.client(), 'order-3', pg_temp.client(), 'ei-unlock-provider') #>> '{error,code}',
  'idempotency_key_reused', 'unlock: same key, another actor: idempotency_key_reused');

-- A hold locked before providers were named (provider_id null) can only go back to its client.
select ok((pg_temp.lock(pg_temp.client(), pg_temp.provider(), 20, 'order-legacy', 'ei-lock-legacy') ->> 'ok')::boolean,
  'setup: order-legacy locked');
-- (The trigger that keeps a hold's provider fixed is bypassed here, to make such an old hold.)
set local session_replication_role = replica;
update credits.escrow_holds set provider_id = null where order_id = 'order-legacy';
set local session_replication_role = origin;
select is(pg_temp.accept(pg_temp.client(), 'order-legacy', pg_temp.provider(), 'ei-accept-legacy') #>> '{error,code}',
  'forbidden', 'a hold without a named provider cannot be accepted: forbidden');
select is(pg_temp.payout(pg_temp.client(), 'order-legacy', 'ei-payout-legacy') #>> '{error,code}',
  'forbidden', 'a hold without a named provider cannot be paid out: forbidden');
select is(pg_temp.unlock(pg_temp.client(), 'order-legacy', pg_temp.client(), 'ei-unlock-legacy') ->> 'status',
  'unlocked', 'a hold without a named provider goes back to its client');

-- ---------------------------------------------------------------------------------------------
-- Order ids are scoped to their client
-- ---------------------------------------------------------------------------------------------

-- The impostor squats the client's next order id first, naming the same provider.
insert into responses select 'squat-lock', pg_temp.lock(pg_temp.impostor(), pg_temp.provider(), 1, 'order-4', 'ei-squat-lock');
insert into responses select 'real-lock', pg_temp.lock(pg_temp.client(), pg_temp.provider(), 50, 'order-4', 'ei-real-lock');
select is(pg_temp.response('squat-lock') ->> 'ok', 'true', 'the impostor locks 1 credit under order-4 (their own hold)');
select is(pg_temp.response('real-lock') ->> 'ok', 'true', 'the client still locks order-4: hold_already_exists is per client');
select is(pg_temp.lock(pg_temp.client(), pg_temp.provider(), 50, 'order-4', 'ei-real-lock-again') #>> '{error,code}',
  'hold_already_exists', 'the same client locking order-4 again: hold_already_exists');
select results_eq(
  $$ select client_user_id, amount_credits, status from credits.escrow_holds where order_id = 'order-4' order by amount_credits $$,
  $$ values (pg_temp.impostor(), 1::bigint, 'held'), (pg_temp.client(), 50::bigint, 'held') $$,
  'two holds share the order id, one per client'
);
insert into responses select 'accept-4', pg_temp.accept(pg_temp.client(), 'order-4', pg_temp.provider(), 'ei-accept-4');
insert into responses select 'unlock-squat', pg_temp.unlock(pg_temp.impostor(), 'order-4', pg_temp.impostor(), 'ei-unlock-squat');
insert into responses select 'payout-4', pg_temp.payout(pg_temp.client(), 'order-4', 'ei-payout-4');
select results_eq(
  $$ select pg_temp.response('accept-4') ->> 'amount_credits', pg_temp.response('unlock-squat') ->> 'amount_credits',
       pg_temp.response('payout-4') ->> 'amount_credits' $$,
  $$ values ('50', '1', '50') $$,
  'accept, unlock and payout each reach the hold of the client they name'
);
select is(pg_temp.unlock(pg_temp.client(), 'order-4', pg_temp.client(), 'ei-unlock-4-after') #>> '{error,code}',
  'hold_already_released', 'the client''s hold is paid out, whatever the impostor did with theirs');
select results_eq(
  $$ select pg_temp.balance(pg_temp.client()), pg_temp.balance(pg_temp.impostor()), pg_temp.balance(pg_temp.provider()) $$,
  $$ values (810::bigint, 100::bigint, 190::bigint) $$,
  'order-4: the client paid 50 to the provider; the impostor got their 1 credit back'
);

-- ---------------------------------------------------------------------------------------------
-- Booking ids are scoped to their payer
-- ---------------------------------------------------------------------------------------------

insert into responses select 'squat-book', pg_temp.book(pg_temp.impostor(), pg_temp.provider(), 1, 'booking-1', 'ei-squat-book');
insert into responses select 'real-book', pg_temp.book(pg_temp.client(), pg_temp.provider(), 30, 'booking-1', 'ei-real-book');
select is(pg_temp.response('squat-book') ->> 'ok', 'true', 'the impostor pays 1 credit under booking-1 (their own booking)');
select is(pg_temp.response('real-book') ->> 'ok', 'true', 'the client still pays booking-1: booking_already_paid is per payer');
insert into responses select 'real-book-again', pg_temp.book(pg_temp.client(), pg_temp.provider(), 30, 'booking-1', 'ei-real-book-again');
select is((pg_temp.response('real-book-again') -> 'error') - 'message',
  jsonb_build_object('code', 'booking_already_paid', 'booking_id', 'booking-1',
    'transaction_id', pg_temp.response('real-book') -> 'transaction_id'),
  'the same payer paying booking-1 again: booking_already_paid with their own transaction');
select results_eq(
  $$ select booking_practitioner_id, credits, operation_id from credits.booking_payments where booking_id = 'booking-1'
     order by credits $$,
  $$ values (pg_temp.impostor(), 1::bigint, (pg_temp.response('squat-book') ->> 'transaction_id')::bigint),
            (pg_temp.client(), 30::bigint, (pg_temp.response('real-book') ->> 'transaction_id')::bigint) $$,
  'two booking payments share the booking id, one per payer'
);
-- The payer's own request id outlives the idempotency key; someone else's is not theirs.
delete from ledger.idempotency_keys where key = 'ei-real-book';
select is(pg_temp.book(pg_temp.client(), pg_temp.provider(), 30, 'booking-1', 'ei-real-book') #>> '{error,code}',
  'booking_already_paid', 'a very late replay by the payer: booking_already_paid');
delete from ledger.idempotency_keys where key = 'ei-real-book';
select is(pg_temp.book(pg_temp.client(), pg_temp.provider(), 30, 'booking-2', 'ei-real-book') #>> '{error,code}',
  'idempotency_key_reused', 'the payer''s expired key used for another booking: idempotency_key_reused');
delete from ledger.idempotency_keys where key = 'ei-squat-book';
select is(pg_temp.book(pg_temp.client(), pg_temp.provider(), 5, 'booking-3', 'ei-squat-book') ->> 'ok', 'true',
  'a request id that another payer used (its key expired) does not block this payer');

insert into responses select 'book-by-staff', pg_temp.book(pg_temp.staff(), pg_temp.provider(), 1, 'booking-staff', 'ei-book-staff');
insert into responses select 'book-staff', pg_temp.book(pg_temp.client(), pg_temp.staff(), 1, 'booking-to-staff', 'ei-book-to-staff');
insert into responses select 'book-by-anonymous', pg_temp.book(pg_temp.anonymous(), pg_temp.provider(), 1, 'booking-anon', 'ei-book-anon');
insert into responses select 'book-anonymous', pg_temp.book(pg_temp.client(), pg_temp.anonymous(), 1, 'booking-to-anon', 'ei-book-to-anon');
select is(pg_temp.code('book-by-staff'), 'forbidden', 'festival staff cannot book: forbidden');
select is(pg_temp.code('book-staff'), 'forbidden', 'festival staff cannot be paid a booking: forbidden');
select is(pg_temp.code('book-by-anonymous'), 'forbidden', 'an anonymous sign-in cannot book: forbidden');
select is(pg_temp.code('book-anonymous'), 'forbidden', 'an anonymous sign-in cannot be paid a booking: forbidden');
select is_empty($$ select 1 from credits.booking_payments where booking_id in
    ('booking-staff', 'booking-to-staff', 'booking-anon', 'booking-to-anon')
  union all select 1 from ledger.operations where client_request_id in
    ('ei-book-staff', 'ei-book-to-staff', 'ei-book-anon', 'ei-book-to-anon') $$,
  'refused bookings record no payment and no operation');
select results_eq(
  $$ select pg_temp.balance(pg_temp.client()), pg_temp.balance(pg_temp.impostor()), pg_temp.balance(pg_temp.provider()),
       pg_temp.balance(pg_temp.staff()), pg_temp.balance(pg_temp.anonymous()) $$,
  $$ values (775::bigint, 99::bigint, 226::bigint, 100::bigint, 100::bigint) $$,
  'bookings: exact balances; staff and anonymous untouched'
);

-- ---------------------------------------------------------------------------------------------
-- credits_balance refuses staff and anonymous sign-ins
-- ---------------------------------------------------------------------------------------------

select is(public.credits_balance(pg_temp.staff()) #>> '{error,code}', 'forbidden', 'credits_balance: festival staff: forbidden');
select is(public.credits_balance(pg_temp.anonymous()) #>> '{error,code}', 'forbidden',
  'credits_balance: an anonymous sign-in: forbidden');
select is(public.credits_balance(pg_temp.client()) ->> 'balance_credits', '775', 'credits_balance: a practitioner reads theirs');

-- ---------------------------------------------------------------------------------------------
-- Refusals are logged as failed with their code
-- ---------------------------------------------------------------------------------------------

select results_eq(
  $$ select client_request_id, status, error_code from ops.app_transaction_log
     where client_request_id in ('ei-lock-self', 'ei-lock-staff-provider', 'ei-lock-by-staff', 'ei-accept-client',
       'ei-payout-impostor', 'ei-unlock-staff', 'ei-book-staff') order by client_request_id $$,
  $$ values ('ei-accept-client', 'failed', 'forbidden'), ('ei-book-staff', 'failed', 'forbidden'),
            ('ei-lock-by-staff', 'failed', 'forbidden'), ('ei-lock-self', 'failed', 'self_booking'),
            ('ei-lock-staff-provider', 'failed', 'forbidden'), ('ei-payout-impostor', 'failed', 'forbidden'),
            ('ei-unlock-staff', 'failed', 'forbidden') $$,
  'refusals are logged as failed with their code'
);

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select pg_temp.accept(null, 'order-1', pg_temp.provider(), 'ei-bad-2') $$, '22023', null, 'accept: null client');
select throws_ok($$ select pg_temp.unlock(null, 'order-1', pg_temp.client(), 'ei-bad-3') $$, '22023', null, 'unlock: null client');
select throws_ok($$ select pg_temp.payout(null, 'order-1', 'ei-bad-4') $$, '22023', null, 'payout: null client');
select throws_ok($$ select pg_temp.lock(pg_temp.client(), pg_temp.provider(), 1, '', 'ei-bad-5') $$, '22023', null, 'lock: empty order');
select throws_ok($$ select pg_temp.accept(pg_temp.client(), repeat('o', 256), pg_temp.provider(), 'ei-bad-6') $$, '22023', null,
  'accept: 256-character order id');
select throws_ok($$ select pg_temp.unlock(pg_temp.client(), 'order-1', null, 'ei-bad-7') $$, '22023', null, 'unlock: null actor');
select throws_ok($$ select pg_temp.payout(pg_temp.client(), 'order-1', '') $$, '22023', null, 'payout: empty key');
select is_empty(
  $$ select 1 from ops.app_transaction_log where client_request_id like 'ei-bad-%'
     union all select 1 from ledger.idempotency_keys where key like 'ei-bad-%' $$,
  'invalid arguments record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.lock_credits('c0000000-0000-4000-8000-000000001401', 'c0000000-0000-4000-8000-000000001402',
  1, 'order-role', 'ei-role-1') $$, '42501', null, 'anon cannot lock');
select throws_ok($$ select public.accept_credit_order('c0000000-0000-4000-8000-000000001401', 'order-role',
  'c0000000-0000-4000-8000-000000001402', 'ei-role-2') $$, '42501', null, 'anon cannot accept');
select throws_ok($$ select public.unlock_credits('c0000000-0000-4000-8000-000000001401', 'order-role',
  'c0000000-0000-4000-8000-000000001401', 'ei-role-3') $$, '42501', null, 'anon cannot unlock');
select throws_ok($$ select public.payout_to_provider('c0000000-0000-4000-8000-000000001401', 'order-role', 'ei-role-4') $$,
  '42501', null, 'anon cannot pay out');
reset role;
set local role authenticated;
select throws_ok($$ select public.lock_credits('c0000000-0000-4000-8000-000000001401', 'c0000000-0000-4000-8000-000000001402',
  1, 'order-role', 'ei-role-5') $$, '42501', null, 'authenticated cannot lock');
select throws_ok($$ select public.accept_credit_order('c0000000-0000-4000-8000-000000001401', 'order-role',
  'c0000000-0000-4000-8000-000000001402', 'ei-role-6') $$, '42501', null, 'authenticated cannot accept');
select throws_ok($$ select public.unlock_credits('c0000000-0000-4000-8000-000000001401', 'order-role',
  'c0000000-0000-4000-8000-000000001401', 'ei-role-7') $$, '42501', null, 'authenticated cannot unlock');
select throws_ok($$ select public.payout_to_provider('c0000000-0000-4000-8000-000000001401', 'order-role', 'ei-role-8') $$,
  '42501', null, 'authenticated cannot pay out');
reset role;
set local role service_role;
select is(public.lock_credits('c0000000-0000-4000-8000-000000001401', 'c0000000-0000-4000-8000-000000001402', 1,
  'order-role', 'ei-role-9') ->> 'ok', 'true', 'service_role can lock');
select is(public.accept_credit_order('c0000000-0000-4000-8000-000000001401', 'order-role',
  'c0000000-0000-4000-8000-000000001402', 'ei-role-10') ->> 'ok', 'true', 'service_role can accept');
select is(public.payout_to_provider('c0000000-0000-4000-8000-000000001401', 'order-role', 'ei-role-11') ->> 'ok', 'true',
  'service_role can pay out');
select is(public.unlock_credits('c0000000-0000-4000-8000-000000001401', 'order-role',
  'c0000000-0000-4000-8000-000000001401', 'ei-role-12') #>> '{error,code}', 'hold_already_released',
  'service_role can call unlock');
reset role;

-- ---------------------------------------------------------------------------------------------
-- Ledger, journal, holds and booking payments agree
-- ---------------------------------------------------------------------------------------------

select is_empty($$
  -- Every hold's lock operation moved its amount from the client into its account; every release
  -- moved it out to the client (unlocked) or the named provider (paid out).
  select h.order_id from credits.escrow_holds h
  where not exists (select 1 from ledger.transfers t where t.operation_id = h.lock_operation_id
      and t.to_account_id = h.account_id and t.amount_cents = h.amount_credits)
    or not exists (select 1 from credits.credit_transactions j where j.operation_id = h.lock_operation_id
      and j.user_id = h.client_user_id and j.type = 'lock' and j.amount_credits = -h.amount_credits)
    or (h.status in ('unlocked', 'paid_out') and not exists (select 1 from credits.credit_transactions j
      where j.operation_id = h.release_operation_id and j.amount_credits = h.amount_credits
        and j.user_id = case h.status when 'unlocked' then h.client_user_id else h.provider_id end))
  $$, 'every hold ties out with its transfers and journal rows');
select is_empty($$
  select b.booking_id from credits.booking_payments b
  where (select count(*) from credits.credit_transactions j where j.operation_id = b.operation_id
      and ((j.user_id = b.booking_practitioner_id and j.type = 'peer_booking_debit' and j.amount_credits = -b.credits)
        or (j.user_id = b.treating_practitioner_id and j.type = 'session_earning' and j.amount_credits = b.credits))) <> 2
  $$, 'every booking payment ties out with its two journal rows');
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select throws_ok($$ update credits.escrow_holds set provider_id = 'c0000000-0000-4000-8000-000000001403'
  where client_user_id = pg_temp.client() and order_id = 'order-3' $$, '42501', null,
  'a hold''s provider can never be changed, not even by a direct UPDATE');
select throws_ok($$ update credits.escrow_holds set amount_credits = amount_credits + 1
  where client_user_id = pg_temp.client() and order_id = 'order-3' $$, '42501', null,
  'a hold''s amount can never be changed');

select * from finish();
rollback;
