-- public.sp_process_bar_order: success, menu prices, deposits and returns, every error code,
-- replay, key reuse, invalid arguments, denied roles, and a reconciled ledger afterwards.
-- now() is constant inside this transaction, so every order here is "recent" for the duplicate-tap
-- check: successful orders use distinct cards, bars or items unless duplicate taps are the point.
begin;
create extension if not exists pgtap with schema extensions;
select plan(82);

-- ---------------------------------------------------------------------------------------------
-- Helpers (temporary, gone with the transaction)
-- ---------------------------------------------------------------------------------------------

-- Responses by name, so later assertions (replays) can compare with earlier ones.
create temp table responses (name text primary key, result jsonb not null);

create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;

create function pg_temp.card_balance(p_card_id text) returns bigint
language sql stable as $$
  select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id
$$;

-- 'card:DEMO-0051' for customer accounts, 'bar_revenue:main-bar' for (any shard of) a system account.
create function pg_temp.account_label(p_account_id bigint) returns text
language sql stable as $$
  select case when kind = 'system' then system_purpose || ':' || owner_ref else code end
  from ledger.accounts where id = p_account_id
$$;

-- Derived balance of a system account over all of its shards.
create function pg_temp.system_balance(p_purpose text, p_owner_ref text) returns bigint
language sql stable as $$
  select coalesce(sum(balance_cents), 0)::bigint from ledger.account_balances
  where system_purpose = p_purpose and owner_ref = p_owner_ref
$$;

-- The object restricted to the given keys (missing keys stay missing, so a diff shows them).
create function pg_temp.pick(p_object jsonb, p_keys text[]) returns jsonb
language sql immutable as $$
  select coalesce(jsonb_object_agg(key, value), '{}'::jsonb) from jsonb_each(p_object) where key = any(p_keys)
$$;

-- The contract fields of each response line, in response order.
create function pg_temp.lines(p_result jsonb) returns jsonb
language sql immutable as $$
  select jsonb_agg(pg_temp.pick(line, array['product_id', 'quantity', 'unit_price_cents', 'line_total_cents'])
    order by position)
  from jsonb_array_elements(p_result -> 'lines') with ordinality as l(line, position)
$$;

-- Transfers of the operation behind a client request id, in posting order.
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
-- Success: items and deposits, prices from the menu
-- ---------------------------------------------------------------------------------------------

-- DEMO-0051 holds 5000. The client sends a price of 1 cent for beer: it is ignored.
insert into responses
select 'success', public.sp_process_bar_order(
  card_id => 'DEMO-0051',
  items => '[{"product_id": "beer", "quantity": 2, "price_cents": 1}, {"product_id": "cup-deposit", "quantity": 2}]',
  point_of_sale_id => 'main-bar',
  client_request_id => 'bo-success',
  staff_user_id => '00000000-0000-4000-8000-00000000b001',
  expected_total_cents => 1300);

select is(
  pg_temp.pick(pg_temp.response('success'),
    array['ok', 'replayed', 'total_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "replayed": false, "total_cents": 1300, "previous_balance_cents": 5000, "new_balance_cents": 3700}'::jsonb,
  'success: ok, total and balances before and after'
);
select is(
  (pg_temp.response('success') ->> 'order_id')::bigint,
  (select id from festival.bar_orders where client_request_id = 'bo-success'),
  'success: order_id is the bar_orders row'
);
select is(
  (pg_temp.response('success') ->> 'transaction_id')::bigint,
  (select operation_id from festival.bar_orders where client_request_id = 'bo-success'),
  'success: transaction_id is the ledger operation of the order'
);
select is(
  pg_temp.lines(pg_temp.response('success')),
  '[{"product_id": "beer", "quantity": 2, "unit_price_cents": 450, "line_total_cents": 900},
    {"product_id": "cup-deposit", "quantity": 2, "unit_price_cents": 200, "line_total_cents": 400}]'::jsonb,
  'success: lines priced from the menu'
);
select is(
  (pg_temp.response('success') #>> '{lines,0,unit_price_cents}')::bigint,
  450::bigint,
  'a line carrying "price_cents": 1 is charged at the menu price'
);
select is(pg_temp.card_balance('DEMO-0051'), 3700::bigint, 'success: the card account is debited');
select results_eq(
  $$ select * from pg_temp.transfers_of('bo-success') $$,
  $$ values ('card:DEMO-0051', 'bar_revenue:main-bar', 900::bigint, 5000::bigint, 4100::bigint, null::bigint, null::bigint),
            ('card:DEMO-0051', 'deposits_held:festival', 400::bigint, 4100::bigint, 3700::bigint, null::bigint, null::bigint) $$,
  'success: items go to the bar revenue, deposits to deposits held, with the card balance before and after'
);
select is(
  (select t.to_account_id from ledger.transfers t join ledger.operations o on o.id = t.operation_id
   where o.client_request_id = 'bo-success' order by t.id limit 1),
  ledger.system_account_id('bar_revenue', 'main-bar', 'DEMO-0051'),
  'success: the revenue shard is the one chosen for the card'
);
select results_eq(
  $$ select card_id, point_of_sale_id, staff_user_id, total_cents from festival.bar_orders
     where client_request_id = 'bo-success' $$,
  $$ values ('DEMO-0051', 'main-bar', '00000000-0000-4000-8000-00000000b001'::uuid, 1300::bigint) $$,
  'success: one bar_orders row'
);
select results_eq(
  $$ select i.line_number, i.product_id, i.product_kind, i.quantity, i.unit_price_cents, i.line_total_cents
     from festival.bar_order_items i join festival.bar_orders o on o.id = i.order_id
     where o.client_request_id = 'bo-success' order by i.line_number $$,
  $$ values (1::smallint, 'beer', 'item', 2, 450::bigint, 900::bigint),
            (2::smallint, 'cup-deposit', 'deposit', 2, 200::bigint, 400::bigint) $$,
  'success: bar_order_items rows priced from the menu'
);
select results_eq(
  $$ select operation_type, status, error_code, card_id, account_id, amount_cents, balance_before_cents,
       balance_after_cents, operation_id, actor_user_id
     from ops.app_transaction_log where client_request_id = 'bo-success' $$,
  $$ select 'bar_order', 'success', null::text, 'DEMO-0051', c.account_id, 1300::bigint, 5000::bigint, 3700::bigint,
       o.operation_id, '00000000-0000-4000-8000-00000000b001'::uuid
     from festival.cards c, festival.bar_orders o where c.id = 'DEMO-0051' and o.client_request_id = 'bo-success' $$,
  'success: one log row with amount and balances'
);
select results_eq(
  $$ select operation, response from ledger.idempotency_keys where key = 'bo-success' $$,
  $$ select 'bar_order', pg_temp.response('success') $$,
  'success: the response is stored under the key'
);

-- ---------------------------------------------------------------------------------------------
-- An order of returns only credits the card
-- ---------------------------------------------------------------------------------------------

-- Returns need deposits the festival holds: DEMO-0070 buys 10 cups (2000) first. The cups change
-- hands: the returns below come from other cards.
select is(
  (public.sp_process_bar_order('DEMO-0070', '[{"product_id": "cup-deposit", "quantity": 10}]', 'main-bar',
    'bo-cups-sold', '00000000-0000-4000-8000-00000000b001') ->> 'ok')::boolean,
  true,
  'setup: ten cups sold, so the festival holds their deposits'
);

-- DEMO-0003 is empty.
insert into responses
select 'returns', public.sp_process_bar_order('DEMO-0003', '[{"product_id": "cup-return", "quantity": 3}]',
  'beach-bar', 'bo-returns', '00000000-0000-4000-8000-00000000b002');

select is(
  pg_temp.pick(pg_temp.response('returns'),
    array['ok', 'total_cents', 'previous_balance_cents', 'new_balance_cents']) || jsonb_build_object('lines', pg_temp.lines(pg_temp.response('returns'))),
  '{"ok": true, "total_cents": -600, "previous_balance_cents": 0, "new_balance_cents": 600,
    "lines": [{"product_id": "cup-return", "quantity": 3, "unit_price_cents": 200, "line_total_cents": -600}]}'::jsonb,
  'returns only: a negative total credits the card'
);
select is(pg_temp.card_balance('DEMO-0003'), 600::bigint, 'returns only: the card is credited');
select results_eq(
  $$ select * from pg_temp.transfers_of('bo-returns') $$,
  $$ values ('deposits_held:festival', 'card:DEMO-0003', 600::bigint, null::bigint, null::bigint, 0::bigint, 600::bigint) $$,
  'returns only: one transfer from deposits held to the card'
);
select results_eq(
  $$ select o.total_cents, i.product_kind, i.line_total_cents from festival.bar_orders o
     join festival.bar_order_items i on i.order_id = o.id where o.client_request_id = 'bo-returns' $$,
  $$ values (-600::bigint, 'deposit_return', -600::bigint) $$,
  'returns only: order and negative item line recorded'
);

-- ---------------------------------------------------------------------------------------------
-- A return pays for part of the same order (balance smaller than the gross debit)
-- ---------------------------------------------------------------------------------------------

-- DEMO-0053 holds 5000; cocktails 5400 + deposit 200 - returns 800 = 4800, gross debit 5600.
insert into responses
select 'mixed', public.sp_process_bar_order('DEMO-0053',
  '[{"product_id": "cup-return", "quantity": 4}, {"product_id": "cocktail", "quantity": 6}, {"product_id": "cup-deposit", "quantity": 1}]',
  'vip-bar', 'bo-mixed', '00000000-0000-4000-8000-00000000b001');

select is(
  pg_temp.pick(pg_temp.response('mixed'), array['ok', 'total_cents', 'previous_balance_cents', 'new_balance_cents']),
  '{"ok": true, "total_cents": 4800, "previous_balance_cents": 5000, "new_balance_cents": 200}'::jsonb,
  'mixed order: succeeds although the balance is below the gross debit'
);
select is(
  pg_temp.lines(pg_temp.response('mixed')),
  '[{"product_id": "cocktail", "quantity": 6, "unit_price_cents": 900, "line_total_cents": 5400},
    {"product_id": "cup-deposit", "quantity": 1, "unit_price_cents": 200, "line_total_cents": 200},
    {"product_id": "cup-return", "quantity": 4, "unit_price_cents": 200, "line_total_cents": -800}]'::jsonb,
  'mixed order: signed lines'
);
select is(pg_temp.card_balance('DEMO-0053'), 200::bigint, 'mixed order: card balance');
select results_eq(
  $$ select * from pg_temp.transfers_of('bo-mixed') $$,
  $$ values ('deposits_held:festival', 'card:DEMO-0053', 800::bigint, null::bigint, null::bigint, 5000::bigint, 5800::bigint),
            ('card:DEMO-0053', 'bar_revenue:vip-bar', 5400::bigint, 5800::bigint, 400::bigint, null::bigint, null::bigint),
            ('card:DEMO-0053', 'deposits_held:festival', 200::bigint, 400::bigint, 200::bigint, null::bigint, null::bigint) $$,
  'mixed order: the return is credited first, then items and deposits are debited'
);

-- ---------------------------------------------------------------------------------------------
-- Duplicate taps
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'dup-first', public.sp_process_bar_order('DEMO-0058', '[{"product_id": "soda", "quantity": 1}]',
  'main-bar', 'bo-dup-first', '00000000-0000-4000-8000-00000000b001');
insert into responses
select 'err-dup', public.sp_process_bar_order('DEMO-0058', '[{"product_id": "soda", "quantity": 1}]',
  'main-bar', 'bo-err-dup', '00000000-0000-4000-8000-00000000b002');
insert into responses
select 'dup-confirmed', public.sp_process_bar_order('DEMO-0058', '[{"product_id": "soda", "quantity": 1}]',
  'main-bar', 'bo-dup-confirmed', '00000000-0000-4000-8000-00000000b001', confirm_duplicate => true);
insert into responses
select 'dup-other-bar', public.sp_process_bar_order('DEMO-0058', '[{"product_id": "soda", "quantity": 1}]',
  'beach-bar', 'bo-dup-other-bar', '00000000-0000-4000-8000-00000000b001');

select ok((pg_temp.response('dup-first') ->> 'ok')::boolean, 'duplicate taps: the first order succeeds');
select is(
  pg_temp.pick(pg_temp.response('err-dup') -> 'error', array['code', 'previous_order_id', 'previous_client_request_id']),
  jsonb_build_object('code', 'duplicate_tap_suspected',
    'previous_order_id', pg_temp.response('dup-first') -> 'order_id', 'previous_client_request_id', 'bo-dup-first'),
  'duplicate taps: same card, bar and items under another key is duplicate_tap_suspected'
);
select is((pg_temp.response('err-dup') ->> 'ok')::boolean, false, 'duplicate taps: the suspected order is not ok');
select ok((pg_temp.response('dup-confirmed') ->> 'ok')::boolean, 'duplicate taps: confirm_duplicate charges again');
select ok((pg_temp.response('dup-other-bar') ->> 'ok')::boolean, 'duplicate taps: the same order at another bar is not a duplicate');
select is(pg_temp.card_balance('DEMO-0058'), 5000::bigint - 3 * 300, 'duplicate taps: three sodas charged, the suspected one not');

-- ---------------------------------------------------------------------------------------------
-- Business errors: returned, logged, nothing moved
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'err-card-not-found', public.sp_process_bar_order('NOPE-0001', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-err-card-not-found', '00000000-0000-4000-8000-00000000b001');

select ok((public.sp_admin_block_card('DEMO-0054', '00000000-0000-4000-8000-00000000a001', 'bo-block-0054') ->> 'ok')::boolean,
  'setup: DEMO-0054 blocked by the admin');
insert into responses
select 'err-card-blocked', public.sp_process_bar_order('DEMO-0054', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-err-card-blocked', '00000000-0000-4000-8000-00000000b001');

insert into responses
select 'err-product-unknown', public.sp_process_bar_order('DEMO-0055',
  '[{"product_id": "beer", "quantity": 1}, {"product_id": "champagne", "quantity": 1}]',
  'main-bar', 'bo-err-product-unknown', '00000000-0000-4000-8000-00000000b001');

update festival.products set active = false where id = 'water';
insert into responses
select 'err-product-inactive', public.sp_process_bar_order('DEMO-0055', '[{"product_id": "water", "quantity": 1}]',
  'main-bar', 'bo-err-product-inactive', '00000000-0000-4000-8000-00000000b001');

-- DEMO-0056 holds 5000; six cocktails cost 5400.
insert into responses
select 'err-funds', public.sp_process_bar_order('DEMO-0056', '[{"product_id": "cocktail", "quantity": 6}]',
  'main-bar', 'bo-err-funds', '00000000-0000-4000-8000-00000000b001');

insert into responses
select 'err-price', public.sp_process_bar_order('DEMO-0057', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-err-price', '00000000-0000-4000-8000-00000000b001', expected_total_cents => 400);

insert into responses
select 'err-forbidden-cashier', public.sp_process_bar_order('DEMO-0057', '[{"product_id": "soda", "quantity": 1}]',
  'main-bar', 'bo-err-forbidden-cashier', '00000000-0000-4000-8000-00000000c001');
insert into responses
select 'err-forbidden-unknown', public.sp_process_bar_order('DEMO-0057', '[{"product_id": "soda", "quantity": 1}]',
  'main-bar', 'bo-err-forbidden-unknown', '00000000-0000-4000-8000-00000000ffff');

insert into responses
select 'err-pos', public.sp_process_bar_order('DEMO-0057', '[{"product_id": "soda", "quantity": 1}]',
  'no-such-bar', 'bo-err-pos', '00000000-0000-4000-8000-00000000b001');

select is(
  pg_temp.pick(pg_temp.response('err-card-not-found'), array['ok', 'replayed']) || jsonb_build_object('code', pg_temp.response('err-card-not-found') #>> '{error,code}'),
  '{"ok": false, "replayed": false, "code": "card_not_found"}'::jsonb,
  'unknown card: card_not_found'
);
select is(pg_temp.response('err-card-blocked') #>> '{error,code}', 'card_blocked', 'blocked card: card_blocked');
select is(
  pg_temp.pick(pg_temp.response('err-product-unknown') -> 'error', array['code', 'product_id']),
  '{"code": "product_not_found", "product_id": "champagne"}'::jsonb,
  'unknown product: product_not_found naming the product'
);
select is(
  pg_temp.pick(pg_temp.response('err-product-inactive') -> 'error', array['code', 'product_id']),
  '{"code": "product_not_found", "product_id": "water"}'::jsonb,
  'inactive product: product_not_found'
);
select is(
  pg_temp.pick(pg_temp.response('err-funds') -> 'error', array['code', 'balance_cents', 'total_cents']),
  '{"code": "insufficient_funds", "balance_cents": 5000, "total_cents": 5400}'::jsonb,
  'insufficient funds: balance and total in the error'
);
select is(
  pg_temp.pick(pg_temp.response('err-price') -> 'error', array['code', 'expected_total_cents', 'total_cents']),
  '{"code": "price_mismatch", "expected_total_cents": 400, "total_cents": 450}'::jsonb,
  'wrong expected total: price_mismatch with both totals'
);
select is(pg_temp.response('err-forbidden-cashier') #>> '{error,code}', 'forbidden', 'a cashier cannot sell: forbidden');
select is(pg_temp.response('err-forbidden-unknown') #>> '{error,code}', 'forbidden', 'an unknown user cannot sell: forbidden');
select is(pg_temp.response('err-pos') #>> '{error,code}', 'point_of_sale_not_found', 'unknown bar: point_of_sale_not_found');

-- Key reuse: the same key with another payload, and a key first used by a recharge.
insert into responses
select 'err-reused', public.sp_process_bar_order('DEMO-0051', '[{"product_id": "beer", "quantity": 3}]',
  'main-bar', 'bo-success', '00000000-0000-4000-8000-00000000b001');
select ok((public.sp_process_checkpoint_recharge('DEMO-0005', 1000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'bo-cross') ->> 'ok')::boolean, 'setup: a recharge uses key bo-cross');
insert into responses
select 'err-reused-cross', public.sp_process_bar_order('DEMO-0005', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-cross', '00000000-0000-4000-8000-00000000b001');

select is(pg_temp.response('err-reused') #>> '{error,code}', 'idempotency_key_reused',
  'same key, other payload: idempotency_key_reused');
select is(pg_temp.response('err-reused-cross') #>> '{error,code}', 'idempotency_key_reused',
  'same key used by a recharge, then an order: idempotency_key_reused');
select results_eq(
  $$ select operation, response from ledger.idempotency_keys where key in ('bo-success', 'bo-cross') order by key $$,
  $$ select 'checkpoint_recharge', (select response from ledger.idempotency_keys where key = 'bo-cross')
     union all select 'bar_order', pg_temp.response('success') $$,
  'key reuse stores nothing: the original responses stay under their keys'
);
select is(pg_temp.card_balance('DEMO-0005'), 1000::bigint, 'key reuse across operations: the card is not charged');
select is(
  (select count(*) from festival.bar_orders where client_request_id in ('bo-success', 'bo-cross')),
  1::bigint,
  'key reuse: no new order'
);
select results_eq(
  $$ select status, error_code from ops.app_transaction_log
     where client_request_id in ('bo-success', 'bo-cross') and operation_type = 'bar_order' order by id $$,
  $$ values ('success', null::text), ('rejected', 'idempotency_key_reused'), ('rejected', 'idempotency_key_reused') $$,
  'key reuse: logged as rejected'
);

-- Every failure: one failed log row with its code, no operation, no order, no money moved.
select results_eq(
  $$ select client_request_id, status, error_code, count(*) from ops.app_transaction_log
     where client_request_id like 'bo-err-%' group by 1, 2, 3 order by 1 $$,
  $$ values ('bo-err-card-blocked', 'failed', 'card_blocked', 1::bigint),
            ('bo-err-card-not-found', 'failed', 'card_not_found', 1::bigint),
            ('bo-err-dup', 'failed', 'duplicate_tap_suspected', 1::bigint),
            ('bo-err-forbidden-cashier', 'failed', 'forbidden', 1::bigint),
            ('bo-err-forbidden-unknown', 'failed', 'forbidden', 1::bigint),
            ('bo-err-funds', 'failed', 'insufficient_funds', 1::bigint),
            ('bo-err-pos', 'failed', 'point_of_sale_not_found', 1::bigint),
            ('bo-err-price', 'failed', 'price_mismatch', 1::bigint),
            ('bo-err-product-inactive', 'failed', 'product_not_found', 1::bigint),
            ('bo-err-product-unknown', 'failed', 'product_not_found', 1::bigint) $$,
  'each failure writes one failed log row with its error code'
);
select is_empty(
  $$ select 1 from festival.bar_orders where client_request_id like 'bo-err-%' or client_request_id = 'bo-cross' $$,
  'failures leave no bar order'
);
select is_empty(
  $$ select 1 from ledger.operations where client_request_id like 'bo-err-%'
     union all select 1 from ledger.transfers t join ledger.operations o on o.id = t.operation_id
       where o.client_request_id like 'bo-err-%' $$,
  'failures create no ledger operation and no transfer'
);
select results_eq(
  $$ select pg_temp.card_balance(id) from unnest(array['DEMO-0054', 'DEMO-0055', 'DEMO-0056', 'DEMO-0057']) as id $$,
  $$ values (5000::bigint), (5000::bigint), (5000::bigint), (5000::bigint) $$,
  'failures leave the card balances untouched'
);
select results_eq(
  $$ select status from festival.cards where id = 'DEMO-0054' $$,
  $$ values ('blocked') $$,
  'the blocked card stays blocked'
);

-- ---------------------------------------------------------------------------------------------
-- Replay
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'replay', public.sp_process_bar_order(
  card_id => 'DEMO-0051',
  items => '[{"product_id": "beer", "quantity": 2, "price_cents": 1}, {"product_id": "cup-deposit", "quantity": 2}]',
  point_of_sale_id => 'main-bar',
  client_request_id => 'bo-success',
  staff_user_id => '00000000-0000-4000-8000-00000000b001',
  expected_total_cents => 1300);

select is(pg_temp.response('replay') - 'replayed', pg_temp.response('success') - 'replayed',
  'replay: the stored response, unchanged');
select is(pg_temp.response('replay') -> 'replayed', 'true'::jsonb, 'replay: marked replayed');
select is(pg_temp.card_balance('DEMO-0051'), 3700::bigint, 'replay: the card is not charged again');
select is(
  (select count(*) from pg_temp.transfers_of('bo-success'))
    + (select count(*) from festival.bar_orders where client_request_id = 'bo-success'),
  3::bigint,
  'replay: no new transfer and no new order'
);
select is(
  (select status from ops.app_transaction_log where client_request_id = 'bo-success' order by id desc limit 1),
  'replayed',
  'replay: logged as replayed'
);

-- A business failure is a recorded outcome: it replays even once the card could pay.
select ok((public.sp_process_checkpoint_recharge('DEMO-0056', 5000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'bo-topup-0056') ->> 'ok')::boolean, 'setup: DEMO-0056 topped up to 10000');
insert into responses
select 'replay-funds', public.sp_process_bar_order('DEMO-0056', '[{"product_id": "cocktail", "quantity": 6}]',
  'main-bar', 'bo-err-funds', '00000000-0000-4000-8000-00000000b001');

select is(pg_temp.response('replay-funds') - 'replayed', pg_temp.response('err-funds') - 'replayed',
  'replayed failure: the same insufficient_funds response');
select is(pg_temp.response('replay-funds') -> 'replayed', 'true'::jsonb, 'replayed failure: marked replayed');
select is(pg_temp.card_balance('DEMO-0056'), 10000::bigint, 'replayed failure: nothing charged');
select is_empty($$ select 1 from festival.bar_orders where client_request_id = 'bo-err-funds' $$,
  'replayed failure: still no order');

-- ---------------------------------------------------------------------------------------------
-- Invalid arguments raise 22023 and record nothing
-- ---------------------------------------------------------------------------------------------

select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', null, '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'null client_request_id');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', '', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'empty client_request_id');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', repeat('k', 256), '00000000-0000-4000-8000-00000000b001') $$, '22023', null, '256-character client_request_id');
select throws_ok($$ select public.sp_process_bar_order('DEMO 0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-bad-card-space', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'card id with a space');
select throws_ok($$ select public.sp_process_bar_order('DEMO/0060''', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-bad-card-chars', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'card id with / and quote');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '{"product_id": "beer", "quantity": 1}',
  'main-bar', 'bo-bad-object', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'items not an array');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[]',
  'main-bar', 'bo-bad-empty', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'empty items');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060',
  (select jsonb_agg(jsonb_build_object('product_id', 'product-' || n, 'quantity', 1)) from generate_series(1, 51) as n),
  'main-bar', 'bo-bad-51-lines', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, '51 lines');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 0}]',
  'main-bar', 'bo-bad-quantity-0', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'quantity 0');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 100}]',
  'main-bar', 'bo-bad-quantity-100', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'quantity 100');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1.5}]',
  'main-bar', 'bo-bad-quantity-fraction', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'quantity 1.5');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": "2"}]',
  'main-bar', 'bo-bad-quantity-string', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'quantity "2" (a string)');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060',
  '[{"product_id": "beer", "quantity": 1}, {"product_id": "beer", "quantity": 2}]',
  'main-bar', 'bo-bad-duplicate-lines', '00000000-0000-4000-8000-00000000b001') $$, '22023', null, 'two lines for one product');
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-bad-staff', null) $$, '22023', null, 'null staff');
select is_empty(
  $$ select 1 from ops.app_transaction_log where client_request_id like 'bo-bad-%' or client_request_id is null
       or client_request_id = '' or length(client_request_id) > 255
     union all select 1 from ledger.idempotency_keys where key like 'bo-bad-%'
     union all select 1 from festival.bar_orders where client_request_id like 'bo-bad-%' $$,
  'invalid arguments record nothing'
);
select is(pg_temp.card_balance('DEMO-0060'), 5000::bigint, 'invalid arguments move no money');
select is(
  public.sp_process_bar_order('DEMO-0059', '[{"product_id": "beer", "quantity": 99}]', 'main-bar', repeat('k', 255),
    '00000000-0000-4000-8000-00000000b001') #>> '{error,code}',
  'insufficient_funds',
  'boundaries: a 255-character key and quantity 99 are accepted'
);

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------

set local role anon;
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-role-anon', '00000000-0000-4000-8000-00000000b001') $$, '42501', null, 'anon cannot execute');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
  'main-bar', 'bo-role-authenticated', '00000000-0000-4000-8000-00000000b001') $$, '42501', null,
  'authenticated cannot execute');
reset role;
set local role service_role;
select is(
  public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 1}]',
    'main-bar', 'bo-role-service', '00000000-0000-4000-8000-00000000b001') ->> 'ok',
  'true',
  'service_role can execute'
);
reset role;
select is(pg_temp.card_balance('DEMO-0060'), 4550::bigint, 'only the service_role order was charged');

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
  $$ values ('bar_revenue:beach-bar', 300::bigint),
            ('bar_revenue:main-bar', 900::bigint + 2 * 300 + 450),
            ('bar_revenue:vip-bar', 5400::bigint),
            ('cash_drawer:entrance', -6000::bigint),
            ('deposits_held:festival', 400::bigint + 2000 - 600 - 800 + 200) $$,
  'system accounts moved by exactly the successful orders (the cups sold for the returns included) and the two setup recharges'
);
select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger_reconcile() finds no discrepancy');

select * from finish();
rollback;
