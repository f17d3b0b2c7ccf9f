-- public.sp_card_balance: status, balance and the newest movements of a card, read-only.
begin;
create extension if not exists pgtap with schema extensions;
select plan(11);

select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 2}, {"product_id": "cup-deposit", "quantity": 2}]',
  'beach-bar', 'balance-order-1', '00000000-0000-4000-8000-00000000b001');
select public.sp_process_checkpoint_recharge('DEMO-0060', 1000, 'card', 'camping',
  '00000000-0000-4000-8000-00000000c002', 'balance-recharge-1');

select is(public.sp_card_balance('DEMO-0060') - 'movements',
  '{"ok": true, "card_id": "DEMO-0060", "status": "active", "balance_cents": 4700}'::jsonb,
  'status and balance: 5000 - 900 - 400 + 1000');
select is(jsonb_array_length(public.sp_card_balance('DEMO-0060') -> 'movements'), 4,
  'one movement per transfer: seed recharge, beers, deposits, recharge');
select is(
  (select jsonb_agg(m - 'at') from jsonb_array_elements(public.sp_card_balance('DEMO-0060') -> 'movements') m),
  '[
    {"kind": "checkpoint_recharge", "location": "Camping", "amount_cents": 1000, "balance_after_cents": 4700},
    {"kind": "bar_order", "location": "Beach Bar", "amount_cents": -400, "balance_after_cents": 3700},
    {"kind": "bar_order", "location": "Beach Bar", "amount_cents": -900, "balance_after_cents": 4100},
    {"kind": "checkpoint_recharge", "location": "Entrance", "amount_cents": 5000, "balance_after_cents": 5000}
  ]'::jsonb,
  'movements newest first, signed from the card''s side, with the bar or checkpoint name');
select is(jsonb_array_length(public.sp_card_balance('DEMO-0060', 2) -> 'movements'), 2, 'movement_limit caps the list');
select is(public.sp_card_balance('DEMO-0001') -> 'movements', '[]'::jsonb, 'an empty card has no movements');
select is(public.sp_card_balance('NO-SUCH-CARD') #>> '{error,code}', 'card_not_found', 'unknown card: card_not_found');

select public.sp_admin_block_card('DEMO-0061', '00000000-0000-4000-8000-00000000a001', 'balance-block');
select is(public.sp_card_balance('DEMO-0061') ->> 'status', 'blocked', 'a blocked card shows its status');

select throws_ok($$ select public.sp_card_balance('bad id') $$, '22023', null, 'invalid card id raises 22023');
select throws_ok($$ select public.sp_card_balance('DEMO-0060', 101) $$, '22023', null, 'movement_limit above 100 raises');

set local role anon;
select throws_ok($$ select public.sp_card_balance('DEMO-0060') $$, '42501', null, 'anon cannot execute sp_card_balance');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_card_balance('DEMO-0060') $$, '42501', null, 'authenticated cannot execute sp_card_balance');
reset role;

select * from finish();
rollback;
