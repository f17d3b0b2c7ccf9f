-- Demo festival for local development, demos and tests (docs/architecture.md §10). The identifiers are stable:
-- the README, the demo tokens and the tests rely on them. Loaded on a new local database only.

-- Staff are auth users first (on a hosted project they sign in through Supabase Auth).
insert into auth.users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data, email_confirmed_at)
values
  ('00000000-0000-4000-8000-00000000a001', 'authenticated', 'authenticated', 'admin@festival.test', '{}', '{"name": "Ada Admin"}', now()),
  ('00000000-0000-4000-8000-00000000b001', 'authenticated', 'authenticated', 'bar1@festival.test', '{}', '{"name": "Bob Bartender"}', now()),
  ('00000000-0000-4000-8000-00000000b002', 'authenticated', 'authenticated', 'bar2@festival.test', '{}', '{"name": "Bea Bartender"}', now()),
  ('00000000-0000-4000-8000-00000000c001', 'authenticated', 'authenticated', 'cash1@festival.test', '{}', '{"name": "Cid Cashier"}', now()),
  ('00000000-0000-4000-8000-00000000c002', 'authenticated', 'authenticated', 'cash2@festival.test', '{}', '{"name": "Cat Cashier"}', now())
on conflict (id) do nothing;

insert into festival.staff (user_id, role, display_name) values
  ('00000000-0000-4000-8000-00000000a001', 'admin', 'Ada Admin'),
  ('00000000-0000-4000-8000-00000000b001', 'bartender', 'Bob Bartender'),
  ('00000000-0000-4000-8000-00000000b002', 'bartender', 'Bea Bartender'),
  ('00000000-0000-4000-8000-00000000c001', 'cashier', 'Cid Cashier'),
  ('00000000-0000-4000-8000-00000000c002', 'cashier', 'Cat Cashier');

insert into festival.points_of_sale (id, name) values
  ('main-bar', 'Main Bar'),
  ('beach-bar', 'Beach Bar'),
  ('vip-bar', 'VIP Bar');

insert into festival.checkpoints (id, name) values
  ('entrance', 'Entrance'),
  ('camping', 'Camping');

insert into festival.products (id, name, price_cents, category, kind) values
  ('beer', 'Beer', 450, 'drinks', 'item'),
  ('soda', 'Soda', 300, 'drinks', 'item'),
  ('water', 'Water', 200, 'drinks', 'item'),
  ('cocktail', 'Cocktail', 900, 'drinks', 'item'),
  ('cup-deposit', 'Cup deposit', 200, 'deposits', 'deposit'),
  ('cup-return', 'Cup return', 200, 'deposits', 'deposit_return');

-- Cards DEMO-0001 … DEMO-0100, registered the way an admin does it.
select public.sp_admin_register_cards(
  (select array_agg('DEMO-' || lpad(n::text, 4, '0')) from generate_series(1, 100) as n),
  '00000000-0000-4000-8000-00000000a001',
  'seed-register-demo-cards');

-- DEMO-0051 … DEMO-0100 hold 5000 cents, put there by cash recharges so that the ledger reconciles.
select public.sp_process_checkpoint_recharge(
  'DEMO-' || lpad(n::text, 4, '0'), 5000, 'cash', 'entrance',
  '00000000-0000-4000-8000-00000000c001', 'seed-recharge-DEMO-' || lpad(n::text, 4, '0'))
from generate_series(51, 100) as n;


-- Top-up packages: the card receives price plus bonus (the bonus comes from promotions).
insert into festival.topup_packages (code, name, price_cents, bonus_cents) values
  ('MINI', 'Mini', 2000, 0),
  ('MIDI', 'Midi', 5000, 250),
  ('MAXI', 'Maxi', 10000, 1000);

-- Demo card DEMO-NNNN has the PIN NNNN (printed on real cards; registration gives random ones).
update festival.cards set pin_hash = festival.hash_card_pin(substr(id, 6)) where id like 'DEMO-%';

-- Credit packages (practitioner credits): the only thing a credit purchase can buy.
insert into credits.credit_packages (code, credits, price_cents, currency) values
  ('CREDITS-10', 10, 1000, 'EUR'),
  ('CREDITS-50', 50, 4500, 'EUR'),
  ('CREDITS-100', 100, 8000, 'EUR');
