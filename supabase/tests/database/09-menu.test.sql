-- public.sp_menu (what a bar sells, for staff) and public.sp_topup_packages: read-only catalogue.
begin;
create extension if not exists pgtap with schema extensions;
select plan(13);

select is(
  public.sp_menu('main-bar', '00000000-0000-4000-8000-00000000b001') - 'products',
  '{"ok": true, "point_of_sale_id": "main-bar", "name": "Main Bar", "currency": "EUR"}'::jsonb,
  'a bartender reads the main bar: its id, name and the currency');
select is(
  (select jsonb_agg(product ->> 'product_id') from jsonb_array_elements(
    public.sp_menu('main-bar', '00000000-0000-4000-8000-00000000b001') -> 'products') product),
  '["water", "soda", "beer", "cocktail", "cup-deposit", "cup-return"]'::jsonb,
  'every active product: items cheapest first, then deposits and returns');
select is(
  public.sp_menu('main-bar', '00000000-0000-4000-8000-00000000b001') -> 'products' -> 2,
  '{"product_id": "beer", "name": "Beer", "kind": "item", "category": "drinks", "price_cents": 450}'::jsonb,
  'a product line: id, name, kind, category and price in cents');
select is(
  public.sp_menu('vip-bar', '00000000-0000-4000-8000-00000000c001') ->> 'ok', 'true',
  'any active staff member may read a menu (a cashier too)');

update festival.products set active = false where id = 'cocktail';
update festival.products set price_cents = 500 where id = 'beer';
select is(
  (select jsonb_agg(product ->> 'product_id') from jsonb_array_elements(
    public.sp_menu('beach-bar', '00000000-0000-4000-8000-00000000a001') -> 'products') product),
  '["water", "soda", "beer", "cup-deposit", "cup-return"]'::jsonb,
  'an inactive product is not on the menu');
select is(
  public.sp_menu('beach-bar', '00000000-0000-4000-8000-00000000a001') #>> '{products,2,price_cents}', '500',
  'the menu shows the current price');

select is(public.sp_menu('no-such-bar', '00000000-0000-4000-8000-00000000b001') #>> '{error,code}',
  'point_of_sale_not_found', 'unknown bar: point_of_sale_not_found');
update festival.points_of_sale set active = false where id = 'vip-bar';
select is(public.sp_menu('vip-bar', '00000000-0000-4000-8000-00000000b001') #>> '{error,code}',
  'point_of_sale_not_found', 'inactive bar: point_of_sale_not_found');
select is(public.sp_menu('main-bar', '00000000-0000-4000-8000-0000000000ff') #>> '{error,code}',
  'forbidden', 'someone who is not staff: forbidden');
update festival.staff set active = false where user_id = '00000000-0000-4000-8000-00000000b002';
select is(public.sp_menu('main-bar', '00000000-0000-4000-8000-00000000b002') #>> '{error,code}',
  'forbidden', 'inactive staff: forbidden');
select throws_ok($$ select public.sp_menu('', '00000000-0000-4000-8000-00000000b001') $$, '22023', null,
  'an empty bar id raises 22023');

select is(public.sp_topup_packages(),
  '{"ok": true, "currency": "EUR", "packages": [
    {"package_code": "MINI", "name": "Mini", "price_cents": 2000, "bonus_cents": 0},
    {"package_code": "MIDI", "name": "Midi", "price_cents": 5000, "bonus_cents": 250},
    {"package_code": "MAXI", "name": "Maxi", "price_cents": 10000, "bonus_cents": 1000}]}'::jsonb,
  'top-up packages: active ones, cheapest first, with price and bonus');

set local role anon;
select throws_ok($$ select public.sp_menu('main-bar', '00000000-0000-4000-8000-00000000b001') $$, '42501', null,
  'anon cannot execute sp_menu');
reset role;

select * from finish();
rollback;
