-- Escrow and booking integrity.
--
-- * Escrow: the provider of a marketplace order is named when its credits are locked. Only that
--   provider may accept the order, and a payout always pays that provider, whoever triggers it.
--   Before, any signed-in user could accept any order and then be paid its credits.
-- * Ids chosen by a payer belong to that payer: a booking payment is unique per
--   (booking practitioner, booking id) and a hold per (client, order id). Before, anyone paying
--   1 credit under someone else's booking or order id made the real payment fail. Accept, unlock
--   and payout therefore name a hold by its client and its order id.
-- * Festival staff and anonymous sign-ins cannot use credits at all: every credits procedure
--   refuses them with `forbidden`. Staff are known only to the database (festival.staff), so the
--   procedures decide; the edge functions also refuse anonymous tokens before calling.

-- ---------------------------------------------------------------------------------------------
-- Who may use credits
-- ---------------------------------------------------------------------------------------------

/**
 * `forbidden` for a user who may not hold or move credits, null otherwise. Festival staff act for
 * the festival, not for themselves: their tokens must not move credits, and credits paid to them
 * could never be used. Anonymous sign-ins cost nothing to create, so they would let anyone
 * collect or spread credits under throwaway identities.
 */
create function credits.refused_user(p_user_id uuid) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  if festival.staff_role(p_user_id) is not null then
    return ledger.error_result('forbidden', 'festival staff cannot use practitioner credits',
      jsonb_build_object('user_id', p_user_id));
  end if;
  if exists (select 1 from auth.users where id = p_user_id and is_anonymous) then
    return ledger.error_result('forbidden', 'anonymous sign-ins cannot use practitioner credits',
      jsonb_build_object('user_id', p_user_id));
  end if;
  return null;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Booking payments: one per (booking practitioner, booking id)
-- ---------------------------------------------------------------------------------------------

alter table credits.booking_payments drop constraint booking_payments_pkey;
alter table credits.booking_payments add constraint booking_payments_pkey
  primary key (booking_practitioner_id, booking_id);
-- The request id that outlives the idempotency key is the payer's too: another payer using the
-- same text must neither be refused nor collide with it.
alter table credits.booking_payments drop constraint booking_payments_client_request_id_key;
alter table credits.booking_payments add constraint booking_payments_payer_request_key
  unique (booking_practitioner_id, client_request_id);

create or replace function credits.execute_peer_booking(
  p_booking_practitioner_id uuid, p_treating_practitioner_id uuid, p_credits bigint, p_booking_id text,
  p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_paid credits.booking_payments;
  v_refusal jsonb;
  v_booker_account bigint;
  v_treating_account bigint;
  v_booker_balance bigint;
  v_treating_balance bigint;
  v_operation_id bigint;
begin
  v_refusal := coalesce(credits.refused_user(p_booking_practitioner_id),
    credits.refused_user(p_treating_practitioner_id));
  if v_refusal is not null then
    return v_refusal;
  end if;
  if p_booking_practitioner_id = p_treating_practitioner_id then
    return ledger.error_result('self_booking', 'a practitioner cannot book a treatment with themselves',
      jsonb_build_object('user_id', p_booking_practitioner_id));
  end if;
  -- Payments of one payer's booking under different keys run one after another, so the check
  -- below sees a payment committed meanwhile. Other payers' bookings with the same id do not wait.
  perform pg_advisory_xact_lock(hashtextextended(
    'credits.booking:' || p_booking_practitioner_id::text || ':' || p_booking_id, 0));
  select * into v_paid from credits.booking_payments
  where booking_practitioner_id = p_booking_practitioner_id and booking_id = p_booking_id;
  if found then
    return ledger.error_result('booking_already_paid', 'this booking is already paid',
      jsonb_build_object('booking_id', p_booking_id, 'transaction_id', v_paid.operation_id));
  end if;
  -- Idempotency keys expire after 24 hours; the payment's own request id never does.
  select * into v_paid from credits.booking_payments
  where booking_practitioner_id = p_booking_practitioner_id and client_request_id = p_client_request_id;
  if found then
    return ledger.error_result('idempotency_key_reused',
      'this client_request_id was used by an earlier booking payment whose stored response has expired',
      jsonb_build_object('client_request_id', p_client_request_id, 'booking_id', v_paid.booking_id));
  end if;
  if not credits.user_exists(p_booking_practitioner_id) then
    return credits.user_not_found(p_booking_practitioner_id);
  end if;
  if not credits.user_exists(p_treating_practitioner_id) then
    return credits.user_not_found(p_treating_practitioner_id);
  end if;
  v_booker_account := credits.user_account_id(p_booking_practitioner_id);
  if v_booker_account is null then
    return credits.insufficient_funds(0, 'credits', p_credits);
  end if;
  v_treating_account := credits.ensure_user_account(p_treating_practitioner_id);
  perform credits.lock_accounts(array[v_booker_account, v_treating_account]);
  v_booker_balance := credits.account_balance(v_booker_account);
  v_treating_balance := credits.account_balance(v_treating_account);
  if v_booker_balance < p_credits then
    return credits.insufficient_funds(v_booker_balance, 'credits', p_credits);
  end if;

  v_operation_id := ledger.create_operation('peer_booking', p_client_request_id, p_booking_practitioner_id,
    jsonb_build_object('booking_id', p_booking_id, 'treating_practitioner_id', p_treating_practitioner_id));
  insert into credits.booking_payments (
    booking_id, operation_id, booking_practitioner_id, treating_practitioner_id, credits, client_request_id)
  values (
    p_booking_id, v_operation_id, p_booking_practitioner_id, p_treating_practitioner_id, p_credits,
    p_client_request_id);
  perform ledger.post_transfers(v_operation_id,
    array[(v_booker_account, v_treating_account, p_credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (
    user_id, type, amount_credits, balance_before_credits, balance_after_credits, booking_id, operation_id)
  values
    (p_booking_practitioner_id, 'peer_booking_debit', -p_credits, v_booker_balance, v_booker_balance - p_credits,
      p_booking_id, v_operation_id),
    (p_treating_practitioner_id, 'session_earning', p_credits, v_treating_balance, v_treating_balance + p_credits,
      p_booking_id, v_operation_id);

  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'transaction_id', v_operation_id,
    'booking_id', p_booking_id,
    'credits', p_credits,
    'booking_practitioner', jsonb_build_object(
      'user_id', p_booking_practitioner_id,
      'balance_before_credits', v_booker_balance,
      'balance_after_credits', v_booker_balance - p_credits),
    'treating_practitioner', jsonb_build_object(
      'user_id', p_treating_practitioner_id,
      'balance_before_credits', v_treating_balance,
      'balance_after_credits', v_treating_balance + p_credits));
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Escrow holds: one per (client, order id), with the provider named at lock
-- ---------------------------------------------------------------------------------------------

alter table credits.escrow_holds drop constraint escrow_holds_pkey;
alter table credits.escrow_holds add constraint escrow_holds_pkey primary key (client_user_id, order_id);
-- The primary key now starts with the client: the separate index on it is redundant.
drop index credits.escrow_holds_client;
-- Holds locked from now on always name their provider (lock_credits requires it). Holds locked
-- before have none: nobody can accept them or be paid them, they can only go back to the client.
-- A CHECK cannot say "from now on" without refusing the unlock of such an old hold, so the
-- procedures enforce it.

/**
 * Who a hold belongs to, who may be paid it, how much and where it sits never change after the
 * lock: only its status moves on. A bug or a hand-written UPDATE that redirected a hold would
 * pay someone the client never named.
 */
create function credits.refuse_hold_identity_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if (new.client_user_id, new.order_id, new.provider_id, new.account_id, new.amount_credits, new.lock_operation_id)
    is distinct from
    (old.client_user_id, old.order_id, old.provider_id, old.account_id, old.amount_credits, old.lock_operation_id) then
    raise exception 'an escrow hold''s client, order, provider, account, amount and lock never change'
      using errcode = 'insufficient_privilege';
  end if;
  return new;
end;
$$;
create trigger escrow_holds_identity_fixed before update on credits.escrow_holds
  for each row execute function credits.refuse_hold_identity_change();

-- The old signatures: without a provider, and naming a hold by its order id alone. Dropped, so
-- that nothing can lock without a provider or reach another client's hold.
drop function public.lock_credits(uuid, bigint, text, text);
drop function public.accept_credit_order(text, uuid, text);
drop function public.unlock_credits(text, uuid, text);
drop function public.payout_to_provider(text, uuid, text, uuid);
drop function credits.execute_lock(uuid, bigint, text, text);
drop function credits.execute_accept(text, uuid);
drop function credits.execute_unlock(text, uuid, text);
drop function credits.execute_payout(text, uuid, uuid, text);
drop function credits.lock_hold(text);
drop function credits.hold_not_found(text);

/** The hold, locked for the rest of the transaction (every change of a hold takes this lock first). */
create function credits.lock_hold(p_client_user_id uuid, p_order_id text) returns credits.escrow_holds
language plpgsql
set search_path = ''
as $$
declare
  v_hold credits.escrow_holds;
begin
  select * into v_hold from credits.escrow_holds
  where client_user_id = p_client_user_id and order_id = p_order_id
  for update;
  return v_hold;
end;
$$;

create function credits.hold_not_found(p_client_user_id uuid, p_order_id text) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return ledger.error_result('hold_not_found', 'no credits are locked for this order of this client',
    jsonb_build_object('client_user_id', p_client_user_id, 'order_id', p_order_id));
end;
$$;

create function credits.execute_lock(
  p_user_id uuid, p_provider_id uuid, p_amount_credits bigint, p_order_id text, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_refusal jsonb;
  v_account_id bigint;
  v_balance bigint;
  v_hold_account_id bigint;
  v_operation_id bigint;
  v_hold credits.escrow_holds;
begin
  v_refusal := credits.refused_user(p_user_id);
  if v_refusal is not null then
    return v_refusal;
  end if;
  if p_provider_id = p_user_id then
    return ledger.error_result('self_booking', 'the client cannot be the provider of their own order',
      jsonb_build_object('order_id', p_order_id, 'user_id', p_user_id));
  end if;
  -- Locks for one client's order under different keys run one after another: the second sees
  -- the hold. Other clients' orders with the same id do not wait.
  perform pg_advisory_xact_lock(hashtextextended('credits.escrow:' || p_user_id::text || ':' || p_order_id, 0));
  if exists (select 1 from credits.escrow_holds where client_user_id = p_user_id and order_id = p_order_id) then
    return ledger.error_result('hold_already_exists', 'credits are already locked for this order',
      jsonb_build_object('order_id', p_order_id));
  end if;
  if not credits.user_exists(p_user_id) then
    return credits.user_not_found(p_user_id);
  end if;
  if not credits.user_exists(p_provider_id) then
    return credits.user_not_found(p_provider_id);
  end if;
  v_refusal := credits.refused_user(p_provider_id);
  if v_refusal is not null then
    return v_refusal;
  end if;
  v_account_id := credits.user_account_id(p_user_id);
  if v_account_id is null then
    return credits.insufficient_funds(0, 'amount_credits', p_amount_credits);
  end if;
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  if v_balance < p_amount_credits then
    return credits.insufficient_funds(v_balance, 'amount_credits', p_amount_credits);
  end if;

  v_operation_id := ledger.create_operation('credit_lock', p_client_request_id, p_user_id,
    jsonb_build_object('order_id', p_order_id, 'provider_id', p_provider_id));
  -- Named by client and lock operation: unique, and short enough for any order id (client uuid
  -- plus order id could exceed the code's 300 characters). Holds locked before keep their
  -- 'escrow_hold:<order id>' codes; should one equal a new code, the unique code aborts this lock
  -- and nothing moves.
  insert into ledger.accounts (kind, code)
  values ('escrow_hold', 'escrow_hold:' || p_user_id::text || ':' || v_operation_id::text)
  returning id into v_hold_account_id;
  insert into credits.escrow_holds (
    order_id, client_user_id, provider_id, account_id, amount_credits, lock_operation_id)
  values (p_order_id, p_user_id, p_provider_id, v_hold_account_id, p_amount_credits, v_operation_id)
  returning * into v_hold;
  perform ledger.post_transfers(v_operation_id,
    array[(v_account_id, v_hold_account_id, p_amount_credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (
    user_id, type, amount_credits, balance_before_credits, balance_after_credits, order_id, operation_id)
  values (p_user_id, 'lock', -p_amount_credits, v_balance, v_balance - p_amount_credits, p_order_id, v_operation_id);

  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'transaction_id', v_operation_id,
    'user_id', p_user_id,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance - p_amount_credits) || credits.hold_summary(v_hold);
end;
$$;

/**
 * Moves credits from the client's balance into a new hold for a marketplace order, naming the
 * provider who alone may accept the order and be paid its credits.
 */
create function public.lock_credits(
  user_id uuid, provider_id uuid, amount bigint, order_id text, client_request_id text)
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
  perform ledger.require_client_request_id(lock_credits.client_request_id);
  perform credits.require_user_id(lock_credits.user_id, 'user_id');
  perform credits.require_user_id(lock_credits.provider_id, 'provider_id');
  perform ledger.require(lock_credits.amount > 0, 'amount', 'must be a positive integer');
  perform credits.require_text_id(lock_credits.order_id, 'order_id');
  v_request := jsonb_build_object('user_id', lock_credits.user_id, 'provider_id', lock_credits.provider_id,
    'amount', lock_credits.amount, 'order_id', lock_credits.order_id);

  select * into v_idempotency from ledger.idempotency_begin(lock_credits.client_request_id, 'credit_lock', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_lock(lock_credits.user_id, lock_credits.provider_id, lock_credits.amount,
      lock_credits.order_id, lock_credits.client_request_id);
    perform ledger.idempotency_finish(lock_credits.client_request_id, 'credit_lock', v_idempotency.fingerprint,
      v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('credit_lock', v_result, lock_credits.client_request_id, lock_credits.user_id,
    lock_credits.user_id, lock_credits.amount,
    jsonb_build_object('order_id', lock_credits.order_id, 'provider_id', lock_credits.provider_id));
  return v_result;
end;
$$;
revoke execute on function public.lock_credits(uuid, uuid, bigint, text, text) from public, anon, authenticated;
grant execute on function public.lock_credits(uuid, uuid, bigint, text, text) to service_role, edge_functions;

create function credits.execute_accept(p_client_user_id uuid, p_order_id text, p_provider_id uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_refusal jsonb;
  v_hold credits.escrow_holds;
begin
  v_refusal := credits.refused_user(p_provider_id);
  if v_refusal is not null then
    return v_refusal;
  end if;
  v_hold := credits.lock_hold(p_client_user_id, p_order_id);
  if v_hold.order_id is null then
    return credits.hold_not_found(p_client_user_id, p_order_id);
  end if;
  -- Before the release check: someone who is not the provider learns nothing about the hold's state.
  if v_hold.provider_id is distinct from p_provider_id then
    return ledger.error_result('forbidden', 'only the provider named when the credits were locked can accept this order',
      jsonb_build_object('client_user_id', p_client_user_id, 'order_id', p_order_id));
  end if;
  if v_hold.status in ('unlocked', 'paid_out') then
    return credits.hold_already_released(v_hold);
  end if;
  -- Accepting an order the provider already accepted changes nothing.
  if v_hold.status = 'held' then
    update credits.escrow_holds set status = 'accepted', accepted_at = now()
    where client_user_id = p_client_user_id and order_id = p_order_id
    returning * into v_hold;
  end if;
  return jsonb_build_object('ok', true, 'replayed', false, 'accepted_at', v_hold.accepted_at)
    || credits.hold_summary(v_hold);
end;
$$;

/**
 * The provider named at lock accepts a marketplace order: from then on the client can no longer
 * unlock its hold.
 */
create function public.accept_credit_order(
  client_user_id uuid, order_id text, provider_id uuid, client_request_id text)
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
  perform ledger.require_client_request_id(accept_credit_order.client_request_id);
  perform credits.require_user_id(accept_credit_order.client_user_id, 'client_user_id');
  perform credits.require_text_id(accept_credit_order.order_id, 'order_id');
  perform credits.require_user_id(accept_credit_order.provider_id, 'provider_id');
  v_request := jsonb_build_object('client_user_id', accept_credit_order.client_user_id,
    'order_id', accept_credit_order.order_id, 'provider_id', accept_credit_order.provider_id);

  select * into v_idempotency
  from ledger.idempotency_begin(accept_credit_order.client_request_id, 'credit_accept', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_accept(accept_credit_order.client_user_id, accept_credit_order.order_id,
      accept_credit_order.provider_id);
    perform ledger.idempotency_finish(accept_credit_order.client_request_id, 'credit_accept',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform ops.log_attempt('credit_accept', v_result, accept_credit_order.client_request_id,
    accept_credit_order.provider_id,
    p_details => jsonb_build_object('client_user_id', accept_credit_order.client_user_id,
      'order_id', accept_credit_order.order_id, 'unit', 'credits'));
  return v_result;
end;
$$;
revoke execute on function public.accept_credit_order(uuid, text, uuid, text) from public, anon, authenticated;
grant execute on function public.accept_credit_order(uuid, text, uuid, text) to service_role, edge_functions;

/**
 * Releases a hold to `p_recipient` (the client on unlock, the named provider on payout): one
 * transfer out of the hold's account, the journal row, and the hold marked released. The caller
 * holds the hold's row lock and has checked that it is not released yet.
 */
create or replace function credits.release_hold(
  p_hold credits.escrow_holds, p_recipient uuid, p_status text, p_journal_type text, p_actor_user_id uuid,
  p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recipient_account bigint;
  v_balance bigint;
  v_operation_id bigint;
  v_hold credits.escrow_holds;
begin
  v_recipient_account := credits.ensure_user_account(p_recipient);
  perform credits.lock_accounts(array[p_hold.account_id, v_recipient_account]);
  v_balance := credits.account_balance(v_recipient_account);
  v_operation_id := ledger.create_operation(
    case p_status when 'unlocked' then 'credit_unlock' else 'credit_payout' end, p_client_request_id,
    p_actor_user_id, jsonb_build_object('client_user_id', p_hold.client_user_id, 'order_id', p_hold.order_id,
      'recipient_user_id', p_recipient));
  perform ledger.post_transfers(v_operation_id,
    array[(p_hold.account_id, v_recipient_account, p_hold.amount_credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (
    user_id, type, amount_credits, balance_before_credits, balance_after_credits, order_id, operation_id)
  values (p_recipient, p_journal_type, p_hold.amount_credits, v_balance, v_balance + p_hold.amount_credits,
    p_hold.order_id, v_operation_id);
  update credits.escrow_holds
  set status = p_status,
    released_at = now(),
    release_operation_id = v_operation_id
  where client_user_id = p_hold.client_user_id and order_id = p_hold.order_id
  returning * into v_hold;
  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'transaction_id', v_operation_id,
    'user_id', p_recipient,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance + p_hold.amount_credits) || credits.hold_summary(v_hold);
end;
$$;

create function credits.execute_unlock(
  p_client_user_id uuid, p_order_id text, p_actor_user_id uuid, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_refusal jsonb;
  v_hold credits.escrow_holds;
  v_is_admin boolean;
  v_is_provider boolean;
begin
  v_refusal := credits.refused_user(p_actor_user_id);
  if v_refusal is not null then
    return v_refusal;
  end if;
  v_is_admin := credits.is_platform_admin(p_actor_user_id);
  v_hold := credits.lock_hold(p_client_user_id, p_order_id);
  if v_hold.order_id is null then
    return credits.hold_not_found(p_client_user_id, p_order_id);
  end if;
  v_is_provider := p_actor_user_id is not distinct from v_hold.provider_id;
  if not (v_is_admin or v_is_provider or p_actor_user_id = v_hold.client_user_id) then
    return ledger.error_result('forbidden', 'only the client, the provider or an admin can unlock this order',
      jsonb_build_object('client_user_id', p_client_user_id, 'order_id', p_order_id));
  end if;
  if v_hold.status in ('unlocked', 'paid_out') then
    return credits.hold_already_released(v_hold);
  end if;
  -- The client may take the credits back only until the provider accepts the order.
  if v_hold.status = 'accepted' and not (v_is_admin or v_is_provider) then
    return ledger.error_result('forbidden', 'the order was accepted: only the provider or an admin can unlock it',
      jsonb_build_object('client_user_id', p_client_user_id, 'order_id', p_order_id, 'status', v_hold.status));
  end if;
  return credits.release_hold(v_hold, v_hold.client_user_id, 'unlocked', 'unlock', p_actor_user_id,
    p_client_request_id);
end;
$$;

/**
 * Returns a hold's credits to its client: by the client before the provider accepts the order,
 * by the named provider (declining or cancelling), or by a platform admin. A hold is released once.
 */
create function public.unlock_credits(
  client_user_id uuid, order_id text, actor_user_id uuid, client_request_id text)
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
  perform ledger.require_client_request_id(unlock_credits.client_request_id);
  perform credits.require_user_id(unlock_credits.client_user_id, 'client_user_id');
  perform credits.require_text_id(unlock_credits.order_id, 'order_id');
  perform credits.require_user_id(unlock_credits.actor_user_id, 'actor_user_id');
  v_request := jsonb_build_object('client_user_id', unlock_credits.client_user_id, 'order_id', unlock_credits.order_id,
    'actor_user_id', unlock_credits.actor_user_id);

  select * into v_idempotency
  from ledger.idempotency_begin(unlock_credits.client_request_id, 'credit_unlock', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_unlock(unlock_credits.client_user_id, unlock_credits.order_id,
      unlock_credits.actor_user_id, unlock_credits.client_request_id);
    perform ledger.idempotency_finish(unlock_credits.client_request_id, 'credit_unlock', v_idempotency.fingerprint,
      v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('credit_unlock', v_result, unlock_credits.client_request_id,
    unlock_credits.actor_user_id, (v_result ->> 'user_id')::uuid, (v_result ->> 'amount_credits')::bigint,
    jsonb_build_object('client_user_id', unlock_credits.client_user_id, 'order_id', unlock_credits.order_id));
  return v_result;
end;
$$;
revoke execute on function public.unlock_credits(uuid, text, uuid, text) from public, anon, authenticated;
grant execute on function public.unlock_credits(uuid, text, uuid, text) to service_role, edge_functions;

create function credits.execute_payout(
  p_client_user_id uuid, p_order_id text, p_actor_user_id uuid, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_refusal jsonb;
  v_hold credits.escrow_holds;
begin
  -- No actor: the service itself (a trusted backend job). A user must be a platform admin.
  if p_actor_user_id is not null then
    v_refusal := credits.refused_user(p_actor_user_id);
    if v_refusal is not null then
      return v_refusal;
    end if;
    if not credits.is_platform_admin(p_actor_user_id) then
      return ledger.error_result('forbidden', 'only a platform admin or the service can pay out',
        jsonb_build_object('actor_user_id', p_actor_user_id));
    end if;
  end if;
  v_hold := credits.lock_hold(p_client_user_id, p_order_id);
  if v_hold.order_id is null then
    return credits.hold_not_found(p_client_user_id, p_order_id);
  end if;
  if v_hold.status in ('unlocked', 'paid_out') then
    return credits.hold_already_released(v_hold);
  end if;
  -- Only a hold locked before providers were named has none: nobody may be paid it.
  if v_hold.provider_id is null then
    return ledger.error_result('forbidden', 'this hold names no provider: it can only be unlocked',
      jsonb_build_object('client_user_id', p_client_user_id, 'order_id', p_order_id));
  end if;
  return credits.release_hold(v_hold, v_hold.provider_id, 'paid_out', 'payout', p_actor_user_id, p_client_request_id);
end;
$$;

/**
 * Pays a hold's credits to the provider named when they were locked. Called by the service
 * (actor_user_id null) or by a platform admin; neither chooses the recipient.
 */
create function public.payout_to_provider(
  client_user_id uuid, order_id text, client_request_id text, actor_user_id uuid default null)
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
  perform ledger.require_client_request_id(payout_to_provider.client_request_id);
  perform credits.require_user_id(payout_to_provider.client_user_id, 'client_user_id');
  perform credits.require_text_id(payout_to_provider.order_id, 'order_id');
  v_request := jsonb_build_object('client_user_id', payout_to_provider.client_user_id,
    'order_id', payout_to_provider.order_id, 'actor_user_id', payout_to_provider.actor_user_id);

  select * into v_idempotency
  from ledger.idempotency_begin(payout_to_provider.client_request_id, 'credit_payout', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_payout(payout_to_provider.client_user_id, payout_to_provider.order_id,
      payout_to_provider.actor_user_id, payout_to_provider.client_request_id);
    perform ledger.idempotency_finish(payout_to_provider.client_request_id, 'credit_payout',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('credit_payout', v_result, payout_to_provider.client_request_id,
    payout_to_provider.actor_user_id, (v_result ->> 'user_id')::uuid, (v_result ->> 'amount_credits')::bigint,
    jsonb_build_object('client_user_id', payout_to_provider.client_user_id, 'order_id', payout_to_provider.order_id));
  return v_result;
end;
$$;
revoke execute on function public.payout_to_provider(uuid, text, text, uuid) from public, anon, authenticated;
grant execute on function public.payout_to_provider(uuid, text, text, uuid) to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Reading a balance: staff and anonymous sign-ins have none to read
-- ---------------------------------------------------------------------------------------------

create or replace function public.credits_balance(user_id uuid, transaction_limit integer default 50)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_refusal jsonb;
  v_account_id bigint;
  v_transactions jsonb;
begin
  perform credits.require_user_id(credits_balance.user_id, 'user_id');
  perform ledger.require(credits_balance.transaction_limit between 1 and 100, 'transaction_limit', 'must be 1 to 100');
  if not credits.user_exists(credits_balance.user_id) then
    return credits.user_not_found(credits_balance.user_id);
  end if;
  v_refusal := credits.refused_user(credits_balance.user_id);
  if v_refusal is not null then
    return v_refusal;
  end if;
  v_account_id := credits.user_account_id(credits_balance.user_id);

  select coalesce(jsonb_agg(jsonb_build_object(
      'id', journal.id,
      'at', journal.created_at,
      'type', journal.type,
      'amount_credits', journal.amount_credits,
      'balance_before_credits', journal.balance_before_credits,
      'balance_after_credits', journal.balance_after_credits,
      'booking_id', journal.booking_id,
      'order_id', journal.order_id,
      'subscription_id', journal.subscription_id,
      'period_start', journal.period_start,
      'period_end', journal.period_end,
      'transaction_id', journal.operation_id) order by journal.id desc), '[]'::jsonb)
  into v_transactions
  from (
    select * from credits.credit_transactions as entry
    where entry.user_id = credits_balance.user_id
    order by entry.id desc
    limit credits_balance.transaction_limit
  ) as journal;

  return jsonb_build_object(
    'ok', true,
    'user_id', credits_balance.user_id,
    'balance_credits', coalesce(credits.account_balance(v_account_id), 0),
    'transactions', v_transactions);
end;
$$;
revoke execute on function public.credits_balance(uuid, integer) from public, anon, authenticated;
grant execute on function public.credits_balance(uuid, integer) to service_role, edge_functions;
