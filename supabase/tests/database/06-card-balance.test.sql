-- public.sp_card_balance: status, balance and the newest movements of a card. Staff read any
-- card with locations; everybody else needs the card's PIN, sees no locations, and is locked out
-- for a while after too many wrong PINs.
begin;
create extension if not exists pgtap with schema extensions;
select plan(28);

create function pg_temp.staff_read(p_card_id text, p_movement_limit integer default 20) returns jsonb
language sql as $$
  select public.sp_card_balance(p_card_id, reader_user_id => '00000000-0000-4000-8000-00000000b001',
    movement_limit => p_movement_limit)
$$;
create function pg_temp.pin_read(p_card_id text, p_pin text) returns jsonb
language sql as $$ select public.sp_card_balance(p_card_id, p_pin) $$;

select public.sp_process_bar_order('DEMO-0060', '[{"product_id": "beer", "quantity": 2}, {"product_id": "cup-deposit", "quantity": 2}]',
  'beach-bar', 'balance-order-1', '00000000-0000-4000-8000-00000000b001');
select public.sp_process_checkpoint_recharge('DEMO-0060', 1000, 'card', 'camping',
  '00000000-0000-4000-8000-00000000c002', 'balance-recharge-1');

-- Staff
select is(pg_temp.staff_read('DEMO-0060') - 'movements',
  '{"ok": true, "card_id": "DEMO-0060", "status": "active", "balance_cents": 4700}'::jsonb,
  'staff: status and balance: 5000 - 900 - 400 + 1000');
select is(jsonb_array_length(pg_temp.staff_read('DEMO-0060') -> 'movements'), 4,
  'staff: one movement per transfer: seed recharge, beers, deposits, recharge');
select is(
  (select jsonb_agg(m - 'at') from jsonb_array_elements(pg_temp.staff_read('DEMO-0060') -> 'movements') m),
  '[
    {"kind": "checkpoint_recharge", "location": "Camping", "amount_cents": 1000, "balance_after_cents": 4700},
    {"kind": "bar_order", "location": "Beach Bar", "amount_cents": -400, "balance_after_cents": 3700},
    {"kind": "bar_order", "location": "Beach Bar", "amount_cents": -900, "balance_after_cents": 4100},
    {"kind": "checkpoint_recharge", "location": "Entrance", "amount_cents": 5000, "balance_after_cents": 5000}
  ]'::jsonb,
  'staff: movements newest first, signed from the card''s side, with the bar or checkpoint name');
select is(jsonb_array_length(pg_temp.staff_read('DEMO-0060', 2) -> 'movements'), 2, 'movement_limit caps the list');
select is(pg_temp.staff_read('DEMO-0001') -> 'movements', '[]'::jsonb, 'an empty card has no movements');
select is(pg_temp.staff_read('NO-SUCH-CARD') #>> '{error,code}', 'card_not_found', 'unknown card: card_not_found');
select public.sp_admin_block_card('DEMO-0061', '00000000-0000-4000-8000-00000000a001', 'balance-block');
select is(pg_temp.staff_read('DEMO-0061') ->> 'status', 'blocked', 'a blocked card shows its status');

-- The card's PIN
select is(pg_temp.pin_read('DEMO-0060', '0060') - 'movements',
  '{"ok": true, "card_id": "DEMO-0060", "status": "active", "balance_cents": 4700}'::jsonb,
  'PIN: the printed PIN reads the card');
select is(
  (select jsonb_agg(m - 'at') from jsonb_array_elements(pg_temp.pin_read('DEMO-0060', '0060') -> 'movements') m),
  '[
    {"kind": "checkpoint_recharge", "amount_cents": 1000, "balance_after_cents": 4700},
    {"kind": "bar_order", "amount_cents": -400, "balance_after_cents": 3700},
    {"kind": "bar_order", "amount_cents": -900, "balance_after_cents": 4100},
    {"kind": "checkpoint_recharge", "amount_cents": 5000, "balance_after_cents": 5000}
  ]'::jsonb,
  'PIN: movements without locations');
select is(public.sp_card_balance('DEMO-0060') #>> '{error,code}', 'invalid_pin', 'no PIN and no staff: invalid_pin');
select is(
  public.sp_card_balance('DEMO-0060', reader_user_id => '00000000-0000-4000-8000-00000000ffff') #>> '{error,code}',
  'invalid_pin', 'a signed-in user who is not staff needs the PIN too');
select is(pg_temp.pin_read('NO-SUCH-CARD', '1234') #>> '{error,code}', 'card_not_found', 'PIN on an unknown card: card_not_found');
select is(pg_temp.pin_read('DEMO-0062', '0063') - 'message',
  '{"ok": false, "replayed": false, "error": {"code": "invalid_pin", "message": "wrong PIN for this card", "card_id": "DEMO-0062", "attempts_remaining": 4}}'::jsonb - 'message',
  'wrong PIN: invalid_pin with the attempts left');
select is((select pin_failed_attempts from festival.cards where id = 'DEMO-0062'), 1, 'wrong PIN: counted on the card');
select is(pg_temp.pin_read('DEMO-0062', '0062') ->> 'ok', 'true', 'right PIN after a wrong one reads the card');
select is((select pin_failed_attempts from festival.cards where id = 'DEMO-0062'), 0, 'right PIN resets the count');

-- Five wrong PINs in a row lock the card for pin_lockout_seconds, whatever PIN comes next.
select pg_temp.pin_read('DEMO-0063', '1111') from generate_series(1, 4);
select is(pg_temp.pin_read('DEMO-0063', '2222') #>> '{error,attempts_remaining}', '0', 'fifth wrong PIN: no attempts left');
select is(pg_temp.pin_read('DEMO-0063', '0063') #>> '{error,code}', 'pin_locked', 'locked: even the right PIN is refused');
select ok((pg_temp.pin_read('DEMO-0063', '0063') #>> '{error,retry_after_seconds}')::integer between 1 and 900,
  'locked: says when to retry');
select is(pg_temp.staff_read('DEMO-0063') ->> 'ok', 'true', 'locked: staff still read the card');
update festival.cards set pin_locked_until = now() - interval '1 second' where id = 'DEMO-0063';
select is(pg_temp.pin_read('DEMO-0063', '0063') ->> 'ok', 'true', 'after the lockout the right PIN reads again');
select is((select pin_locked_until from festival.cards where id = 'DEMO-0063'), null, 'and the lockout is cleared');

-- A card registered before PINs existed has none: only staff can read it.
update festival.cards set pin_hash = null where id = 'DEMO-0064';
select is(pg_temp.pin_read('DEMO-0064', '0064') #>> '{error,code}', 'invalid_pin', 'a card without a PIN: no PIN reads it');

select throws_ok($$ select public.sp_card_balance('bad id') $$, '22023', null, 'invalid card id raises 22023');
select throws_ok($$ select pg_temp.staff_read('DEMO-0060', 101) $$, '22023', null, 'movement_limit above 100 raises');
select throws_ok($$ select public.sp_card_balance('DEMO-0060', repeat('1', 65)) $$, '22023', null, 'a PIN above 64 characters raises');

set local role anon;
select throws_ok($$ select public.sp_card_balance('DEMO-0060', '0060') $$, '42501', null, 'anon cannot execute sp_card_balance');
reset role;
set local role authenticated;
select throws_ok($$ select public.sp_card_balance('DEMO-0060', '0060') $$, '42501', null, 'authenticated cannot execute sp_card_balance');
reset role;

select * from finish();
rollback;
