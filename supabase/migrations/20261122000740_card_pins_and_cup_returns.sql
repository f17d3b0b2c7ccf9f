-- Card PINs and cup returns: two holes an adversarial review found in the festival's card flows.
--
-- 1. Anyone with the public anon key could read any card's balance and where it was used. Now a
--    festival-goer reads a card with the PIN printed on it (stored hashed, wrong PINs rate-limited
--    per card in the database, so the limit holds across function instances); staff read without
--    one. Anonymous readers never see locations.
-- 2. A cup return credited any card even when no deposit was outstanding: returns minted money.
--    Cups change hands, so a return is not tied to the card that paid the deposit, but the
--    festival never takes back more cups than it sold: the deposits it holds never go below zero.
--    A return that would need more is `no_deposit_outstanding`, and each card may return at most
--    `cup_returns_per_card_hour_max` cups an hour.

-- ---------------------------------------------------------------------------------------------
-- Settings
-- ---------------------------------------------------------------------------------------------

alter table festival.settings
  add column pin_attempts_max integer not null default 5 check (pin_attempts_max between 1 and 100),
  add column pin_lockout_seconds integer not null default 900 check (pin_lockout_seconds between 1 and 86400),
  add column cup_returns_per_card_hour_max integer not null default 20 check (cup_returns_per_card_hour_max >= 0);

-- ---------------------------------------------------------------------------------------------
-- Card PINs
-- ---------------------------------------------------------------------------------------------

-- A card without a PIN (registered before PINs existed) can be read by staff only.
alter table festival.cards
  add column pin_hash text,
  add column pin_failed_attempts integer not null default 0 check (pin_failed_attempts >= 0),
  add column pin_locked_until timestamptz;

/** A new random 6-digit PIN from the cryptographic generator (random() is predictable). */
create function festival.new_card_pin() returns text
language plpgsql volatile
set search_path = ''
as $$
begin
  return lpad(((('x' || encode(extensions.gen_random_bytes(4), 'hex'))::bit(32)::bigint & 2147483647) % 1000000)::text,
    6, '0');
end;
$$;

/** bcrypt: a PIN has few digits, so a slow salted hash is the least an attacker with the table faces. */
create function festival.hash_card_pin(p_pin text) returns text
language plpgsql volatile
set search_path = ''
as $$
begin
  return extensions.crypt(p_pin, extensions.gen_salt('bf', 6));
end;
$$;

/**
 * Registers new cards with a random PIN each (answered once, in this response, to be printed on
 * the card; only its hash is stored). Cards that already exist are reported, not changed.
 */
create or replace function festival.execute_register_cards(p_card_ids text[], p_holder_label text, p_staff_user_id uuid)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_pins jsonb;
begin
  if festival.staff_role(p_staff_user_id) is distinct from 'admin' then
    return ledger.error_result('forbidden', 'only admins can register cards',
      jsonb_build_object('staff_user_id', p_staff_user_id));
  end if;
  with new_cards as (
    select card_id, festival.new_card_pin() as pin from unnest(p_card_ids) as card_id
    where not exists (select 1 from festival.cards where id = card_id)
  ),
  new_accounts as (
    insert into ledger.accounts (kind, code)
    select 'card', 'card:' || card_id from new_cards
    returning id, code
  ),
  inserted as (
    insert into festival.cards (id, account_id, holder_label, pin_hash)
    select new_cards.card_id, new_accounts.id, p_holder_label, festival.hash_card_pin(new_cards.pin)
    from new_accounts join new_cards on new_accounts.code = 'card:' || new_cards.card_id
    returning id
  )
  select coalesce(jsonb_object_agg(new_cards.card_id, new_cards.pin), '{}'::jsonb) into v_pins
  from inserted join new_cards on new_cards.card_id = inserted.id;
  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'registered', coalesce((select jsonb_agg(card_id order by card_id) from jsonb_object_keys(v_pins) as card_id),
      '[]'::jsonb),
    'pins', v_pins,
    'already_registered', to_jsonb(coalesce(
      (select array_agg(card_id order by card_id) from unnest(p_card_ids) as card_id where not v_pins ? card_id),
      '{}')));
end;
$$;

/**
 * Checks a PIN for a card and records the outcome under the card's row lock: null when it is
 * right, else `invalid_pin` (with the attempts left) or `pin_locked` (with when to retry). After
 * `pin_attempts_max` wrong PINs in a row the card refuses every PIN for `pin_lockout_seconds`,
 * so guessing a 4-digit PIN takes weeks instead of minutes.
 */
create function festival.pin_refusal(p_card_id text, p_pin text) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_card festival.cards;
  v_settings festival.settings;
  v_failed_attempts integer;
begin
  select * into v_settings from festival.settings;
  select * into v_card from festival.cards where id = p_card_id for no key update;
  if v_card.pin_locked_until > now() then
    return ledger.error_result('pin_locked', 'too many wrong PINs: try again later',
      jsonb_build_object('card_id', p_card_id,
        'retry_after_seconds', ceil(extract(epoch from v_card.pin_locked_until - now()))::integer));
  end if;
  if p_pin is null then
    return ledger.error_result('invalid_pin', 'the card''s PIN is required', jsonb_build_object('card_id', p_card_id));
  end if;
  if v_card.pin_hash is not null and extensions.crypt(p_pin, v_card.pin_hash) = v_card.pin_hash then
    if v_card.pin_failed_attempts > 0 or v_card.pin_locked_until is not null then
      update festival.cards set pin_failed_attempts = 0, pin_locked_until = null where id = p_card_id;
    end if;
    return null;
  end if;
  v_failed_attempts := v_card.pin_failed_attempts + 1;
  update festival.cards
  set pin_failed_attempts = case when v_failed_attempts >= v_settings.pin_attempts_max then 0 else v_failed_attempts end,
    pin_locked_until = case when v_failed_attempts >= v_settings.pin_attempts_max
      then now() + make_interval(secs => v_settings.pin_lockout_seconds) end
  where id = p_card_id;
  return ledger.error_result('invalid_pin', 'wrong PIN for this card',
    jsonb_build_object('card_id', p_card_id,
      'attempts_remaining', greatest(v_settings.pin_attempts_max - v_failed_attempts, 0)));
end;
$$;

/** A card's last movements; with locations for staff only. */
create function festival.card_movements(p_account_id bigint, p_movement_limit integer, p_with_locations boolean)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_movements jsonb;
begin
  select coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
      'at', movement.created_at,
      'kind', operation.kind,
      'amount_cents', movement.amount_cents,
      'balance_after_cents', movement.balance_after_cents,
      'location', case when p_with_locations then coalesce(point_of_sale.name, checkpoint.name) end))
      order by movement.id desc), '[]'::jsonb)
  into v_movements
  from (
    select id, operation_id, created_at, amount_cents, balance_after_cents
    from (
      (select id, operation_id, created_at, -amount_cents as amount_cents, from_balance_after_cents as balance_after_cents
       from ledger.transfers where from_account_id = p_account_id order by id desc limit p_movement_limit)
      union all
      (select id, operation_id, created_at, amount_cents, to_balance_after_cents
       from ledger.transfers where to_account_id = p_account_id order by id desc limit p_movement_limit)
    ) as both_directions
    order by id desc
    limit p_movement_limit
  ) as movement
  join ledger.operations operation on operation.id = movement.operation_id
  left join festival.points_of_sale point_of_sale on point_of_sale.id = operation.metadata ->> 'point_of_sale_id'
  left join festival.checkpoints checkpoint on checkpoint.id = operation.metadata ->> 'checkpoint_id';
  return v_movements;
end;
$$;

drop function public.sp_card_balance(text, integer);

/**
 * Reads a card: status, balance and the last movements. `reader_user_id` is the verified caller
 * (null for the anon key): active staff read any card, with locations; anyone else needs the
 * card's PIN and sees no locations. Wrong PINs are recorded (this is why reading is not `stable`).
 */
create function public.sp_card_balance(
  card_id text,
  pin text default null,
  reader_user_id uuid default null,
  movement_limit integer default 20)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_card festival.cards;
  v_is_staff boolean;
  v_refusal jsonb;
begin
  perform festival.require_card_id(sp_card_balance.card_id);
  perform ledger.require(sp_card_balance.movement_limit between 1 and 100, 'movement_limit', 'must be 1 to 100');
  perform ledger.require(coalesce(length(sp_card_balance.pin) <= 64, true), 'pin', 'must be at most 64 characters');
  select * into v_card from festival.cards where id = sp_card_balance.card_id;
  if not found then
    return ledger.error_result('card_not_found', 'no card with this id',
      jsonb_build_object('card_id', sp_card_balance.card_id));
  end if;
  v_is_staff := festival.staff_role(sp_card_balance.reader_user_id) is not null;
  if not v_is_staff then
    v_refusal := festival.pin_refusal(sp_card_balance.card_id, sp_card_balance.pin);
    if v_refusal is not null then
      return v_refusal;
    end if;
  end if;
  return jsonb_build_object(
    'ok', true,
    'card_id', v_card.id,
    'status', v_card.status,
    'balance_cents', (select balance_cents from ledger.accounts where id = v_card.account_id),
    'movements', festival.card_movements(v_card.account_id, sp_card_balance.movement_limit, v_is_staff));
end;
$$;
revoke execute on function public.sp_card_balance(text, text, uuid, integer) from public, anon, authenticated;
grant execute on function public.sp_card_balance(text, text, uuid, integer) to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Cup deposits the festival holds
-- ---------------------------------------------------------------------------------------------

/**
 * What each shard of the `deposits_held` system account holds, kept beside the ledger so that a
 * return can check the festival's total without summing every deposit transfer ever made. Row k
 * always equals the derived balance of `deposits_held:festival#k` (reconcile proves it), and it
 * can never go below zero. A deposit sale updates only its card's shard row, so sales of cups
 * queue only within one of 16 shards; a return locks every row (in shard order) because it may
 * take from any of them: cups change hands.
 */
create table festival.deposits_outstanding (
  shard smallint primary key check (shard >= 0),
  held_cents bigint not null default 0 check (held_cents >= 0)
);
alter table festival.deposits_outstanding enable row level security;

create trigger deposits_outstanding_never_deleted before delete on festival.deposits_outstanding
  for each row execute function ledger.refuse_history_change();
create trigger deposits_outstanding_no_truncate before truncate on festival.deposits_outstanding
  for each statement execute function ledger.refuse_history_change();

-- Before this migration a return took its money from the returning card's shard, so on a
-- database where cups changed hands some shards are below zero while the total is not. Move every
-- shard's balance into one shard (one zero-sum operation) so that no shard is negative. If the total
-- itself is negative, the old rule paid out cup returns the festival never sold: that shortfall
-- is booked from `deposit_losses:festival`, where an operator can see it.
do $$
declare
  -- The shard that collects the balances: any one will do.
  v_shard_zero bigint := ledger.system_account_id('deposits_held', 'festival', 'rebalance');
  v_total_cents bigint;
  v_legs ledger.transfer_leg[];
begin
  if not exists (select 1 from ledger.account_balances where system_purpose = 'deposits_held' and balance_cents < 0) then
    return;
  end if;
  select array_agg(case when b.balance_cents > 0
      then (b.account_id, v_shard_zero, b.balance_cents)::ledger.transfer_leg
      else (v_shard_zero, b.account_id, -b.balance_cents)::ledger.transfer_leg end),
    (select sum(balance_cents) from ledger.account_balances where system_purpose = 'deposits_held')
  into v_legs, v_total_cents
  from ledger.account_balances b
  where b.system_purpose = 'deposits_held' and b.account_id <> v_shard_zero and b.balance_cents <> 0;
  if v_total_cents < 0 then
    perform ledger.ensure_system_account('deposit_losses', 'festival');
    v_legs := v_legs || (ledger.system_account_id('deposit_losses', 'festival', 'rebalance'), v_shard_zero,
      -v_total_cents)::ledger.transfer_leg;
  end if;
  perform ledger.post_transfers(
    ledger.create_operation('deposits_rebalance', null, null,
      jsonb_build_object('reason', 'returns before per-festival deposit accounting', 'shortfall_cents',
        greatest(-v_total_cents, 0))),
    v_legs);
end
$$;

insert into festival.deposits_outstanding (shard, held_cents)
select account.shard, balance.balance_cents
from ledger.accounts account
join ledger.account_balances balance on balance.account_id = account.id
where account.kind = 'system' and account.system_purpose = 'deposits_held' and account.owner_ref = 'festival';

/**
 * null when the card may return `p_cups` cups worth `p_returns_cents` in an order that also sells
 * `p_deposits_cents` of new deposits; else `limit_exceeded` (the card's hourly return limit) or
 * `no_deposit_outstanding`. Locks every shard row of deposits_outstanding when there is a return,
 * so that two returns can never both take the last deposit; the caller holds the card's lock
 * already (card before deposits, the same order everywhere).
 */
create function festival.cup_return_refusal(
  p_card_id text, p_cups integer, p_returns_cents bigint, p_deposits_cents bigint)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_cups_max integer;
  v_cups_last_hour bigint;
  v_held_cents bigint;
begin
  if p_returns_cents = 0 then
    return null;
  end if;
  select cup_returns_per_card_hour_max into v_cups_max from festival.settings;
  select coalesce(sum(item.quantity), 0) into v_cups_last_hour
  from festival.bar_orders bar_order
  join festival.bar_order_items item on item.order_id = bar_order.id
  where bar_order.card_id = p_card_id and bar_order.created_at > now() - interval '1 hour'
    and item.product_kind = 'deposit_return';
  if v_cups_last_hour + p_cups > v_cups_max then
    return ledger.error_result('limit_exceeded', 'this card returned too many cups in the last hour',
      jsonb_build_object('card_id', p_card_id, 'cups_returned_last_hour', v_cups_last_hour, 'cups', p_cups,
        'cup_returns_per_card_hour_max', v_cups_max));
  end if;
  select sum(held_cents) into v_held_cents
  from (select held_cents from festival.deposits_outstanding order by shard for update) as locked;
  if v_held_cents + p_deposits_cents < p_returns_cents then
    return ledger.error_result('no_deposit_outstanding', 'the festival holds no deposit for this return',
      jsonb_build_object('returns_cents', p_returns_cents, 'deposits_held_cents', v_held_cents + p_deposits_cents));
  end if;
  return null;
end;
$$;

/**
 * The ledger legs of an order, with deposits_outstanding updated to match: first the returns
 * (a return may pay for part of the order), then `p_charge_legs` (the items), then the deposits.
 * Deposits go to the card's shard; returns take from the card's shard first, then from the others
 * in shard order (cup_return_refusal has locked them all and checked there is enough).
 */
create function festival.deposit_legs(
  p_card_id text, p_card_account_id bigint, p_deposits_cents bigint, p_returns_cents bigint,
  p_charge_legs ledger.transfer_leg[])
returns ledger.transfer_leg[]
language plpgsql
set search_path = ''
as $$
declare
  v_own_shard smallint := ledger.shard_for(p_card_id);
  v_accounts bigint[];
  v_held bigint[];
  v_shard smallint;
  v_order smallint[];
  v_take_cents bigint;
  v_remaining_cents bigint := p_returns_cents;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
begin
  if p_returns_cents = 0 then
    if p_deposits_cents > 0 then
      update festival.deposits_outstanding set held_cents = held_cents + p_deposits_cents where shard = v_own_shard;
      if not found then
        raise exception 'festival.deposits_outstanding has no row for shard %', v_own_shard using errcode = 'no_data_found';
      end if;
      return p_charge_legs || (p_card_account_id, ledger.system_account_id('deposits_held', 'festival', p_card_id),
        p_deposits_cents)::ledger.transfer_leg;
    end if;
    return p_charge_legs;
  end if;
  select array_agg(account.id order by account.shard), array_agg(held.held_cents order by account.shard)
  into v_accounts, v_held
  from ledger.accounts account
  join festival.deposits_outstanding held on held.shard = account.shard
  where account.kind = 'system' and account.system_purpose = 'deposits_held' and account.owner_ref = 'festival';
  if coalesce(cardinality(v_accounts), 0) <> ledger.system_shard_count() then
    raise exception 'festival.deposits_outstanding must have one row per shard' using errcode = 'no_data_found';
  end if;
  -- Returns are credited first (a return may pay for part of the same order), then deposits.
  v_held[v_own_shard + 1] := v_held[v_own_shard + 1] + p_deposits_cents;
  -- One leg where one shard can pay the whole return (the card's own first), else several.
  v_order := array[v_own_shard]
    || array(select shard from generate_series(0, ledger.system_shard_count() - 1) as shard where shard <> v_own_shard);
  v_order := array(select shard from unnest(v_order) with ordinality as candidate(shard, position)
    order by v_held[shard + 1] < p_returns_cents, position);
  foreach v_shard in array v_order
  loop
    exit when v_remaining_cents = 0;
    v_take_cents := least(v_held[v_shard + 1], v_remaining_cents);
    if v_take_cents > 0 then
      v_legs := v_legs || (v_accounts[v_shard + 1], p_card_account_id, v_take_cents)::ledger.transfer_leg;
      v_held[v_shard + 1] := v_held[v_shard + 1] - v_take_cents;
      v_remaining_cents := v_remaining_cents - v_take_cents;
    end if;
  end loop;
  v_legs := v_legs || p_charge_legs;
  if p_deposits_cents > 0 then
    v_legs := v_legs || (p_card_account_id, v_accounts[v_own_shard + 1], p_deposits_cents)::ledger.transfer_leg;
  end if;
  update festival.deposits_outstanding as outstanding
  set held_cents = final.held_cents
  from unnest(v_held) with ordinality as final(held_cents, position)
  where outstanding.shard = final.position - 1 and outstanding.held_cents <> final.held_cents;
  return v_legs;
end;
$$;

/** The order's menu prices: one line per product, signed totals, and the sums per kind. */
create type festival.priced_order as (
  missing_product_id text, lines jsonb, items_cents bigint, deposits_cents bigint, returns_cents bigint,
  cups_returned integer);

create function festival.price_order(p_items jsonb) returns festival.priced_order
language plpgsql stable
set search_path = ''
as $$
declare
  v_priced festival.priced_order;
begin
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
    coalesce(sum(product.price_cents * item.quantity) filter (where product.kind = 'deposit_return'), 0),
    coalesce(sum(item.quantity) filter (where product.kind = 'deposit_return'), 0)
  into v_priced
  from jsonb_to_recordset(p_items) as item(product_id text, quantity integer)
  left join festival.products product on product.id = item.product_id and product.active;
  return v_priced;
end;
$$;

/** `card_not_found` or `card_blocked` for a card locked with festival.lock_card, or null. */
create function festival.card_refusal(p_card festival.locked_card, p_card_id text) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_card is null then
    return ledger.error_result('card_not_found', 'no card with this id', jsonb_build_object('card_id', p_card_id));
  end if;
  if p_card.status <> 'active' then
    return ledger.error_result('card_blocked', 'the card is blocked', jsonb_build_object('card_id', p_card_id));
  end if;
  return null;
end;
$$;

/** The refusal of an order by its total, or null: the menu changed, card maximum, funds. */
create function festival.order_refusal(
  p_card festival.locked_card, p_total_cents bigint, p_expected_total_cents bigint, p_card_balance_max_cents bigint)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_expected_total_cents is not null and p_expected_total_cents <> p_total_cents then
    return ledger.error_result('price_mismatch', 'the menu changed: the order total differs from the expected total',
      jsonb_build_object('expected_total_cents', p_expected_total_cents, 'total_cents', p_total_cents));
  end if;
  if p_total_cents < 0 and p_card.balance_cents - p_total_cents > p_card_balance_max_cents then
    return ledger.error_result('limit_exceeded', 'the returns would put the card above its maximum balance',
      jsonb_build_object('balance_cents', p_card.balance_cents, 'total_cents', p_total_cents,
        'card_balance_max_cents', p_card_balance_max_cents));
  end if;
  if p_total_cents > p_card.balance_cents then
    return ledger.error_result('insufficient_funds', 'the card balance does not cover the order',
      jsonb_build_object('balance_cents', p_card.balance_cents, 'total_cents', p_total_cents,
        'missing_cents', p_total_cents - p_card.balance_cents));
  end if;
  return null;
end;
$$;

/** `duplicate_tap_suspected` when the same order was charged to this card at this bar moments ago. */
create function festival.duplicate_tap_refusal(
  p_card_id text, p_point_of_sale_id text, p_items_fingerprint text, p_window_seconds integer)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_previous_order festival.bar_orders;
begin
  select * into v_previous_order
  from festival.bar_orders
  where card_id = p_card_id and point_of_sale_id = p_point_of_sale_id and items_fingerprint = p_items_fingerprint
    and created_at > now() - make_interval(secs => p_window_seconds)
  order by created_at desc
  limit 1;
  if not found then
    return null;
  end if;
  return ledger.error_result('duplicate_tap_suspected',
    'the same order was charged to this card moments ago; resend with confirm_duplicate to charge again',
    jsonb_build_object('previous_order_id', v_previous_order.id,
      'previous_client_request_id', v_previous_order.client_request_id));
end;
$$;

/** Records the order and its lines; returns the order id. */
create function festival.insert_bar_order(
  p_operation_id bigint, p_card_id text, p_point_of_sale_id text, p_staff_user_id uuid, p_total_cents bigint,
  p_items_fingerprint text, p_client_request_id text, p_lines jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_order_id bigint;
begin
  insert into festival.bar_orders (
    operation_id, card_id, point_of_sale_id, staff_user_id, total_cents, items_fingerprint, client_request_id)
  values (
    p_operation_id, p_card_id, p_point_of_sale_id, p_staff_user_id, p_total_cents, p_items_fingerprint,
    p_client_request_id)
  returning id into v_order_id;
  insert into festival.bar_order_items (
    order_id, line_number, product_id, product_kind, quantity, unit_price_cents, line_total_cents)
  select v_order_id, line.line_number, line.product_id, line.kind, line.quantity, line.unit_price_cents,
    line.line_total_cents
  from rows from (jsonb_to_recordset(p_lines)
      as (product_id text, kind text, quantity integer, unit_price_cents bigint, line_total_cents bigint))
    with ordinality as line(product_id, kind, quantity, unit_price_cents, line_total_cents, line_number);
  return v_order_id;
end;
$$;

/**
 * A bar order, after sp_process_bar_order has checked its arguments and its idempotency key:
 * who sells where, the card (locked), menu prices, refusals, then the order and its ledger legs.
 */
create or replace function festival.execute_bar_order(
  p_card_id text, p_items jsonb, p_point_of_sale_id text, p_client_request_id text, p_staff_user_id uuid,
  p_expected_total_cents bigint, p_confirm_duplicate boolean)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_card festival.locked_card;
  v_priced festival.priced_order;
  v_total_cents bigint;
  v_items_fingerprint text := md5(p_items::text);
  v_staff_role text;
  v_point_of_sale_active boolean;
  v_late_replay_order_id bigint;
  v_window_seconds integer;
  v_card_balance_max_cents bigint;
  v_refusal jsonb;
  v_operation_id bigint;
  v_order_id bigint;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
begin
  -- Who sells where, an earlier order under this key, and the settings: one round of lookups.
  select
    (select role from festival.staff where user_id = p_staff_user_id and active),
    exists (select 1 from festival.points_of_sale where id = p_point_of_sale_id and active),
    (select id from festival.bar_orders where client_request_id = p_client_request_id and staff_user_id = p_staff_user_id),
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
  v_refusal := festival.card_refusal(v_card, p_card_id);
  if v_refusal is not null then
    return v_refusal;
  end if;
  -- Prices come from the menu, never from the request.
  v_priced := festival.price_order(p_items);
  if v_priced.missing_product_id is not null then
    return ledger.error_result('product_not_found', 'unknown or inactive product',
      jsonb_build_object('product_id', v_priced.missing_product_id));
  end if;
  v_total_cents := v_priced.items_cents + v_priced.deposits_cents - v_priced.returns_cents;
  v_refusal := coalesce(
    festival.order_refusal(v_card, v_total_cents, p_expected_total_cents, v_card_balance_max_cents),
    festival.cup_return_refusal(p_card_id, v_priced.cups_returned, v_priced.returns_cents, v_priced.deposits_cents),
    case when not p_confirm_duplicate then
      festival.duplicate_tap_refusal(p_card_id, p_point_of_sale_id, v_items_fingerprint,
        v_window_seconds) end);
  if v_refusal is not null then
    return v_refusal;
  end if;

  v_operation_id := ledger.create_operation('bar_order', p_client_request_id, p_staff_user_id,
    jsonb_build_object('card_id', p_card_id, 'point_of_sale_id', p_point_of_sale_id));
  v_order_id := festival.insert_bar_order(v_operation_id, p_card_id, p_point_of_sale_id, p_staff_user_id,
    v_total_cents, v_items_fingerprint, p_client_request_id, v_priced.lines);
  if v_priced.items_cents > 0 then
    v_legs := array[(v_card.account_id, ledger.system_account_id('bar_revenue', p_point_of_sale_id, p_card_id),
      v_priced.items_cents)::ledger.transfer_leg];
  end if;
  v_legs := festival.deposit_legs(p_card_id, v_card.account_id, v_priced.deposits_cents, v_priced.returns_cents,
    v_legs);
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
    'lines', v_priced.lines);
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- PINs leave the database once
-- ---------------------------------------------------------------------------------------------

/** A response as stored under its idempotency key: PINs replaced by `pins_withheld`. */
create function festival.without_pins(p_result jsonb) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_result ? 'pins' then
    return (p_result - 'pins') || '{"pins_withheld": true}'::jsonb;
  end if;
  if p_result ? 'pin' then
    return (p_result - 'pin') || '{"pin_withheld": true}'::jsonb;
  end if;
  return p_result;
end;
$$;

/**
 * Registers a batch of card UIDs (1 to 1000); cards that already exist are reported, not changed.
 * New cards get random PINs, answered in this response only (a replay says `pins_withheld`).
 */
create or replace function public.sp_admin_register_cards(
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
    -- The PINs are answered once, to be printed: the stored response (what a replay answers, kept
    -- 24 hours) holds only their hashes' existence, never the PINs.
    perform ledger.idempotency_finish(sp_admin_register_cards.client_request_id, 'register_cards',
      v_idempotency.fingerprint, festival.without_pins(v_result));
  else
    v_result := v_idempotency.response;
  end if;
  perform ops.log_attempt('register_cards', v_result, sp_admin_register_cards.client_request_id,
    sp_admin_register_cards.staff_user_id, p_details => jsonb_build_object('card_count', cardinality(v_card_ids)));
  return v_result;
end;
$$;

create function festival.execute_reset_card_pin(p_card_id text, p_staff_user_id uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_pin text := festival.new_card_pin();
begin
  if festival.staff_role(p_staff_user_id) is distinct from 'admin' then
    return ledger.error_result('forbidden', 'only admins can reset a card''s PIN',
      jsonb_build_object('staff_user_id', p_staff_user_id));
  end if;
  update festival.cards
  set pin_hash = festival.hash_card_pin(v_pin), pin_failed_attempts = 0, pin_locked_until = null, updated_at = now()
  where id = p_card_id;
  if not found then
    return ledger.error_result('card_not_found', 'no card with this id', jsonb_build_object('card_id', p_card_id));
  end if;
  return jsonb_build_object('ok', true, 'replayed', false, 'card_id', p_card_id, 'pin', v_pin);
end;
$$;

/**
 * Gives a card a new random PIN (a lost or leaked PIN, a card registered before PINs existed) and
 * lifts a lockout. The PIN is answered once; a replay of the same key says `pin_withheld`.
 */
create function public.sp_admin_reset_card_pin(card_id text, staff_user_id uuid, client_request_id text)
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
  perform ledger.require_client_request_id(sp_admin_reset_card_pin.client_request_id);
  perform festival.require_card_id(sp_admin_reset_card_pin.card_id);
  perform ledger.require(sp_admin_reset_card_pin.staff_user_id is not null, 'staff_user_id', 'is required');
  v_request := jsonb_build_object('card_id', sp_admin_reset_card_pin.card_id,
    'staff_user_id', sp_admin_reset_card_pin.staff_user_id);
  select * into v_idempotency
  from ledger.idempotency_begin(sp_admin_reset_card_pin.client_request_id, 'reset_card_pin', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := festival.execute_reset_card_pin(sp_admin_reset_card_pin.card_id, sp_admin_reset_card_pin.staff_user_id);
    perform ledger.idempotency_finish(sp_admin_reset_card_pin.client_request_id, 'reset_card_pin',
      v_idempotency.fingerprint, festival.without_pins(v_result));
  else
    v_result := v_idempotency.response;
  end if;
  perform festival.log_card_attempt('reset_card_pin', festival.without_pins(v_result),
    sp_admin_reset_card_pin.client_request_id, sp_admin_reset_card_pin.staff_user_id, sp_admin_reset_card_pin.card_id,
    '{}'::jsonb);
  return v_result;
end;
$$;
revoke execute on function public.sp_admin_reset_card_pin(text, uuid, text) from public, anon, authenticated;
grant execute on function public.sp_admin_reset_card_pin(text, uuid, text) to service_role, edge_functions;
