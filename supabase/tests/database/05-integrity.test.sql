-- Integrity guards that replace foreign keys on the hot tables: reference rows are never deleted,
-- order history is append-only, orphans are reported by ledger_reconcile(); and returns cannot
-- push a card above its maximum balance.
begin;
create extension if not exists pgtap with schema extensions;
select plan(16);

select throws_ok($$ delete from festival.cards where id = 'DEMO-0001' $$, '42501', null,
  'cards are never deleted');
select throws_ok($$ delete from festival.products where id = 'beer' $$, '42501', null,
  'products are never deleted (deactivate them)');
select throws_ok($$ delete from festival.points_of_sale where id = 'vip-bar' $$, '42501', null,
  'points of sale are never deleted');
select throws_ok($$ delete from festival.checkpoints where id = 'camping' $$, '42501', null,
  'checkpoints are never deleted');
select throws_ok($$ delete from festival.staff where user_id = '00000000-0000-4000-8000-00000000b002' $$, '42501', null,
  'staff are never deleted (deactivate them)');
select throws_ok($$ delete from ledger.accounts where kind = 'system' and system_purpose = 'promotions' $$, '42501', null,
  'accounts are never deleted');

select ok((public.sp_process_bar_order('DEMO-0090', '[{"product_id": "beer", "quantity": 1}]', 'vip-bar',
  'integrity-order', '00000000-0000-4000-8000-00000000b001') ->> 'ok')::boolean, 'an order to look at');
select throws_ok($$ update festival.bar_orders set total_cents = 0 where client_request_id = 'integrity-order' $$,
  '42501', null, 'bar orders are append-only');
select throws_ok(
  $$ delete from festival.bar_order_items where order_id = (select id from festival.bar_orders where client_request_id = 'integrity-order') $$,
  '42501', null, 'bar order items are append-only');

-- Returns at the card maximum: limit_exceeded, nothing moves.
select public.sp_process_checkpoint_recharge('DEMO-0091', 25000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'integrity-fill-1');
select public.sp_process_checkpoint_recharge('DEMO-0091', 20000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'integrity-fill-2');
select is(
  public.sp_process_bar_order('DEMO-0091', '[{"product_id": "cup-return", "quantity": 1}]', 'main-bar',
    'integrity-return-over-max', '00000000-0000-4000-8000-00000000b001') #>> '{error,code}',
  'limit_exceeded', 'a return that would put the card above 50000 cents is limit_exceeded');
select is((select a.balance_cents from festival.cards c join ledger.accounts a on a.id = c.account_id where c.id = 'DEMO-0091'),
  50000::bigint, 'the card stays at its maximum');

-- A block or unblock retried after its idempotency key expired does not run again.
select ok((public.sp_admin_unblock_card('DEMO-0092', '00000000-0000-4000-8000-00000000a001', 'integrity-old-unblock')
  ->> 'ok')::boolean, 'an unblock under a key');
select public.sp_admin_block_card('DEMO-0092', '00000000-0000-4000-8000-00000000a001', 'integrity-dispute-block', 'dispute');
delete from ledger.idempotency_keys where key = 'integrity-old-unblock';
select is(public.sp_admin_unblock_card('DEMO-0092', '00000000-0000-4000-8000-00000000a001', 'integrity-old-unblock')
  #>> '{error,code}', 'idempotency_key_reused', 'the old unblock, retried after its key expired, is refused');
select is((select status from festival.cards where id = 'DEMO-0092'), 'blocked', 'the card stays blocked');

select is_empty($$ select * from public.ledger_reconcile() $$, 'ledger reconciles before tampering');

-- A transfer pointing at an account that does not exist is reported (no FK would stop a manual insert).
insert into ledger.transfers (operation_id, from_account_id, to_account_id, amount_cents)
values ((select max(id) from ledger.operations), -1, (select min(id) from ledger.accounts where kind = 'system'), 1);
select ok(exists (select 1 from public.ledger_reconcile() where check_name = 'orphan_transfer'),
  'ledger_reconcile() reports a transfer to or from a missing account');

select * from finish();
rollback;
