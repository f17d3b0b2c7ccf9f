-- Cup returns cannot mint money: the festival never takes back more cups than it sold (the
-- deposits it holds never go below zero), cups may change hands between cards, and each card may
-- return at most cup_returns_per_card_hour_max cups an hour.
begin;
create extension if not exists pgtap with schema extensions;
select plan(19);

create function pg_temp.sale(p_card_id text, p_items jsonb, p_key text) returns jsonb language sql as $$
  select public.sp_process_bar_order(p_card_id, p_items, 'main-bar', p_key, '00000000-0000-4000-8000-00000000b001',
    confirm_duplicate => true)
$$;
create function pg_temp.balance(p_card_id text) returns bigint language sql as $$
  select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = p_card_id
$$;
create function pg_temp.deposits_held() returns bigint language sql as $$
  select coalesce(sum(balance_cents), 0)::bigint from ledger.account_balances where system_purpose = 'deposits_held'
$$;
create temp table before as select (select count(*) from ledger.transfers) as transfers, pg_temp.deposits_held() as held;

select is(pg_temp.deposits_held(), 0::bigint, 'the demo festival starts with no deposit held');

-- A return with nothing outstanding: refused, nothing moves, recorded under its key.
select is(pg_temp.sale('DEMO-0081', '[{"product_id": "cup-return", "quantity": 1}]', 'cup-nothing') #>> '{error,code}',
  'no_deposit_outstanding', 'a return when the festival holds no deposit is no_deposit_outstanding');
select is(pg_temp.balance('DEMO-0081'), 5000::bigint, 'refused return: the card is not credited');
select is((select count(*) from ledger.transfers), (select transfers from before), 'refused return: no transfer');
select is(pg_temp.sale('DEMO-0081', '[{"product_id": "cup-return", "quantity": 1}]', 'cup-nothing') ->> 'replayed',
  'true', 'refused return: the refusal is the stored answer for its key');
select is((select status from ops.app_transaction_log where client_request_id = 'cup-nothing' order by id limit 1),
  'failed', 'refused return: logged as a failed attempt');

-- Cups change hands: one card pays the deposits, another returns a cup.
select is(pg_temp.sale('DEMO-0082', '[{"product_id": "cup-deposit", "quantity": 2}]', 'cup-bought') ->> 'ok', 'true',
  'two cups sold');
select is(pg_temp.sale('DEMO-0083', '[{"product_id": "cup-return", "quantity": 1}]', 'cup-handed-on') ->> 'new_balance_cents',
  '5200', 'another card returns one of them and is credited');
select is(pg_temp.deposits_held(), 200::bigint, 'one deposit is still held');
select is(pg_temp.sale('DEMO-0084', '[{"product_id": "cup-return", "quantity": 2}]', 'cup-too-many') #>> '{error,code}',
  'no_deposit_outstanding', 'returning two cups when one is held is refused whole');
select is(pg_temp.balance('DEMO-0084'), 5000::bigint, 'the refused card is unchanged');
-- A swap in one order (a new cup with a drink, the old cup back) always works.
select is(
  pg_temp.sale('DEMO-0084', '[{"product_id": "beer", "quantity": 1}, {"product_id": "cup-deposit", "quantity": 1}, {"product_id": "cup-return", "quantity": 2}]',
    'cup-swap') ->> 'total_cents',
  '250', 'a return paid by a deposit of the same order: 450 + 200 - 400');
select is(pg_temp.deposits_held(), 0::bigint, 'every cup sold is back');

-- Each shard of the deposits held equals its counter row and is never negative.
select is_empty($$
  select a.shard from ledger.accounts a
  join ledger.account_balances b on b.account_id = a.id
  join festival.deposits_outstanding d on d.shard = a.shard
  where a.system_purpose = 'deposits_held' and (b.balance_cents <> d.held_cents or b.balance_cents < 0)
$$, 'each deposits-held shard equals festival.deposits_outstanding and is not negative');

-- The hourly limit per card.
update festival.settings set cup_returns_per_card_hour_max = 3;
select is(pg_temp.sale('DEMO-0085', '[{"product_id": "cup-deposit", "quantity": 10}]', 'cup-stock') ->> 'ok', 'true',
  'ten cups sold');
select is(pg_temp.sale('DEMO-0086', '[{"product_id": "cup-return", "quantity": 3}]', 'cup-limit-1') ->> 'ok', 'true',
  'three returns within the hourly limit');
select is(pg_temp.sale('DEMO-0086', '[{"product_id": "cup-return", "quantity": 1}]', 'cup-limit-2') #>> '{error,code}',
  'limit_exceeded', 'a fourth cup within the hour is limit_exceeded');
select is(pg_temp.sale('DEMO-0087', '[{"product_id": "cup-return", "quantity": 1}]', 'cup-limit-3') ->> 'ok', 'true',
  'the limit is per card: another card may return');

select is_empty('select * from public.ledger_reconcile()', 'the ledger reconciles');

select * from finish();
rollback;
