-- Security hardening from an adversarial review: who can reach what, and whose keys are whose.
--
-- 1. Privileges. `alter default privileges ... in schema public revoke ... from public` does not
--    remove PostgreSQL's global default (EXECUTE for PUBLIC on every new function): a future
--    function without its own REVOKE would be callable by `anon` through the Data API. The global
--    form below removes it for every function the migration role creates, in any schema.
-- 2. The edge functions get a role of their own, `edge_functions`, that can execute the public
--    procedures and nothing else: no table, no private function. Every public procedure is granted
--    to `service_role, edge_functions` (a pgTAP test checks both lists are the same). The role is
--    created here without a password; the stack (locally) or an operator (hosted, see README)
--    gives it one.
-- 3. Append-only tables refuse TRUNCATE, not only UPDATE and DELETE.
-- 4. Idempotency keys are scoped by caller: a key used by an anonymous checkout no longer blocks
--    a cashier's later key. The caller is the verified token of the request (`user:<id>`, `anon`,
--    `service`), passed by the functions as the transaction-local setting `app.caller`; a call
--    without it (SQL, pg_cron, the service key through the Data API) is `service`. The business
--    tables' permanent request ids are scoped the same way (by the staff member who sent them).

-- ---------------------------------------------------------------------------------------------
-- 1. No function is executable by PUBLIC unless a migration grants it
-- ---------------------------------------------------------------------------------------------

alter default privileges revoke execute on functions from public;
alter default privileges for role postgres revoke execute on functions from public;
-- Extensions installed later into `extensions` (pgTAP for the tests, say) keep the usual
-- behaviour there: that schema is not exposed by the Data API and holds no code of ours.
alter default privileges for role postgres in schema extensions grant execute on functions to public;
-- The per-schema revokes of earlier migrations could not remove that global grant: every private
-- function so far is executable by PUBLIC (unreachable only because the schemas are not usable).
revoke execute on all functions in schema ledger, ops, festival, credits from public;
-- Tables and sequences that a future migration might create in `public` are not readable by the
-- Data API roles either (Supabase grants them by default there).
alter default privileges for role postgres in schema public revoke all on tables from anon, authenticated;
alter default privileges for role postgres in schema public revoke all on sequences from anon, authenticated;
alter default privileges for role postgres in schema public revoke all on functions from anon, authenticated;

-- ---------------------------------------------------------------------------------------------
-- 2. The edge functions' own role
-- ---------------------------------------------------------------------------------------------

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'edge_functions') then
    create role edge_functions nologin noinherit;
  end if;
end
$$;
grant usage on schema public to edge_functions;

-- Every public procedure the service role may call, the functions may call too; nothing else.
do $$
declare
  v_function regprocedure;
begin
  for v_function in
    select p.oid::regprocedure
    from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public' and has_function_privilege('service_role', p.oid, 'execute')
  loop
    execute format('grant execute on function %s to edge_functions', v_function);
  end loop;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- 3. Append-only tables refuse TRUNCATE
-- ---------------------------------------------------------------------------------------------

create trigger bar_orders_no_truncate before truncate on festival.bar_orders
  for each statement execute function ledger.refuse_history_change();
create trigger bar_order_items_no_truncate before truncate on festival.bar_order_items
  for each statement execute function ledger.refuse_history_change();
create trigger card_status_changes_no_truncate before truncate on festival.card_status_changes
  for each statement execute function ledger.refuse_history_change();
create trigger card_status_changes_append_only before update or delete on festival.card_status_changes
  for each row execute function ledger.refuse_history_change();
create trigger accounts_no_truncate before truncate on ledger.accounts
  for each statement execute function ledger.refuse_history_change();
create trigger cards_no_truncate before truncate on festival.cards
  for each statement execute function ledger.refuse_history_change();
create trigger products_no_truncate before truncate on festival.products
  for each statement execute function ledger.refuse_history_change();
create trigger points_of_sale_no_truncate before truncate on festival.points_of_sale
  for each statement execute function ledger.refuse_history_change();
create trigger checkpoints_no_truncate before truncate on festival.checkpoints
  for each statement execute function ledger.refuse_history_change();
create trigger staff_no_truncate before truncate on festival.staff
  for each statement execute function ledger.refuse_history_change();
create trigger recharges_no_truncate before truncate on festival.recharges
  for each statement execute function ledger.refuse_history_change();
create trigger recharges_never_deleted before delete on festival.recharges
  for each row execute function ledger.refuse_history_change();
create trigger stripe_events_no_truncate before truncate on festival.stripe_events
  for each statement execute function ledger.refuse_history_change();
create trigger booking_payments_no_truncate before truncate on credits.booking_payments
  for each statement execute function ledger.refuse_history_change();
create trigger allocations_no_truncate before truncate on credits.allocations
  for each statement execute function ledger.refuse_history_change();
create trigger user_accounts_no_truncate before truncate on credits.user_accounts
  for each statement execute function ledger.refuse_history_change();
create trigger escrow_holds_no_truncate before truncate on credits.escrow_holds
  for each statement execute function ledger.refuse_history_change();
create trigger credit_purchases_no_truncate before truncate on credits.credit_purchases
  for each statement execute function ledger.refuse_history_change();
create trigger credit_purchases_never_deleted before delete on credits.credit_purchases
  for each row execute function ledger.refuse_history_change();

-- ---------------------------------------------------------------------------------------------
-- 4. Idempotency keys scoped by caller
-- ---------------------------------------------------------------------------------------------

/** Who is calling: the verified token the functions pass (`user:<id>`, `anon`), else `service`. */
create function ledger.caller_scope() returns text
language plpgsql stable
set search_path = ''
as $$
begin
  return coalesce(nullif(current_setting('app.caller', true), ''), 'service');
end;
$$;

alter table ledger.idempotency_keys add column caller_scope text not null default 'service'
  check (length(caller_scope) between 1 and 100);
alter table ledger.idempotency_keys drop constraint idempotency_keys_pkey;
alter table ledger.idempotency_keys add primary key (caller_scope, key);

/** The advisory lock that serializes calls with the same idempotency key of the same caller. */
create function ledger.idempotency_lock_key(p_caller_scope text, p_key text) returns bigint
language plpgsql immutable
set search_path = ''
as $$
begin
  return hashtextextended(p_caller_scope || ':' || p_key, 20261122);
end;
$$;

/**
 * Starts an idempotent operation within the caller's own keys. Calls with the same key are
 * serialized by a transaction-level advisory lock: a concurrent duplicate waits here until the
 * first commits, then finds its stored response. Returns outcome 'new' (go ahead, then call
 * idempotency_finish), 'replay' (response is the stored one with replayed = true) or 'reused'
 * (same key, other operation or request: the operation is part of the fingerprint).
 */
create or replace function ledger.idempotency_begin(
  p_key text, p_operation text, p_request jsonb,
  out outcome text, out fingerprint text, out response jsonb)
language plpgsql
set search_path = ''
as $$
declare
  v_caller_scope text := ledger.caller_scope();
  v_stored ledger.idempotency_keys;
begin
  fingerprint := encode(sha256(convert_to(p_operation || ':' || p_request::text, 'UTF8')), 'hex');
  perform pg_advisory_xact_lock(ledger.idempotency_lock_key(v_caller_scope, p_key));
  select * into v_stored from ledger.idempotency_keys where caller_scope = v_caller_scope and key = p_key;
  if not found then
    outcome := 'new';
  elsif v_stored.operation = p_operation and v_stored.request_fingerprint = fingerprint then
    outcome := 'replay';
    response := v_stored.response || '{"replayed": true}'::jsonb;
  else
    outcome := 'reused';
    response := ledger.error_result('idempotency_key_reused',
      'this client_request_id was already used for a different request',
      jsonb_build_object('client_request_id', p_key));
  end if;
end;
$$;

create or replace function ledger.idempotency_finish(p_key text, p_operation text, p_fingerprint text, p_response jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into ledger.idempotency_keys (caller_scope, key, operation, request_fingerprint, response)
  values (ledger.caller_scope(), p_key, p_operation, p_fingerprint, p_response);
end;
$$;

-- The permanent request ids of the business tables, which outlive the 24-hour keys, are scoped
-- by who sent them too: a staff member's key never collides with another's or with an online
-- top-up's (no staff: `nulls not distinct` keeps those unique among themselves).
alter table festival.bar_orders drop constraint bar_orders_client_request_id_key;
alter table festival.bar_orders add constraint bar_orders_staff_request_key unique (staff_user_id, client_request_id);
alter table festival.recharges drop constraint recharges_client_request_id_key;
-- Online top-ups made without a key of ours (a paid session we had no pending row for) have none.
create unique index recharges_staff_request_key on festival.recharges (staff_user_id, client_request_id)
  nulls not distinct where client_request_id is not null;
alter table festival.card_status_changes drop constraint card_status_changes_client_request_id_key;
alter table festival.card_status_changes add constraint card_status_changes_staff_request_key
  unique (staff_user_id, client_request_id);

-- The late-replay lookups of the procedures that keep such request ids, scoped the same way.

create or replace function festival.execute_checkpoint_recharge(
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
  select id into v_previous_recharge_id from festival.recharges
  where client_request_id = p_client_request_id and staff_user_id = p_staff_user_id;
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

create or replace function festival.execute_set_card_status(
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
  if exists (select 1 from festival.card_status_changes
    where client_request_id = p_client_request_id and staff_user_id = p_staff_user_id) then
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

create or replace function public.sp_prepare_online_recharge(
  card_id text,
  amount_cents bigint,
  package_code text,
  client_request_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_fingerprint text;
  v_existing festival.recharges;
  v_package festival.topup_packages;
  v_amount_cents bigint := sp_prepare_online_recharge.amount_cents;
  v_bonus_cents bigint := 0;
  v_card festival.locked_card;
  v_error jsonb;
  v_recharge festival.recharges;
  v_idempotency record;
  v_result jsonb;
begin
  perform ledger.require_client_request_id(sp_prepare_online_recharge.client_request_id);
  perform festival.require_card_id(sp_prepare_online_recharge.card_id);
  perform ledger.require((sp_prepare_online_recharge.amount_cents is null) <> (sp_prepare_online_recharge.package_code is null),
    'amount_cents', 'give either amount_cents or package_code');
  perform ledger.require(coalesce(sp_prepare_online_recharge.amount_cents > 0, true), 'amount_cents', 'must be a positive integer');
  v_fingerprint := encode(sha256(convert_to(jsonb_build_object(
    'card_id', sp_prepare_online_recharge.card_id, 'amount_cents', sp_prepare_online_recharge.amount_cents,
    'package_code', sp_prepare_online_recharge.package_code)::text, 'UTF8')), 'hex');

  perform pg_advisory_xact_lock(ledger.idempotency_lock_key(ledger.caller_scope(),
    sp_prepare_online_recharge.client_request_id));
  -- A recharge made under this key answers as it is now (with its session once attached).
  select * into v_existing from festival.recharges r
  where r.client_request_id = sp_prepare_online_recharge.client_request_id and r.staff_user_id is null;
  if found then
    if v_existing.payment_method = 'stripe' and v_existing.request_fingerprint = v_fingerprint then
      return festival.pending_recharge_response(v_existing) || '{"replayed": true}'::jsonb;
    end if;
    return ledger.error_result('idempotency_key_reused', 'this client_request_id was already used for a different request',
      jsonb_build_object('client_request_id', sp_prepare_online_recharge.client_request_id));
  end if;
  -- Business failures are recorded outcomes too (docs/architecture.md §5), under the ordinary idempotency keys.
  select * into v_idempotency from ledger.idempotency_begin(sp_prepare_online_recharge.client_request_id,
    'prepare_online_recharge', jsonb_build_object('request_fingerprint', v_fingerprint));
  if v_idempotency.outcome <> 'new' then
    return v_idempotency.response;
  end if;

  if sp_prepare_online_recharge.package_code is not null then
    v_package := festival.active_package(sp_prepare_online_recharge.package_code);
    if v_package.code is null then
      v_result := festival.unknown_package_error(sp_prepare_online_recharge.package_code);
    end if;
    v_amount_cents := v_package.price_cents;
    v_bonus_cents := v_package.bonus_cents;
  end if;
  if v_result is null then
    v_card := festival.lock_card(sp_prepare_online_recharge.card_id);
    if v_card is null then
      v_result := ledger.error_result('card_not_found', 'no card with this id',
        jsonb_build_object('card_id', sp_prepare_online_recharge.card_id));
    elsif v_card.status <> 'active' then
      v_result := ledger.error_result('card_blocked', 'the card is blocked',
        jsonb_build_object('card_id', sp_prepare_online_recharge.card_id));
    else
      v_error := festival.recharge_limit_error(v_amount_cents, v_card.balance_cents, v_bonus_cents);
      v_result := v_error;
    end if;
  end if;
  if v_result is null then
    insert into festival.recharges (
      card_id, amount_cents, bonus_cents, package_code, payment_method, client_request_id, status, currency,
      request_fingerprint)
    values (
      sp_prepare_online_recharge.card_id, v_amount_cents, v_bonus_cents, sp_prepare_online_recharge.package_code,
      'stripe', sp_prepare_online_recharge.client_request_id, 'pending',
      (select currency from festival.settings), v_fingerprint)
    returning * into v_recharge;
    v_result := festival.pending_recharge_response(v_recharge);
  end if;
  perform ledger.idempotency_finish(sp_prepare_online_recharge.client_request_id, 'prepare_online_recharge',
    v_idempotency.fingerprint, v_result);
  perform festival.log_card_attempt('prepare_online_recharge', v_result, sp_prepare_online_recharge.client_request_id,
    null, sp_prepare_online_recharge.card_id, jsonb_build_object('package_code', sp_prepare_online_recharge.package_code));
  return v_result;
end;
$$;
