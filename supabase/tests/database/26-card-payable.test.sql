-- festival.card_payable_cents: the unspent bonus of top-up packages is never paid out.
begin;
create extension if not exists pgtap with schema extensions;
select plan(6);

select is((select row(p.payable_cents, p.forfeited_bonus_cents)::text
  from festival.card_payable_cents('DEMO-0051', 5000) p), '(5000,0)',
  'a card topped up without a package: the whole balance is payable');

select public.sp_process_checkpoint_recharge('DEMO-0002', null, 'card', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'payable-maxi', 'MAXI');
select is(festival.card_bonus_received_cents('DEMO-0002'), 1000::bigint, 'MAXI gave a 1000 bonus');
select is((select row(p.payable_cents, p.forfeited_bonus_cents)::text
  from festival.card_payable_cents('DEMO-0002', 11000) p), '(10000,1000)',
  'untouched MAXI: the 10000 paid is payable, the 1000 bonus is forfeited');
select is((select row(p.payable_cents, p.forfeited_bonus_cents)::text
  from festival.card_payable_cents('DEMO-0002', 600) p), '(0,600)',
  'the bonus counts as spent last: 600 left of a MAXI is all bonus');
select is((select row(p.payable_cents, p.forfeited_bonus_cents)::text
  from festival.card_payable_cents('DEMO-0002', 0) p), '(0,0)', 'an empty card pays and forfeits nothing');

select public.sp_process_checkpoint_recharge('DEMO-0002', null, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'payable-midi', 'MIDI');
select is((select row(p.payable_cents, p.forfeited_bonus_cents)::text
  from festival.card_payable_cents('DEMO-0002', 16250) p), '(15000,1250)',
  'bonuses of several packages add up');

select * from finish();
rollback;
