-- Credits through Stripe without trusting Stripe metadata:
--   * credits are sold only from a price list (credits.credit_packages): create-credit-checkout
--     stores a pending purchase before the Checkout session exists, and a paid session credits
--     only that purchase, for exactly its amount, currency and credits;
--   * subscription invoices allocate the credits of the price that was billed (plans keyed by
--     Stripe price id), only when paid (or when the plan lets trials earn credits), and only for
--     a billing period that does not overlap one already allocated;
--   * a refunded subscription invoice takes back its period's credits in proportion, and a
--     disputed credit purchase freezes the disputed credits until Stripe closes the dispute.

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------

/** The price list: the only thing a credit purchase can buy. */
create table credits.credit_packages (
  code text primary key check (code ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$'),
  credits bigint not null check (credits > 0),
  price_cents bigint not null check (price_cents > 0),
  currency text not null check (currency ~ '^[A-Z]{3}$'),
  active boolean not null default true,
  -- A promotion code may lower the price (down to a 100 % discount) only where this says so.
  allow_promotion_codes boolean not null default false,
  created_at timestamptz not null default now()
);
alter table credits.credit_packages enable row level security;
create trigger credit_packages_never_deleted before delete on credits.credit_packages
  for each row execute function ledger.refuse_history_change();

-- A pending purchase exists before its Stripe session does, so the session id can no longer be
-- the key. Receivables keep pointing at the session through a unique constraint.
alter table credits.receivables drop constraint receivables_stripe_session_id_fkey;
alter table credits.credit_purchases drop constraint credit_purchases_pkey;
alter table credits.credit_purchases add column id bigint generated always as identity;
alter table credits.credit_purchases add constraint credit_purchases_pkey primary key (id);
alter table credits.credit_purchases alter column stripe_session_id drop not null;
alter table credits.credit_purchases add constraint credit_purchases_stripe_session_id_key unique (stripe_session_id);
alter table credits.receivables add constraint receivables_stripe_session_id_fkey
  foreign key (stripe_session_id) references credits.credit_purchases (stripe_session_id);

alter table credits.credit_purchases
  -- Set for purchases made through create-credit-checkout; only those can be credited.
  add column package_code text references credits.credit_packages (code),
  add column price_cents bigint check (price_cents > 0),
  add column allow_promotion_codes boolean not null default false,
  add column client_request_id text check (length(client_request_id) between 1 and 255),
  add column request_fingerprint text,
  add column checkout_url text check (length(checkout_url) between 1 and 2048),
  add column expires_at timestamptz,
  add constraint credit_purchases_user_request_key unique (user_id, client_request_id),
  add constraint checkout_purchase_complete check (
    package_code is null or (price_cents is not null and client_request_id is not null and request_fingerprint is not null));

alter table credits.plans
  -- The Stripe price a subscription is billed at: the only thing that decides its credits.
  add column stripe_price_id text unique check (length(stripe_price_id) between 1 and 255),
  -- An invoice of 0 (a trial) allocates only when this says so.
  add column trial_earns_credits boolean not null default false;

/**
 * What was paid for an allocated period (one invoice per allocation), so that a refund of the
 * invoice can take its credits back in proportion.
 */
create table credits.allocation_payments (
  stripe_invoice_id text primary key check (length(stripe_invoice_id) between 1 and 255),
  stripe_payment_intent_id text unique,
  subscription_id text not null,
  period_start timestamptz not null,
  user_id uuid not null,
  credits bigint not null check (credits > 0),
  amount_paid_cents bigint not null check (amount_paid_cents >= 0),
  currency text not null check (currency ~ '^[A-Z]{3}$'),
  refunded_cents bigint not null default 0 check (refunded_cents >= 0),
  credits_reversed bigint not null default 0 check (credits_reversed >= 0),
  created_at timestamptz not null default now(),
  unique (subscription_id, period_start),
  foreign key (subscription_id, period_start) references credits.allocations (subscription_id, period_start),
  constraint refunds_within_paid check (refunded_cents <= amount_paid_cents),
  constraint reversal_within_credits check (credits_reversed <= credits)
);
alter table credits.allocation_payments enable row level security;
create trigger allocation_payments_never_deleted before delete on credits.allocation_payments
  for each row execute function ledger.refuse_history_change();

/**
 * A dispute of a credit purchase. The disputed credits (in proportion to the disputed money) that
 * the balance still has sit in the `credit_disputes` system account while `held`; the rest is
 * `uncovered_credits`. Won: the held credits go back to the user. Lost: they are retired to
 * credit_issuance and the uncovered rest becomes a receivable.
 */
create table credits.dispute_holds (
  stripe_dispute_id text primary key check (length(stripe_dispute_id) between 1 and 255),
  purchase_id bigint not null references credits.credit_purchases (id),
  user_id uuid not null,
  stripe_payment_intent_id text not null,
  disputed_cents bigint not null check (disputed_cents >= 0),
  disputed_credits bigint not null check (disputed_credits >= 0),
  held_credits bigint not null check (held_credits >= 0),
  uncovered_credits bigint not null check (uncovered_credits >= 0),
  status text not null default 'held' check (status in ('held', 'won', 'lost')),
  hold_operation_id bigint,
  close_operation_id bigint,
  created_at timestamptz not null default now(),
  closed_at timestamptz,
  constraint held_plus_uncovered check (held_credits + uncovered_credits = disputed_credits),
  constraint hold_has_operation check ((held_credits > 0) = (hold_operation_id is not null)),
  constraint closed_once check ((status = 'held') = (closed_at is null))
);
create index dispute_holds_purchase on credits.dispute_holds (purchase_id);
alter table credits.dispute_holds enable row level security;
create trigger dispute_holds_never_deleted before delete on credits.dispute_holds
  for each row execute function ledger.refuse_history_change();

-- Receivables now also come from refunded invoices and lost disputes.
alter table credits.receivables
  alter column stripe_session_id drop not null,
  add column subscription_id text,
  add column period_start timestamptz,
  add column stripe_dispute_id text,
  add constraint receivable_has_source check (stripe_session_id is not null or subscription_id is not null);

-- Credits frozen by a dispute leave the balance (dispute_hold) and come back if it is won.
alter table credits.credit_transactions drop constraint credit_transactions_type_check;
alter table credits.credit_transactions add constraint credit_transactions_type_check check (type in (
  'peer_booking_debit', 'session_earning', 'monthly_allocation', 'purchase', 'refund', 'lock', 'unlock',
  'payout', 'correction', 'dispute_hold', 'dispute_release'));
alter table credits.credit_transactions drop constraint direction_of_type;
alter table credits.credit_transactions add constraint direction_of_type check (
  case type
    when 'peer_booking_debit' then amount_credits < 0
    when 'lock' then amount_credits < 0
    when 'refund' then amount_credits < 0
    when 'dispute_hold' then amount_credits < 0
    when 'correction' then true
    else amount_credits > 0
  end);

-- Disputed credits are held here (derived balance = the credits held by open disputes).
select ledger.ensure_system_account('credit_disputes', 'platform');

-- ---------------------------------------------------------------------------------------------
-- create-credit-checkout: the pending purchase, then the session attached to it
-- ---------------------------------------------------------------------------------------------

create function credits.purchase_response(p_purchase credits.credit_purchases) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'ok', true,
    'replayed', false,
    'purchase_id', p_purchase.id,
    'user_id', p_purchase.user_id,
    'package_code', p_purchase.package_code,
    'credits', p_purchase.credits,
    'amount_cents', p_purchase.price_cents,
    'currency', p_purchase.currency,
    'allow_promotion_codes', p_purchase.allow_promotion_codes,
    'status', p_purchase.status,
    'session_id', p_purchase.stripe_session_id,
    'checkout_url', p_purchase.checkout_url,
    'expires_at', p_purchase.expires_at)
$$;

/**
 * Stores a pending purchase of a package for a signed-in user (festival staff may not buy
 * credits). Idempotent on (user, client_request_id) for good: a replay answers the purchase as it
 * is now, with its session once attached, so one key always leads to one Checkout session.
 */
create function public.sp_prepare_credit_purchase(user_id uuid, package_code text, client_request_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_fingerprint text;
  v_existing credits.credit_purchases;
  v_package credits.credit_packages;
  v_purchase credits.credit_purchases;
  v_idempotency record;
  v_result jsonb;
begin
  perform credits.require_user_id(sp_prepare_credit_purchase.user_id, 'user_id');
  perform ledger.require_client_request_id(sp_prepare_credit_purchase.client_request_id);
  perform ledger.require(length(sp_prepare_credit_purchase.package_code) between 1 and 64, 'package_code',
    'must be 1 to 64 characters');
  v_fingerprint := encode(sha256(convert_to(jsonb_build_object('user_id', sp_prepare_credit_purchase.user_id,
    'package_code', sp_prepare_credit_purchase.package_code)::text, 'UTF8')), 'hex');

  perform pg_advisory_xact_lock(hashtextextended('credit-checkout:' || sp_prepare_credit_purchase.user_id::text || ':'
    || sp_prepare_credit_purchase.client_request_id, 20261122));
  select * into v_existing from credits.credit_purchases p
  where p.user_id = sp_prepare_credit_purchase.user_id and p.client_request_id = sp_prepare_credit_purchase.client_request_id;
  if found then
    if v_existing.request_fingerprint = v_fingerprint then
      return credits.purchase_response(v_existing) || '{"replayed": true}'::jsonb;
    end if;
    return ledger.error_result('idempotency_key_reused', 'this client_request_id was already used for a different request',
      jsonb_build_object('client_request_id', sp_prepare_credit_purchase.client_request_id));
  end if;
  -- Business failures are recorded outcomes too, under the ordinary idempotency keys.
  select * into v_idempotency from ledger.idempotency_begin(sp_prepare_credit_purchase.client_request_id,
    'prepare_credit_purchase', jsonb_build_object('request_fingerprint', v_fingerprint));
  if v_idempotency.outcome <> 'new' then
    return v_idempotency.response;
  end if;

  if festival.staff_role(sp_prepare_credit_purchase.user_id) is not null then
    v_result := ledger.error_result('forbidden', 'festival staff cannot buy credits',
      jsonb_build_object('user_id', sp_prepare_credit_purchase.user_id));
  elsif not credits.user_exists(sp_prepare_credit_purchase.user_id) then
    v_result := credits.user_not_found(sp_prepare_credit_purchase.user_id);
  else
    select * into v_package from credits.credit_packages cp
    where cp.code = sp_prepare_credit_purchase.package_code and cp.active;
    if v_package.code is null then
      v_result := ledger.error_result('unknown_package', 'no active credit package with this code',
        jsonb_build_object('package_code', sp_prepare_credit_purchase.package_code));
    else
      -- The session's expiry is fixed here, once: a retry sends Stripe the same parameters under the
      -- same idempotency key. Stripe wants at least 30 minutes; the extra minute covers the way there.
      insert into credits.credit_purchases (user_id, credits, amount_cents, currency, status, package_code, price_cents,
        allow_promotion_codes, client_request_id, request_fingerprint, expires_at)
      values (sp_prepare_credit_purchase.user_id, v_package.credits, v_package.price_cents, v_package.currency, 'pending',
        v_package.code, v_package.price_cents, v_package.allow_promotion_codes, sp_prepare_credit_purchase.client_request_id,
        v_fingerprint, date_trunc('second', now()) + interval '31 minutes')
      returning * into v_purchase;
      v_result := credits.purchase_response(v_purchase);
    end if;
  end if;
  perform ledger.idempotency_finish(sp_prepare_credit_purchase.client_request_id, 'prepare_credit_purchase',
    v_idempotency.fingerprint, v_result);
  perform credits.log_attempt('prepare_credit_purchase', v_result, sp_prepare_credit_purchase.client_request_id,
    sp_prepare_credit_purchase.user_id, sp_prepare_credit_purchase.user_id, (v_result ->> 'credits')::bigint,
    jsonb_build_object('package_code', sp_prepare_credit_purchase.package_code));
  return v_result;
end;
$$;
revoke execute on function public.sp_prepare_credit_purchase(uuid, text, text) from public, anon, authenticated;
grant execute on function public.sp_prepare_credit_purchase(uuid, text, text) to service_role, edge_functions;

/** Records the Checkout session created for a pending purchase; the first attached session wins. */
create function public.sp_attach_credit_checkout_session(purchase_id bigint, stripe_session_id text, checkout_url text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_purchase credits.credit_purchases;
begin
  perform ledger.require(sp_attach_credit_checkout_session.purchase_id is not null, 'purchase_id', 'is required');
  perform credits.require_text_id(sp_attach_credit_checkout_session.stripe_session_id, 'stripe_session_id');
  perform ledger.require(length(sp_attach_credit_checkout_session.checkout_url) between 1 and 2048, 'checkout_url',
    'must be 1 to 2048 characters');
  update credits.credit_purchases p
  set stripe_session_id = sp_attach_credit_checkout_session.stripe_session_id,
    checkout_url = sp_attach_credit_checkout_session.checkout_url
  where p.id = sp_attach_credit_checkout_session.purchase_id and p.package_code is not null and p.stripe_session_id is null;
  select * into v_purchase from credits.credit_purchases p
  where p.id = sp_attach_credit_checkout_session.purchase_id and p.package_code is not null;
  if not found then
    return ledger.error_result('purchase_not_found', 'no credit purchase with this id',
      jsonb_build_object('purchase_id', sp_attach_credit_checkout_session.purchase_id));
  end if;
  return credits.purchase_response(v_purchase);
end;
$$;
revoke execute on function public.sp_attach_credit_checkout_session(bigint, text, text)
  from public, anon, authenticated;
grant execute on function public.sp_attach_credit_checkout_session(bigint, text, text) to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Crediting a paid session: only against its pending purchase
-- ---------------------------------------------------------------------------------------------

drop function public.sp_process_credit_purchase(uuid, bigint, bigint, text, text, text, text, text);
drop function credits.credit_purchase(uuid, bigint, bigint, text, text, text, text, text);

create function credits.purchase_mismatch(
  p_purchase credits.credit_purchases, p_session_id text, p_amount_cents bigint, p_currency text, p_payment_status text,
  p_claimed_user_id uuid, p_claimed_credits bigint, p_reason text)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
  values ('payment_mismatch', 'critical', coalesce(p_purchase.user_id, p_claimed_user_id), p_session_id,
    jsonb_build_object('reason', p_reason, 'paid_cents', p_amount_cents, 'currency', upper(p_currency),
      'payment_status', p_payment_status, 'claimed_user_id', p_claimed_user_id, 'claimed_credits', p_claimed_credits,
      'purchase_id', p_purchase.id, 'expected_cents', p_purchase.price_cents, 'expected_currency', p_purchase.currency,
      'expected_credits', p_purchase.credits));
  return ledger.error_result('payment_mismatch', 'the session does not match a pending credit purchase',
    jsonb_build_object('stripe_session_id', p_session_id, 'reason', p_reason));
end;
$$;

create function credits.credit_checkout_session(
  p_session_id text, p_amount_cents bigint, p_currency text, p_payment_status text, p_payment_intent_id text,
  p_event_id text, p_claimed_user_id uuid, p_claimed_credits bigint, p_purchase_id bigint)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_purchase credits.credit_purchases;
  v_amount_ok boolean;
  v_account_id bigint;
  v_balance bigint;
  v_operation_id bigint;
  v_pending_refund festival.stripe_refunds_pending;
  v_pending_dispute festival.stripe_disputes_pending;
  v_result jsonb;
begin
  -- Same locks, same order as card recharges: the session, then the payment (refunds take it too).
  perform pg_advisory_xact_lock(hashtextextended('stripe-session:' || p_session_id, 20261122));
  if p_payment_intent_id is not null then
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || p_payment_intent_id, 20261122));
  end if;
  select * into v_purchase from credits.credit_purchases where stripe_session_id = p_session_id for update;
  if not found and p_purchase_id is not null then
    -- The session was created but never attached (a crash between Stripe and the database): the
    -- purchase it names is used only if no other session has it, and only if everything matches.
    select * into v_purchase from credits.credit_purchases
    where id = p_purchase_id and stripe_session_id is null and package_code is not null
    for update;
  end if;
  if v_purchase.status = 'completed' then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'already_credited',
      'stripe_session_id', p_session_id, 'user_id', v_purchase.user_id, 'transaction_id', v_purchase.operation_id);
  end if;
  if v_purchase.id is null or v_purchase.package_code is null then
    return credits.purchase_mismatch(v_purchase, p_session_id, p_amount_cents, p_currency, p_payment_status,
      p_claimed_user_id, p_claimed_credits, 'no_pending_purchase');
  end if;
  v_amount_ok := case
    when p_payment_status = 'no_payment_required' then v_purchase.allow_promotion_codes and p_amount_cents = 0
    else p_amount_cents = v_purchase.price_cents
      or (v_purchase.allow_promotion_codes and p_amount_cents between 1 and v_purchase.price_cents - 1)
  end;
  if upper(p_currency) <> v_purchase.currency or upper(p_currency) <> (select currency from festival.settings) then
    return credits.purchase_mismatch(v_purchase, p_session_id, p_amount_cents, p_currency, p_payment_status,
      p_claimed_user_id, p_claimed_credits, 'currency');
  end if;
  if not v_amount_ok then
    return credits.purchase_mismatch(v_purchase, p_session_id, p_amount_cents, p_currency, p_payment_status,
      p_claimed_user_id, p_claimed_credits, 'amount');
  end if;
  if p_claimed_user_id is distinct from null and p_claimed_user_id <> v_purchase.user_id
      or p_claimed_credits is distinct from null and p_claimed_credits <> v_purchase.credits then
    return credits.purchase_mismatch(v_purchase, p_session_id, p_amount_cents, p_currency, p_payment_status,
      p_claimed_user_id, p_claimed_credits, 'credits_or_user');
  end if;
  if v_purchase.stripe_session_id is null then
    update credits.credit_purchases set stripe_session_id = p_session_id where id = v_purchase.id;
  end if;
  if p_payment_status not in ('paid', 'no_payment_required') then
    -- Recorded, no balance change: async_payment_succeeded or _failed follows.
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'payment_pending',
      'stripe_session_id', p_session_id, 'user_id', v_purchase.user_id, 'purchase_id', v_purchase.id);
  end if;

  v_account_id := credits.ensure_user_account(v_purchase.user_id);
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  v_operation_id := ledger.create_operation('credit_purchase', p_event_id, null,
    jsonb_build_object('user_id', v_purchase.user_id, 'stripe_session_id', p_session_id, 'purchase_id', v_purchase.id));
  perform ledger.post_transfers(v_operation_id, array[(
    ledger.system_account_id('credit_issuance', 'platform', v_purchase.user_id::text), v_account_id,
    v_purchase.credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits, balance_after_credits,
    operation_id)
  values (v_purchase.user_id, 'purchase', v_purchase.credits, v_balance, v_balance + v_purchase.credits, v_operation_id);
  -- amount_cents becomes what was paid (a promotion code may have lowered it): refunds are
  -- proportional to the money actually received.
  update credits.credit_purchases
  set status = 'completed', operation_id = v_operation_id, stripe_payment_intent_id = p_payment_intent_id,
    amount_cents = p_amount_cents, completed_at = now(), failure_reason = null
  where id = v_purchase.id;
  v_result := jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'credited',
    'transaction_id', v_operation_id,
    'purchase_id', v_purchase.id,
    'user_id', v_purchase.user_id,
    'stripe_session_id', p_session_id,
    'credits', v_purchase.credits,
    'amount_cents', p_amount_cents,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance + v_purchase.credits);
  -- A refund or a dispute that arrived before this credit (parked by the card procedures, which
  -- could not know the payment yet) is applied now.
  if p_payment_intent_id is not null then
    delete from festival.stripe_refunds_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_refund;
    if v_pending_refund.stripe_payment_intent_id is not null then
      v_result := v_result || jsonb_build_object('refund', credits.apply_purchase_refund_total(
        p_session_id, v_pending_refund.amount_refunded_cents, v_pending_refund.last_event_id, null));
    end if;
    delete from festival.stripe_disputes_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_dispute;
    if v_pending_dispute.stripe_payment_intent_id is not null then
      v_result := v_result || jsonb_build_object('dispute', credits.hold_for_dispute(v_purchase.id,
        v_pending_dispute.stripe_dispute_id, v_pending_dispute.amount_cents, null, v_pending_dispute.last_event_id));
    end if;
  end if;
  return v_result;
end;
$$;

/**
 * A Checkout session of a credit purchase (paid, unpaid or needing no payment). It credits only the
 * pending purchase that create-credit-checkout stored for the session, with the purchase's user
 * and credits, when the amount and currency match it; `user_id` and `credits` (what the session's
 * metadata claims) must match too when given. Anything else is payment_mismatch with an alert:
 * recorded under the event, nothing credited.
 */
create function public.sp_process_credit_purchase(
  stripe_session_id text,
  amount_cents bigint,
  currency text,
  payment_status text,
  stripe_payment_intent_id text,
  stripe_event_id text,
  user_id uuid default null,
  credits bigint default null,
  purchase_id bigint default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform credits.require_text_id(sp_process_credit_purchase.stripe_session_id, 'stripe_session_id');
  perform ledger.require(sp_process_credit_purchase.amount_cents >= 0, 'amount_cents', 'must be zero or more');
  perform ledger.require(sp_process_credit_purchase.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  perform ledger.require(sp_process_credit_purchase.payment_status in ('paid', 'unpaid', 'no_payment_required'),
    'payment_status', 'must be paid, unpaid or no_payment_required');
  v_result := festival.stripe_event_replay(sp_process_credit_purchase.stripe_event_id);
  if v_result is null then
    v_result := credits.credit_checkout_session(sp_process_credit_purchase.stripe_session_id,
      sp_process_credit_purchase.amount_cents, sp_process_credit_purchase.currency,
      sp_process_credit_purchase.payment_status, sp_process_credit_purchase.stripe_payment_intent_id,
      sp_process_credit_purchase.stripe_event_id, sp_process_credit_purchase.user_id,
      sp_process_credit_purchase.credits, sp_process_credit_purchase.purchase_id);
    perform festival.stripe_event_done(sp_process_credit_purchase.stripe_event_id, 'credit_purchase', v_result);
  end if;
  perform credits.log_attempt('credit_purchase', v_result, sp_process_credit_purchase.stripe_event_id, null,
    coalesce((v_result ->> 'user_id')::uuid, sp_process_credit_purchase.user_id), (v_result ->> 'credits')::bigint,
    jsonb_build_object('stripe_session_id', sp_process_credit_purchase.stripe_session_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_credit_purchase(text, bigint, text, text, text, text, uuid, bigint, bigint)
  from public, anon, authenticated;
grant execute on function public.sp_process_credit_purchase(text, bigint, text, text, text, text, uuid, bigint, bigint)
  to service_role, edge_functions;

-- Refunds of purchases: the same proportion as before, computed in numeric.
/**
 * Reverses a purchase's refunds up to Stripe's running total: credits in proportion to the money
 * refunded (all of them at a full refund), never below zero; the rest is an open receivable and
 * an alert.
 */
create or replace function credits.apply_purchase_refund_total(
  p_session_id text, p_refunded_total_cents bigint, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_purchase credits.credit_purchases;
  v_refunded_cents bigint;
  v_reverse_total bigint;
  v_reverse bigint;
  v_account_id bigint;
  v_balance bigint;
  v_taken bigint;
  v_owed bigint;
  v_operation_id bigint;
begin
  select * into v_purchase from credits.credit_purchases where stripe_session_id = p_session_id for update;
  v_refunded_cents := least(p_refunded_total_cents, v_purchase.amount_cents);
  if v_refunded_cents <= v_purchase.refunded_cents or v_purchase.amount_cents = 0 then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_already_applied',
      'stripe_session_id', p_session_id, 'refunded_cents', v_purchase.refunded_cents);
  end if;
  -- numeric: credits × cents can exceed bigint long before either does.
  v_reverse_total := case when v_refunded_cents = v_purchase.amount_cents then v_purchase.credits
    else floor(v_purchase.credits::numeric * v_refunded_cents / v_purchase.amount_cents)::bigint end;
  v_reverse := v_reverse_total - v_purchase.credits_reversed;

  v_account_id := credits.ensure_user_account(v_purchase.user_id);
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  v_taken := least(v_reverse, v_balance);
  v_owed := v_reverse - v_taken;
  v_operation_id := ledger.create_operation('credit_purchase_refund', p_event_id, null,
    jsonb_build_object('user_id', v_purchase.user_id, 'stripe_session_id', p_session_id, 'stripe_charge_id', p_charge_id));
  if v_taken > 0 then
    perform ledger.post_transfers(v_operation_id, array[(v_account_id,
      ledger.system_account_id('credit_issuance', 'platform', v_purchase.user_id::text), v_taken)::ledger.transfer_leg]);
    insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits, balance_after_credits,
      operation_id)
    values (v_purchase.user_id, 'refund', -v_taken, v_balance, v_balance - v_taken, v_operation_id);
  end if;
  update credits.credit_purchases
  set refunded_cents = v_refunded_cents, credits_reversed = v_reverse_total
  where stripe_session_id = p_session_id;
  if v_owed > 0 then
    insert into credits.receivables (user_id, stripe_session_id, amount_credits, reason, operation_id)
    values (v_purchase.user_id, p_session_id, v_owed, 'stripe_refund', v_operation_id);
    insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
    values ('refund_receivable', 'warning', v_purchase.user_id, p_charge_id,
      jsonb_build_object('stripe_session_id', p_session_id, 'receivable_credits', v_owed));
  end if;
  return jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'refund_applied',
    'transaction_id', v_operation_id,
    'user_id', v_purchase.user_id,
    'stripe_session_id', p_session_id,
    'refund_cents', v_refunded_cents - v_purchase.refunded_cents,
    'credits_reversed', v_reverse,
    'taken_from_balance_credits', v_taken,
    'receivable_credits', v_owed,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance - v_taken);
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Subscription invoices: the billed price, paid (or a trial that earns), a period not yet covered
-- ---------------------------------------------------------------------------------------------

drop function public.sp_process_subscription_invoice(uuid, text, text, timestamptz, timestamptz, text);

/**
 * invoice.payment_succeeded: the credits of the plan whose Stripe price was billed, for the
 * invoice's billing period, once. An invoice of 0 allocates only when the plan lets trials earn
 * credits. A period overlapping one already allocated for the subscription (a proration invoice
 * in the middle of a period) allocates nothing. An unknown price or user is not a final answer:
 * not remembered under the event, so Stripe's retry allocates once the plan or user exists.
 */
create function public.sp_process_subscription_invoice(
  user_id uuid,
  stripe_price_id text,
  subscription_id text,
  period_start timestamptz,
  period_end timestamptz,
  amount_paid_cents bigint,
  currency text,
  stripe_invoice_id text,
  stripe_payment_intent_id text,
  stripe_event_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_plan credits.plans;
  v_covering credits.allocations;
  v_unmatched_id text;
  v_parked_cents bigint;
  v_parked_currency text;
  v_parked_event_id text;
begin
  perform credits.require_user_id(sp_process_subscription_invoice.user_id, 'user_id');
  perform credits.require_text_id(sp_process_subscription_invoice.stripe_price_id, 'stripe_price_id');
  perform credits.require_text_id(sp_process_subscription_invoice.subscription_id, 'subscription_id');
  perform credits.require_text_id(sp_process_subscription_invoice.stripe_invoice_id, 'stripe_invoice_id');
  perform ledger.require(sp_process_subscription_invoice.period_end > sp_process_subscription_invoice.period_start,
    'period_end', 'must be after period_start');
  perform ledger.require(sp_process_subscription_invoice.amount_paid_cents >= 0, 'amount_paid_cents', 'must be zero or more');
  perform ledger.require(sp_process_subscription_invoice.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  v_unmatched_id := sp_process_subscription_invoice.subscription_id || '@'
    || extract(epoch from sp_process_subscription_invoice.period_start)::text;
  v_result := festival.stripe_event_replay(sp_process_subscription_invoice.stripe_event_id);
  if v_result is null then
    -- Invoices of one subscription are decided one after another, so the overlap check below sees
    -- an allocation committed meanwhile for another period start.
    perform pg_advisory_xact_lock(hashtextextended('credits.subscription:' || sp_process_subscription_invoice.subscription_id, 0));
    -- Then the payment, like refunds: a refund of this invoice is either parked before or sees it after.
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || coalesce(sp_process_subscription_invoice.stripe_payment_intent_id,
      sp_process_subscription_invoice.stripe_invoice_id), 20261122));
    select * into v_plan from credits.plans p
    where p.stripe_price_id = sp_process_subscription_invoice.stripe_price_id and p.active;
    select * into v_covering from credits.allocations a
    where a.subscription_id = sp_process_subscription_invoice.subscription_id
      and a.period_start < sp_process_subscription_invoice.period_end
      and a.period_end > sp_process_subscription_invoice.period_start
    order by (a.period_start = sp_process_subscription_invoice.period_start) desc, a.period_start
    limit 1;
    if v_plan.plan_id is null then
      -- One open alert per subscription, however often Stripe retries.
      insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
      select 'plan_not_found', 'critical', sp_process_subscription_invoice.user_id, sp_process_subscription_invoice.subscription_id,
        jsonb_build_object('stripe_price_id', sp_process_subscription_invoice.stripe_price_id)
      where not exists (select 1 from ops.alerts a where a.kind = 'plan_not_found'
        and a.stripe_object_id = sp_process_subscription_invoice.subscription_id and a.acknowledged_at is null);
      v_result := ledger.error_result('plan_not_found', 'no active plan for this Stripe price',
        jsonb_build_object('stripe_price_id', sp_process_subscription_invoice.stripe_price_id));
    elsif sp_process_subscription_invoice.amount_paid_cents = 0 and not v_plan.trial_earns_credits then
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'not_allocated_unpaid',
        'plan_id', v_plan.plan_id, 'subscription_id', sp_process_subscription_invoice.subscription_id);
    elsif v_covering.subscription_id is not null
        and v_covering.period_start <> sp_process_subscription_invoice.period_start then
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'period_already_allocated',
        'subscription_id', sp_process_subscription_invoice.subscription_id,
        'allocated_period_start', v_covering.period_start, 'allocated_period_end', v_covering.period_end,
        'transaction_id', v_covering.operation_id);
    elsif not credits.user_exists(sp_process_subscription_invoice.user_id) then
      v_result := credits.record_unmatched(v_unmatched_id, sp_process_subscription_invoice.user_id, 'subscription_invoice',
        sp_process_subscription_invoice.stripe_event_id);
    else
      -- The same period again (another event, another invoice) replays the first allocation.
      v_result := public.allocate_monthly_credits(sp_process_subscription_invoice.user_id, v_plan.monthly_credits,
        sp_process_subscription_invoice.subscription_id, sp_process_subscription_invoice.period_start,
        sp_process_subscription_invoice.period_end, sp_process_subscription_invoice.stripe_event_id);
      if (v_result ->> 'ok')::boolean and not (v_result ->> 'replayed')::boolean then
        insert into credits.allocation_payments (stripe_invoice_id, stripe_payment_intent_id, subscription_id, period_start,
          user_id, credits, amount_paid_cents, currency)
        values (sp_process_subscription_invoice.stripe_invoice_id, sp_process_subscription_invoice.stripe_payment_intent_id,
          sp_process_subscription_invoice.subscription_id, sp_process_subscription_invoice.period_start,
          sp_process_subscription_invoice.user_id, v_plan.monthly_credits, sp_process_subscription_invoice.amount_paid_cents,
          upper(sp_process_subscription_invoice.currency));
        -- A refund that arrived before this allocation (parked here, or by the card refund procedure
        -- when the charge did not name its invoice) is applied now.
        with pending as (
          delete from credits.invoice_refunds_pending r
          where r.stripe_invoice_id = sp_process_subscription_invoice.stripe_invoice_id
          returning r.amount_refunded_cents, r.currency, r.last_event_id
        )
        select greatest(max(pending.amount_refunded_cents), 0), max(pending.currency), max(pending.last_event_id)
        into v_parked_cents, v_parked_currency, v_parked_event_id
        from pending;
        if sp_process_subscription_invoice.stripe_payment_intent_id is not null then
          with pending as (
            delete from festival.stripe_refunds_pending r
            where r.stripe_payment_intent_id = sp_process_subscription_invoice.stripe_payment_intent_id
            returning r.amount_refunded_cents, r.currency, r.last_event_id
          )
          select greatest(v_parked_cents, max(pending.amount_refunded_cents)), coalesce(v_parked_currency, max(pending.currency)),
            coalesce(v_parked_event_id, max(pending.last_event_id))
          into v_parked_cents, v_parked_currency, v_parked_event_id
          from pending;
        end if;
        if v_parked_cents > 0 then
          v_result := v_result || jsonb_build_object('refund', credits.apply_invoice_refund_total(
            sp_process_subscription_invoice.stripe_invoice_id, v_parked_cents, v_parked_currency, v_parked_event_id, null));
        end if;
      end if;
      update credits.unmatched_payments set resolved_at = now()
      where stripe_object_id = v_unmatched_id and resolved_at is null;
    end if;
    if v_result #>> '{error,code}' is distinct from 'unmatched_payment'
        and v_result #>> '{error,code}' is distinct from 'plan_not_found' then
      perform festival.stripe_event_done(sp_process_subscription_invoice.stripe_event_id, 'invoice.payment_succeeded', v_result);
    end if;
  end if;
  return v_result;
end;
$$;
revoke execute on function public.sp_process_subscription_invoice(uuid, text, text, timestamptz, timestamptz, bigint, text,
  text, text, text) from public, anon, authenticated;
grant execute on function public.sp_process_subscription_invoice(uuid, text, text, timestamptz, timestamptz, bigint, text,
  text, text, text) to service_role, edge_functions;

/**
 * Refunds of an invoice's charge seen before the invoice allocated its period (Stripe does not
 * promise order, and an invoice with an unknown price is retried for hours): applied right after
 * the allocation.
 */
create table credits.invoice_refunds_pending (
  stripe_invoice_id text primary key,
  stripe_payment_intent_id text,
  amount_refunded_cents bigint not null check (amount_refunded_cents > 0),
  currency text not null,
  last_event_id text not null,
  updated_at timestamptz not null default now()
);
alter table credits.invoice_refunds_pending enable row level security;

/**
 * Takes back an allocated period's credits up to Stripe's running refund total: in proportion to
 * the money refunded (all of them at a full refund), computed in numeric, never below zero; what
 * the balance cannot cover is a receivable and an alert. The caller holds the payment's advisory lock.
 */
create function credits.apply_invoice_refund_total(
  p_invoice_id text, p_refunded_total_cents bigint, p_currency text, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_payment credits.allocation_payments;
  v_refunded_cents bigint;
  v_reverse_total bigint;
  v_reverse bigint;
  v_account_id bigint;
  v_balance bigint;
  v_taken bigint;
  v_owed bigint;
  v_operation_id bigint;
begin
  select * into v_payment from credits.allocation_payments where stripe_invoice_id = p_invoice_id for update;
  if upper(p_currency) <> v_payment.currency then
    insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
    values ('payment_mismatch', 'critical', v_payment.user_id, coalesce(p_charge_id, p_invoice_id),
      jsonb_build_object('refund_currency', upper(p_currency), 'stripe_invoice_id', p_invoice_id));
    return ledger.error_result('payment_mismatch', 'refund in another currency than the invoice',
      jsonb_build_object('stripe_invoice_id', p_invoice_id));
  end if;
  v_refunded_cents := least(p_refunded_total_cents, v_payment.amount_paid_cents);
  if v_refunded_cents <= v_payment.refunded_cents then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_already_applied',
      'stripe_invoice_id', p_invoice_id, 'refunded_cents', v_payment.refunded_cents);
  end if;
  v_reverse_total := case when v_refunded_cents = v_payment.amount_paid_cents then v_payment.credits
    else floor(v_payment.credits::numeric * v_refunded_cents / v_payment.amount_paid_cents)::bigint end;
  v_reverse := v_reverse_total - v_payment.credits_reversed;
  v_account_id := credits.ensure_user_account(v_payment.user_id);
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  v_taken := least(v_reverse, v_balance);
  v_owed := v_reverse - v_taken;
  if v_reverse > 0 then
    v_operation_id := ledger.create_operation('credit_allocation_refund', p_event_id, null,
      jsonb_build_object('user_id', v_payment.user_id, 'stripe_invoice_id', p_invoice_id,
        'subscription_id', v_payment.subscription_id, 'period_start', v_payment.period_start));
  end if;
  if v_taken > 0 then
    perform ledger.post_transfers(v_operation_id, array[(v_account_id,
      ledger.system_account_id('credit_issuance', 'platform', v_payment.user_id::text), v_taken)::ledger.transfer_leg]);
    insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits, balance_after_credits,
      subscription_id, period_start, operation_id)
    values (v_payment.user_id, 'refund', -v_taken, v_balance, v_balance - v_taken, v_payment.subscription_id,
      v_payment.period_start, v_operation_id);
  end if;
  update credits.allocation_payments
  set refunded_cents = v_refunded_cents, credits_reversed = v_reverse_total
  where stripe_invoice_id = p_invoice_id;
  if v_owed > 0 then
    insert into credits.receivables (user_id, subscription_id, period_start, amount_credits, reason, operation_id)
    values (v_payment.user_id, v_payment.subscription_id, v_payment.period_start, v_owed, 'stripe_refund', v_operation_id);
    insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
    values ('refund_receivable', 'warning', v_payment.user_id, coalesce(p_charge_id, p_invoice_id),
      jsonb_build_object('stripe_invoice_id', p_invoice_id, 'receivable_credits', v_owed));
  end if;
  return jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'refund_applied',
    'transaction_id', v_operation_id,
    'user_id', v_payment.user_id,
    'stripe_invoice_id', p_invoice_id,
    'subscription_id', v_payment.subscription_id,
    'refund_cents', v_refunded_cents - v_payment.refunded_cents,
    'credits_reversed', v_reverse,
    'taken_from_balance_credits', v_taken,
    'receivable_credits', v_owed,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance - v_taken);
end;
$$;

/**
 * charge.refunded of a subscription invoice: the period's credits in proportion to Stripe's
 * running refund total (credits.apply_invoice_refund_total). A charge of an invoice that has not
 * allocated yet (the charge names its invoice) is parked and applied with the allocation. A charge
 * that is neither answers `not_a_subscription_invoice` and records nothing, so the festival's
 * refund procedure can take the same event next.
 */
create function public.sp_process_credit_invoice_refund(
  stripe_payment_intent_id text,
  stripe_invoice_id text,
  stripe_charge_id text,
  amount_refunded_cents bigint,
  currency text,
  stripe_event_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invoice_id text;
  v_result jsonb;
begin
  perform ledger.require(sp_process_credit_invoice_refund.amount_refunded_cents > 0, 'amount_refunded_cents', 'must be positive');
  perform ledger.require(sp_process_credit_invoice_refund.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  perform ledger.require(coalesce(length(sp_process_credit_invoice_refund.stripe_invoice_id) between 1 and 255, true),
    'stripe_invoice_id', 'must be 1 to 255 characters');
  select p.stripe_invoice_id into v_invoice_id from credits.allocation_payments p
  where p.stripe_invoice_id = sp_process_credit_invoice_refund.stripe_invoice_id
    or p.stripe_payment_intent_id = sp_process_credit_invoice_refund.stripe_payment_intent_id
  limit 1;
  if v_invoice_id is null and sp_process_credit_invoice_refund.stripe_invoice_id is null then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'not_a_subscription_invoice');
  end if;
  v_result := festival.stripe_event_replay(sp_process_credit_invoice_refund.stripe_event_id);
  if v_result is null then
    -- Serialized with the allocation of the same invoice (same key), so a refund is either seen by
    -- the allocation or finds it.
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:'
      || coalesce(sp_process_credit_invoice_refund.stripe_payment_intent_id, sp_process_credit_invoice_refund.stripe_invoice_id),
      20261122));
    select p.stripe_invoice_id into v_invoice_id from credits.allocation_payments p
    where p.stripe_invoice_id = sp_process_credit_invoice_refund.stripe_invoice_id
      or p.stripe_payment_intent_id = sp_process_credit_invoice_refund.stripe_payment_intent_id
    limit 1;
    if v_invoice_id is not null then
      v_result := credits.apply_invoice_refund_total(v_invoice_id, sp_process_credit_invoice_refund.amount_refunded_cents,
        sp_process_credit_invoice_refund.currency, sp_process_credit_invoice_refund.stripe_event_id,
        sp_process_credit_invoice_refund.stripe_charge_id);
    else
      insert into credits.invoice_refunds_pending (stripe_invoice_id, stripe_payment_intent_id, amount_refunded_cents,
        currency, last_event_id)
      values (sp_process_credit_invoice_refund.stripe_invoice_id, sp_process_credit_invoice_refund.stripe_payment_intent_id,
        sp_process_credit_invoice_refund.amount_refunded_cents, upper(sp_process_credit_invoice_refund.currency),
        sp_process_credit_invoice_refund.stripe_event_id)
      on conflict on constraint invoice_refunds_pending_pkey do update
        set amount_refunded_cents = greatest(credits.invoice_refunds_pending.amount_refunded_cents,
            excluded.amount_refunded_cents),
          last_event_id = excluded.last_event_id, updated_at = now();
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_parked_until_allocation',
        'stripe_invoice_id', sp_process_credit_invoice_refund.stripe_invoice_id);
    end if;
    perform festival.stripe_event_done(sp_process_credit_invoice_refund.stripe_event_id, 'charge.refunded', v_result);
  end if;
  perform credits.log_attempt('credit_allocation_refund', v_result, sp_process_credit_invoice_refund.stripe_event_id, null,
    (v_result ->> 'user_id')::uuid, (v_result ->> 'credits_reversed')::bigint,
    jsonb_build_object('stripe_invoice_id', coalesce(v_invoice_id, sp_process_credit_invoice_refund.stripe_invoice_id)));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_credit_invoice_refund(text, text, text, bigint, text, text)
  from public, anon, authenticated;
grant execute on function public.sp_process_credit_invoice_refund(text, text, text, bigint, text, text) to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Disputes of credit purchases: hold the disputed credits, then release or retire them
-- ---------------------------------------------------------------------------------------------

/**
 * Freezes the credits of a dispute (once per dispute id): the disputed share of the purchase's
 * credits not refunded yet, in numeric; what the balance still has is held, the rest recorded as
 * uncovered. The caller holds the payment's advisory lock.
 */
create function credits.hold_for_dispute(p_purchase_id bigint, p_dispute_id text, p_amount_cents bigint,
  p_charge_id text, p_event_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_purchase credits.credit_purchases;
  v_hold credits.dispute_holds;
  v_disputed bigint;
  v_account_id bigint;
  v_balance bigint;
  v_held bigint;
  v_operation_id bigint;
begin
  select * into v_hold from credits.dispute_holds where stripe_dispute_id = p_dispute_id;
  if found then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_already_recorded',
      'stripe_dispute_id', p_dispute_id, 'status', v_hold.status, 'held_credits', v_hold.held_credits);
  end if;
  select * into v_purchase from credits.credit_purchases where id = p_purchase_id for update;
  v_disputed := case
    when v_purchase.amount_cents = 0 then 0
    when p_amount_cents >= v_purchase.amount_cents then v_purchase.credits - v_purchase.credits_reversed
    else least(floor(v_purchase.credits::numeric * p_amount_cents / v_purchase.amount_cents)::bigint,
      v_purchase.credits - v_purchase.credits_reversed)
  end;
  v_account_id := credits.ensure_user_account(v_purchase.user_id);
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  v_held := least(v_disputed, v_balance);
  if v_held > 0 then
    v_operation_id := ledger.create_operation('credit_dispute_hold', p_event_id, null,
      jsonb_build_object('user_id', v_purchase.user_id, 'stripe_dispute_id', p_dispute_id, 'purchase_id', v_purchase.id));
    perform ledger.post_transfers(v_operation_id, array[(v_account_id,
      ledger.system_account_id('credit_disputes', 'platform', v_purchase.user_id::text), v_held)::ledger.transfer_leg]);
    insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits, balance_after_credits,
      operation_id)
    values (v_purchase.user_id, 'dispute_hold', -v_held, v_balance, v_balance - v_held, v_operation_id);
  end if;
  insert into credits.dispute_holds (stripe_dispute_id, purchase_id, user_id, stripe_payment_intent_id, disputed_cents,
    disputed_credits, held_credits, uncovered_credits, hold_operation_id)
  values (p_dispute_id, v_purchase.id, v_purchase.user_id, v_purchase.stripe_payment_intent_id, greatest(p_amount_cents, 0),
    v_disputed, v_held, v_disputed - v_held, v_operation_id);
  insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
  values ('dispute', 'critical', v_purchase.user_id, p_dispute_id,
    jsonb_build_object('purchase_id', v_purchase.id, 'stripe_session_id', v_purchase.stripe_session_id,
      'stripe_charge_id', p_charge_id, 'disputed_cents', p_amount_cents, 'disputed_credits', v_disputed,
      'held_credits', v_held, 'uncovered_credits', v_disputed - v_held));
  return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'credits_held_for_dispute',
    'transaction_id', v_operation_id,
    'user_id', v_purchase.user_id,
    'purchase_id', v_purchase.id,
    'stripe_dispute_id', p_dispute_id,
    'disputed_credits', v_disputed,
    'held_credits', v_held,
    'uncovered_credits', v_disputed - v_held,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance - v_held);
end;
$$;

/** The completed credit purchase paid with this payment intent, or null. */
create function credits.purchase_of_intent(p_payment_intent_id text) returns bigint
language plpgsql stable
set search_path = ''
as $$
begin
  return (select id from credits.credit_purchases
    where stripe_payment_intent_id = p_payment_intent_id and status = 'completed');
end;
$$;

/**
 * charge.dispute.created of a credit purchase: the disputed credits are frozen in a hold and an
 * operator alerted. A payment that is not one of our credit purchases answers
 * `not_a_credit_purchase` and records nothing, so the festival's dispute procedure can take the
 * same event next.
 */
create function public.sp_process_credit_dispute(
  stripe_payment_intent_id text,
  stripe_charge_id text,
  stripe_dispute_id text,
  amount_cents bigint,
  stripe_event_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_purchase_id bigint;
  v_result jsonb;
begin
  perform credits.require_text_id(sp_process_credit_dispute.stripe_dispute_id, 'stripe_dispute_id');
  perform ledger.require(sp_process_credit_dispute.amount_cents >= 0, 'amount_cents', 'must be zero or more');
  v_purchase_id := credits.purchase_of_intent(sp_process_credit_dispute.stripe_payment_intent_id);
  if v_purchase_id is null then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'not_a_credit_purchase');
  end if;
  v_result := festival.stripe_event_replay(sp_process_credit_dispute.stripe_event_id);
  if v_result is null then
    -- Serialized with refunds of the same payment (same key).
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || sp_process_credit_dispute.stripe_payment_intent_id, 20261122));
    v_result := credits.hold_for_dispute(v_purchase_id, sp_process_credit_dispute.stripe_dispute_id,
      sp_process_credit_dispute.amount_cents, sp_process_credit_dispute.stripe_charge_id,
      sp_process_credit_dispute.stripe_event_id);
    perform festival.stripe_event_done(sp_process_credit_dispute.stripe_event_id, 'charge.dispute.created', v_result);
  end if;
  perform credits.log_attempt('credit_dispute', v_result, sp_process_credit_dispute.stripe_event_id, null,
    (v_result ->> 'user_id')::uuid, (v_result ->> 'held_credits')::bigint,
    jsonb_build_object('stripe_dispute_id', sp_process_credit_dispute.stripe_dispute_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_credit_dispute(text, text, text, bigint, text) from public, anon, authenticated;
grant execute on function public.sp_process_credit_dispute(text, text, text, bigint, text) to service_role, edge_functions;

/**
 * charge.dispute.closed of a credit purchase. `won` (or `warning_closed`, an inquiry that never
 * became a chargeback) gives the held credits back; `lost` retires them to credit_issuance and turns
 * the uncovered rest into a receivable with an alert. Closed once per dispute. A dispute whose
 * creation we never saw is held first, then closed. Not one of our credit purchases:
 * `not_a_credit_purchase`, nothing recorded.
 */
create function public.sp_close_credit_dispute(
  stripe_payment_intent_id text,
  stripe_charge_id text,
  stripe_dispute_id text,
  amount_cents bigint,
  status text,
  stripe_event_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_purchase_id bigint;
  v_hold credits.dispute_holds;
  v_purchase credits.credit_purchases;
  v_account_id bigint;
  v_balance bigint;
  v_operation_id bigint;
  v_won boolean;
  v_result jsonb;
begin
  perform credits.require_text_id(sp_close_credit_dispute.stripe_dispute_id, 'stripe_dispute_id');
  perform ledger.require(sp_close_credit_dispute.status in ('won', 'lost', 'warning_closed'), 'status',
    'must be won, lost or warning_closed');
  perform ledger.require(sp_close_credit_dispute.amount_cents >= 0, 'amount_cents', 'must be zero or more');
  select h.purchase_id into v_purchase_id from credits.dispute_holds h
  where h.stripe_dispute_id = sp_close_credit_dispute.stripe_dispute_id;
  v_purchase_id := coalesce(v_purchase_id, credits.purchase_of_intent(sp_close_credit_dispute.stripe_payment_intent_id));
  if v_purchase_id is null then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'not_a_credit_purchase');
  end if;
  v_result := festival.stripe_event_replay(sp_close_credit_dispute.stripe_event_id);
  if v_result is null then
    select * into v_purchase from credits.credit_purchases where id = v_purchase_id;
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || v_purchase.stripe_payment_intent_id, 20261122));
    select * into v_hold from credits.dispute_holds h where h.stripe_dispute_id = sp_close_credit_dispute.stripe_dispute_id;
    if not found then
      perform credits.hold_for_dispute(v_purchase_id, sp_close_credit_dispute.stripe_dispute_id,
        sp_close_credit_dispute.amount_cents, sp_close_credit_dispute.stripe_charge_id,
        sp_close_credit_dispute.stripe_event_id);
    end if;
    select * into v_hold from credits.dispute_holds h where h.stripe_dispute_id = sp_close_credit_dispute.stripe_dispute_id
    for update;
    v_won := sp_close_credit_dispute.status in ('won', 'warning_closed');
    if v_hold.status <> 'held' then
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_already_closed',
        'stripe_dispute_id', v_hold.stripe_dispute_id, 'status', v_hold.status);
    else
      v_account_id := credits.ensure_user_account(v_hold.user_id);
      perform credits.lock_accounts(array[v_account_id]);
      v_balance := credits.account_balance(v_account_id);
      if v_hold.held_credits > 0 or (not v_won and v_hold.uncovered_credits > 0) then
        v_operation_id := ledger.create_operation(
          case when v_won then 'credit_dispute_release' else 'credit_dispute_loss' end,
          sp_close_credit_dispute.stripe_event_id, null,
          jsonb_build_object('user_id', v_hold.user_id, 'stripe_dispute_id', v_hold.stripe_dispute_id,
            'purchase_id', v_hold.purchase_id));
      end if;
      if v_hold.held_credits > 0 and v_won then
        perform ledger.post_transfers(v_operation_id, array[(
          ledger.system_account_id('credit_disputes', 'platform', v_hold.user_id::text), v_account_id,
          v_hold.held_credits)::ledger.transfer_leg]);
        insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits,
          balance_after_credits, operation_id)
        values (v_hold.user_id, 'dispute_release', v_hold.held_credits, v_balance, v_balance + v_hold.held_credits,
          v_operation_id);
      elsif v_hold.held_credits > 0 then
        -- The money went back to the payer: the frozen credits are retired, the balance is unchanged.
        perform ledger.post_transfers(v_operation_id, array[(
          ledger.system_account_id('credit_disputes', 'platform', v_hold.user_id::text),
          ledger.system_account_id('credit_issuance', 'platform', v_hold.user_id::text),
          v_hold.held_credits)::ledger.transfer_leg]);
      end if;
      if not v_won and v_hold.uncovered_credits > 0 then
        insert into credits.receivables (user_id, stripe_session_id, stripe_dispute_id, amount_credits, reason, operation_id)
        values (v_hold.user_id, v_purchase.stripe_session_id, v_hold.stripe_dispute_id, v_hold.uncovered_credits,
          'stripe_dispute_lost', v_operation_id);
        insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
        values ('refund_receivable', 'warning', v_hold.user_id, v_hold.stripe_dispute_id,
          jsonb_build_object('purchase_id', v_hold.purchase_id, 'receivable_credits', v_hold.uncovered_credits));
      end if;
      update credits.dispute_holds h
      set status = case when v_won then 'won' else 'lost' end, close_operation_id = v_operation_id, closed_at = now()
      where h.stripe_dispute_id = v_hold.stripe_dispute_id;
      v_result := jsonb_build_object('ok', true, 'replayed', false,
        'outcome', case when v_won then 'dispute_won_credits_released' else 'dispute_lost_credits_reversed' end,
        'transaction_id', v_operation_id,
        'user_id', v_hold.user_id,
        'stripe_dispute_id', v_hold.stripe_dispute_id,
        'held_credits', v_hold.held_credits,
        'receivable_credits', case when v_won then 0 else v_hold.uncovered_credits end,
        'balance_before_credits', v_balance,
        'balance_after_credits', v_balance + case when v_won then v_hold.held_credits else 0 end);
    end if;
    perform festival.stripe_event_done(sp_close_credit_dispute.stripe_event_id, 'charge.dispute.closed', v_result);
  end if;
  perform credits.log_attempt('credit_dispute_closed', v_result, sp_close_credit_dispute.stripe_event_id, null,
    (v_result ->> 'user_id')::uuid, (v_result ->> 'held_credits')::bigint,
    jsonb_build_object('stripe_dispute_id', sp_close_credit_dispute.stripe_dispute_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_close_credit_dispute(text, text, text, bigint, text, text) from public, anon, authenticated;
grant execute on function public.sp_close_credit_dispute(text, text, text, bigint, text, text) to service_role, edge_functions;

-- History of the credit side refuses TRUNCATE like the rest (docs/architecture.md §4).
create trigger credit_packages_no_truncate before truncate on credits.credit_packages
  for each statement execute function ledger.refuse_history_change();
create trigger allocation_payments_no_truncate before truncate on credits.allocation_payments
  for each statement execute function ledger.refuse_history_change();
create trigger dispute_holds_no_truncate before truncate on credits.dispute_holds
  for each statement execute function ledger.refuse_history_change();
