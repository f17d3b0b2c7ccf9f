-- Practitioner credits: one credit account per user, a journal of credit transactions, peer
-- bookings paid in credits, monthly allocations per subscription period and escrow holds for
-- marketplace orders (lock, accept, unlock, pay out). Every balance change goes through the ledger
-- kernel (`ledger.post_transfers`); the journal is written in the same transaction, so that
-- `public.ledger_reconcile()` can compare two independent records of every user's credits.
--
-- Credits are integer units in bigint (not money: names end in `_credits`). The ledger stores
-- them in its `balance_cents` / `amount_cents` columns, which are unit-free integers there.

create schema if not exists credits;
revoke all on schema credits from public, anon, authenticated;
alter default privileges in schema credits revoke execute on functions from public;

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------

/** A user's credit account (ledger kind 'user_credit'), created on first use. */
create table credits.user_accounts (
  user_id uuid primary key references auth.users (id),
  account_id bigint not null unique references ledger.accounts (id),
  created_at timestamptz not null default now()
);
alter table credits.user_accounts enable row level security;

/**
 * The journal: one row per change of a user's credit balance, signed from the user's point of
 * view (negative = credits left the balance). Written by the procedures next to the transfers;
 * the sum of a user's rows always equals the balance of the user's account (reconciled).
 * Written on every booking, so no foreign keys (see ledger.transfers): the references are
 * proven by ledger_reconcile() and history is never deleted.
 */
create table credits.credit_transactions (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  type text not null check (type in (
    'peer_booking_debit', 'session_earning', 'monthly_allocation', 'purchase', 'refund', 'lock', 'unlock',
    'payout', 'correction')),
  amount_credits bigint not null check (amount_credits <> 0),
  balance_before_credits bigint not null check (balance_before_credits >= 0),
  balance_after_credits bigint not null check (balance_after_credits >= 0),
  booking_id text,
  order_id text,
  subscription_id text,
  period_start timestamptz,
  period_end timestamptz,
  operation_id bigint not null,
  created_at timestamptz not null default now(),
  constraint balances_consistent check (balance_after_credits = balance_before_credits + amount_credits),
  -- Each type moves credits one way, the same everywhere; only a correction may go either way.
  constraint direction_of_type check (
    case type
      when 'peer_booking_debit' then amount_credits < 0
      when 'lock' then amount_credits < 0
      when 'refund' then amount_credits < 0
      when 'correction' then true
      else amount_credits > 0
    end)
);
create index credit_transactions_user on credits.credit_transactions (user_id, id);
alter table credits.credit_transactions enable row level security;

/** One payment per booking, whatever key it arrives under. */
create table credits.booking_payments (
  booking_id text primary key check (length(booking_id) between 1 and 255),
  operation_id bigint not null unique,
  booking_practitioner_id uuid not null,
  treating_practitioner_id uuid not null,
  credits bigint not null check (credits > 0),
  client_request_id text not null unique check (length(client_request_id) between 1 and 255),
  created_at timestamptz not null default now(),
  constraint not_a_self_booking check (booking_practitioner_id <> treating_practitioner_id)
);
alter table credits.booking_payments enable row level security;

/**
 * Escrow for a marketplace order: the credits sit in the hold's own ledger account (kind
 * 'escrow_hold') until they are released once, either back to the client (unlock) or to the
 * provider (payout).
 */
create table credits.escrow_holds (
  order_id text primary key check (length(order_id) between 1 and 255),
  client_user_id uuid not null references auth.users (id),
  -- Set when a provider accepts the order, or at the payout.
  provider_id uuid,
  account_id bigint not null unique references ledger.accounts (id),
  amount_credits bigint not null check (amount_credits > 0),
  status text not null default 'held' check (status in ('held', 'accepted', 'unlocked', 'paid_out')),
  lock_operation_id bigint not null,
  release_operation_id bigint,
  accepted_at timestamptz,
  released_at timestamptz,
  created_at timestamptz not null default now(),
  constraint accepted_has_provider check (status <> 'accepted' or (provider_id is not null and accepted_at is not null)),
  constraint paid_out_has_provider check (status <> 'paid_out' or provider_id is not null),
  constraint released_once check (
    (status in ('unlocked', 'paid_out')) = (released_at is not null and release_operation_id is not null)),
  constraint provider_is_not_client check (provider_id is null or provider_id <> client_user_id)
);
create index escrow_holds_client on credits.escrow_holds (client_user_id);
alter table credits.escrow_holds enable row level security;

/** Subscription plans: how many credits a period of each plan allocates. */
create table credits.plans (
  plan_id text primary key check (length(plan_id) between 1 and 255),
  monthly_credits bigint not null check (monthly_credits > 0),
  active boolean not null default true,
  created_at timestamptz not null default now()
);
alter table credits.plans enable row level security;

/** One allocation per subscription period; `response` is what every later call for it returns. */
create table credits.allocations (
  subscription_id text not null check (length(subscription_id) between 1 and 255),
  period_start timestamptz not null,
  period_end timestamptz not null,
  user_id uuid not null,
  credits bigint not null check (credits > 0),
  source_event_id text not null check (length(source_event_id) between 1 and 255),
  operation_id bigint not null unique,
  response jsonb not null,
  created_at timestamptz not null default now(),
  primary key (subscription_id, period_start),
  constraint period_ordered check (period_end > period_start)
);
alter table credits.allocations enable row level security;

/** Who administers the practitioner platform (may unlock any hold and pay out). */
create table credits.platform_roles (
  user_id uuid primary key references auth.users (id),
  role text not null check (role in ('admin')),
  created_at timestamptz not null default now()
);
alter table credits.platform_roles enable row level security;

-- History is never changed: corrections are new rows.
create trigger credit_transactions_append_only before update or delete on credits.credit_transactions
  for each row execute function ledger.refuse_history_change();
create trigger credit_transactions_no_truncate before truncate on credits.credit_transactions
  for each statement execute function ledger.refuse_history_change();
create trigger booking_payments_append_only before update or delete on credits.booking_payments
  for each row execute function ledger.refuse_history_change();
create trigger allocations_append_only before update or delete on credits.allocations
  for each row execute function ledger.refuse_history_change();
create trigger user_accounts_append_only before update or delete on credits.user_accounts
  for each row execute function ledger.refuse_history_change();
create trigger escrow_holds_never_deleted before delete on credits.escrow_holds
  for each row execute function ledger.refuse_history_change();

-- Credits enter the platform from here (allocations, purchases): its derived balance goes
-- negative by the credits issued.
select ledger.ensure_system_account('credit_issuance', 'platform');

-- ---------------------------------------------------------------------------------------------
-- Internal helpers (PL/pgSQL: their plans are kept for the session)
-- ---------------------------------------------------------------------------------------------

/** Payments never create users: every user named in a call must exist in auth.users. */
create function credits.user_exists(p_user_id uuid) returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
  return exists (select 1 from auth.users where id = p_user_id);
end;
$$;

create function credits.user_not_found(p_user_id uuid) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return ledger.error_result('user_not_found', 'no user with this id', jsonb_build_object('user_id', p_user_id));
end;
$$;

create function credits.is_platform_admin(p_user_id uuid) returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
  return exists (select 1 from credits.platform_roles where user_id = p_user_id and role = 'admin');
end;
$$;

/** The user's credit account, or null when the user never had one. */
create function credits.user_account_id(p_user_id uuid) returns bigint
language plpgsql stable
set search_path = ''
as $$
begin
  return (select account_id from credits.user_accounts where user_id = p_user_id);
end;
$$;

/**
 * The user's credit account, created on first use. Concurrent first uses meet on the unique
 * account code: the second waits for the first and then finds its account. The user must exist
 * (callers check; the foreign key is the last line of defence).
 */
create function credits.ensure_user_account(p_user_id uuid) returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_code text := 'user_credit:' || p_user_id::text;
begin
  v_account_id := credits.user_account_id(p_user_id);
  if v_account_id is not null then
    return v_account_id;
  end if;
  insert into ledger.accounts (kind, code) values ('user_credit', v_code)
  on conflict (code) do nothing
  returning id into v_account_id;
  if v_account_id is null then
    select id into v_account_id from ledger.accounts where code = v_code;
  end if;
  insert into credits.user_accounts (user_id, account_id) values (p_user_id, v_account_id)
  on conflict (user_id) do nothing;
  return v_account_id;
end;
$$;

/**
 * Locks customer accounts in id order, the order ledger.post_transfers uses, so that two
 * operations on the same accounts in opposite directions never deadlock. Balances are read after.
 */
create function credits.lock_accounts(p_account_ids bigint[]) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform 1 from ledger.accounts where id = any (p_account_ids) order by id for update;
end;
$$;

create function credits.account_balance(p_account_id bigint) returns bigint
language plpgsql stable
set search_path = ''
as $$
begin
  return (select balance_cents from ledger.accounts where id = p_account_id);
end;
$$;

create function credits.insufficient_funds(p_balance_credits bigint, p_field text, p_requested_credits bigint)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return ledger.error_result('insufficient_funds', 'the credit balance does not cover the amount',
    jsonb_build_object('balance_credits', p_balance_credits, p_field, p_requested_credits,
      'missing_credits', p_requested_credits - p_balance_credits));
end;
$$;

create function credits.require_user_id(p_user_id uuid, p_field text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  perform ledger.require(p_user_id is not null, p_field, 'is required');
end;
$$;

create function credits.require_text_id(p_value text, p_field text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  perform ledger.require(length(p_value) between 1 and 255, p_field, 'must be 1 to 255 characters');
end;
$$;

/** The log line of a credit operation: amount and balances of the user the result is about. */
create function credits.log_attempt(
  p_operation_type text, p_result jsonb, p_client_request_id text, p_actor_user_id uuid, p_user_id uuid,
  p_amount_credits bigint, p_details jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform ops.log_attempt(
    p_operation_type, p_result, p_client_request_id, p_actor_user_id,
    p_account_id => credits.user_account_id(p_user_id),
    p_amount_cents => p_amount_credits,
    p_balance_before_cents => coalesce((p_result ->> 'balance_before_credits')::bigint,
      (p_result #>> '{error,balance_credits}')::bigint),
    p_balance_after_cents => coalesce((p_result ->> 'balance_after_credits')::bigint,
      (p_result #>> '{error,balance_credits}')::bigint),
    p_details => coalesce(p_details, '{}'::jsonb) || jsonb_build_object('user_id', p_user_id, 'unit', 'credits'));
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Peer bookings
-- ---------------------------------------------------------------------------------------------

create function credits.execute_peer_booking(
  p_booking_practitioner_id uuid, p_treating_practitioner_id uuid, p_credits bigint, p_booking_id text,
  p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_paid credits.booking_payments;
  v_booker_account bigint;
  v_treating_account bigint;
  v_booker_balance bigint;
  v_treating_balance bigint;
  v_operation_id bigint;
begin
  if p_booking_practitioner_id = p_treating_practitioner_id then
    return ledger.error_result('self_booking', 'a practitioner cannot book a treatment with themselves',
      jsonb_build_object('user_id', p_booking_practitioner_id));
  end if;
  -- Payments of one booking under different keys run one after another, so the check below sees
  -- a payment committed meanwhile.
  perform pg_advisory_xact_lock(hashtextextended('credits.booking:' || p_booking_id, 0));
  select * into v_paid from credits.booking_payments where booking_id = p_booking_id;
  if found then
    return ledger.error_result('booking_already_paid', 'this booking is already paid',
      jsonb_build_object('booking_id', p_booking_id, 'transaction_id', v_paid.operation_id));
  end if;
  -- Idempotency keys expire after 24 hours; the payment's own unique request id never does.
  select * into v_paid from credits.booking_payments where client_request_id = p_client_request_id;
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

/**
 * A practitioner pays credits to a peer for a treatment. Both accounts are locked in id order in
 * one transaction; a booking is paid once (booking_already_paid under any other key). Idempotent
 * on client_request_id (DESIGN §5); business failures are returned, not raised.
 */
create function public.process_peer_booking_credits(
  booking_practitioner_id uuid,
  treating_practitioner_id uuid,
  credits bigint,
  booking_id text,
  client_request_id text)
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
  perform ledger.require_client_request_id(process_peer_booking_credits.client_request_id);
  perform credits.require_user_id(process_peer_booking_credits.booking_practitioner_id, 'booking_practitioner_id');
  perform credits.require_user_id(process_peer_booking_credits.treating_practitioner_id, 'treating_practitioner_id');
  perform ledger.require(process_peer_booking_credits.credits > 0, 'credits', 'must be a positive integer');
  perform credits.require_text_id(process_peer_booking_credits.booking_id, 'booking_id');
  v_request := jsonb_build_object(
    'booking_practitioner_id', process_peer_booking_credits.booking_practitioner_id,
    'treating_practitioner_id', process_peer_booking_credits.treating_practitioner_id,
    'credits', process_peer_booking_credits.credits,
    'booking_id', process_peer_booking_credits.booking_id);

  select * into v_idempotency
  from ledger.idempotency_begin(process_peer_booking_credits.client_request_id, 'peer_booking', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_peer_booking(
      process_peer_booking_credits.booking_practitioner_id, process_peer_booking_credits.treating_practitioner_id,
      process_peer_booking_credits.credits, process_peer_booking_credits.booking_id,
      process_peer_booking_credits.client_request_id);
    perform ledger.idempotency_finish(process_peer_booking_credits.client_request_id, 'peer_booking',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform ops.log_attempt('peer_booking', v_result, process_peer_booking_credits.client_request_id,
    process_peer_booking_credits.booking_practitioner_id,
    p_account_id => credits.user_account_id(process_peer_booking_credits.booking_practitioner_id),
    p_amount_cents => process_peer_booking_credits.credits,
    p_balance_before_cents => coalesce((v_result #>> '{booking_practitioner,balance_before_credits}')::bigint,
      (v_result #>> '{error,balance_credits}')::bigint),
    p_balance_after_cents => coalesce((v_result #>> '{booking_practitioner,balance_after_credits}')::bigint,
      (v_result #>> '{error,balance_credits}')::bigint),
    p_details => jsonb_build_object('booking_id', process_peer_booking_credits.booking_id,
      'treating_practitioner_id', process_peer_booking_credits.treating_practitioner_id, 'unit', 'credits'));
  return v_result;
end;
$$;
revoke execute on function public.process_peer_booking_credits(uuid, uuid, bigint, text, text)
  from public, anon, authenticated;
grant execute on function public.process_peer_booking_credits(uuid, uuid, bigint, text, text) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Monthly allocations
-- ---------------------------------------------------------------------------------------------

/**
 * Allocates a subscription period's credits once. Calls for the same period are serialized (an
 * advisory lock on the period); a later one returns the first's stored response, marked
 * replayed, whatever event or key it came with. Usable inside another idempotent operation (the
 * Stripe webhook): it stores no idempotency key itself.
 */
create function credits.allocate_period(
  p_user_id uuid, p_credits bigint, p_subscription_id text, p_period_start timestamptz, p_period_end timestamptz,
  p_source_event_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_stored jsonb;
  v_account_id bigint;
  v_balance bigint;
  v_operation_id bigint;
  v_result jsonb;
begin
  -- The epoch, not the text of the timestamp: the text depends on the session's time zone.
  perform pg_advisory_xact_lock(hashtextextended(
    'credits.allocation:' || p_subscription_id || '@' || extract(epoch from p_period_start)::text, 0));
  select response into v_stored
  from credits.allocations
  where subscription_id = p_subscription_id and period_start = p_period_start;
  if found then
    return v_stored || '{"replayed": true}'::jsonb;
  end if;
  if not credits.user_exists(p_user_id) then
    return credits.user_not_found(p_user_id);
  end if;

  v_account_id := credits.ensure_user_account(p_user_id);
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  v_operation_id := ledger.create_operation('monthly_allocation', p_source_event_id, null,
    jsonb_build_object('user_id', p_user_id, 'subscription_id', p_subscription_id, 'period_start', p_period_start));
  perform ledger.post_transfers(v_operation_id, array[(
    ledger.system_account_id('credit_issuance', 'platform', p_user_id::text), v_account_id, p_credits
  )::ledger.transfer_leg]);
  insert into credits.credit_transactions (
    user_id, type, amount_credits, balance_before_credits, balance_after_credits, subscription_id, period_start,
    period_end, operation_id)
  values (
    p_user_id, 'monthly_allocation', p_credits, v_balance, v_balance + p_credits, p_subscription_id, p_period_start,
    p_period_end, v_operation_id);
  v_result := jsonb_build_object(
    'ok', true,
    'replayed', false,
    'transaction_id', v_operation_id,
    'user_id', p_user_id,
    'subscription_id', p_subscription_id,
    'period_start', p_period_start,
    'period_end', p_period_end,
    'credits', p_credits,
    'source_event_id', p_source_event_id,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance + p_credits);
  insert into credits.allocations (
    subscription_id, period_start, period_end, user_id, credits, source_event_id, operation_id, response)
  values (
    p_subscription_id, p_period_start, p_period_end, p_user_id, p_credits, p_source_event_id, v_operation_id,
    v_result);
  return v_result;
end;
$$;

/**
 * Credits a subscription period's allocation to a user, once per (subscription, period start).
 * `source_event_id` (the Stripe event id) is the idempotency key of the call.
 */
create function public.allocate_monthly_credits(
  user_id uuid,
  credits bigint,
  subscription_id text,
  period_start timestamptz,
  period_end timestamptz,
  source_event_id text)
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
  perform credits.require_text_id(allocate_monthly_credits.source_event_id, 'source_event_id');
  perform credits.require_user_id(allocate_monthly_credits.user_id, 'user_id');
  perform ledger.require(allocate_monthly_credits.credits > 0, 'credits', 'must be a positive integer');
  perform credits.require_text_id(allocate_monthly_credits.subscription_id, 'subscription_id');
  perform ledger.require(allocate_monthly_credits.period_start is not null, 'period_start', 'is required');
  perform ledger.require(allocate_monthly_credits.period_end > allocate_monthly_credits.period_start, 'period_end',
    'must be after period_start');
  v_request := jsonb_build_object(
    'user_id', allocate_monthly_credits.user_id,
    'credits', allocate_monthly_credits.credits,
    'subscription_id', allocate_monthly_credits.subscription_id,
    'period_start', extract(epoch from allocate_monthly_credits.period_start),
    'period_end', extract(epoch from allocate_monthly_credits.period_end));

  select * into v_idempotency
  from ledger.idempotency_begin(allocate_monthly_credits.source_event_id, 'monthly_allocation', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.allocate_period(
      allocate_monthly_credits.user_id, allocate_monthly_credits.credits, allocate_monthly_credits.subscription_id,
      allocate_monthly_credits.period_start, allocate_monthly_credits.period_end,
      allocate_monthly_credits.source_event_id);
    -- A user who does not exist yet is not a final answer: payments never create users, and the
    -- same event, retried once the user exists, must allocate. So that outcome is not stored.
    if v_result #>> '{error,code}' is distinct from 'user_not_found' then
      perform ledger.idempotency_finish(allocate_monthly_credits.source_event_id, 'monthly_allocation',
        v_idempotency.fingerprint, v_result);
    end if;
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('monthly_allocation', v_result, allocate_monthly_credits.source_event_id, null,
    allocate_monthly_credits.user_id, allocate_monthly_credits.credits,
    jsonb_build_object('subscription_id', allocate_monthly_credits.subscription_id,
      'period_start', allocate_monthly_credits.period_start, 'period_end', allocate_monthly_credits.period_end));
  return v_result;
end;
$$;
revoke execute on function public.allocate_monthly_credits(uuid, bigint, text, timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.allocate_monthly_credits(uuid, bigint, text, timestamptz, timestamptz, text)
  to service_role;

-- ---------------------------------------------------------------------------------------------
-- Escrow: lock, accept, unlock, pay out
-- ---------------------------------------------------------------------------------------------

create function credits.execute_lock(p_user_id uuid, p_amount_credits bigint, p_order_id text, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_balance bigint;
  v_hold_account_id bigint;
  v_operation_id bigint;
begin
  -- Locks for one order under different keys run one after another: the second sees the hold.
  perform pg_advisory_xact_lock(hashtextextended('credits.escrow:' || p_order_id, 0));
  if exists (select 1 from credits.escrow_holds where order_id = p_order_id) then
    return ledger.error_result('hold_already_exists', 'credits are already locked for this order',
      jsonb_build_object('order_id', p_order_id));
  end if;
  if not credits.user_exists(p_user_id) then
    return credits.user_not_found(p_user_id);
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
    jsonb_build_object('order_id', p_order_id));
  insert into ledger.accounts (kind, code) values ('escrow_hold', 'escrow_hold:' || p_order_id)
  returning id into v_hold_account_id;
  insert into credits.escrow_holds (order_id, client_user_id, account_id, amount_credits, lock_operation_id)
  values (p_order_id, p_user_id, v_hold_account_id, p_amount_credits, v_operation_id);
  perform ledger.post_transfers(v_operation_id,
    array[(v_account_id, v_hold_account_id, p_amount_credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (
    user_id, type, amount_credits, balance_before_credits, balance_after_credits, order_id, operation_id)
  values (p_user_id, 'lock', -p_amount_credits, v_balance, v_balance - p_amount_credits, p_order_id, v_operation_id);

  return jsonb_build_object(
    'ok', true,
    'replayed', false,
    'transaction_id', v_operation_id,
    'order_id', p_order_id,
    'status', 'held',
    'user_id', p_user_id,
    'amount_credits', p_amount_credits,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance - p_amount_credits);
end;
$$;

/** Moves credits from the user's balance into a new hold for a marketplace order. */
create function public.lock_credits(user_id uuid, amount bigint, order_id text, client_request_id text)
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
  perform ledger.require(lock_credits.amount > 0, 'amount', 'must be a positive integer');
  perform credits.require_text_id(lock_credits.order_id, 'order_id');
  v_request := jsonb_build_object('user_id', lock_credits.user_id, 'amount', lock_credits.amount,
    'order_id', lock_credits.order_id);

  select * into v_idempotency from ledger.idempotency_begin(lock_credits.client_request_id, 'credit_lock', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_lock(lock_credits.user_id, lock_credits.amount, lock_credits.order_id,
      lock_credits.client_request_id);
    perform ledger.idempotency_finish(lock_credits.client_request_id, 'credit_lock', v_idempotency.fingerprint,
      v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('credit_lock', v_result, lock_credits.client_request_id, lock_credits.user_id,
    lock_credits.user_id, lock_credits.amount, jsonb_build_object('order_id', lock_credits.order_id));
  return v_result;
end;
$$;
revoke execute on function public.lock_credits(uuid, bigint, text, text) from public, anon, authenticated;
grant execute on function public.lock_credits(uuid, bigint, text, text) to service_role;

/** The hold, locked for the rest of the transaction (every release takes this lock first). */
create function credits.lock_hold(p_order_id text) returns credits.escrow_holds
language plpgsql
set search_path = ''
as $$
declare
  v_hold credits.escrow_holds;
begin
  select * into v_hold from credits.escrow_holds where order_id = p_order_id for update;
  return v_hold;
end;
$$;

create function credits.hold_not_found(p_order_id text) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return ledger.error_result('hold_not_found', 'no credits are locked for this order',
    jsonb_build_object('order_id', p_order_id));
end;
$$;

create function credits.hold_already_released(p_hold credits.escrow_holds) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return ledger.error_result('hold_already_released', 'the credits of this order were already released',
    jsonb_build_object('order_id', p_hold.order_id, 'status', p_hold.status,
      'transaction_id', p_hold.release_operation_id));
end;
$$;

create function credits.hold_summary(p_hold credits.escrow_holds) returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'order_id', p_hold.order_id,
    'status', p_hold.status,
    'client_user_id', p_hold.client_user_id,
    'provider_id', p_hold.provider_id,
    'amount_credits', p_hold.amount_credits);
end;
$$;

create function credits.execute_accept(p_order_id text, p_provider_id uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_hold credits.escrow_holds;
begin
  v_hold := credits.lock_hold(p_order_id);
  if v_hold.order_id is null then
    return credits.hold_not_found(p_order_id);
  end if;
  if v_hold.status in ('unlocked', 'paid_out') then
    return credits.hold_already_released(v_hold);
  end if;
  if p_provider_id = v_hold.client_user_id then
    return ledger.error_result('self_booking', 'the client cannot accept their own order',
      jsonb_build_object('order_id', p_order_id, 'user_id', p_provider_id));
  end if;
  if v_hold.status = 'accepted' and v_hold.provider_id <> p_provider_id then
    return ledger.error_result('forbidden', 'another provider has accepted this order',
      jsonb_build_object('order_id', p_order_id));
  end if;
  if not credits.user_exists(p_provider_id) then
    return credits.user_not_found(p_provider_id);
  end if;
  -- Accepting an order the same provider already accepted changes nothing.
  if v_hold.status = 'held' then
    update credits.escrow_holds set status = 'accepted', provider_id = p_provider_id, accepted_at = now()
    where order_id = p_order_id
    returning * into v_hold;
  end if;
  return jsonb_build_object('ok', true, 'replayed', false, 'accepted_at', v_hold.accepted_at)
    || credits.hold_summary(v_hold);
end;
$$;

/** A provider accepts a marketplace order: from then on the client can no longer unlock its hold. */
create function public.accept_credit_order(order_id text, provider_id uuid, client_request_id text)
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
  perform credits.require_text_id(accept_credit_order.order_id, 'order_id');
  perform credits.require_user_id(accept_credit_order.provider_id, 'provider_id');
  v_request := jsonb_build_object('order_id', accept_credit_order.order_id,
    'provider_id', accept_credit_order.provider_id);

  select * into v_idempotency
  from ledger.idempotency_begin(accept_credit_order.client_request_id, 'credit_accept', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_accept(accept_credit_order.order_id, accept_credit_order.provider_id);
    perform ledger.idempotency_finish(accept_credit_order.client_request_id, 'credit_accept',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform ops.log_attempt('credit_accept', v_result, accept_credit_order.client_request_id,
    accept_credit_order.provider_id,
    p_details => jsonb_build_object('order_id', accept_credit_order.order_id, 'unit', 'credits'));
  return v_result;
end;
$$;
revoke execute on function public.accept_credit_order(text, uuid, text) from public, anon, authenticated;
grant execute on function public.accept_credit_order(text, uuid, text) to service_role;

/**
 * Releases a hold to `p_recipient` (the client on unlock, the provider on payout): one transfer
 * out of the hold's account, the journal row, and the hold marked released. The caller holds the
 * hold's row lock and has checked that it is not released yet.
 */
create function credits.release_hold(
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
    p_actor_user_id, jsonb_build_object('order_id', p_hold.order_id, 'recipient_user_id', p_recipient));
  perform ledger.post_transfers(v_operation_id,
    array[(p_hold.account_id, v_recipient_account, p_hold.amount_credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (
    user_id, type, amount_credits, balance_before_credits, balance_after_credits, order_id, operation_id)
  values (p_recipient, p_journal_type, p_hold.amount_credits, v_balance, v_balance + p_hold.amount_credits,
    p_hold.order_id, v_operation_id);
  update credits.escrow_holds
  set status = p_status,
    provider_id = case when p_status = 'paid_out' then p_recipient else provider_id end,
    released_at = now(),
    release_operation_id = v_operation_id
  where order_id = p_hold.order_id
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

create function credits.execute_unlock(p_order_id text, p_actor_user_id uuid, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_hold credits.escrow_holds;
  v_is_admin boolean := credits.is_platform_admin(p_actor_user_id);
  v_is_provider boolean;
begin
  v_hold := credits.lock_hold(p_order_id);
  if v_hold.order_id is null then
    return credits.hold_not_found(p_order_id);
  end if;
  v_is_provider := p_actor_user_id is not distinct from v_hold.provider_id;
  if not (v_is_admin or v_is_provider or p_actor_user_id = v_hold.client_user_id) then
    return ledger.error_result('forbidden', 'only the client, the provider or an admin can unlock this order',
      jsonb_build_object('order_id', p_order_id));
  end if;
  if v_hold.status in ('unlocked', 'paid_out') then
    return credits.hold_already_released(v_hold);
  end if;
  -- The client may take the credits back only until a provider accepts the order.
  if v_hold.status = 'accepted' and not (v_is_admin or v_is_provider) then
    return ledger.error_result('forbidden', 'the order was accepted: only the provider or an admin can unlock it',
      jsonb_build_object('order_id', p_order_id, 'status', v_hold.status));
  end if;
  return credits.release_hold(v_hold, v_hold.client_user_id, 'unlocked', 'unlock', p_actor_user_id,
    p_client_request_id);
end;
$$;

/**
 * Returns a hold's credits to the client: by the client before a provider accepts the order, by
 * the provider of an accepted order, or by a platform admin. A hold is released once.
 */
create function public.unlock_credits(order_id text, actor_user_id uuid, client_request_id text)
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
  perform credits.require_text_id(unlock_credits.order_id, 'order_id');
  perform credits.require_user_id(unlock_credits.actor_user_id, 'actor_user_id');
  v_request := jsonb_build_object('order_id', unlock_credits.order_id, 'actor_user_id', unlock_credits.actor_user_id);

  select * into v_idempotency
  from ledger.idempotency_begin(unlock_credits.client_request_id, 'credit_unlock', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_unlock(unlock_credits.order_id, unlock_credits.actor_user_id,
      unlock_credits.client_request_id);
    perform ledger.idempotency_finish(unlock_credits.client_request_id, 'credit_unlock', v_idempotency.fingerprint,
      v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('credit_unlock', v_result, unlock_credits.client_request_id,
    unlock_credits.actor_user_id, (v_result ->> 'user_id')::uuid, (v_result ->> 'amount_credits')::bigint,
    jsonb_build_object('order_id', unlock_credits.order_id));
  return v_result;
end;
$$;
revoke execute on function public.unlock_credits(text, uuid, text) from public, anon, authenticated;
grant execute on function public.unlock_credits(text, uuid, text) to service_role;

create function credits.execute_payout(
  p_order_id text, p_provider_id uuid, p_actor_user_id uuid, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_hold credits.escrow_holds;
begin
  -- No actor: the service itself (a trusted backend job). A user must be a platform admin.
  if p_actor_user_id is not null and not credits.is_platform_admin(p_actor_user_id) then
    return ledger.error_result('forbidden', 'only a platform admin or the service can pay out',
      jsonb_build_object('actor_user_id', p_actor_user_id));
  end if;
  v_hold := credits.lock_hold(p_order_id);
  if v_hold.order_id is null then
    return credits.hold_not_found(p_order_id);
  end if;
  if v_hold.status in ('unlocked', 'paid_out') then
    return credits.hold_already_released(v_hold);
  end if;
  if p_provider_id = v_hold.client_user_id then
    return ledger.error_result('self_booking', 'the client cannot be paid their own order',
      jsonb_build_object('order_id', p_order_id, 'user_id', p_provider_id));
  end if;
  if v_hold.provider_id is not null and v_hold.provider_id <> p_provider_id then
    return ledger.error_result('forbidden', 'the order was accepted by another provider',
      jsonb_build_object('order_id', p_order_id, 'provider_id', p_provider_id));
  end if;
  if not credits.user_exists(p_provider_id) then
    return credits.user_not_found(p_provider_id);
  end if;
  return credits.release_hold(v_hold, p_provider_id, 'paid_out', 'payout', p_actor_user_id, p_client_request_id);
end;
$$;

/**
 * Pays a hold's credits to the provider. Called by the service (actor_user_id null) or by a
 * platform admin; the provider must be the one who accepted the order, if one did.
 */
create function public.payout_to_provider(
  order_id text, provider_id uuid, client_request_id text, actor_user_id uuid default null)
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
  perform credits.require_text_id(payout_to_provider.order_id, 'order_id');
  perform credits.require_user_id(payout_to_provider.provider_id, 'provider_id');
  v_request := jsonb_build_object('order_id', payout_to_provider.order_id, 'provider_id', payout_to_provider.provider_id,
    'actor_user_id', payout_to_provider.actor_user_id);

  select * into v_idempotency
  from ledger.idempotency_begin(payout_to_provider.client_request_id, 'credit_payout', v_request);
  if v_idempotency.outcome = 'new' then
    v_result := credits.execute_payout(payout_to_provider.order_id, payout_to_provider.provider_id,
      payout_to_provider.actor_user_id, payout_to_provider.client_request_id);
    perform ledger.idempotency_finish(payout_to_provider.client_request_id, 'credit_payout',
      v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform credits.log_attempt('credit_payout', v_result, payout_to_provider.client_request_id,
    payout_to_provider.actor_user_id, payout_to_provider.provider_id, (v_result ->> 'amount_credits')::bigint,
    jsonb_build_object('order_id', payout_to_provider.order_id));
  return v_result;
end;
$$;
revoke execute on function public.payout_to_provider(text, uuid, text, uuid) from public, anon, authenticated;
grant execute on function public.payout_to_provider(text, uuid, text, uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Reading a balance (credits-balance function). No key, no log line: reading changes nothing.
-- ---------------------------------------------------------------------------------------------

create function public.credits_balance(user_id uuid, transaction_limit integer default 50)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_account_id bigint;
  v_transactions jsonb;
begin
  perform credits.require_user_id(credits_balance.user_id, 'user_id');
  perform ledger.require(credits_balance.transaction_limit between 1 and 100, 'transaction_limit', 'must be 1 to 100');
  if not credits.user_exists(credits_balance.user_id) then
    return credits.user_not_found(credits_balance.user_id);
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
grant execute on function public.credits_balance(uuid, integer) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Reconciliation: the ledger's checks (unchanged) plus the credit journal and the escrow holds.
-- ---------------------------------------------------------------------------------------------

/**
 * The credit checks, next to the ledger's (ledger.ledger_checks):
 *   credit_journal_mismatch  a user whose credit balance differs from the sum of their credit transactions
 *   hold_state_mismatch      an escrow hold whose account does not hold its amount while held or accepted,
 *                            is not empty once released, or an escrow account without a hold
 */
create function credits.credit_checks()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql
stable
set search_path = ''
as $$
  -- Two records of every user's credits: the account (ledger) and the journal (credit_transactions).
  select 'credit_journal_mismatch', a.id, a.code, a.balance_cents, coalesce(journal.total, 0)::bigint,
    format('user %s: the credit balance differs from the sum of the credit transactions', users.user_id)
  from (
    select user_id from credits.user_accounts
    union
    select distinct user_id from credits.credit_transactions
  ) users
  left join credits.user_accounts ua on ua.user_id = users.user_id
  left join ledger.accounts a on a.id = ua.account_id
  left join (
    select user_id, sum(amount_credits) as total from credits.credit_transactions group by user_id
  ) journal on journal.user_id = users.user_id
  where a.id is null or a.balance_cents <> coalesce(journal.total, 0)
  union all
  select 'hold_state_mismatch', a.id, a.code,
    case when h.status in ('held', 'accepted') then h.amount_credits else 0 end, a.balance_cents,
    case when h.order_id is null then 'an escrow account without a hold'
      else format('order %s (%s): the hold account balance does not match the hold', h.order_id, h.status) end
  from ledger.accounts a
  left join credits.escrow_holds h on h.account_id = a.id
  where (a.kind = 'escrow_hold' or h.order_id is not null)
    and (h.order_id is null
      or a.kind <> 'escrow_hold'
      or a.balance_cents <> case when h.status in ('held', 'accepted') then h.amount_credits else 0 end)
$$;

create or replace function public.ledger_reconcile()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql
stable
security definer
set search_path = ''
as $$
  select * from ledger.ledger_checks()
  union all
  select * from credits.credit_checks()
$$;
revoke execute on function public.ledger_reconcile() from public, anon, authenticated;
grant execute on function public.ledger_reconcile() to service_role;
