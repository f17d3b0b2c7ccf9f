-- Practitioner credits (issue 6): escrow for marketplace orders. public.lock_credits,
-- accept_credit_order, unlock_credits, payout_to_provider: who may do what, a hold is released
-- once (unlock or payout, never both, never twice), every error code, replay, key reuse, invalid
-- arguments, denied roles, and a reconciled ledger with its escrow check. Since issue 9 the
-- provider is named at lock and a hold is named by its client and order id (the helpers below pass
-- the one client of this file); 14-credits-escrow-integrity covers what that changed.
begin;
create extension if not exists pgtap with schema extensions;
select plan(99);

-- ---------------------------------------------------------------------------------------------
-- Helpers and users
-- ---------------------------------------------------------------------------------------------

create function pg_temp.client() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000e01'::uuid $$;
create function pg_temp.provider() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000e02'::uuid $$;
create function pg_temp.other_provider() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000e03'::uuid $$;
create function pg_temp.stranger() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000e04'::uuid $$;
create function pg_temp.admin() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000e05'::uuid $$;
create function pg_temp.ghost() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000e99'::uuid $$;

insert into auth.users (id, aud, role, email) values
  (pg_temp.client(), 'authenticated', 'authenticated', 'client@credits.test'),
  (pg_temp.provider(), 'authenticated', 'authenticated', 'provider@credits.test'),
  (pg_temp.other_provider(), 'authenticated', 'authenticated', 'other-provider@credits.test'),
  (pg_temp.stranger(), 'authenticated', 'authenticated', 'stranger@credits.test'),
  (pg_temp.admin(), 'authenticated', 'authenticated', 'admin@credits.test');
insert into credits.platform_roles (user_id, role) values (pg_temp.admin(), 'admin');

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
create function pg_temp.hold_balance(p_order_id text) returns bigint
language sql stable as $$
  select a.balance_cents from credits.escrow_holds h join ledger.accounts a on a.id = h.account_id where h.order_id = p_order_id
$$;
create function pg_temp.hold_status(p_order_id text) returns text
language sql stable as $$ select status from credits.escrow_holds where order_id = p_order_id $$;

create function pg_temp.lock(p_user_id uuid, p_amount bigint, p_order_id text, p_key text,
  p_provider_id uuid default 'c0000000-0000-4000-8000-000000000e02') returns jsonb
language sql as $$
  select public.lock_credits(user_id => p_user_id, provider_id => p_provider_id, amount => p_amount, order_id => p_order_id,
    client_request_id => p_key)
$$;
create function pg_temp.accept(p_order_id text, p_provider_id uuid, p_key text) returns jsonb
language sql as $$
  select public.accept_credit_order(client_user_id => pg_temp.client(), order_id => p_order_id, provider_id => p_provider_id,
    client_request_id => p_key)
$$;
create function pg_temp.unlock(p_order_id text, p_actor uuid, p_key text) returns jsonb
language sql as $$
  select public.unlock_credits(client_user_id => pg_temp.client(), order_id => p_order_id, actor_user_id => p_actor,
    client_request_id => p_key)
$$;
create function pg_temp.payout(p_order_id text, p_key text, p_actor uuid default null) returns jsonb
language sql as $$
  select public.payout_to_provider(client_user_id => pg_temp.client(), order_id => p_order_id, client_request_id => p_key,
    actor_user_id => p_actor)
$$;

select ok((public.allocate_monthly_credits(pg_temp.client(), 1000, 'escrow-subscription', '2026-01-01 00:00+00',
  '2026-02-01 00:00+00', 'escrow-fund') ->> 'ok')::boolean, 'setup: the client holds 1000 credits');

-- ---------------------------------------------------------------------------------------------
-- lock_credits
-- ---------------------------------------------------------------------------------------------

insert into responses select 'lock', pg_temp.lock(pg_temp.client(), 100, 'order-1', 'es-lock');

select is(pg_temp.response('lock') - 'transaction_id',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-1', 'status', 'held', 'user_id', pg_temp.client(),
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(),
    'amount_credits', 100, 'balance_before_credits', 1000, 'balance_after_credits', 900),
  'lock: the hold and the client''s balance before and after');
select results_eq(
  $$ select h.client_user_id, h.provider_id, h.amount_credits, h.status, h.lock_operation_id, a.kind, a.code, a.balance_cents
     from credits.escrow_holds h join ledger.accounts a on a.id = h.account_id where h.order_id = 'order-1' $$,
  $$ values (pg_temp.client(), pg_temp.provider(), 100::bigint, 'held', (pg_temp.response('lock') ->> 'transaction_id')::bigint,
       'escrow_hold', 'escrow_hold:' || pg_temp.client() || ':' || (pg_temp.response('lock') ->> 'transaction_id'), 100::bigint) $$,
  'lock: a held hold for the named provider with its own escrow account holding the credits'
);
select is(pg_temp.balance(pg_temp.client()), 900::bigint, 'lock: the client is debited');
select results_eq(
  $$ select user_id, type, amount_credits, balance_before_credits, balance_after_credits, order_id from credits.credit_transactions
     where operation_id = (pg_temp.response('lock') ->> 'transaction_id')::bigint $$,
  $$ values (pg_temp.client(), 'lock', -100::bigint, 1000::bigint, 900::bigint, 'order-1') $$,
  'lock: a negative lock journal row'
);
select results_eq(
  $$ select operation_type, status, amount_cents, balance_before_cents, balance_after_cents, actor_user_id
     from ops.app_transaction_log where client_request_id = 'es-lock' $$,
  $$ values ('credit_lock', 'success', 100::bigint, 1000::bigint, 900::bigint, pg_temp.client()) $$,
  'lock: one log row'
);

insert into responses select 'lock-replay', pg_temp.lock(pg_temp.client(), 100, 'order-1', 'es-lock');
insert into responses select 'lock-exists', pg_temp.lock(pg_temp.client(), 100, 'order-1', 'es-lock-again');
insert into responses select 'lock-reused', pg_temp.lock(pg_temp.client(), 101, 'order-1', 'es-lock');
insert into responses select 'lock-funds', pg_temp.lock(pg_temp.client(), 901, 'order-funds', 'es-lock-funds');
insert into responses select 'lock-no-account', pg_temp.lock(pg_temp.stranger(), 1, 'order-no-account', 'es-lock-no-account');
insert into responses select 'lock-ghost', pg_temp.lock(pg_temp.ghost(), 1, 'order-ghost', 'es-lock-ghost');

select is(pg_temp.response('lock-replay'), pg_temp.response('lock') || '{"replayed": true}', 'lock replay: the stored response');
select is((pg_temp.response('lock-exists') -> 'error') - 'message', '{"code": "hold_already_exists", "order_id": "order-1"}',
  'a second lock for the order under another key: hold_already_exists');
select is(pg_temp.code('lock-reused'), 'idempotency_key_reused', 'lock: same key, other amount: idempotency_key_reused');
select is((pg_temp.response('lock-funds') -> 'error') - 'message',
  '{"code": "insufficient_funds", "balance_credits": 900, "amount_credits": 901, "missing_credits": 1}',
  'lock more than the balance: insufficient_funds');
select is(pg_temp.code('lock-no-account'), 'insufficient_funds', 'lock by a user without credits: insufficient_funds');
select is(pg_temp.code('lock-ghost'), 'user_not_found', 'lock by an unknown user: user_not_found');
select results_eq(
  $$ select pg_temp.balance(pg_temp.client()), pg_temp.hold_balance('order-1'),
       (select count(*) from credits.escrow_holds where order_id <> 'order-1'),
       (select count(*) from ledger.accounts where kind = 'escrow_hold') $$,
  $$ values (900::bigint, 100::bigint, 0::bigint, 1::bigint) $$,
  'lock failures and replays move nothing and create no hold or account'
);

-- ---------------------------------------------------------------------------------------------
-- accept_credit_order
-- ---------------------------------------------------------------------------------------------

insert into responses select 'accept-unknown', pg_temp.accept('order-unknown', pg_temp.provider(), 'es-accept-unknown');
insert into responses select 'accept-self', pg_temp.accept('order-1', pg_temp.client(), 'es-accept-self');
insert into responses select 'accept-ghost', pg_temp.accept('order-1', pg_temp.ghost(), 'es-accept-ghost');
insert into responses select 'accept', pg_temp.accept('order-1', pg_temp.provider(), 'es-accept');
insert into responses select 'accept-again', pg_temp.accept('order-1', pg_temp.provider(), 'es-accept-again');
insert into responses select 'accept-other', pg_temp.accept('order-1', pg_temp.other_provider(), 'es-accept-other');
insert into responses select 'accept-replay', pg_temp.accept('order-1', pg_temp.provider(), 'es-accept');
insert into responses select 'accept-reused', pg_temp.accept('order-2', pg_temp.provider(), 'es-accept');

select is(pg_temp.code('accept-unknown'), 'hold_not_found', 'accept an unknown order: hold_not_found');
select is(pg_temp.code('accept-self'), 'forbidden', 'the client accepting their own order: forbidden (not the provider)');
select is(pg_temp.code('accept-ghost'), 'forbidden', 'accept by an unknown user: forbidden (not the provider)');
select is(pg_temp.response('accept') - 'accepted_at',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-1', 'status', 'accepted',
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(), 'amount_credits', 100),
  'accept: the hold is accepted by the provider');
select results_eq(
  $$ select status, provider_id, accepted_at is not null from credits.escrow_holds where order_id = 'order-1' $$,
  $$ values ('accepted', pg_temp.provider(), true) $$,
  'accept: stored on the hold'
);
select is(pg_temp.response('accept-again') - 'replayed', pg_temp.response('accept') - 'replayed',
  'accepting again by the same provider under another key changes nothing');
select is(pg_temp.code('accept-other'), 'forbidden', 'another provider cannot accept an accepted order: forbidden');
select is(pg_temp.response('accept-replay'), pg_temp.response('accept') || '{"replayed": true}', 'accept replay');
select is(pg_temp.code('accept-reused'), 'idempotency_key_reused', 'accept: same key, other order: idempotency_key_reused');
select results_eq(
  $$ select operation_type, status, error_code, actor_user_id from ops.app_transaction_log
     where client_request_id = 'es-accept' order by id $$,
  $$ values ('credit_accept', 'success', null::text, pg_temp.provider()), ('credit_accept', 'replayed', null, pg_temp.provider()),
            ('credit_accept', 'rejected', 'idempotency_key_reused', pg_temp.provider()) $$,
  'accept: every attempt logged'
);
select is(pg_temp.hold_balance('order-1'), 100::bigint, 'accepting moves no credits');

-- ---------------------------------------------------------------------------------------------
-- unlock_credits: who may, and once
-- ---------------------------------------------------------------------------------------------

insert into responses select 'unlock-client-after-accept', pg_temp.unlock('order-1', pg_temp.client(), 'es-unlock-client-accepted');
insert into responses select 'unlock-stranger', pg_temp.unlock('order-1', pg_temp.stranger(), 'es-unlock-stranger');
insert into responses select 'unlock-other-provider', pg_temp.unlock('order-1', pg_temp.other_provider(), 'es-unlock-other');
insert into responses select 'unlock-unknown', pg_temp.unlock('order-unknown', pg_temp.client(), 'es-unlock-unknown');

select is(pg_temp.code('unlock-client-after-accept'), 'forbidden', 'the client cannot unlock an accepted order: forbidden');
select is(pg_temp.code('unlock-stranger'), 'forbidden', 'a stranger cannot unlock: forbidden');
select is(pg_temp.code('unlock-other-provider'), 'forbidden', 'a provider who did not accept cannot unlock: forbidden');
select is(pg_temp.code('unlock-unknown'), 'hold_not_found', 'unlock an unknown order: hold_not_found');
select results_eq(
  $$ select pg_temp.hold_status('order-1'), pg_temp.hold_balance('order-1'), pg_temp.balance(pg_temp.client()) $$,
  $$ values ('accepted', 100::bigint, 900::bigint) $$,
  'refused unlocks move nothing'
);

insert into responses select 'unlock-provider', pg_temp.unlock('order-1', pg_temp.provider(), 'es-unlock-provider');
select is(pg_temp.response('unlock-provider') - 'transaction_id',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-1', 'status', 'unlocked', 'user_id', pg_temp.client(),
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(), 'amount_credits', 100,
    'balance_before_credits', 900, 'balance_after_credits', 1000),
  'the provider of an accepted order unlocks it: the credits go back to the client');
select results_eq(
  $$ select status, released_at is not null, release_operation_id from credits.escrow_holds where order_id = 'order-1' $$,
  $$ values ('unlocked', true, (pg_temp.response('unlock-provider') ->> 'transaction_id')::bigint) $$,
  'unlock: the hold is released'
);
select results_eq(
  $$ select pg_temp.hold_balance('order-1'), pg_temp.balance(pg_temp.client()) $$,
  $$ values (0::bigint, 1000::bigint) $$,
  'unlock: the escrow account is empty, the client has the credits back'
);
select results_eq(
  $$ select user_id, type, amount_credits, balance_before_credits, balance_after_credits, order_id from credits.credit_transactions
     where operation_id = (pg_temp.response('unlock-provider') ->> 'transaction_id')::bigint $$,
  $$ values (pg_temp.client(), 'unlock', 100::bigint, 900::bigint, 1000::bigint, 'order-1') $$,
  'unlock: a positive unlock journal row for the client'
);
select results_eq(
  $$ select operation_type, status, amount_cents, balance_before_cents, balance_after_cents, actor_user_id
     from ops.app_transaction_log where client_request_id = 'es-unlock-provider' $$,
  $$ values ('credit_unlock', 'success', 100::bigint, 900::bigint, 1000::bigint, pg_temp.provider()) $$,
  'unlock: one log row'
);

insert into responses select 'unlock-twice', pg_temp.unlock('order-1', pg_temp.client(), 'es-unlock-twice');
insert into responses select 'payout-after-unlock', pg_temp.payout('order-1', 'es-payout-after-unlock');
insert into responses select 'unlock-replay', pg_temp.unlock('order-1', pg_temp.provider(), 'es-unlock-provider');
insert into responses select 'unlock-released-stranger', pg_temp.unlock('order-1', pg_temp.stranger(), 'es-unlock-released-stranger');
select is((pg_temp.response('unlock-twice') -> 'error') - 'message',
  jsonb_build_object('code', 'hold_already_released', 'order_id', 'order-1', 'status', 'unlocked',
    'transaction_id', pg_temp.response('unlock-provider') -> 'transaction_id'),
  'unlocking twice: hold_already_released');
select is(pg_temp.code('payout-after-unlock'), 'hold_already_released', 'paying out an unlocked hold: hold_already_released');
select is(pg_temp.response('unlock-replay'), pg_temp.response('unlock-provider') || '{"replayed": true}', 'unlock replay');
select is(pg_temp.code('unlock-released-stranger'), 'forbidden', 'a stranger learns nothing about a released hold: forbidden');
select results_eq(
  $$ select pg_temp.hold_balance('order-1'), pg_temp.balance(pg_temp.client()), pg_temp.balance(pg_temp.provider()),
       (select count(*) from credits.credit_transactions where order_id = 'order-1') $$,
  $$ values (0::bigint, 1000::bigint, 0::bigint, 2::bigint) $$,
  'released once: nothing moves after the unlock'
);

-- The client unlocks before acceptance; an admin unlocks any hold.
select ok((pg_temp.lock(pg_temp.client(), 50, 'order-2', 'es-lock-2') ->> 'ok')::boolean, 'setup: order-2 locked');
insert into responses select 'unlock-client', pg_temp.unlock('order-2', pg_temp.client(), 'es-unlock-client');
select results_eq(
  $$ select pg_temp.response('unlock-client') ->> 'status', pg_temp.hold_balance('order-2'), pg_temp.balance(pg_temp.client()) $$,
  $$ values ('unlocked', 0::bigint, 1000::bigint) $$,
  'the client unlocks a hold nobody accepted yet'
);
select ok((pg_temp.lock(pg_temp.client(), 60, 'order-3', 'es-lock-3') ->> 'ok')::boolean, 'setup: order-3 locked');
select ok((pg_temp.accept('order-3', pg_temp.provider(), 'es-accept-3') ->> 'ok')::boolean, 'setup: order-3 accepted');
insert into responses select 'unlock-admin', pg_temp.unlock('order-3', pg_temp.admin(), 'es-unlock-admin');
select results_eq(
  $$ select pg_temp.response('unlock-admin') ->> 'status', pg_temp.hold_balance('order-3'), pg_temp.balance(pg_temp.client()) $$,
  $$ values ('unlocked', 0::bigint, 1000::bigint) $$,
  'a platform admin unlocks an accepted hold'
);

-- ---------------------------------------------------------------------------------------------
-- payout_to_provider: by the service or an admin, once
-- ---------------------------------------------------------------------------------------------

select ok((pg_temp.lock(pg_temp.client(), 70, 'order-4', 'es-lock-4') ->> 'ok')::boolean, 'setup: order-4 locked');
insert into responses select 'payout-by-user', pg_temp.payout('order-4', 'es-payout-by-user', pg_temp.provider());
insert into responses select 'payout-by-client', pg_temp.payout('order-4', 'es-payout-by-client', pg_temp.client());
insert into responses select 'payout-unknown', pg_temp.payout('order-unknown', 'es-payout-unknown');
-- Nobody chooses the recipient of a payout any more: the provider is named at lock.
insert into responses select 'payout-to-client', pg_temp.lock(pg_temp.client(), 1, 'order-to-client', 'es-payout-to-client', pg_temp.client());
insert into responses select 'payout-to-ghost', pg_temp.lock(pg_temp.client(), 1, 'order-to-ghost', 'es-payout-to-ghost', pg_temp.ghost());
select is(pg_temp.code('payout-by-user'), 'forbidden', 'a provider cannot pay themselves out: forbidden');
select is(pg_temp.code('payout-by-client'), 'forbidden', 'a client who is not an admin cannot pay out: forbidden');
select is(pg_temp.code('payout-unknown'), 'hold_not_found', 'payout of an unknown order: hold_not_found');
select is(pg_temp.code('payout-to-client'), 'self_booking', 'naming the client as the provider of their own order: self_booking');
select is(pg_temp.code('payout-to-ghost'), 'user_not_found', 'naming an unknown provider: user_not_found');
select results_eq(
  $$ select pg_temp.hold_status('order-4'), pg_temp.hold_balance('order-4') $$,
  $$ values ('held', 70::bigint) $$,
  'refused payouts move nothing'
);

insert into responses select 'payout-service', pg_temp.payout('order-4', 'es-payout-service');
select is(pg_temp.response('payout-service') - 'transaction_id',
  jsonb_build_object('ok', true, 'replayed', false, 'order_id', 'order-4', 'status', 'paid_out', 'user_id', pg_temp.provider(),
    'client_user_id', pg_temp.client(), 'provider_id', pg_temp.provider(), 'amount_credits', 70,
    'balance_before_credits', 0, 'balance_after_credits', 70),
  'the service pays out a held order to the provider');
select results_eq(
  $$ select status, provider_id, release_operation_id, pg_temp.hold_balance('order-4'), pg_temp.balance(pg_temp.provider())
     from credits.escrow_holds where order_id = 'order-4' $$,
  $$ values ('paid_out', pg_temp.provider(), (pg_temp.response('payout-service') ->> 'transaction_id')::bigint, 0::bigint, 70::bigint) $$,
  'payout: the hold is released to the provider'
);
select results_eq(
  $$ select user_id, type, amount_credits, balance_before_credits, balance_after_credits from credits.credit_transactions
     where operation_id = (pg_temp.response('payout-service') ->> 'transaction_id')::bigint $$,
  $$ values (pg_temp.provider(), 'payout', 70::bigint, 0::bigint, 70::bigint) $$,
  'payout: a positive payout journal row for the provider'
);
select results_eq(
  $$ select operation_type, status, amount_cents, balance_after_cents, actor_user_id from ops.app_transaction_log
     where client_request_id = 'es-payout-service' $$,
  $$ values ('credit_payout', 'success', 70::bigint, 70::bigint, null::uuid) $$,
  'payout: one log row, no actor (the service)'
);

insert into responses select 'payout-twice', pg_temp.payout('order-4', 'es-payout-twice');
insert into responses select 'unlock-after-payout', pg_temp.unlock('order-4', pg_temp.client(), 'es-unlock-after-payout');
insert into responses select 'payout-replay', pg_temp.payout('order-4', 'es-payout-service');
insert into responses select 'payout-reused', pg_temp.payout('order-4', 'es-payout-service', pg_temp.admin());
select is(pg_temp.code('payout-twice'), 'hold_already_released', 'paying out twice: hold_already_released');
select is(pg_temp.code('unlock-after-payout'), 'hold_already_released', 'unlocking a paid-out hold: hold_already_released');
select is(pg_temp.response('payout-replay'), pg_temp.response('payout-service') || '{"replayed": true}', 'payout replay');
select is(pg_temp.code('payout-reused'), 'idempotency_key_reused', 'payout: same key, other actor: idempotency_key_reused');
select results_eq(
  $$ select pg_temp.balance(pg_temp.provider()), pg_temp.balance(pg_temp.client()),
       (select count(*) from credits.credit_transactions where order_id = 'order-4') $$,
  $$ values (70::bigint, 930::bigint, 2::bigint) $$,
  'released once: nothing moves after the payout'
);

-- An admin pays out an accepted order, to the provider named at lock only.
select ok((pg_temp.lock(pg_temp.client(), 80, 'order-5', 'es-lock-5', pg_temp.other_provider()) ->> 'ok')::boolean,
  'setup: order-5 locked for the other provider');
insert into responses select 'payout-wrong-provider', pg_temp.accept('order-5', pg_temp.provider(), 'es-payout-wrong');
select ok((pg_temp.accept('order-5', pg_temp.other_provider(), 'es-accept-5') ->> 'ok')::boolean, 'setup: order-5 accepted');
insert into responses select 'payout-admin', pg_temp.payout('order-5', 'es-payout-admin', pg_temp.admin());
select is(pg_temp.code('payout-wrong-provider'), 'forbidden', 'a provider not named at lock cannot accept: forbidden');
select results_eq(
  $$ select pg_temp.response('payout-admin') ->> 'status', pg_temp.response('payout-admin') ->> 'user_id',
       pg_temp.balance(pg_temp.other_provider()), pg_temp.hold_balance('order-5') $$,
  $$ values ('paid_out', pg_temp.other_provider()::text, 80::bigint, 0::bigint) $$,
  'a platform admin pays out an accepted order to its named provider'
);
select results_eq(
  $$ select actor_user_id from ops.app_transaction_log where client_request_id = 'es-payout-admin' $$,
  $$ values (pg_temp.admin()) $$,
  'the admin payout is logged with the admin as actor'
);

-- ---------------------------------------------------------------------------------------------
-- Every refusal is logged as failed and moved nothing
-- ---------------------------------------------------------------------------------------------

select results_eq(
  $$ select client_request_id, status, error_code from ops.app_transaction_log
     where client_request_id in ('es-lock-again', 'es-lock-funds', 'es-lock-ghost', 'es-accept-self', 'es-accept-other',
       'es-unlock-stranger', 'es-unlock-twice', 'es-payout-by-user', 'es-payout-twice', 'es-payout-to-client')
     order by client_request_id $$,
  $$ values ('es-accept-other', 'failed', 'forbidden'), ('es-accept-self', 'failed', 'forbidden'),
            ('es-lock-again', 'failed', 'hold_already_exists'), ('es-lock-funds', 'failed', 'insufficient_funds'),
            ('es-lock-ghost', 'failed', 'user_not_found'), ('es-payout-by-user', 'failed', 'forbidden'),
            ('es-payout-to-client', 'failed', 'self_booking'), ('es-payout-twice', 'failed', 'hold_already_released'),
            ('es-unlock-stranger', 'failed', 'forbidden'), ('es-unlock-twice', 'failed', 'hold_already_released') $$,
  'refusals are logged as failed with their code'
);
select is_empty(
  $$ select 1 from ledger.operations where client_request_id in ('es-lock-again', 'es-lock-funds', 'es-lock-ghost',
       'es-unlock-client-accepted', 'es-unlock-stranger', 'es-unlock-twice', 'es-payout-after-unlock', 'es-payout-by-user',
       'es-payout-by-client', 'es-payout-to-client', 'es-payout-twice', 'es-unlock-after-payout', 'es-payout-wrong') $$,
  'refusals create no ledger operation'
);

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select pg_temp.lock(pg_temp.client(), 1, 'order-bad', null) $$, '22023', null, 'lock: null key');
select throws_ok($$ select pg_temp.lock(null, 1, 'order-bad', 'es-bad-1') $$, '22023', null, 'lock: null user');
select throws_ok($$ select pg_temp.lock(pg_temp.client(), 0, 'order-bad', 'es-bad-2') $$, '22023', null, 'lock: zero amount');
select throws_ok($$ select pg_temp.lock(pg_temp.client(), -1, 'order-bad', 'es-bad-3') $$, '22023', null, 'lock: negative amount');
select throws_ok($$ select pg_temp.lock(pg_temp.client(), 1, '', 'es-bad-4') $$, '22023', null, 'lock: empty order id');
select throws_ok($$ select pg_temp.lock(pg_temp.client(), 1, repeat('o', 256), 'es-bad-5') $$, '22023', null,
  'lock: 256-character order id');
select throws_ok($$ select pg_temp.accept('order-4', null, 'es-bad-6') $$, '22023', null, 'accept: null provider');
select throws_ok($$ select pg_temp.accept(null, pg_temp.provider(), 'es-bad-7') $$, '22023', null, 'accept: null order');
select throws_ok($$ select pg_temp.accept('order-4', pg_temp.provider(), '') $$, '22023', null, 'accept: empty key');
select throws_ok($$ select pg_temp.unlock('order-4', null, 'es-bad-8') $$, '22023', null, 'unlock: null actor');
select throws_ok($$ select pg_temp.unlock('', pg_temp.client(), 'es-bad-9') $$, '22023', null, 'unlock: empty order');
select throws_ok($$ select pg_temp.unlock('order-4', pg_temp.client(), repeat('k', 256)) $$, '22023', null, 'unlock: 256-character key');
select throws_ok($$ select pg_temp.lock(pg_temp.client(), 1, 'order-bad', 'es-bad-10', null) $$, '22023', null, 'lock: null provider');
select throws_ok($$ select pg_temp.payout(null, 'es-bad-11') $$, '22023', null, 'payout: null order');
select throws_ok($$ select pg_temp.payout('order-4', null) $$, '22023', null, 'payout: null key');
select is_empty(
  $$ select 1 from ops.app_transaction_log where client_request_id like 'es-bad-%'
     or (operation_type like 'credit_%' and (client_request_id is null or client_request_id = ''
       or length(client_request_id) > 255))
     union all select 1 from ledger.idempotency_keys where key like 'es-bad-%'
     union all select 1 from credits.escrow_holds where order_id = 'order-bad' $$,
  'invalid arguments record nothing'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.lock_credits('c0000000-0000-4000-8000-000000000e01', 'c0000000-0000-4000-8000-000000000e02', 1, 'order-role', 'es-role-1') $$,
  '42501', null, 'anon cannot lock');
select throws_ok($$ select public.accept_credit_order('c0000000-0000-4000-8000-000000000e01', 'order-role', 'c0000000-0000-4000-8000-000000000e02', 'es-role-2') $$,
  '42501', null, 'anon cannot accept');
select throws_ok($$ select public.unlock_credits('c0000000-0000-4000-8000-000000000e01', 'order-role', 'c0000000-0000-4000-8000-000000000e01', 'es-role-3') $$,
  '42501', null, 'anon cannot unlock');
select throws_ok($$ select public.payout_to_provider('c0000000-0000-4000-8000-000000000e01', 'order-role', 'es-role-4') $$,
  '42501', null, 'anon cannot pay out');
reset role;
set local role authenticated;
select throws_ok($$ select public.lock_credits('c0000000-0000-4000-8000-000000000e01', 'c0000000-0000-4000-8000-000000000e02', 1, 'order-role', 'es-role-5') $$,
  '42501', null, 'authenticated cannot lock');
select throws_ok($$ select public.accept_credit_order('c0000000-0000-4000-8000-000000000e01', 'order-role', 'c0000000-0000-4000-8000-000000000e02', 'es-role-6') $$,
  '42501', null, 'authenticated cannot accept');
select throws_ok($$ select public.unlock_credits('c0000000-0000-4000-8000-000000000e01', 'order-role', 'c0000000-0000-4000-8000-000000000e01', 'es-role-7') $$,
  '42501', null, 'authenticated cannot unlock');
select throws_ok($$ select public.payout_to_provider('c0000000-0000-4000-8000-000000000e01', 'order-role', 'es-role-8') $$,
  '42501', null, 'authenticated cannot pay out');
reset role;
set local role service_role;
select is(public.lock_credits('c0000000-0000-4000-8000-000000000e01', 'c0000000-0000-4000-8000-000000000e02', 1, 'order-role', 'es-role-9') ->> 'ok', 'true',
  'service_role can lock');
select is(public.accept_credit_order('c0000000-0000-4000-8000-000000000e01', 'order-role', 'c0000000-0000-4000-8000-000000000e02', 'es-role-10') ->> 'ok', 'true',
  'service_role can accept');
select is(public.payout_to_provider('c0000000-0000-4000-8000-000000000e01', 'order-role', 'es-role-11') ->> 'ok', 'true',
  'service_role can pay out');
select is(public.unlock_credits('c0000000-0000-4000-8000-000000000e01', 'order-role', 'c0000000-0000-4000-8000-000000000e02', 'es-role-12') #>> '{error,code}',
  'hold_already_released', 'service_role can call unlock');
reset role;

-- ---------------------------------------------------------------------------------------------
-- Ledger, journal and holds
-- ---------------------------------------------------------------------------------------------

select results_eq(
  $$ select pg_temp.balance(pg_temp.client()), pg_temp.balance(pg_temp.provider()), pg_temp.balance(pg_temp.other_provider()),
       (select sum(pg_temp.hold_balance(order_id)) from credits.escrow_holds)::bigint $$,
  $$ values (849::bigint, 71::bigint, 80::bigint, 0::bigint) $$,
  'client, provider and holds add up to the 1000 credits allocated'
);
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select throws_ok($$ delete from credits.escrow_holds where order_id = 'order-1' $$, '42501', null, 'holds are never deleted');

-- A hold whose state disagrees with its account, and an escrow account without a hold, are reported.
update credits.escrow_holds set status = 'held', released_at = null, release_operation_id = null where order_id = 'order-2';
insert into ledger.accounts (kind, code) values ('escrow_hold', 'escrow_hold:orphan');
select results_eq(
  $$ select check_name, account_code, expected_cents, actual_cents from public.ledger_reconcile() order by account_code $$,
  $$ values ('hold_state_mismatch', (select a.code from credits.escrow_holds h join ledger.accounts a on a.id = h.account_id
              where h.order_id = 'order-2'), 50::bigint, 0::bigint),
            ('hold_state_mismatch', 'escrow_hold:orphan', 0::bigint, 0::bigint) $$,
  'ledger_reconcile() reports hold_state_mismatch'
);

select * from finish();
rollback;
