-- sp_metrics: every family the metrics function exposes, each equal to the database it reads.
begin;
create extension if not exists pgtap with schema extensions;
select plan(8);

create function pg_temp.family(p_name text) returns jsonb language sql stable as $$
  select m from jsonb_array_elements(public.sp_metrics() -> 'metrics') m where m ->> 'name' = p_name
$$;
create function pg_temp.total(p_name text) returns numeric language sql stable as $$
  select coalesce(sum((s ->> 'value')::numeric), 0) from jsonb_array_elements(pg_temp.family(p_name) -> 'samples') s
$$;

-- Some activity: a sale with a deposit, a duplicate tap, a replay, a refusal.
select public.sp_process_bar_order('DEMO-0070', '[{"product_id": "beer", "quantity": 2}, {"product_id": "cup-deposit", "quantity": 1}]',
  'beach-bar', 'metrics-order-1', '00000000-0000-4000-8000-00000000b001');
select public.sp_process_bar_order('DEMO-0070', '[{"product_id": "beer", "quantity": 2}, {"product_id": "cup-deposit", "quantity": 1}]',
  'beach-bar', 'metrics-order-2', '00000000-0000-4000-8000-00000000b001');
select public.sp_process_bar_order('DEMO-0070', '[{"product_id": "beer", "quantity": 2}, {"product_id": "cup-deposit", "quantity": 1}]',
  'beach-bar', 'metrics-order-1', '00000000-0000-4000-8000-00000000b001');
select public.sp_process_bar_order('DEMO-0001', '[{"product_id": "beer", "quantity": 1}]',
  'beach-bar', 'metrics-order-3', '00000000-0000-4000-8000-00000000b001');

select is(jsonb_array_length(public.sp_metrics() -> 'metrics'), 14, 'fourteen metric families');
select is(pg_temp.total('festival_bar_sales_cents_total'),
  (select sum(line_total_cents) from festival.bar_order_items where product_kind = 'item')::numeric,
  'sales: the items sold, deposits excluded');
select is((select (s ->> 'value')::numeric from jsonb_array_elements(pg_temp.family('festival_bar_orders_total') -> 'samples') s
  where s #>> '{labels,point_of_sale}' = 'beach-bar' and s #>> '{labels,outcome}' = 'replayed'), 1::numeric,
  'orders by bar and outcome: the replay');
select is(pg_temp.total('festival_duplicate_taps_total'),
  (select count(*) from ops.app_transaction_log where error_code = 'duplicate_tap_suspected')::numeric, 'duplicate taps');
select is(pg_temp.total('failed_attempts_total'),
  (select count(*) from ops.app_transaction_log where status in ('failed', 'rejected'))::numeric, 'failed attempts');
select is(pg_temp.total('festival_card_liabilities_cents'),
  (select sum(a.balance_cents) from festival.cards c join ledger.accounts a on a.id = c.account_id)::numeric, 'card liabilities');
select is(pg_temp.total('festival_deposits_held_cents'), (select sum(held_cents) from festival.deposits_outstanding)::numeric,
  'deposits held');
select is(pg_temp.total('ledger_reconcile_discrepancies'), 0::numeric, 'no reconcile discrepancy');

select * from finish();
rollback;
