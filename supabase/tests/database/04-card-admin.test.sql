-- Card administration (issue 3, docs/architecture.md §5-§7): sp_admin_register_cards, sp_admin_block_card,
-- sp_admin_unblock_card. Admins only, idempotent, every attempt logged, blocked cards cannot be
-- sold to or recharged.
begin;
create extension if not exists pgtap with schema extensions;
select plan(95);

-- Seeded staff (docs/architecture.md §10).
create function pg_temp.admin() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000a001'::uuid $$;
create function pg_temp.bartender() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000b001'::uuid $$;
create function pg_temp.cashier() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000c001'::uuid $$;
create function pg_temp.stranger() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-0000000ff999'::uuid $$;

-- Every call made below, in order, with its key and response.
create temp table calls (
  seq integer generated always as identity primary key,
  name text not null unique,
  client_request_id text,
  response jsonb
);
create function pg_temp.response(p_name text) returns jsonb language sql stable
as $$ select response from calls where name = p_name $$;
create function pg_temp.card_status(p_card_id text) returns text language sql stable
as $$ select status from festival.cards where id = p_card_id $$;
create function pg_temp.card_balance(p_card_id text) returns bigint language sql stable
as $$ select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id $$;

create temp table log_start as select coalesce(max(id), 0) as id from ops.app_transaction_log;
create temp table counts_start as
select (select count(*) from festival.cards) as cards, (select count(*) from ledger.accounts) as accounts;

-- ---------------------------------------------------------------------------------------------
-- Register a batch
-- ---------------------------------------------------------------------------------------------

insert into calls (name, client_request_id, response)
select 'register', 'reg-1', public.sp_admin_register_cards(
  array['TEST-0002', 'TEST-0001', 'DEMO-0001', 'TEST-0001'], pg_temp.admin(), 'reg-1', 'test batch');

select is(
  pg_temp.response('register') - 'pins',
  '{"ok": true, "replayed": false, "registered": ["TEST-0001", "TEST-0002"], "already_registered": ["DEMO-0001"]}'::jsonb,
  'register: new ids are registered once, existing ids are reported as already registered'
);
select is(
  (select array_agg(card_id order by card_id) from jsonb_each_text(pg_temp.response('register') -> 'pins') as pin(card_id, value)
   where value ~ '^[0-9]{6}$'),
  array['TEST-0001', 'TEST-0002'],
  'register: each new card gets a random 6-digit PIN, answered once to be printed on it'
);
select is(
  (select count(*) from festival.cards c, jsonb_each_text(pg_temp.response('register') -> 'pins') as pin(card_id, value)
   where c.id = pin.card_id and c.pin_hash <> pin.value and extensions.crypt(pin.value, c.pin_hash) = c.pin_hash),
  2::bigint,
  'register: only a salted hash of each PIN is stored, and it verifies the PIN'
);
select results_eq(
  $$
    select c.id, c.status, c.holder_label, a.kind, a.code, a.balance_cents
    from festival.cards c join ledger.accounts a on a.id = c.account_id
    where c.id in ('TEST-0001', 'TEST-0002') order by c.id
  $$,
  $$ values ('TEST-0001', 'active', 'test batch', 'card', 'card:TEST-0001', 0::bigint),
            ('TEST-0002', 'active', 'test batch', 'card', 'card:TEST-0002', 0::bigint) $$,
  'register: each new card is active and has its own card account with balance 0'
);
select is(
  (select count(*) - (select cards from counts_start) from festival.cards),
  2::bigint,
  'register: exactly the two new cards were created'
);
select is(
  (select count(*) - (select accounts from counts_start) from ledger.accounts),
  2::bigint,
  'register: exactly two accounts were created'
);
select is(pg_temp.card_balance('DEMO-0051'), 5000::bigint, 'register: an already registered card is not changed');

create temp table counts_after_register as
select (select count(*) from festival.cards) as cards, (select count(*) from ledger.accounts) as accounts;

-- Replay: same key, same request (order and duplicates of the ids do not matter).
insert into calls (name, client_request_id, response)
select 'register replay', 'reg-1', public.sp_admin_register_cards(
  array['DEMO-0001', 'TEST-0001', 'TEST-0002'], pg_temp.admin(), 'reg-1', 'test batch');

select is(
  pg_temp.response('register replay'),
  (pg_temp.response('register') - 'pins') || '{"replayed": true, "pins_withheld": true}'::jsonb,
  'register replay: the same response with replayed true, but the PINs are never answered twice'
);
select is(
  (select response from ledger.idempotency_keys where key = 'reg-1') ? 'pins', false,
  'register: the stored response does not keep the PINs'
);
select is(
  (select row(count(*), (select count(*) from ledger.accounts))::text from festival.cards),
  (select row(cards, accounts)::text from counts_after_register),
  'register replay: creates nothing'
);

-- Same key, other ids.
insert into calls (name, client_request_id, response)
select 'register reused', 'reg-1', public.sp_admin_register_cards(array['TEST-0009'], pg_temp.admin(), 'reg-1', 'test batch');
select is(
  pg_temp.response('register reused') #>> '{error,code}',
  'idempotency_key_reused',
  'register with the same key and other card ids: idempotency_key_reused'
);
select is(pg_temp.response('register reused') -> 'ok', 'false'::jsonb, 'register reused: not ok');
select is_empty($$ select 1 from festival.cards where id = 'TEST-0009' $$, 'register reused: the card is not created');

-- Same key, another holder label (part of the request too).
insert into calls (name, client_request_id, response)
select 'register reused label', 'reg-1', public.sp_admin_register_cards(
  array['DEMO-0001', 'TEST-0001', 'TEST-0002'], pg_temp.admin(), 'reg-1', 'another label');
select is(
  pg_temp.response('register reused label') #>> '{error,code}',
  'idempotency_key_reused',
  'register with the same key and another holder label: idempotency_key_reused'
);

-- Same key used for another operation.
insert into calls (name, client_request_id, response)
select 'block with register key', 'reg-1', public.sp_admin_block_card('DEMO-0002', pg_temp.admin(), 'reg-1');
select is(
  pg_temp.response('block with register key') #>> '{error,code}',
  'idempotency_key_reused',
  'a register key reused for a block: idempotency_key_reused'
);
select is(pg_temp.card_status('DEMO-0002'), 'active', 'the block under a reused key did not block the card');
select is(
  (select response from ledger.idempotency_keys where key = 'reg-1'),
  (pg_temp.response('register') - 'pins') || '{"pins_withheld": true}'::jsonb,
  'reuse attempts leave the stored response unchanged'
);


-- Boundaries: 1000 ids and a 255-character key are accepted.
insert into calls (name, client_request_id, response)
select 'register 1000', repeat('k', 255), public.sp_admin_register_cards(
  (select array_agg('BULK-' || lpad(n::text, 4, '0')) from generate_series(1, 1000) as n), pg_temp.admin(), repeat('k', 255));
select is(
  jsonb_array_length(pg_temp.response('register 1000') -> 'registered'),
  1000,
  'register: a batch of 1000 ids with a 255-character key is accepted'
);

-- ---------------------------------------------------------------------------------------------
-- Only active admins
-- ---------------------------------------------------------------------------------------------

insert into calls (name, client_request_id, response)
select 'register by bartender', 'reg-bartender', public.sp_admin_register_cards(array['TEST-0100'], pg_temp.bartender(), 'reg-bartender');
insert into calls (name, client_request_id, response)
select 'register by cashier', 'reg-cashier', public.sp_admin_register_cards(array['TEST-0100'], pg_temp.cashier(), 'reg-cashier');
insert into calls (name, client_request_id, response)
select 'register by stranger', 'reg-stranger', public.sp_admin_register_cards(array['TEST-0100'], pg_temp.stranger(), 'reg-stranger');
update festival.staff set active = false where user_id = pg_temp.admin();
insert into calls (name, client_request_id, response)
select 'register by inactive admin', 'reg-inactive', public.sp_admin_register_cards(array['TEST-0100'], pg_temp.admin(), 'reg-inactive');
update festival.staff set active = true where user_id = pg_temp.admin();

select is(pg_temp.response('register by bartender') #>> '{error,code}', 'forbidden', 'register by a bartender: forbidden');
select is(pg_temp.response('register by cashier') #>> '{error,code}', 'forbidden', 'register by a cashier: forbidden');
select is(pg_temp.response('register by stranger') #>> '{error,code}', 'forbidden', 'register by an unknown user: forbidden');
select is(pg_temp.response('register by inactive admin') #>> '{error,code}', 'forbidden', 'register by an inactive admin: forbidden');
select is_empty($$ select 1 from festival.cards where id = 'TEST-0100' $$, 'forbidden registers create no card');
select is_empty($$ select 1 from ledger.accounts where code = 'card:TEST-0100' $$, 'forbidden registers create no account');

-- A business failure is a recorded outcome: it replays.
insert into calls (name, client_request_id, response)
select 'register by bartender replay', 'reg-bartender', public.sp_admin_register_cards(array['TEST-0100'], pg_temp.bartender(), 'reg-bartender');
select is(
  pg_temp.response('register by bartender replay'),
  pg_temp.response('register by bartender') || '{"replayed": true}'::jsonb,
  'a forbidden register replays its stored response'
);

insert into calls (name, client_request_id, response)
select 'block by bartender', 'blk-bartender', public.sp_admin_block_card('DEMO-0060', pg_temp.bartender(), 'blk-bartender');
insert into calls (name, client_request_id, response)
select 'block by cashier', 'blk-cashier', public.sp_admin_block_card('DEMO-0060', pg_temp.cashier(), 'blk-cashier');
insert into calls (name, client_request_id, response)
select 'block by stranger', 'blk-stranger', public.sp_admin_block_card('DEMO-0060', pg_temp.stranger(), 'blk-stranger');
select is(pg_temp.response('block by bartender') #>> '{error,code}', 'forbidden', 'block by a bartender: forbidden');
select is(pg_temp.response('block by cashier') #>> '{error,code}', 'forbidden', 'block by a cashier: forbidden');
select is(pg_temp.response('block by stranger') #>> '{error,code}', 'forbidden', 'block by an unknown user: forbidden');
select is(pg_temp.card_status('DEMO-0060'), 'active', 'forbidden blocks leave the card active');

-- ---------------------------------------------------------------------------------------------
-- Block, then sales and recharges are refused; unblock restores them
-- ---------------------------------------------------------------------------------------------

insert into calls (name, client_request_id, response)
select 'block', 'blk-1', public.sp_admin_block_card('DEMO-0051', pg_temp.admin(), 'blk-1', 'lost wristband');
select is(
  pg_temp.response('block'),
  '{"ok": true, "replayed": false, "card_id": "DEMO-0051", "status": "blocked", "previous_status": "active", "balance_cents": 5000}'::jsonb,
  'block: ok, with the previous status and the balance'
);
select results_eq(
  $$ select status, blocked_reason from festival.cards where id = 'DEMO-0051' $$,
  $$ values ('blocked', 'lost wristband') $$,
  'block: the card is blocked with its reason'
);

insert into calls (name, client_request_id, response)
select 'block replay', 'blk-1', public.sp_admin_block_card('DEMO-0051', pg_temp.admin(), 'blk-1', 'lost wristband');
select is(
  pg_temp.response('block replay'),
  pg_temp.response('block') || '{"replayed": true}'::jsonb,
  'block replay: the identical response with replayed true'
);

insert into calls (name, client_request_id, response)
select 'block reused', 'blk-1', public.sp_admin_block_card('DEMO-0052', pg_temp.admin(), 'blk-1', 'lost wristband');
select is(
  pg_temp.response('block reused') #>> '{error,code}',
  'idempotency_key_reused',
  'block with the same key and another card: idempotency_key_reused'
);
select is(pg_temp.card_status('DEMO-0052'), 'active', 'block reused: the other card stays active');

insert into calls (name, client_request_id, response)
select 'register with block key', 'blk-1', public.sp_admin_register_cards(array['TEST-0200'], pg_temp.admin(), 'blk-1');
select is(
  pg_temp.response('register with block key') #>> '{error,code}',
  'idempotency_key_reused',
  'a block key reused for a register: idempotency_key_reused'
);
select is_empty($$ select 1 from festival.cards where id = 'TEST-0200' $$, 'register under a reused key creates no card');

-- Block and unblock of the same card with the same request differ only by operation.
insert into calls (name, client_request_id, response)
select 'block 0053', 'blk-2', public.sp_admin_block_card('DEMO-0053', pg_temp.admin(), 'blk-2');
insert into calls (name, client_request_id, response)
select 'unblock with block key', 'blk-2', public.sp_admin_unblock_card('DEMO-0053', pg_temp.admin(), 'blk-2');
select is(
  pg_temp.response('unblock with block key') #>> '{error,code}',
  'idempotency_key_reused',
  'the same key and card for unblock after block: idempotency_key_reused'
);
select is(pg_temp.card_status('DEMO-0053'), 'blocked', 'the unblock under a reused key left the card blocked');

insert into calls (name, client_request_id, response)
select 'unblock by cashier', 'unb-cashier', public.sp_admin_unblock_card('DEMO-0053', pg_temp.cashier(), 'unb-cashier');
select is(pg_temp.response('unblock by cashier') #>> '{error,code}', 'forbidden', 'unblock by a cashier: forbidden');
select is(pg_temp.card_status('DEMO-0053'), 'blocked', 'a forbidden unblock leaves the card blocked');

-- Sales and recharges on the blocked card.
insert into calls (name, client_request_id, response)
select 'order on blocked card', 'ord-blocked', public.sp_process_bar_order(
  'DEMO-0051', '[{"product_id": "beer", "quantity": 1}]', 'main-bar', 'ord-blocked', pg_temp.bartender());
insert into calls (name, client_request_id, response)
select 'recharge on blocked card', 'rch-blocked', public.sp_process_checkpoint_recharge(
  'DEMO-0051', 1000, 'cash', 'entrance', pg_temp.cashier(), 'rch-blocked');
select is(pg_temp.response('order on blocked card') #>> '{error,code}', 'card_blocked', 'an order on a blocked card: card_blocked');
select is(pg_temp.response('recharge on blocked card') #>> '{error,code}', 'card_blocked', 'a recharge on a blocked card: card_blocked');
select is(pg_temp.card_balance('DEMO-0051'), 5000::bigint, 'the blocked card balance did not move');
select is_empty(
  $$ select 1 from festival.bar_orders where client_request_id = 'ord-blocked'
     union all select 1 from festival.recharges where client_request_id = 'rch-blocked' $$,
  'no order or recharge is recorded for a blocked card'
);

insert into calls (name, client_request_id, response)
select 'unblock', 'unb-1', public.sp_admin_unblock_card('DEMO-0051', pg_temp.admin(), 'unb-1');
select is(
  pg_temp.response('unblock'),
  '{"ok": true, "replayed": false, "card_id": "DEMO-0051", "status": "active", "previous_status": "blocked", "balance_cents": 5000}'::jsonb,
  'unblock: ok, with the previous status'
);
select results_eq(
  $$ select status, blocked_reason from festival.cards where id = 'DEMO-0051' $$,
  $$ values ('active', null::text) $$,
  'unblock: the card is active and the block reason is cleared'
);
insert into calls (name, client_request_id, response)
select 'unblock replay', 'unb-1', public.sp_admin_unblock_card('DEMO-0051', pg_temp.admin(), 'unb-1');
select is(
  pg_temp.response('unblock replay'),
  pg_temp.response('unblock') || '{"replayed": true}'::jsonb,
  'unblock replay: the identical response with replayed true'
);

insert into calls (name, client_request_id, response)
select 'order after unblock', 'ord-after', public.sp_process_bar_order(
  'DEMO-0051', '[{"product_id": "beer", "quantity": 1}]', 'main-bar', 'ord-after', pg_temp.bartender());
insert into calls (name, client_request_id, response)
select 'recharge after unblock', 'rch-after', public.sp_process_checkpoint_recharge(
  'DEMO-0051', 1000, 'cash', 'entrance', pg_temp.cashier(), 'rch-after');
select is(
  (select row(response ->> 'ok', response ->> 'new_balance_cents')::text from calls where name = 'order after unblock'),
  row('true', '4550')::text,
  'after unblock the card can be sold to again'
);
select is(
  (select row(response ->> 'ok', response ->> 'new_balance_cents')::text from calls where name = 'recharge after unblock'),
  row('true', '5550')::text,
  'after unblock the card can be recharged again'
);
select is(pg_temp.card_balance('DEMO-0051'), 5550::bigint, 'the card balance reflects the order and the recharge');

-- Unknown cards.
insert into calls (name, client_request_id, response)
select 'block unknown', 'blk-unknown', public.sp_admin_block_card('NOPE-0001', pg_temp.admin(), 'blk-unknown');
insert into calls (name, client_request_id, response)
select 'unblock unknown', 'unb-unknown', public.sp_admin_unblock_card('NOPE-0001', pg_temp.admin(), 'unb-unknown');
select is(pg_temp.response('block unknown') #>> '{error,code}', 'card_not_found', 'block of an unknown card: card_not_found');
select is(pg_temp.response('unblock unknown') #>> '{error,code}', 'card_not_found', 'unblock of an unknown card: card_not_found');
select is_empty($$ select 1 from festival.cards where id = 'NOPE-0001' $$, 'block of an unknown card creates nothing');

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

create temp table before_invalid as
select (select count(*) from ops.app_transaction_log) as log_rows, (select count(*) from ledger.idempotency_keys) as keys,
  (select count(*) from festival.cards) as cards;

select throws_ok(
  $$ select public.sp_admin_register_cards(array[]::text[], pg_temp.admin(), 'bad-1') $$,
  '22023', null, 'register: an empty array is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(null, pg_temp.admin(), 'bad-2') $$,
  '22023', null, 'register: a null array is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(
       (select array_agg('OVER-' || n) from generate_series(1, 1001) as n), pg_temp.admin(), 'bad-3') $$,
  '22023', null, 'register: more than 1000 ids are invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0300', 'a b'], pg_temp.admin(), 'bad-4') $$,
  '22023', null, 'register: a card id with a space is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['x''; drop table festival.cards; --'], pg_temp.admin(), 'bad-5') $$,
  '22023', null, 'register: a card id with quotes and semicolons is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array[repeat('A', 65)], pg_temp.admin(), 'bad-6') $$,
  '22023', null, 'register: a card id longer than 64 characters is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array[''], pg_temp.admin(), 'bad-7') $$,
  '22023', null, 'register: an empty card id is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0301', null], pg_temp.admin(), 'bad-8') $$,
  '22023', null, 'register: a null card id among valid ones is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0302'], pg_temp.admin(), '') $$,
  '22023', null, 'register: an empty key is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0302'], pg_temp.admin(), repeat('k', 256)) $$,
  '22023', null, 'register: a 256-character key is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0302'], pg_temp.admin(), null) $$,
  '22023', null, 'register: a null key is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0302'], null, 'bad-9') $$,
  '22023', null, 'register: a null staff user is invalid');
select throws_ok(
  $$ select public.sp_admin_register_cards(array['TEST-0302'], pg_temp.admin(), 'bad-10', repeat('h', 101)) $$,
  '22023', null, 'register: a holder label over 100 characters is invalid');
select throws_ok(
  $$ select public.sp_admin_block_card('a b', pg_temp.admin(), 'bad-11') $$,
  '22023', null, 'block: an invalid card id is invalid');
select throws_ok(
  $$ select public.sp_admin_block_card('DEMO-0070', pg_temp.admin(), '') $$,
  '22023', null, 'block: an empty key is invalid');
select throws_ok(
  $$ select public.sp_admin_block_card('DEMO-0070', null, 'bad-12') $$,
  '22023', null, 'block: a null staff user is invalid');
select throws_ok(
  $$ select public.sp_admin_block_card('DEMO-0070', pg_temp.admin(), 'bad-13', repeat('r', 501)) $$,
  '22023', null, 'block: a reason over 500 characters is invalid');
select throws_ok(
  $$ select public.sp_admin_unblock_card('DEMO-0053', pg_temp.admin(), repeat('k', 256)) $$,
  '22023', null, 'unblock: a 256-character key is invalid');
select throws_ok(
  $$ select public.sp_admin_unblock_card(null, pg_temp.admin(), 'bad-14') $$,
  '22023', null, 'unblock: a null card id is invalid');

select is(
  (select row((select count(*) from ops.app_transaction_log), (select count(*) from ledger.idempotency_keys),
     (select count(*) from festival.cards))::text),
  (select row(log_rows, keys, cards)::text from before_invalid),
  'invalid arguments record nothing: no log row, no key, no card'
);
select is(pg_temp.card_status('DEMO-0070'), 'active', 'invalid block calls leave the card active');

-- ---------------------------------------------------------------------------------------------
-- The attempt log: one row per attempt, successes, failures and replays alike
-- ---------------------------------------------------------------------------------------------

select results_eq(
  $$ select client_request_id from ops.app_transaction_log where id > (select id from log_start) order by id $$,
  $$ select client_request_id from calls order by seq $$,
  'every attempt wrote exactly one log row, in order'
);
select results_eq(
  $$
    select operation_type, status, error_code
    from ops.app_transaction_log where client_request_id = 'reg-1' and id > (select id from log_start) order by id
  $$,
  $$ values ('register_cards', 'success', null::text), ('register_cards', 'replayed', null),
            ('register_cards', 'rejected', 'idempotency_key_reused'), ('register_cards', 'rejected', 'idempotency_key_reused'),
            ('block_card', 'rejected', 'idempotency_key_reused') $$,
  'register key: success, replay and reuses are each logged with their status'
);
select results_eq(
  $$
    select operation_type, status, error_code, card_id
    from ops.app_transaction_log where client_request_id = 'blk-1' and id > (select id from log_start) order by id
  $$,
  $$ values ('block_card', 'success', null::text, 'DEMO-0051'), ('block_card', 'replayed', null, 'DEMO-0051'),
            ('block_card', 'rejected', 'idempotency_key_reused', 'DEMO-0052'),
            ('register_cards', 'rejected', 'idempotency_key_reused', null) $$,
  'block key: success, replay and reuses are each logged with their status and card'
);
select results_eq(
  $$
    select client_request_id, operation_type, status, error_code
    from ops.app_transaction_log
    where client_request_id in ('reg-bartender', 'blk-cashier', 'ord-blocked', 'rch-blocked', 'blk-unknown')
      and id > (select id from log_start)
    order by id
  $$,
  $$ values ('reg-bartender', 'register_cards', 'failed', 'forbidden'),
            ('reg-bartender', 'register_cards', 'replayed', 'forbidden'),
            ('blk-cashier', 'block_card', 'failed', 'forbidden'),
            ('ord-blocked', 'bar_order', 'failed', 'card_blocked'),
            ('rch-blocked', 'checkpoint_recharge', 'failed', 'card_blocked'),
            ('blk-unknown', 'block_card', 'failed', 'card_not_found') $$,
  'business failures are logged as failed with their error code'
);
select is(
  (select account_id from ops.app_transaction_log where client_request_id = 'blk-1' and status = 'success'),
  (select account_id from festival.cards where id = 'DEMO-0051'),
  'a block log row names the card account'
);

-- ---------------------------------------------------------------------------------------------
-- Who may call
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.sp_admin_register_cards(array['TEST-0400'], '00000000-0000-4000-8000-00000000a001', 'role-1') $$,
  '42501', null, 'anon cannot execute sp_admin_register_cards');
select throws_ok($$ select public.sp_admin_block_card('DEMO-0080', '00000000-0000-4000-8000-00000000a001', 'role-2') $$,
  '42501', null, 'anon cannot execute sp_admin_block_card');
select throws_ok($$ select public.sp_admin_unblock_card('DEMO-0080', '00000000-0000-4000-8000-00000000a001', 'role-3') $$,
  '42501', null, 'anon cannot execute sp_admin_unblock_card');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_admin_register_cards(array['TEST-0400'], '00000000-0000-4000-8000-00000000a001', 'role-4') $$,
  '42501', null, 'authenticated cannot execute sp_admin_register_cards');
select throws_ok($$ select public.sp_admin_block_card('DEMO-0080', '00000000-0000-4000-8000-00000000a001', 'role-5') $$,
  '42501', null, 'authenticated cannot execute sp_admin_block_card');
select throws_ok($$ select public.sp_admin_unblock_card('DEMO-0080', '00000000-0000-4000-8000-00000000a001', 'role-6') $$,
  '42501', null, 'authenticated cannot execute sp_admin_unblock_card');
reset role;

set local role service_role;
select is(
  public.sp_admin_block_card('DEMO-0080', '00000000-0000-4000-8000-00000000a001', 'role-service') ->> 'status',
  'blocked',
  'service_role can execute sp_admin_block_card'
);
reset role;
select ok(
  has_function_privilege('service_role', 'public.sp_admin_register_cards(text[], uuid, text, text)', 'execute')
  and has_function_privilege('service_role', 'public.sp_admin_unblock_card(text, uuid, text)', 'execute'),
  'service_role can execute sp_admin_register_cards and sp_admin_unblock_card'
);
select is_empty(
  $$ select 1 from festival.cards where id = 'TEST-0400' union all select 1 from ops.app_transaction_log where client_request_id like 'role-_' $$,
  'denied calls changed and logged nothing'
);

-- ---------------------------------------------------------------------------------------------
-- The ledger is still whole
-- ---------------------------------------------------------------------------------------------

select is((select sum(balance_cents)::bigint from ledger.account_balances), 0::bigint, 'the sum of all balances is zero');
select is_empty('select * from public.ledger_reconcile()', 'ledger_reconcile reports nothing after the card administration tests');

-- A new PIN for a card (lost, leaked, or registered before PINs existed).
insert into calls (name, client_request_id, response)
select 'reset pin', 'pin-reset-1', public.sp_admin_reset_card_pin('TEST-0001', pg_temp.admin(), 'pin-reset-1');
select ok(
  (select extensions.crypt(pg_temp.response('reset pin') ->> 'pin', pin_hash) = pin_hash and pin_failed_attempts = 0
   from festival.cards where id = 'TEST-0001')
    and pg_temp.response('reset pin') ->> 'pin' ~ '^[0-9]{6}$',
  'reset pin: a new 6-digit PIN that the stored hash verifies'
);
select is(
  public.sp_admin_reset_card_pin('TEST-0001', pg_temp.admin(), 'pin-reset-1') - 'replayed',
  (pg_temp.response('reset pin') - 'pin' - 'replayed') || '{"pin_withheld": true}'::jsonb,
  'reset pin replay: the PIN is not answered twice'
);
select is(
  public.sp_admin_reset_card_pin('TEST-0001', '00000000-0000-4000-8000-00000000c001', 'pin-reset-2') #>> '{error,code}',
  'forbidden', 'reset pin: only admins');
select is(
  public.sp_admin_reset_card_pin('NO-SUCH-CARD', pg_temp.admin(), 'pin-reset-3') #>> '{error,code}',
  'card_not_found', 'reset pin: unknown card');
select throws_ok($$ select public.sp_admin_reset_card_pin('bad id', '00000000-0000-4000-8000-00000000a001', 'k') $$,
  '22023', null, 'reset pin: invalid card id raises');

select * from finish();
rollback;
