-- Practitioner credits through Stripe: credit purchases (Checkout sessions with
-- metadata.kind = 'credit_purchase'), their refunds, and subscription invoices that allocate a
-- period's credits through allocate_monthly_credits. Same exactly-once rules as card recharges:
-- each event id decides once (festival.stripe_events is the deployment's Stripe event log), each
-- session credits once, refunds reverse only their new part, payments never create users.

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------

/** One row per credit purchase session: pending, failed and cancelled ones are recorded too. */
create table credits.credit_purchases (
  stripe_session_id text primary key check (length(stripe_session_id) between 1 and 255),
  user_id uuid not null,
  credits bigint not null check (credits > 0),
  -- Zero for a session that needed no payment (a 100 % coupon): credited, never refunded.
  amount_cents bigint not null check (amount_cents >= 0),
  currency text not null check (currency ~ '^[A-Z]{3}$'),
  status text not null check (status in ('pending', 'completed', 'failed', 'cancelled')),
  stripe_payment_intent_id text unique,
  operation_id bigint unique,
  refunded_cents bigint not null default 0 check (refunded_cents >= 0),
  credits_reversed bigint not null default 0 check (credits_reversed >= 0),
  failure_reason text,
  created_at timestamptz not null default now(),
  completed_at timestamptz,
  constraint refunds_within_amount check (refunded_cents <= amount_cents),
  constraint reversal_within_credits check (credits_reversed <= credits),
  constraint completed_has_operation check (status <> 'completed' or operation_id is not null)
);
alter table credits.credit_purchases enable row level security;

/** A paid purchase or invoice for a user who does not exist (yet): Stripe retries it. */
create table credits.unmatched_payments (
  stripe_object_id text primary key,
  user_id uuid not null,
  kind text not null check (kind in ('credit_purchase', 'subscription_invoice')),
  last_event_id text not null,
  attempts integer not null default 1,
  first_seen_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  resolved_at timestamptz
);
alter table credits.unmatched_payments enable row level security;

/** Credits a user owes: a refund their balance could not cover. */
create table credits.receivables (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  stripe_session_id text not null references credits.credit_purchases (stripe_session_id),
  amount_credits bigint not null check (amount_credits > 0),
  reason text not null,
  operation_id bigint not null,
  status text not null default 'open' check (status in ('open', 'settled', 'written_off')),
  created_at timestamptz not null default now()
);
create index credit_receivables_open on credits.receivables (user_id) where status = 'open';
alter table credits.receivables enable row level security;

alter table ops.alerts drop constraint alerts_kind_check;
alter table ops.alerts add column user_id uuid;
alter table ops.alerts add constraint alerts_kind_check check (kind in (
  'refund_receivable', 'dispute', 'payment_mismatch', 'unmatched_payment', 'unmatched_refund', 'plan_not_found'));

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

/** Records (or counts again) a payment for a user who does not exist; one alert per payment. */
create function credits.record_unmatched(p_object_id text, p_user_id uuid, p_kind text, p_event_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_attempts integer;
begin
  insert into credits.unmatched_payments (stripe_object_id, user_id, kind, last_event_id)
  values (p_object_id, p_user_id, p_kind, p_event_id)
  on conflict on constraint unmatched_payments_pkey do update
    set attempts = credits.unmatched_payments.attempts + 1, last_event_id = excluded.last_event_id, last_seen_at = now()
  returning attempts into v_attempts;
  if v_attempts = 1 then
    insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
    values ('unmatched_payment', 'critical', p_user_id, p_object_id, jsonb_build_object('kind', p_kind));
  end if;
  return ledger.error_result('unmatched_payment', 'paid for a user who does not exist; recorded, retry later',
    jsonb_build_object('user_id', p_user_id, 'stripe_object_id', p_object_id));
end;
$$;

/**
 * Reverses a purchase's refunds up to Stripe's running total: credits in proportion to the money
 * refunded (all of them at a full refund), never below zero; the rest is an open receivable and
 * an alert.
 */
create function credits.apply_purchase_refund_total(
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
  v_reverse_total := case when v_refunded_cents = v_purchase.amount_cents then v_purchase.credits
    else (v_purchase.credits * v_refunded_cents) / v_purchase.amount_cents end;
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

create function credits.credit_purchase(
  p_user_id uuid, p_credits bigint, p_amount_cents bigint, p_currency text, p_session_id text, p_event_id text,
  p_payment_intent_id text, p_payment_status text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_purchase credits.credit_purchases;
  v_account_id bigint;
  v_balance bigint;
  v_operation_id bigint;
  v_pending_refund festival.stripe_refunds_pending;
  v_result jsonb;
begin
  -- Same locks, same order as card recharges: the session, then the payment (refunds take it too).
  perform pg_advisory_xact_lock(hashtextextended('stripe-session:' || p_session_id, 20261122));
  if p_payment_intent_id is not null then
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || p_payment_intent_id, 20261122));
  end if;
  select * into v_purchase from credits.credit_purchases where stripe_session_id = p_session_id for update;
  if v_purchase.status = 'completed' then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'already_credited',
      'stripe_session_id', p_session_id, 'user_id', v_purchase.user_id, 'transaction_id', v_purchase.operation_id);
  end if;
  if upper(p_currency) <> (select currency from festival.settings)
      or (v_purchase.stripe_session_id is not null
        and (v_purchase.user_id <> p_user_id or v_purchase.credits <> p_credits or v_purchase.amount_cents <> p_amount_cents)) then
    insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
    values ('payment_mismatch', 'critical', p_user_id, p_session_id,
      jsonb_build_object('paid_cents', p_amount_cents, 'currency', upper(p_currency), 'credits', p_credits,
        'recorded', to_jsonb(v_purchase)));
    return ledger.error_result('payment_mismatch', 'the paid amount, currency, credits or user differ from the purchase',
      jsonb_build_object('stripe_session_id', p_session_id));
  end if;
  if not credits.user_exists(p_user_id) then
    return credits.record_unmatched(p_session_id, p_user_id, 'credit_purchase', p_event_id);
  end if;
  if v_purchase.stripe_session_id is null then
    insert into credits.credit_purchases (stripe_session_id, user_id, credits, amount_cents, currency, status)
    values (p_session_id, p_user_id, p_credits, p_amount_cents, upper(p_currency), 'pending')
    returning * into v_purchase;
  end if;
  if p_payment_status not in ('paid', 'no_payment_required') then
    -- Recorded, no balance change: async_payment_succeeded or _failed follows.
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'payment_pending',
      'stripe_session_id', p_session_id, 'user_id', p_user_id);
  end if;

  v_account_id := credits.ensure_user_account(p_user_id);
  perform credits.lock_accounts(array[v_account_id]);
  v_balance := credits.account_balance(v_account_id);
  v_operation_id := ledger.create_operation('credit_purchase', p_event_id, null,
    jsonb_build_object('user_id', p_user_id, 'stripe_session_id', p_session_id));
  perform ledger.post_transfers(v_operation_id, array[(
    ledger.system_account_id('credit_issuance', 'platform', p_user_id::text), v_account_id, p_credits)::ledger.transfer_leg]);
  insert into credits.credit_transactions (user_id, type, amount_credits, balance_before_credits, balance_after_credits,
    operation_id)
  values (p_user_id, 'purchase', p_credits, v_balance, v_balance + p_credits, v_operation_id);
  update credits.credit_purchases
  set status = 'completed', operation_id = v_operation_id, stripe_payment_intent_id = p_payment_intent_id,
    completed_at = now(), failure_reason = null
  where stripe_session_id = p_session_id;
  update credits.unmatched_payments set resolved_at = now() where stripe_object_id = p_session_id and resolved_at is null;
  v_result := jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'credited',
    'transaction_id', v_operation_id,
    'user_id', p_user_id,
    'stripe_session_id', p_session_id,
    'credits', p_credits,
    'balance_before_credits', v_balance,
    'balance_after_credits', v_balance + p_credits);
  -- A refund that arrived before this credit is applied now.
  if p_payment_intent_id is not null then
    delete from festival.stripe_refunds_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_refund;
    if v_pending_refund.stripe_payment_intent_id is not null then
      v_result := v_result || jsonb_build_object('refund', credits.apply_purchase_refund_total(
        p_session_id, v_pending_refund.amount_refunded_cents, v_pending_refund.last_event_id, null));
    end if;
  end if;
  return v_result;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Procedures
-- ---------------------------------------------------------------------------------------------

/**
 * A Checkout session with metadata.kind = 'credit_purchase': credits the user once when paid
 * (payment_status 'paid'); records an unpaid one as pending. A user who does not exist is an
 * unmatched payment (not remembered under the event, so Stripe's retry applies it later).
 */
create function public.sp_process_credit_purchase(
  user_id uuid,
  credits bigint,
  amount_cents bigint,
  currency text,
  stripe_session_id text,
  stripe_event_id text,
  stripe_payment_intent_id text,
  payment_status text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform credits.require_user_id(sp_process_credit_purchase.user_id, 'user_id');
  perform ledger.require(sp_process_credit_purchase.credits > 0, 'credits', 'must be a positive integer');
  perform ledger.require(sp_process_credit_purchase.amount_cents >= 0, 'amount_cents', 'must be zero or more');
  perform ledger.require(sp_process_credit_purchase.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  perform credits.require_text_id(sp_process_credit_purchase.stripe_session_id, 'stripe_session_id');
  perform ledger.require(sp_process_credit_purchase.payment_status in ('paid', 'unpaid', 'no_payment_required'),
    'payment_status', 'must be paid, unpaid or no_payment_required');
  v_result := festival.stripe_event_replay(sp_process_credit_purchase.stripe_event_id);
  if v_result is null then
    v_result := credits.credit_purchase(sp_process_credit_purchase.user_id, sp_process_credit_purchase.credits,
      sp_process_credit_purchase.amount_cents, sp_process_credit_purchase.currency,
      sp_process_credit_purchase.stripe_session_id, sp_process_credit_purchase.stripe_event_id,
      sp_process_credit_purchase.stripe_payment_intent_id, sp_process_credit_purchase.payment_status);
    if v_result #>> '{error,code}' is distinct from 'unmatched_payment' then
      perform festival.stripe_event_done(sp_process_credit_purchase.stripe_event_id, 'credit_purchase', v_result);
    end if;
  end if;
  perform credits.log_attempt('credit_purchase', v_result, sp_process_credit_purchase.stripe_event_id, null,
    sp_process_credit_purchase.user_id, sp_process_credit_purchase.credits,
    jsonb_build_object('stripe_session_id', sp_process_credit_purchase.stripe_session_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_credit_purchase(uuid, bigint, bigint, text, text, text, text, text)
  from public, anon, authenticated;
grant execute on function public.sp_process_credit_purchase(uuid, bigint, bigint, text, text, text, text, text)
  to service_role;

/** async_payment_failed ('failed') or expired ('cancelled') credit purchase: recorded, nothing moves. */
create function public.sp_close_credit_purchase(
  stripe_session_id text, user_id uuid, credits bigint, amount_cents bigint, currency text, status text,
  stripe_event_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_purchase credits.credit_purchases;
begin
  perform credits.require_text_id(sp_close_credit_purchase.stripe_session_id, 'stripe_session_id');
  perform ledger.require(sp_close_credit_purchase.status in ('failed', 'cancelled'), 'status', 'must be failed or cancelled');
  perform credits.require_user_id(sp_close_credit_purchase.user_id, 'user_id');
  perform ledger.require(sp_close_credit_purchase.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  perform ledger.require(sp_close_credit_purchase.credits > 0 and sp_close_credit_purchase.amount_cents >= 0, 'credits',
    'credits must be positive and amount_cents zero or more');
  v_result := festival.stripe_event_replay(sp_close_credit_purchase.stripe_event_id);
  if v_result is null then
    perform pg_advisory_xact_lock(hashtextextended('stripe-session:' || sp_close_credit_purchase.stripe_session_id, 20261122));
    select * into v_purchase from credits.credit_purchases p
    where p.stripe_session_id = sp_close_credit_purchase.stripe_session_id for update;
    if v_purchase.status = 'completed' then
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'already_credited');
    elsif v_purchase.stripe_session_id is not null then
      update credits.credit_purchases p set status = sp_close_credit_purchase.status,
        failure_reason = 'stripe: ' || sp_close_credit_purchase.status
      where p.stripe_session_id = sp_close_credit_purchase.stripe_session_id;
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'marked_' || sp_close_credit_purchase.status);
    else
      -- Recorded even when no earlier event announced it, so the history of every session is complete.
      insert into credits.credit_purchases (stripe_session_id, user_id, credits, amount_cents, currency, status, failure_reason)
      values (sp_close_credit_purchase.stripe_session_id, sp_close_credit_purchase.user_id, sp_close_credit_purchase.credits,
        sp_close_credit_purchase.amount_cents, upper(sp_close_credit_purchase.currency), sp_close_credit_purchase.status,
        'stripe: ' || sp_close_credit_purchase.status);
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'marked_' || sp_close_credit_purchase.status);
    end if;
    perform festival.stripe_event_done(sp_close_credit_purchase.stripe_event_id, 'credit_purchase_closed', v_result);
  end if;
  perform ops.log_attempt('credit_purchase_closed', v_result, sp_close_credit_purchase.stripe_event_id, null,
    p_details => jsonb_build_object('stripe_session_id', sp_close_credit_purchase.stripe_session_id,
      'user_id', sp_close_credit_purchase.user_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_close_credit_purchase(text, uuid, bigint, bigint, text, text, text)
  from public, anon, authenticated;
grant execute on function public.sp_close_credit_purchase(text, uuid, bigint, bigint, text, text, text) to service_role;

/**
 * invoice.payment_succeeded of a subscription: the plan's credits for the invoiced period, through
 * allocate_monthly_credits (one allocation per period whatever events arrive). An unknown plan or
 * user is not a final answer (the operator adds the plan, the user signs up): not remembered under
 * the event, so Stripe's retry allocates once it can.
 */
create function public.sp_process_subscription_invoice(
  user_id uuid,
  plan_id text,
  subscription_id text,
  period_start timestamptz,
  period_end timestamptz,
  stripe_event_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_credits bigint;
begin
  perform credits.require_user_id(sp_process_subscription_invoice.user_id, 'user_id');
  perform credits.require_text_id(sp_process_subscription_invoice.plan_id, 'plan_id');
  perform credits.require_text_id(sp_process_subscription_invoice.subscription_id, 'subscription_id');
  perform ledger.require(sp_process_subscription_invoice.period_end > sp_process_subscription_invoice.period_start,
    'period_end', 'must be after period_start');
  v_result := festival.stripe_event_replay(sp_process_subscription_invoice.stripe_event_id);
  if v_result is null then
    select p.monthly_credits into v_credits from credits.plans p where p.plan_id = sp_process_subscription_invoice.plan_id and p.active;
    if v_credits is null then
      -- One open alert per subscription, however often Stripe retries.
      insert into ops.alerts (kind, severity, user_id, stripe_object_id, details)
      select 'plan_not_found', 'critical', sp_process_subscription_invoice.user_id, sp_process_subscription_invoice.subscription_id,
        jsonb_build_object('plan_id', sp_process_subscription_invoice.plan_id)
      where not exists (select 1 from ops.alerts a where a.kind = 'plan_not_found'
        and a.stripe_object_id = sp_process_subscription_invoice.subscription_id and a.acknowledged_at is null);
      v_result := ledger.error_result('plan_not_found', 'no active plan with this id',
        jsonb_build_object('plan_id', sp_process_subscription_invoice.plan_id));
    elsif not credits.user_exists(sp_process_subscription_invoice.user_id) then
      v_result := credits.record_unmatched(sp_process_subscription_invoice.subscription_id || '@'
        || extract(epoch from sp_process_subscription_invoice.period_start)::text,
        sp_process_subscription_invoice.user_id, 'subscription_invoice', sp_process_subscription_invoice.stripe_event_id);
    else
      v_result := public.allocate_monthly_credits(sp_process_subscription_invoice.user_id, v_credits,
        sp_process_subscription_invoice.subscription_id, sp_process_subscription_invoice.period_start,
        sp_process_subscription_invoice.period_end, sp_process_subscription_invoice.stripe_event_id);
      update credits.unmatched_payments set resolved_at = now()
      where stripe_object_id = sp_process_subscription_invoice.subscription_id || '@'
          || extract(epoch from sp_process_subscription_invoice.period_start)::text
        and resolved_at is null;
    end if;
    if v_result #>> '{error,code}' is distinct from 'unmatched_payment'
        and v_result #>> '{error,code}' is distinct from 'plan_not_found' then
      perform festival.stripe_event_done(sp_process_subscription_invoice.stripe_event_id, 'invoice.payment_succeeded', v_result);
    end if;
  end if;
  return v_result;
end;
$$;
revoke execute on function public.sp_process_subscription_invoice(uuid, text, text, timestamptz, timestamptz, text)
  from public, anon, authenticated;
grant execute on function public.sp_process_subscription_invoice(uuid, text, text, timestamptz, timestamptz, text)
  to service_role;

/**
 * charge.refunded, for card recharges and credit purchases alike: the payment intent says which.
 * A refund that arrives before either is credited is still parked by sp_process_stripe_refund and
 * applied with the credit.
 */
create or replace function festival.refund_credited_payment(
  p_payment_intent_id text, p_refunded_total_cents bigint, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recharge_id bigint;
  v_session_id text;
begin
  select id into v_recharge_id from festival.recharges
  where stripe_payment_intent_id = p_payment_intent_id and status = 'completed';
  if v_recharge_id is not null then
    return festival.apply_stripe_refund_total(v_recharge_id, p_refunded_total_cents, p_event_id, p_charge_id);
  end if;
  select stripe_session_id into v_session_id from credits.credit_purchases
  where stripe_payment_intent_id = p_payment_intent_id and status = 'completed';
  if v_session_id is not null then
    return credits.apply_purchase_refund_total(v_session_id, p_refunded_total_cents, p_event_id, p_charge_id);
  end if;
  return null;
end;
$$;
