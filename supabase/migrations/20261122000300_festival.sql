-- Festival cashless: cards, menu, bars, checkpoints, staff, bar orders and checkpoint recharges.
-- Every balance change goes through the ledger kernel (`ledger.post_transfers`).

create schema if not exists festival;
revoke all on schema festival from public, anon, authenticated;
alter default privileges in schema festival revoke execute on functions from public;

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------

/** One row of deployment settings (limits are business rules: breaking one is limit_exceeded). */
create table festival.settings (
  id boolean primary key default true check (id),
  currency text not null default 'EUR' check (currency ~ '^[A-Z]{3}$'),
  recharge_min_cents bigint not null default 500 check (recharge_min_cents > 0),
  recharge_max_cents bigint not null default 25000,
  card_balance_max_cents bigint not null default 50000,
  duplicate_tap_window_seconds integer not null default 10 check (duplicate_tap_window_seconds >= 0),
  constraint recharge_limits_ordered check (recharge_max_cents >= recharge_min_cents),
  constraint card_maximum_above_recharge_minimum check (card_balance_max_cents >= recharge_min_cents)
);
insert into festival.settings default values;
alter table festival.settings enable row level security;

create table festival.staff (
  -- Staff are deactivated, never deleted: their sales and recharges keep pointing at them.
  user_id uuid primary key references auth.users (id),
  role text not null check (role in ('bartender', 'cashier', 'admin')),
  display_name text not null check (length(display_name) between 1 and 100),
  active boolean not null default true,
  created_at timestamptz not null default now()
);
alter table festival.staff enable row level security;

create table festival.points_of_sale (
  id text primary key check (id ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
  name text not null check (length(name) between 1 and 100),
  active boolean not null default true,
  created_at timestamptz not null default now()
);
alter table festival.points_of_sale enable row level security;

create table festival.checkpoints (
  id text primary key check (id ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
  name text not null check (length(name) between 1 and 100),
  active boolean not null default true,
  created_at timestamptz not null default now()
);
alter table festival.checkpoints enable row level security;

create table festival.products (
  id text primary key check (id ~ '^[a-z0-9][a-z0-9-]{0,63}$'),
  name text not null check (length(name) between 1 and 100),
  price_cents bigint not null check (price_cents > 0),
  category text not null default 'drinks' check (length(category) between 1 and 50),
  -- item: sold; deposit: charged and held (returnable cup); deposit_return: a deposit paid back.
  kind text not null check (kind in ('item', 'deposit', 'deposit_return')),
  active boolean not null default true,
  created_at timestamptz not null default now()
);
alter table festival.products enable row level security;

/** Top-up packages: the card receives price plus bonus; the bonus is paid from promotions. */
create table festival.topup_packages (
  code text primary key check (code ~ '^[A-Z0-9][A-Z0-9_-]{0,31}$'),
  name text not null check (length(name) between 1 and 100),
  price_cents bigint not null check (price_cents > 0),
  bonus_cents bigint not null default 0 check (bonus_cents >= 0),
  active boolean not null default true,
  created_at timestamptz not null default now()
);
alter table festival.topup_packages enable row level security;

-- NFC card UIDs: hex with optional separators, or printed ids like DEMO-0001.
create function festival.is_valid_card_id(p_card_id text) returns boolean
language sql immutable parallel safe
set search_path = ''
as $$ select p_card_id ~ '^[A-Za-z0-9][A-Za-z0-9:_-]{0,63}$' $$;

create table festival.cards (
  id text primary key check (festival.is_valid_card_id(id)),
  account_id bigint not null unique references ledger.accounts (id),
  status text not null default 'active' check (status in ('active', 'blocked')),
  holder_label text check (length(holder_label) <= 100),
  blocked_reason text check (length(blocked_reason) <= 500),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table festival.cards enable row level security;

-- Bar orders and their items are written by every sale. Their references (operation, card, bar,
-- staff, product) are checked by sp_process_bar_order and the referenced rows can never be deleted
-- (triggers below), so they carry no foreign keys: each FK check costs a query and a share lock
-- on a row every sale references (the bar, the bartender, the beer), which measured 40% of a sale.
/**
 * Every block and unblock, kept for good under its request id: a retry that arrives after the
 * idempotency key expired must not run again (an old unblock would reactivate a card blocked
 * since, for a dispute say).
 */
create table festival.card_status_changes (
  id bigint generated always as identity primary key,
  card_id text not null references festival.cards (id),
  status text not null check (status in ('active', 'blocked')),
  previous_status text not null check (previous_status in ('active', 'blocked')),
  reason text,
  staff_user_id uuid not null references festival.staff (user_id),
  client_request_id text not null unique check (length(client_request_id) between 1 and 255),
  created_at timestamptz not null default now()
);
alter table festival.card_status_changes enable row level security;

create table festival.bar_orders (
  id bigint generated always as identity primary key,
  operation_id bigint not null unique,
  card_id text not null,
  point_of_sale_id text not null,
  staff_user_id uuid not null,
  -- Net amount taken from the card (negative for an order of returns only).
  total_cents bigint not null,
  -- Normalized items, for the duplicate-tap check.
  items_fingerprint text not null,
  client_request_id text not null unique check (length(client_request_id) between 1 and 255),
  created_at timestamptz not null default now()
);
create index bar_orders_card_recent on festival.bar_orders (card_id, created_at);
alter table festival.bar_orders enable row level security;

create table festival.bar_order_items (
  order_id bigint not null,
  line_number smallint not null check (line_number between 1 and 50),
  product_id text not null,
  product_kind text not null check (product_kind in ('item', 'deposit', 'deposit_return')),
  quantity integer not null check (quantity between 1 and 99),
  unit_price_cents bigint not null check (unit_price_cents > 0),
  -- Signed: deposit returns are negative lines.
  line_total_cents bigint not null,
  primary key (order_id, line_number)
);
alter table festival.bar_order_items enable row level security;

create table festival.recharges (
  id bigint generated always as identity primary key,
  -- Null while an online (Stripe) recharge is pending.
  operation_id bigint unique references ledger.operations (id),
  card_id text not null references festival.cards (id),
  amount_cents bigint not null check (amount_cents > 0),
  bonus_cents bigint not null default 0 check (bonus_cents >= 0),
  package_code text,
  payment_method text not null check (payment_method in ('cash', 'card', 'stripe')),
  staff_user_id uuid references festival.staff (user_id),
  checkpoint_id text references festival.checkpoints (id),
  client_request_id text unique check (length(client_request_id) between 1 and 255),
  stripe_session_id text unique,
  status text not null default 'completed' check (status in ('pending', 'completed', 'failed')),
  created_at timestamptz not null default now(),
  constraint checkpoint_recharges_have_staff_and_checkpoint check (
    payment_method = 'stripe' or (staff_user_id is not null and checkpoint_id is not null)),
  constraint completed_recharges_have_operation check (status <> 'completed' or operation_id is not null)
);
create index recharges_card on festival.recharges (card_id, created_at);
alter table festival.recharges enable row level security;

-- Reference rows that sales point to are never deleted (deactivate them instead).
create trigger cards_never_deleted before delete on festival.cards
  for each row execute function ledger.refuse_history_change();
create trigger products_never_deleted before delete on festival.products
  for each row execute function ledger.refuse_history_change();
create trigger points_of_sale_never_deleted before delete on festival.points_of_sale
  for each row execute function ledger.refuse_history_change();
create trigger checkpoints_never_deleted before delete on festival.checkpoints
  for each row execute function ledger.refuse_history_change();
create trigger staff_never_deleted before delete on festival.staff
  for each row execute function ledger.refuse_history_change();
create trigger bar_orders_append_only before update or delete on festival.bar_orders
  for each row execute function ledger.refuse_history_change();
create trigger bar_order_items_append_only before update or delete on festival.bar_order_items
  for each row execute function ledger.refuse_history_change();

-- Every bar gets its revenue account, every checkpoint its cash drawer and card terminal.
create function festival.create_point_of_sale_accounts() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform ledger.ensure_system_account('bar_revenue', new.id);
  return new;
end;
$$;
create trigger points_of_sale_accounts after insert on festival.points_of_sale
  for each row execute function festival.create_point_of_sale_accounts();

create function festival.create_checkpoint_accounts() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform ledger.ensure_system_account('cash_drawer', new.id);
  perform ledger.ensure_system_account('card_terminal', new.id);
  return new;
end;
$$;
create trigger checkpoints_accounts after insert on festival.checkpoints
  for each row execute function festival.create_checkpoint_accounts();

-- Returnable-cup deposits the festival holds for its guests.
select ledger.ensure_system_account('deposits_held', 'festival');

-- ---------------------------------------------------------------------------------------------
-- Internal helpers
-- ---------------------------------------------------------------------------------------------

-- Helpers called on every operation are PL/pgSQL: their plans are kept for the session.
create function festival.staff_role(p_user_id uuid) returns text
language plpgsql stable
set search_path = ''
as $$
begin
  return (select role from festival.staff where user_id = p_user_id and active);
end;
$$;

create function festival.require_card_id(p_card_id text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  perform ledger.require(festival.is_valid_card_id(p_card_id), 'card_id',
    'must be 1 to 64 letters, digits, ":", "_" or "-", starting with a letter or digit');
end;
$$;

create type festival.locked_card as (account_id bigint, status text, balance_cents bigint);

/**
 * Locks a card's account and returns its balance and status, or null when the card does not
 * exist. The status is read after the lock, in its own statement, so a block committed while we
 * waited for the lock is seen (blocking takes the same lock).
 */
create function festival.lock_card(p_card_id text) returns festival.locked_card
language plpgsql
set search_path = ''
as $$
declare
  v_card festival.locked_card;
begin
  select id, balance_cents into v_card.account_id, v_card.balance_cents
  from ledger.accounts
  where id = (select account_id from festival.cards where id = p_card_id)
  for update;
  if v_card.account_id is null then
    return null;
  end if;
  select status into v_card.status from festival.cards where id = p_card_id;
  return v_card;
end;
$$;

/**
 * Validates order items and returns them normalized: sorted by product, only product_id and
 * quantity (a price sent by a client is dropped: prices come from the menu).
 */
create function festival.normalize_order_items(p_items jsonb) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  v_count integer;
  v_distinct integer;
  v_all_valid boolean;
  v_normalized jsonb;
begin
  perform ledger.require(jsonb_typeof(p_items) = 'array', 'items', 'must be an array');
  perform ledger.require(jsonb_array_length(p_items) between 1 and 50, 'items', 'must have 1 to 50 lines');
  select
    count(*),
    count(distinct line ->> 'product_id'),
    bool_and(
      jsonb_typeof(line) = 'object'
      and jsonb_typeof(line -> 'product_id') = 'string'
      and length(line ->> 'product_id') between 1 and 64
      and jsonb_typeof(line -> 'quantity') = 'number'
      and (line ->> 'quantity') ~ '^[0-9]{1,2}$'
      and (line ->> 'quantity')::integer between 1 and 99),
    jsonb_agg(jsonb_build_object('product_id', line ->> 'product_id', 'quantity', (line ->> 'quantity')::numeric)
      order by line ->> 'product_id')
  into v_count, v_distinct, v_all_valid, v_normalized
  from jsonb_array_elements(p_items) as line;
  perform ledger.require(v_all_valid, 'items',
    'each line must be {"product_id": text, "quantity": integer from 1 to 99}');
  perform ledger.require(v_distinct = v_count, 'items', 'a product may appear on one line only');
  return v_normalized;
end;
$$;

/** Result fields shared by every festival operation's log line. */
create function festival.log_card_attempt(
  p_operation_type text, p_result jsonb, p_client_request_id text, p_staff_user_id uuid, p_card_id text,
  p_details jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform ops.log_attempt(
    p_operation_type, p_result, p_client_request_id, p_staff_user_id, p_card_id,
    (select account_id from festival.cards where id = p_card_id),
    coalesce((p_result ->> 'total_cents')::bigint, (p_result ->> 'amount_cents')::bigint,
      (p_result #>> '{error,total_cents}')::bigint, (p_result #>> '{error,amount_cents}')::bigint),
    coalesce((p_result ->> 'previous_balance_cents')::bigint, (p_result #>> '{error,balance_cents}')::bigint),
    coalesce((p_result ->> 'new_balance_cents')::bigint, (p_result #>> '{error,balance_cents}')::bigint),
    p_details);
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Bar orders
-- ---------------------------------------------------------------------------------------------

create function festival.execute_bar_order(
  p_card_id text, p_items jsonb, p_point_of_sale_id text, p_client_request_id text, p_staff_user_id uuid,
  p_expected_total_cents bigint, p_confirm_duplicate boolean)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_card festival.locked_card;
  v_missing_product text;
  v_lines jsonb;
  v_items_cents bigint;
  v_deposits_cents bigint;
  v_returns_cents bigint;
  v_total_cents bigint;
  v_items_fingerprint text := md5(p_items::text);
  v_previous_order festival.bar_orders;
  v_staff_role text;
  v_point_of_sale_active boolean;
  v_late_replay_order_id bigint;
  v_window_seconds integer;
  v_card_balance_max_cents bigint;
  v_operation_id bigint;
  v_order_id bigint;
  v_revenue_account bigint;
  v_deposits_account bigint;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
begin
  -- Who sells where, an earlier order under this key, and the settings: one round of lookups.
  select
    (select role from festival.staff where user_id = p_staff_user_id and active),
    exists (select 1 from festival.points_of_sale where id = p_point_of_sale_id and active),
    (select id from festival.bar_orders where client_request_id = p_client_request_id),
    settings.duplicate_tap_window_seconds,
    settings.card_balance_max_cents
  into v_staff_role, v_point_of_sale_active, v_late_replay_order_id, v_window_seconds, v_card_balance_max_cents
  from festival.settings as settings;
  if coalesce(v_staff_role, '') not in ('bartender', 'admin') then
    return ledger.error_result('forbidden', 'only bartenders and admins can sell',
      jsonb_build_object('staff_user_id', p_staff_user_id));
  end if;
  if not v_point_of_sale_active then
    return ledger.error_result('point_of_sale_not_found', 'unknown or inactive point of sale',
      jsonb_build_object('point_of_sale_id', p_point_of_sale_id));
  end if;
  -- Idempotency keys expire after 24 hours; the order's own unique request id never does.
  if v_late_replay_order_id is not null then
    return ledger.error_result('idempotency_key_reused',
      'this client_request_id was used by an earlier order whose stored response has expired',
      jsonb_build_object('client_request_id', p_client_request_id, 'order_id', v_late_replay_order_id));
  end if;

  v_card := festival.lock_card(p_card_id);
  if v_card is null then
    return ledger.error_result('card_not_found', 'no card with this id', jsonb_build_object('card_id', p_card_id));
  end if;
  if v_card.status <> 'active' then
    return ledger.error_result('card_blocked', 'the card is blocked', jsonb_build_object('card_id', p_card_id));
  end if;

  -- Prices come from the menu, never from the request.
  select
    min(item.product_id) filter (where product.id is null),
    jsonb_agg(jsonb_build_object(
      'product_id', item.product_id,
      'name', product.name,
      'kind', product.kind,
      'quantity', item.quantity,
      'unit_price_cents', product.price_cents,
      'line_total_cents', product.price_cents * item.quantity
        * case when product.kind = 'deposit_return' then -1 else 1 end)
      order by item.product_id),
    coalesce(sum(product.price_cents * item.quantity) filter (where product.kind = 'item'), 0),
    coalesce(sum(product.price_cents * item.quantity) filter (where product.kind = 'deposit'), 0),
    coalesce(sum(product.price_cents * item.quantity) filter (where product.kind = 'deposit_return'), 0)
  into v_missing_product, v_lines, v_items_cents, v_deposits_cents, v_returns_cents
  from jsonb_to_recordset(p_items) as item(product_id text, quantity integer)
  left join festival.products product on product.id = item.product_id and product.active;

  if v_missing_product is not null then
    return ledger.error_result('product_not_found', 'unknown or inactive product',
      jsonb_build_object('product_id', v_missing_product));
  end if;
  v_total_cents := v_items_cents + v_deposits_cents - v_returns_cents;
  if p_expected_total_cents is not null and p_expected_total_cents <> v_total_cents then
    return ledger.error_result('price_mismatch', 'the menu changed: the order total differs from the expected total',
      jsonb_build_object('expected_total_cents', p_expected_total_cents, 'total_cents', v_total_cents));
  end if;
  if v_total_cents < 0 and v_card.balance_cents - v_total_cents > v_card_balance_max_cents then
    return ledger.error_result('limit_exceeded', 'the returns would put the card above its maximum balance',
      jsonb_build_object('balance_cents', v_card.balance_cents, 'total_cents', v_total_cents,
        'card_balance_max_cents', v_card_balance_max_cents));
  end if;
  if v_total_cents > v_card.balance_cents then
    return ledger.error_result('insufficient_funds', 'the card balance does not cover the order',
      jsonb_build_object('balance_cents', v_card.balance_cents, 'total_cents', v_total_cents,
        'missing_cents', v_total_cents - v_card.balance_cents));
  end if;

  if not p_confirm_duplicate then
    select * into v_previous_order
    from festival.bar_orders
    where card_id = p_card_id and point_of_sale_id = p_point_of_sale_id
      and items_fingerprint = v_items_fingerprint
      and created_at > now() - make_interval(secs => v_window_seconds)
    order by created_at desc
    limit 1;
    if found then
      return ledger.error_result('duplicate_tap_suspected',
        'the same order was charged to this card moments ago; resend with confirm_duplicate to charge again',
        jsonb_build_object('previous_order_id', v_previous_order.id,
          'previous_client_request_id', v_previous_order.client_request_id));
    end if;
  end if;

  v_operation_id := ledger.create_operation('bar_order', p_client_request_id, p_staff_user_id,
    jsonb_build_object('card_id', p_card_id, 'point_of_sale_id', p_point_of_sale_id));
  insert into festival.bar_orders (
    operation_id, card_id, point_of_sale_id, staff_user_id, total_cents, items_fingerprint, client_request_id)
  values (
    v_operation_id, p_card_id, p_point_of_sale_id, p_staff_user_id, v_total_cents, v_items_fingerprint,
    p_client_request_id)
  returning id into v_order_id;
  insert into festival.bar_order_items (
    order_id, line_number, product_id, product_kind, quantity, unit_price_cents, line_total_cents)
  select v_order_id, line.line_number, line.product_id, line.kind, line.quantity, line.unit_price_cents,
    line.line_total_cents
  from rows from (jsonb_to_recordset(v_lines)
      as (product_id text, kind text, quantity integer, unit_price_cents bigint, line_total_cents bigint))
    with ordinality as line(product_id, kind, quantity, unit_price_cents, line_total_cents, line_number);

  -- The card's shard of the bar's revenue and of the deposits held, in one lookup.
  select
    max(id) filter (where system_purpose = 'bar_revenue'),
    max(id) filter (where system_purpose = 'deposits_held')
  into v_revenue_account, v_deposits_account
  from ledger.accounts
  where kind = 'system' and shard = ledger.shard_for(p_card_id)
    and ((system_purpose = 'bar_revenue' and owner_ref = p_point_of_sale_id)
      or (system_purpose = 'deposits_held' and owner_ref = 'festival'));
  -- Credits first: a return may pay for part of the same order.
  if v_returns_cents > 0 then
    v_legs := v_legs || (v_deposits_account, v_card.account_id, v_returns_cents)::ledger.transfer_leg;
  end if;
  if v_items_cents > 0 then
    v_legs := v_legs || (v_card.account_id, v_revenue_account, v_items_cents)::ledger.transfer_leg;
  end if;
  if v_deposits_cents > 0 then
    v_legs := v_legs || (v_card.account_id, v_deposits_account, v_deposits_cents)::ledger.transfer_leg;
  end if;
  perform ledger.post_transfers(v_operation_id, v_legs);

  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'order_id', v_order_id,
    'transaction_id', v_operation_id,
    'card_id', p_card_id,
    'point_of_sale_id', p_point_of_sale_id,
    'total_cents', v_total_cents,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents - v_total_cents,
    'lines', v_lines);
end;
$$;

/**
 * Charges a card for a bar order (items, cup deposits, cup returns) at a point of sale.
 * Idempotent on client_request_id (DESIGN §5); business failures are returned, not raised.
 */
create function public.sp_process_bar_order(
  card_id text,
  items jsonb,
  point_of_sale_id text,
  client_request_id text,
  staff_user_id uuid,
  expected_total_cents bigint default null,
  confirm_duplicate boolean default false)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_items jsonb;
  v_request jsonb;
  v_idempotency record;
  v_result jsonb;
begin
  perform ledger.require_client_request_id(sp_process_bar_order.client_request_id);
  perform festival.require_card_id(sp_process_bar_order.card_id);
  perform ledger.require(length(sp_process_bar_order.point_of_sale_id) between 1 and 64, 'point_of_sale_id',
    'must be 1 to 64 characters');
  perform ledger.require(sp_process_bar_order.staff_user_id is not null, 'staff_user_id', 'is required');
  perform ledger.require(sp_process_bar_order.confirm_duplicate is not null, 'confirm_duplicate', 'must be true or false');
  v_items := festival.normalize_order_items(sp_process_bar_order.items);
  v_request := jsonb_build_object(
    'card_id', sp_process_bar_order.card_id,
    'items', v_items,
    'point_of_sale_id', sp_process_bar_order.point_of_sale_id,
    'staff_user_id', sp_process_bar_order.staff_user_id,
    'expected_total_cents', sp_process_bar_order.expected_total_cents,
    'confirm_duplicate', sp_process_bar_order.confirm_duplicate);

  select * into v_idempotency
  from ledger.idempotency_begin(sp_process_bar_order.client_request_id, 'bar_order', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := festival.execute_bar_order(
      sp_process_bar_order.card_id, v_items, sp_process_bar_order.point_of_sale_id,
      sp_process_bar_order.client_request_id, sp_process_bar_order.staff_user_id,
      sp_process_bar_order.expected_total_cents, sp_process_bar_order.confirm_duplicate);
    perform ledger.idempotency_finish(sp_process_bar_order.client_request_id, 'bar_order',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform festival.log_card_attempt('bar_order', v_result, sp_process_bar_order.client_request_id,
    sp_process_bar_order.staff_user_id, sp_process_bar_order.card_id,
    jsonb_build_object('point_of_sale_id', sp_process_bar_order.point_of_sale_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_bar_order(text, jsonb, text, text, uuid, bigint, boolean)
  from public, anon, authenticated;
grant execute on function public.sp_process_bar_order(text, jsonb, text, text, uuid, bigint, boolean)
  to service_role;

-- ---------------------------------------------------------------------------------------------
-- Checkpoint recharges
-- ---------------------------------------------------------------------------------------------

/**
 * limit_exceeded, or null when the recharge respects the per-recharge limits (on the amount paid)
 * and the card maximum (on everything credited: amount plus bonus).
 */
create function festival.recharge_limit_error(p_amount_cents bigint, p_balance_cents bigint, p_bonus_cents bigint default 0)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_settings festival.settings;
begin
  select * into v_settings from festival.settings;
  if p_amount_cents < v_settings.recharge_min_cents or p_amount_cents > v_settings.recharge_max_cents then
    return ledger.error_result('limit_exceeded', 'the recharge amount is outside the allowed range',
      jsonb_build_object('amount_cents', p_amount_cents, 'recharge_min_cents', v_settings.recharge_min_cents,
        'recharge_max_cents', v_settings.recharge_max_cents));
  end if;
  if p_balance_cents + p_amount_cents + p_bonus_cents > v_settings.card_balance_max_cents then
    return ledger.error_result('limit_exceeded', 'the card would hold more than the maximum balance',
      jsonb_build_object('amount_cents', p_amount_cents, 'bonus_cents', p_bonus_cents, 'balance_cents', p_balance_cents,
        'card_balance_max_cents', v_settings.card_balance_max_cents));
  end if;
  return null;
end;
$$;

/** The active package with this code, or null. */
create function festival.active_package(p_package_code text) returns festival.topup_packages
language plpgsql stable
set search_path = ''
as $$
declare
  v_package festival.topup_packages;
begin
  select * into v_package from festival.topup_packages where code = p_package_code and active;
  return v_package;
end;
$$;

create function festival.unknown_package_error(p_package_code text) returns jsonb
language sql immutable
set search_path = ''
as $$
  select ledger.error_result('unknown_package', 'no active top-up package with this code',
    jsonb_build_object('package_code', p_package_code))
$$;

create function festival.execute_checkpoint_recharge(
  p_card_id text, p_amount_cents bigint, p_payment_method text, p_checkpoint_id text, p_staff_user_id uuid,
  p_client_request_id text, p_package_code text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_card festival.locked_card;
  v_package festival.topup_packages;
  v_amount_cents bigint := p_amount_cents;
  v_bonus_cents bigint := 0;
  v_legs ledger.transfer_leg[];
  v_limit_error jsonb;
  v_previous_recharge_id bigint;
  v_operation_id bigint;
  v_recharge_id bigint;
  v_source_account bigint;
begin
  if coalesce(festival.staff_role(p_staff_user_id), '') not in ('cashier', 'admin') then
    return ledger.error_result('forbidden', 'only cashiers and admins can recharge cards',
      jsonb_build_object('staff_user_id', p_staff_user_id));
  end if;
  if not exists (select 1 from festival.checkpoints where id = p_checkpoint_id and active) then
    return ledger.error_result('checkpoint_not_found', 'unknown or inactive checkpoint',
      jsonb_build_object('checkpoint_id', p_checkpoint_id));
  end if;
  select id into v_previous_recharge_id from festival.recharges where client_request_id = p_client_request_id;
  if found then
    return ledger.error_result('idempotency_key_reused',
      'this client_request_id was used by an earlier recharge whose stored response has expired',
      jsonb_build_object('client_request_id', p_client_request_id, 'recharge_id', v_previous_recharge_id));
  end if;
  if p_package_code is not null then
    v_package := festival.active_package(p_package_code);
    if v_package.code is null then
      return festival.unknown_package_error(p_package_code);
    end if;
    v_amount_cents := v_package.price_cents;
    v_bonus_cents := v_package.bonus_cents;
  end if;

  v_card := festival.lock_card(p_card_id);
  if v_card is null then
    return ledger.error_result('card_not_found', 'no card with this id', jsonb_build_object('card_id', p_card_id));
  end if;
  if v_card.status <> 'active' then
    return ledger.error_result('card_blocked', 'the card is blocked', jsonb_build_object('card_id', p_card_id));
  end if;
  v_limit_error := festival.recharge_limit_error(v_amount_cents, v_card.balance_cents, v_bonus_cents);
  if v_limit_error is not null then
    return v_limit_error;
  end if;

  v_operation_id := ledger.create_operation('checkpoint_recharge', p_client_request_id, p_staff_user_id,
    jsonb_build_object('card_id', p_card_id, 'checkpoint_id', p_checkpoint_id, 'payment_method', p_payment_method,
      'package_code', p_package_code));
  insert into festival.recharges (
    operation_id, card_id, amount_cents, bonus_cents, package_code, payment_method, staff_user_id, checkpoint_id,
    client_request_id)
  values (
    v_operation_id, p_card_id, v_amount_cents, v_bonus_cents, p_package_code, p_payment_method, p_staff_user_id,
    p_checkpoint_id, p_client_request_id)
  returning id into v_recharge_id;
  -- Cash goes into the checkpoint's drawer, card payments into its terminal account; a package's
  -- bonus comes from promotions.
  v_source_account := ledger.system_account_id(
    case p_payment_method when 'cash' then 'cash_drawer' else 'card_terminal' end, p_checkpoint_id, p_card_id);
  v_legs := array[(v_source_account, v_card.account_id, v_amount_cents)::ledger.transfer_leg];
  if v_bonus_cents > 0 then
    v_legs := v_legs || (ledger.system_account_id('promotions', 'festival', p_card_id), v_card.account_id,
      v_bonus_cents)::ledger.transfer_leg;
  end if;
  perform ledger.post_transfers(v_operation_id, v_legs);

  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'recharge_id', v_recharge_id,
    'transaction_id', v_operation_id,
    'card_id', p_card_id,
    'checkpoint_id', p_checkpoint_id,
    'payment_method', p_payment_method,
    'package_code', p_package_code,
    'amount_cents', v_amount_cents,
    'bonus_cents', v_bonus_cents,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents + v_amount_cents + v_bonus_cents);
end;
$$;

/**
 * Tops up a card at a checkpoint with cash or a card terminal, by amount or by top-up package
 * (`package_code`: amount_cents must then be null; the card also receives the bonus).
 * Idempotent on client_request_id.
 */
create function public.sp_process_checkpoint_recharge(
  card_id text,
  amount_cents bigint,
  payment_method text,
  checkpoint_id text,
  staff_user_id uuid,
  client_request_id text,
  package_code text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_request jsonb;
  v_idempotency record;
  v_result jsonb;
begin
  perform ledger.require_client_request_id(sp_process_checkpoint_recharge.client_request_id);
  perform festival.require_card_id(sp_process_checkpoint_recharge.card_id);
  perform ledger.require((sp_process_checkpoint_recharge.amount_cents is null) <> (sp_process_checkpoint_recharge.package_code is null),
    'amount_cents', 'give either amount_cents or package_code');
  perform ledger.require(coalesce(sp_process_checkpoint_recharge.amount_cents > 0, true), 'amount_cents',
    'must be a positive integer');
  perform ledger.require(coalesce(length(sp_process_checkpoint_recharge.package_code) between 1 and 32, true),
    'package_code', 'must be 1 to 32 characters');
  perform ledger.require(sp_process_checkpoint_recharge.payment_method in ('cash', 'card'), 'payment_method',
    'must be "cash" or "card"');
  perform ledger.require(length(sp_process_checkpoint_recharge.checkpoint_id) between 1 and 64, 'checkpoint_id',
    'must be 1 to 64 characters');
  perform ledger.require(sp_process_checkpoint_recharge.staff_user_id is not null, 'staff_user_id', 'is required');
  v_request := jsonb_build_object(
    'card_id', sp_process_checkpoint_recharge.card_id,
    'amount_cents', sp_process_checkpoint_recharge.amount_cents,
    'payment_method', sp_process_checkpoint_recharge.payment_method,
    'checkpoint_id', sp_process_checkpoint_recharge.checkpoint_id,
    'staff_user_id', sp_process_checkpoint_recharge.staff_user_id,
    'package_code', sp_process_checkpoint_recharge.package_code);

  select * into v_idempotency
  from ledger.idempotency_begin(sp_process_checkpoint_recharge.client_request_id, 'checkpoint_recharge', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := festival.execute_checkpoint_recharge(
      sp_process_checkpoint_recharge.card_id, sp_process_checkpoint_recharge.amount_cents,
      sp_process_checkpoint_recharge.payment_method, sp_process_checkpoint_recharge.checkpoint_id,
      sp_process_checkpoint_recharge.staff_user_id, sp_process_checkpoint_recharge.client_request_id,
      sp_process_checkpoint_recharge.package_code);
    perform ledger.idempotency_finish(sp_process_checkpoint_recharge.client_request_id, 'checkpoint_recharge',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform festival.log_card_attempt('checkpoint_recharge', v_result,
    sp_process_checkpoint_recharge.client_request_id, sp_process_checkpoint_recharge.staff_user_id,
    sp_process_checkpoint_recharge.card_id,
    jsonb_build_object('checkpoint_id', sp_process_checkpoint_recharge.checkpoint_id,
      'payment_method', sp_process_checkpoint_recharge.payment_method));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_checkpoint_recharge(text, bigint, text, text, uuid, text, text)
  from public, anon, authenticated;
grant execute on function public.sp_process_checkpoint_recharge(text, bigint, text, text, uuid, text, text)
  to service_role;

-- ---------------------------------------------------------------------------------------------
-- Card administration (admins only, idempotent like every state change)
-- ---------------------------------------------------------------------------------------------

create function festival.execute_register_cards(p_card_ids text[], p_holder_label text, p_staff_user_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_registered text[];
begin
  if festival.staff_role(p_staff_user_id) is distinct from 'admin' then
    return ledger.error_result('forbidden', 'only admins can register cards',
      jsonb_build_object('staff_user_id', p_staff_user_id));
  end if;
  with new_cards as (
    select card_id from unnest(p_card_ids) as card_id
    where not exists (select 1 from festival.cards where id = card_id)
  ),
  new_accounts as (
    insert into ledger.accounts (kind, code)
    select 'card', 'card:' || card_id from new_cards
    returning id, code
  ),
  inserted as (
    insert into festival.cards (id, account_id, holder_label)
    select substr(code, 6), id, p_holder_label from new_accounts
    returning id
  )
  select coalesce(array_agg(id order by id), '{}') into v_registered from inserted;
  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'registered', to_jsonb(v_registered),
    'already_registered', to_jsonb(coalesce(
      (select array_agg(card_id order by card_id) from unnest(p_card_ids) as card_id where card_id <> all (v_registered)),
      '{}')));
end;
$$;

/** Registers a batch of card UIDs (1 to 1000); cards that already exist are reported, not changed. */
create function public.sp_admin_register_cards(
  card_ids text[],
  staff_user_id uuid,
  client_request_id text,
  holder_label text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_card_ids text[];
  v_request jsonb;
  v_idempotency record;
  v_result jsonb;
begin
  perform ledger.require_client_request_id(sp_admin_register_cards.client_request_id);
  perform ledger.require(cardinality(sp_admin_register_cards.card_ids) between 1 and 1000, 'card_ids',
    'must hold 1 to 1000 card ids');
  perform ledger.require(
    (select bool_and(coalesce(festival.is_valid_card_id(card_id), false)) from unnest(sp_admin_register_cards.card_ids) as card_id),
    'card_ids', 'each card id must be 1 to 64 letters, digits, ":", "_" or "-"');
  perform ledger.require(sp_admin_register_cards.staff_user_id is not null, 'staff_user_id', 'is required');
  perform ledger.require(coalesce(length(sp_admin_register_cards.holder_label), 0) <= 100, 'holder_label',
    'must be at most 100 characters');
  select array_agg(distinct card_id order by card_id) into v_card_ids from unnest(sp_admin_register_cards.card_ids) as card_id;
  v_request := jsonb_build_object('card_ids', to_jsonb(v_card_ids), 'holder_label', sp_admin_register_cards.holder_label,
    'staff_user_id', sp_admin_register_cards.staff_user_id);

  select * into v_idempotency
  from ledger.idempotency_begin(sp_admin_register_cards.client_request_id, 'register_cards', v_request);
  if v_idempotency.outcome = 'new' then
    -- Concurrent batches with overlapping ids: one registers each card, the other reports it.
    perform pg_advisory_xact_lock(hashtextextended('festival.register_cards', 0));
    v_result := festival.execute_register_cards(v_card_ids, sp_admin_register_cards.holder_label,
      sp_admin_register_cards.staff_user_id);
    perform ledger.idempotency_finish(sp_admin_register_cards.client_request_id, 'register_cards',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform ops.log_attempt('register_cards', v_result, sp_admin_register_cards.client_request_id,
    sp_admin_register_cards.staff_user_id, p_details => jsonb_build_object('card_count', cardinality(v_card_ids)));
  return v_result;
end;
$$;
revoke execute on function public.sp_admin_register_cards(text[], uuid, text, text) from public, anon, authenticated;
grant execute on function public.sp_admin_register_cards(text[], uuid, text, text) to service_role;

create function festival.execute_set_card_status(
  p_card_id text, p_status text, p_reason text, p_staff_user_id uuid, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_card festival.locked_card;
begin
  if festival.staff_role(p_staff_user_id) is distinct from 'admin' then
    return ledger.error_result('forbidden', 'only admins can block or unblock cards',
      jsonb_build_object('staff_user_id', p_staff_user_id));
  end if;
  if exists (select 1 from festival.card_status_changes where client_request_id = p_client_request_id) then
    return ledger.error_result('idempotency_key_reused',
      'this client_request_id was used by an earlier block or unblock whose stored response has expired',
      jsonb_build_object('client_request_id', p_client_request_id));
  end if;
  -- Same lock as sales and recharges: once this commits, no sale can use the old status.
  v_card := festival.lock_card(p_card_id);
  if v_card is null then
    return ledger.error_result('card_not_found', 'no card with this id', jsonb_build_object('card_id', p_card_id));
  end if;
  insert into festival.card_status_changes (card_id, status, previous_status, reason, staff_user_id, client_request_id)
  values (p_card_id, p_status, v_card.status, p_reason, p_staff_user_id, p_client_request_id);
  update festival.cards
  set status = p_status,
    blocked_reason = case when p_status = 'blocked' then p_reason end,
    updated_at = now()
  where id = p_card_id;
  return jsonb_build_object('ok', true, 'replayed', false, 'card_id', p_card_id, 'status', p_status,
    'previous_status', v_card.status, 'balance_cents', v_card.balance_cents);
end;
$$;

create function festival.set_card_status(
  p_card_id text, p_status text, p_staff_user_id uuid, p_client_request_id text, p_reason text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_operation text := case p_status when 'blocked' then 'block_card' else 'unblock_card' end;
  v_request jsonb;
  v_idempotency record;
  v_result jsonb;
begin
  perform ledger.require_client_request_id(p_client_request_id);
  perform festival.require_card_id(p_card_id);
  perform ledger.require(p_staff_user_id is not null, 'staff_user_id', 'is required');
  perform ledger.require(coalesce(length(p_reason), 0) <= 500, 'reason', 'must be at most 500 characters');
  v_request := jsonb_build_object('card_id', p_card_id, 'staff_user_id', p_staff_user_id, 'reason', p_reason);
  select * into v_idempotency from ledger.idempotency_begin(p_client_request_id, v_operation, v_request);
  if v_idempotency.outcome = 'new' then
    v_result := festival.execute_set_card_status(p_card_id, p_status, p_reason, p_staff_user_id, p_client_request_id);
    perform ledger.idempotency_finish(p_client_request_id, v_operation, v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform festival.log_card_attempt(v_operation, v_result, p_client_request_id, p_staff_user_id, p_card_id,
    jsonb_build_object('reason', p_reason));
  return v_result;
end;
$$;

/** Blocks a card: sales and recharges answer card_blocked until it is unblocked. */
create function public.sp_admin_block_card(
  card_id text, staff_user_id uuid, client_request_id text, reason text default null)
returns jsonb
language sql
security definer
set search_path = ''
as $$ select festival.set_card_status(card_id, 'blocked', staff_user_id, client_request_id, reason) $$;
revoke execute on function public.sp_admin_block_card(text, uuid, text, text) from public, anon, authenticated;
grant execute on function public.sp_admin_block_card(text, uuid, text, text) to service_role;

create function public.sp_admin_unblock_card(card_id text, staff_user_id uuid, client_request_id text)
returns jsonb
language sql
security definer
set search_path = ''
as $$ select festival.set_card_status(card_id, 'active', staff_user_id, client_request_id, null) $$;
revoke execute on function public.sp_admin_unblock_card(text, uuid, text) from public, anon, authenticated;
grant execute on function public.sp_admin_unblock_card(text, uuid, text) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Reading a card (card-balance function): status, balance and the last movements. No key, no
-- log line: reading changes nothing.
-- ---------------------------------------------------------------------------------------------

create function public.sp_card_balance(card_id text, movement_limit integer default 20)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_card festival.cards;
  v_balance_cents bigint;
  v_movements jsonb;
begin
  perform festival.require_card_id(sp_card_balance.card_id);
  perform ledger.require(sp_card_balance.movement_limit between 1 and 100, 'movement_limit', 'must be 1 to 100');
  select * into v_card from festival.cards where id = sp_card_balance.card_id;
  if not found then
    return ledger.error_result('card_not_found', 'no card with this id',
      jsonb_build_object('card_id', sp_card_balance.card_id));
  end if;
  select balance_cents into v_balance_cents from ledger.accounts where id = v_card.account_id;

  select coalesce(jsonb_agg(jsonb_build_object(
      'at', movement.created_at,
      'kind', operation.kind,
      'amount_cents', movement.amount_cents,
      'balance_after_cents', movement.balance_after_cents,
      'location', coalesce(point_of_sale.name, checkpoint.name)) order by movement.id desc), '[]'::jsonb)
  into v_movements
  from (
    select id, operation_id, created_at, amount_cents, balance_after_cents
    from (
      (select id, operation_id, created_at, -amount_cents as amount_cents, from_balance_after_cents as balance_after_cents
       from ledger.transfers where from_account_id = v_card.account_id order by id desc limit sp_card_balance.movement_limit)
      union all
      (select id, operation_id, created_at, amount_cents, to_balance_after_cents
       from ledger.transfers where to_account_id = v_card.account_id order by id desc limit sp_card_balance.movement_limit)
    ) as both_directions
    order by id desc
    limit sp_card_balance.movement_limit
  ) as movement
  join ledger.operations operation on operation.id = movement.operation_id
  left join festival.points_of_sale point_of_sale on point_of_sale.id = operation.metadata ->> 'point_of_sale_id'
  left join festival.checkpoints checkpoint on checkpoint.id = operation.metadata ->> 'checkpoint_id';

  return jsonb_build_object(
    'ok', true,
    'card_id', v_card.id,
    'status', v_card.status,
    'balance_cents', v_balance_cents,
    'movements', v_movements);
end;
$$;
revoke execute on function public.sp_card_balance(text, integer) from public, anon, authenticated;
grant execute on function public.sp_card_balance(text, integer) to service_role;
