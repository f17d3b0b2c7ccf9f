-- Online top-ups through Stripe Checkout: pending recharges, crediting exactly once per session
-- whatever order and however often Stripe delivers its events, refunds (with their share of the
-- bonus), disputes, unmatched payments, receivables and operator alerts.
--
-- Stripe retries an event for up to three days, longer than idempotency keys live (24 h), so every
-- processed event id is also kept for good in festival.stripe_events.

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------

alter table festival.recharges
  add column currency text check (currency ~ '^[A-Z]{3}$'),
  add column stripe_payment_intent_id text unique,
  add column checkout_url text,
  add column request_fingerprint text,
  add column refunded_cents bigint not null default 0 check (refunded_cents >= 0),
  add column bonus_reversed_cents bigint not null default 0 check (bonus_reversed_cents >= 0),
  add column failure_reason text,
  add column completed_at timestamptz,
  add constraint refunds_within_amount check (refunded_cents <= amount_cents),
  add constraint bonus_reversal_within_bonus check (bonus_reversed_cents <= bonus_cents);

/** Every Stripe event that changed or decided something, kept for good. */
create table festival.stripe_events (
  event_id text primary key check (length(event_id) between 1 and 255),
  type text not null,
  result jsonb not null,
  processed_at timestamptz not null default now()
);
alter table festival.stripe_events enable row level security;

/**
 * A paid session whose card does not exist (yet). Stripe is answered 404 so it retries; once the
 * card is registered a retry credits it and the row is marked resolved.
 */
create table festival.unmatched_payments (
  stripe_session_id text primary key,
  card_id text not null,
  amount_cents bigint not null,
  currency text not null,
  last_event_id text not null,
  metadata jsonb not null default '{}'::jsonb,
  attempts integer not null default 1,
  first_seen_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  resolved_at timestamptz
);
alter table festival.unmatched_payments enable row level security;

/**
 * Refund totals seen before the session was credited (Stripe does not promise order): applied
 * right after the credit.
 */
create table festival.stripe_refunds_pending (
  stripe_payment_intent_id text primary key,
  amount_refunded_cents bigint not null check (amount_refunded_cents > 0),
  currency text not null,
  last_event_id text not null,
  updated_at timestamptz not null default now()
);
alter table festival.stripe_refunds_pending enable row level security;

/**
 * Disputes that arrived before their payment was credited (Stripe does not promise order): the
 * card is blocked the moment the credit lands.
 */
create table festival.stripe_disputes_pending (
  stripe_payment_intent_id text primary key,
  stripe_dispute_id text not null,
  amount_cents bigint not null,
  last_event_id text not null,
  created_at timestamptz not null default now()
);
alter table festival.stripe_disputes_pending enable row level security;

/** Money a card holder owes: a refund or dispute the card balance could not cover. */
create table festival.receivables (
  id bigint generated always as identity primary key,
  card_id text not null references festival.cards (id),
  recharge_id bigint references festival.recharges (id),
  amount_cents bigint not null check (amount_cents > 0),
  reason text not null,
  operation_id bigint not null,
  status text not null default 'open' check (status in ('open', 'settled', 'written_off')),
  created_at timestamptz not null default now()
);
create index receivables_open on festival.receivables (card_id) where status = 'open';
alter table festival.receivables enable row level security;

/** What an operator must look at: receivables, disputes, amount mismatches, unmatched payments. */
create table ops.alerts (
  id bigint generated always as identity primary key,
  kind text not null check (kind in ('refund_receivable', 'dispute', 'payment_mismatch', 'unmatched_payment', 'unmatched_refund')),
  severity text not null default 'warning' check (severity in ('info', 'warning', 'critical')),
  card_id text,
  stripe_object_id text,
  details jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  acknowledged_at timestamptz
);
create index alerts_open on ops.alerts (created_at) where acknowledged_at is null;
alter table ops.alerts enable row level security;

create function ops.raise_alert(p_kind text, p_severity text, p_card_id text, p_stripe_object_id text, p_details jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into ops.alerts (kind, severity, card_id, stripe_object_id, details)
  values (p_kind, p_severity, p_card_id, p_stripe_object_id, coalesce(p_details, '{}'::jsonb));
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Checkout: a pending recharge before the Stripe session, the session attached after it
-- ---------------------------------------------------------------------------------------------

create function festival.pending_recharge_response(p_recharge festival.recharges) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'ok', true,
    'replayed', false,
    'recharge_id', p_recharge.id,
    'card_id', p_recharge.card_id,
    'package_code', p_recharge.package_code,
    'amount_cents', p_recharge.amount_cents,
    'bonus_cents', p_recharge.bonus_cents,
    'currency', p_recharge.currency,
    'status', p_recharge.status,
    'session_id', p_recharge.stripe_session_id,
    'checkout_url', p_recharge.checkout_url)
$$;

/**
 * Checks the card, the package or amount and the limits, and stores a pending online recharge for
 * create-checkout-session. Idempotent on client_request_id for good (the recharge row keeps the key
 * and the request fingerprint): a replay answers the recharge as it is now, with its session once
 * attached, so the same key always leads to the same Checkout Session.
 */
create function public.sp_prepare_online_recharge(
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

  perform pg_advisory_xact_lock(hashtextextended(sp_prepare_online_recharge.client_request_id, 20261122));
  -- A recharge made under this key answers as it is now (with its session once attached).
  select * into v_existing from festival.recharges r where r.client_request_id = sp_prepare_online_recharge.client_request_id;
  if found then
    if v_existing.payment_method = 'stripe' and v_existing.request_fingerprint = v_fingerprint then
      return festival.pending_recharge_response(v_existing) || '{"replayed": true}'::jsonb;
    end if;
    return ledger.error_result('idempotency_key_reused', 'this client_request_id was already used for a different request',
      jsonb_build_object('client_request_id', sp_prepare_online_recharge.client_request_id));
  end if;
  -- Business failures are recorded outcomes too (DESIGN §5), under the ordinary idempotency keys.
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
revoke execute on function public.sp_prepare_online_recharge(text, bigint, text, text) from public, anon, authenticated;
grant execute on function public.sp_prepare_online_recharge(text, bigint, text, text) to service_role;

/** Records the Checkout Session created for a pending recharge; the first attached session wins. */
create function public.sp_attach_checkout_session(recharge_id bigint, stripe_session_id text, checkout_url text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_recharge festival.recharges;
begin
  perform ledger.require(length(sp_attach_checkout_session.stripe_session_id) between 1 and 255, 'stripe_session_id',
    'must be 1 to 255 characters');
  perform ledger.require(length(sp_attach_checkout_session.checkout_url) between 1 and 2048, 'checkout_url',
    'must be 1 to 2048 characters');
  update festival.recharges r
  set stripe_session_id = sp_attach_checkout_session.stripe_session_id, checkout_url = sp_attach_checkout_session.checkout_url
  where r.id = sp_attach_checkout_session.recharge_id and r.payment_method = 'stripe' and r.stripe_session_id is null;
  select * into v_recharge from festival.recharges r where r.id = sp_attach_checkout_session.recharge_id;
  if not found then
    return ledger.error_result('recharge_not_found', 'no online recharge with this id',
      jsonb_build_object('recharge_id', sp_attach_checkout_session.recharge_id));
  end if;
  return festival.pending_recharge_response(v_recharge);
end;
$$;
revoke execute on function public.sp_attach_checkout_session(bigint, text, text) from public, anon, authenticated;
grant execute on function public.sp_attach_checkout_session(bigint, text, text) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Events: the shared frame (an event id decides once, for good)
-- ---------------------------------------------------------------------------------------------

/** The stored result of an event already processed, with replayed = true; null for a new event. */
create function festival.stripe_event_replay(p_event_id text) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform ledger.require(length(p_event_id) between 1 and 255, 'stripe_event_id', 'must be 1 to 255 characters');
  -- Deliveries of one event are serialized; the second finds the first's result.
  perform pg_advisory_xact_lock(hashtextextended('stripe-event:' || p_event_id, 20261122));
  select result into v_result from festival.stripe_events where event_id = p_event_id;
  return v_result || '{"replayed": true}'::jsonb;
end;
$$;

create function festival.stripe_event_done(p_event_id text, p_type text, p_result jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  insert into festival.stripe_events (event_id, type, result) values (p_event_id, p_type, p_result);
  return p_result;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Crediting a paid session
-- ---------------------------------------------------------------------------------------------

/**
 * Reverses refunds of a completed online recharge up to `p_refunded_total_cents` (Stripe's running
 * total): only the part not reversed yet, plus the bonus in proportion. What the card cannot cover
 * becomes an open receivable and an alert.
 */
create function festival.apply_stripe_refund_total(
  p_recharge_id bigint, p_refunded_total_cents bigint, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recharge festival.recharges;
  v_card festival.locked_card;
  v_refund_cents bigint;
  v_bonus_total_cents bigint;
  v_bonus_cents bigint;
  v_from_card_refund bigint;
  v_from_card_bonus bigint;
  v_receivable_cents bigint;
  v_operation_id bigint;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
  v_clearing bigint;
  v_promotions bigint;
  v_receivables bigint;
begin
  select * into v_recharge from festival.recharges where id = p_recharge_id for update;
  v_refund_cents := least(p_refunded_total_cents, v_recharge.amount_cents) - v_recharge.refunded_cents;
  if v_refund_cents <= 0 then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_already_applied',
      'recharge_id', p_recharge_id, 'refunded_cents', v_recharge.refunded_cents);
  end if;
  -- The bonus follows the refund in proportion (rounded down), the last refund takes the rest.
  v_bonus_total_cents := case
    when least(p_refunded_total_cents, v_recharge.amount_cents) = v_recharge.amount_cents then v_recharge.bonus_cents
    else (v_recharge.bonus_cents * least(p_refunded_total_cents, v_recharge.amount_cents)) / v_recharge.amount_cents
  end;
  v_bonus_cents := v_bonus_total_cents - v_recharge.bonus_reversed_cents;

  v_card := festival.lock_card(v_recharge.card_id);
  v_from_card_refund := least(v_refund_cents, v_card.balance_cents);
  v_from_card_bonus := least(v_bonus_cents, v_card.balance_cents - v_from_card_refund);
  v_receivable_cents := (v_refund_cents - v_from_card_refund) + (v_bonus_cents - v_from_card_bonus);

  v_operation_id := ledger.create_operation('stripe_refund', p_event_id, null,
    jsonb_build_object('card_id', v_recharge.card_id, 'recharge_id', p_recharge_id, 'stripe_charge_id', p_charge_id));
  v_clearing := ledger.system_account_id('stripe_clearing', 'stripe', v_recharge.card_id);
  v_promotions := ledger.system_account_id('promotions', 'festival', v_recharge.card_id);
  v_receivables := ledger.system_account_id('receivables', 'festival', v_recharge.card_id);
  if v_from_card_refund > 0 then
    v_legs := v_legs || (v_card.account_id, v_clearing, v_from_card_refund)::ledger.transfer_leg;
  end if;
  if v_refund_cents > v_from_card_refund then
    v_legs := v_legs || (v_receivables, v_clearing, v_refund_cents - v_from_card_refund)::ledger.transfer_leg;
  end if;
  if v_from_card_bonus > 0 then
    v_legs := v_legs || (v_card.account_id, v_promotions, v_from_card_bonus)::ledger.transfer_leg;
  end if;
  if v_bonus_cents > v_from_card_bonus then
    v_legs := v_legs || (v_receivables, v_promotions, v_bonus_cents - v_from_card_bonus)::ledger.transfer_leg;
  end if;
  if cardinality(v_legs) > 0 then
    perform ledger.post_transfers(v_operation_id, v_legs);
  end if;
  update festival.recharges
  set refunded_cents = refunded_cents + v_refund_cents, bonus_reversed_cents = bonus_reversed_cents + v_bonus_cents
  where id = p_recharge_id;
  if v_receivable_cents > 0 then
    insert into festival.receivables (card_id, recharge_id, amount_cents, reason, operation_id)
    values (v_recharge.card_id, p_recharge_id, v_receivable_cents, 'stripe_refund', v_operation_id);
    perform ops.raise_alert('refund_receivable', 'warning', v_recharge.card_id, p_charge_id,
      jsonb_build_object('recharge_id', p_recharge_id, 'receivable_cents', v_receivable_cents,
        'refund_cents', v_refund_cents, 'bonus_reversed_cents', v_bonus_cents));
  end if;
  return jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'refund_applied',
    'transaction_id', v_operation_id,
    'recharge_id', p_recharge_id,
    'card_id', v_recharge.card_id,
    'refund_cents', v_refund_cents,
    'bonus_reversed_cents', v_bonus_cents,
    'taken_from_card_cents', v_from_card_refund + v_from_card_bonus,
    'receivable_cents', v_receivable_cents,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents - v_from_card_refund - v_from_card_bonus);
end;
$$;

create function festival.credit_stripe_session(
  p_card_id text, p_amount_cents bigint, p_currency text, p_session_id text, p_event_id text,
  p_payment_intent_id text, p_bonus_cents bigint, p_metadata jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recharge festival.recharges;
  v_card festival.locked_card;
  v_currency text := (select currency from festival.settings);
  v_operation_id bigint;
  v_legs ledger.transfer_leg[];
  v_pending_refund festival.stripe_refunds_pending;
  v_pending_dispute festival.stripe_disputes_pending;
  v_package festival.topup_packages;
  v_expected_bonus_cents bigint;
  v_unmatched_attempts integer;
  v_result jsonb;
begin
  -- One session is credited once. Events of one session queue here (also when no pending row
  -- exists yet), then behind the refunds of the same payment (same key as sp_process_stripe_refund).
  perform pg_advisory_xact_lock(hashtextextended('stripe-session:' || p_session_id, 20261122));
  if p_payment_intent_id is not null then
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || p_payment_intent_id, 20261122));
  end if;
  select * into v_recharge from festival.recharges where stripe_session_id = p_session_id for update;
  if not found and p_metadata ->> 'recharge_id' ~ '^[0-9]{1,18}$' then
    -- The session was created but never attached (a crash between Stripe and the database).
    select * into v_recharge from festival.recharges
    where id = (p_metadata ->> 'recharge_id')::bigint and payment_method = 'stripe' and stripe_session_id is null
    for update;
    if found then
      update festival.recharges set stripe_session_id = p_session_id where id = v_recharge.id;
    end if;
  end if;
  if v_recharge.status = 'completed' then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'already_credited',
      'recharge_id', v_recharge.id, 'card_id', v_recharge.card_id, 'transaction_id', v_recharge.operation_id);
  end if;

  v_card := festival.lock_card(p_card_id);
  if v_card is null then
    insert into festival.unmatched_payments (stripe_session_id, card_id, amount_cents, currency, last_event_id, metadata)
    values (p_session_id, p_card_id, p_amount_cents, upper(p_currency), p_event_id, coalesce(p_metadata, '{}'::jsonb))
    on conflict (stripe_session_id) do update
      set attempts = festival.unmatched_payments.attempts + 1, last_event_id = excluded.last_event_id, last_seen_at = now()
    returning attempts into v_unmatched_attempts;
    -- One alert per payment: Stripe retries for days, the operator needs one row, not hundreds.
    if v_unmatched_attempts = 1 then
      perform ops.raise_alert('unmatched_payment', 'critical', p_card_id, p_session_id,
        jsonb_build_object('amount_cents', p_amount_cents, 'currency', upper(p_currency)));
    end if;
    return ledger.error_result('unmatched_payment', 'paid session for a card that does not exist; recorded, retry later',
      jsonb_build_object('card_id', p_card_id, 'stripe_session_id', p_session_id));
  end if;

  -- Without a pending recharge (a session created outside create-checkout-session) the bonus can
  -- only be the named package's, for that package's price: never what metadata claims.
  if v_recharge.id is null then
    v_package := festival.active_package(p_metadata ->> 'package_code');
    v_expected_bonus_cents := case when v_package.price_cents = p_amount_cents then v_package.bonus_cents else 0 end;
  end if;
  -- What Stripe says was paid must be what we asked for; otherwise an operator decides.
  if upper(p_currency) <> v_currency
      or (v_recharge.id is not null and (v_recharge.amount_cents <> p_amount_cents
        or v_recharge.bonus_cents <> p_bonus_cents or v_recharge.card_id <> p_card_id))
      or (v_recharge.id is null and p_bonus_cents <> v_expected_bonus_cents) then
    perform ops.raise_alert('payment_mismatch', 'critical', p_card_id, p_session_id,
      jsonb_build_object('paid_cents', p_amount_cents, 'paid_currency', upper(p_currency), 'bonus_cents', p_bonus_cents,
        'expected_cents', v_recharge.amount_cents, 'expected_bonus_cents', v_recharge.bonus_cents,
        'expected_currency', v_currency, 'expected_card_id', v_recharge.card_id, 'recharge_id', v_recharge.id));
    return ledger.error_result('payment_mismatch', 'the paid amount, currency or card differs from the pending recharge',
      jsonb_build_object('stripe_session_id', p_session_id, 'paid_cents', p_amount_cents,
        'expected_cents', v_recharge.amount_cents));
  end if;

  v_operation_id := ledger.create_operation('stripe_recharge', p_event_id, null,
    jsonb_build_object('card_id', p_card_id, 'stripe_session_id', p_session_id));
  if v_recharge.id is null then
    -- A paid session we have no pending row for (created outside create-checkout-session).
    insert into festival.recharges (card_id, amount_cents, bonus_cents, package_code, payment_method, status, currency,
      stripe_session_id)
    values (p_card_id, p_amount_cents, p_bonus_cents, p_metadata ->> 'package_code', 'stripe', 'pending', v_currency,
      p_session_id)
    returning * into v_recharge;
  end if;
  -- The payment is real: it is credited even if the card filled up or was blocked meanwhile.
  v_legs := array[(ledger.system_account_id('stripe_clearing', 'stripe', p_card_id), v_card.account_id,
    p_amount_cents)::ledger.transfer_leg];
  if p_bonus_cents > 0 then
    v_legs := v_legs || (ledger.system_account_id('promotions', 'festival', p_card_id), v_card.account_id,
      p_bonus_cents)::ledger.transfer_leg;
  end if;
  perform ledger.post_transfers(v_operation_id, v_legs);
  update festival.recharges
  set status = 'completed', operation_id = v_operation_id, stripe_payment_intent_id = p_payment_intent_id,
    completed_at = now(), failure_reason = null
  where id = v_recharge.id;
  update festival.unmatched_payments set resolved_at = now() where stripe_session_id = p_session_id and resolved_at is null;

  v_result := jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'credited',
    'recharge_id', v_recharge.id,
    'transaction_id', v_operation_id,
    'card_id', p_card_id,
    'amount_cents', p_amount_cents,
    'bonus_cents', p_bonus_cents,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents + p_amount_cents + p_bonus_cents);

  -- A refund or a dispute that arrived before this credit is applied now.
  if p_payment_intent_id is not null then
    delete from festival.stripe_refunds_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_refund;
    if v_pending_refund.stripe_payment_intent_id is not null then
      v_result := v_result || jsonb_build_object('refund',
        festival.apply_stripe_refund_total(v_recharge.id, v_pending_refund.amount_refunded_cents,
          v_pending_refund.last_event_id, null));
    end if;
    delete from festival.stripe_disputes_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_dispute;
    if v_pending_dispute.stripe_payment_intent_id is not null then
      perform festival.block_card_for_dispute(p_card_id, v_recharge.id, v_pending_dispute.stripe_dispute_id,
        v_pending_dispute.amount_cents, null);
      v_result := v_result || jsonb_build_object('card_blocked_for_dispute', v_pending_dispute.stripe_dispute_id);
    end if;
  end if;
  return v_result;
end;
$$;

/**
 * Credits a paid Checkout Session to its card (money from Stripe clearing, the bonus from
 * promotions). Exactly once per session and once per event id, whatever order, repetition or
 * concurrency the events arrive with. A card that does not exist is an unmatched payment: recorded,
 * alerted and answered `unmatched_payment` without remembering the event, so Stripe's retry
 * applies it once the card is registered.
 */
create function public.sp_process_stripe_recharge(
  card_id text,
  amount_cents bigint,
  currency text,
  stripe_session_id text,
  stripe_event_id text,
  stripe_payment_intent_id text,
  bonus_cents bigint,
  metadata jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform festival.require_card_id(sp_process_stripe_recharge.card_id);
  perform ledger.require(sp_process_stripe_recharge.amount_cents > 0, 'amount_cents', 'must be a positive integer');
  perform ledger.require(sp_process_stripe_recharge.bonus_cents >= 0, 'bonus_cents', 'must be zero or more');
  perform ledger.require(sp_process_stripe_recharge.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  perform ledger.require(length(sp_process_stripe_recharge.stripe_session_id) between 1 and 255, 'stripe_session_id',
    'must be 1 to 255 characters');
  v_result := festival.stripe_event_replay(sp_process_stripe_recharge.stripe_event_id);
  if v_result is null then
    v_result := festival.credit_stripe_session(sp_process_stripe_recharge.card_id, sp_process_stripe_recharge.amount_cents,
      sp_process_stripe_recharge.currency, sp_process_stripe_recharge.stripe_session_id,
      sp_process_stripe_recharge.stripe_event_id, sp_process_stripe_recharge.stripe_payment_intent_id,
      sp_process_stripe_recharge.bonus_cents, sp_process_stripe_recharge.metadata);
    -- An unmatched payment must stay retryable: its event is not remembered.
    if v_result #>> '{error,code}' is distinct from 'unmatched_payment' then
      perform festival.stripe_event_done(sp_process_stripe_recharge.stripe_event_id, 'checkout.session.paid', v_result);
    end if;
  end if;
  perform festival.log_card_attempt('stripe_recharge', v_result, sp_process_stripe_recharge.stripe_event_id, null,
    sp_process_stripe_recharge.card_id, jsonb_build_object('stripe_session_id', sp_process_stripe_recharge.stripe_session_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_stripe_recharge(text, bigint, text, text, text, text, bigint, jsonb)
  from public, anon, authenticated;
grant execute on function public.sp_process_stripe_recharge(text, bigint, text, text, text, text, bigint, jsonb)
  to service_role;

/** checkout.session.async_payment_failed: the pending recharge is marked failed; nothing moves. */
create function public.sp_fail_stripe_recharge(stripe_session_id text, stripe_event_id text, reason text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_recharge festival.recharges;
begin
  perform ledger.require(length(sp_fail_stripe_recharge.stripe_session_id) between 1 and 255, 'stripe_session_id',
    'must be 1 to 255 characters');
  v_result := festival.stripe_event_replay(sp_fail_stripe_recharge.stripe_event_id);
  if v_result is null then
    select * into v_recharge from festival.recharges r where r.stripe_session_id = sp_fail_stripe_recharge.stripe_session_id
    for update;
    if not found then
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'unknown_session');
    elsif v_recharge.status = 'completed' then
      -- A later success already credited it: a failure cannot undo a payment.
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'already_credited', 'recharge_id', v_recharge.id);
    else
      update festival.recharges
      set status = 'failed', failure_reason = coalesce(sp_fail_stripe_recharge.reason, 'async_payment_failed')
      where id = v_recharge.id;
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'marked_failed', 'recharge_id', v_recharge.id,
        'card_id', v_recharge.card_id);
    end if;
    perform festival.stripe_event_done(sp_fail_stripe_recharge.stripe_event_id, 'checkout.session.async_payment_failed',
      v_result);
  end if;
  perform ops.log_attempt('stripe_payment_failed', v_result, sp_fail_stripe_recharge.stripe_event_id, null,
    v_recharge.card_id, p_details => jsonb_build_object('stripe_session_id', sp_fail_stripe_recharge.stripe_session_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_fail_stripe_recharge(text, text, text) from public, anon, authenticated;
grant execute on function public.sp_fail_stripe_recharge(text, text, text) to service_role;

/**
 * Applies a refund to the credited payment behind a payment intent and returns the result, or
 * null when no credited payment has this intent (yet). Products that take payments replace it to
 * look at their own payments too (the credits migration does).
 */
create function festival.refund_credited_payment(
  p_payment_intent_id text, p_refunded_total_cents bigint, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recharge_id bigint;
begin
  select id into v_recharge_id from festival.recharges
  where stripe_payment_intent_id = p_payment_intent_id and status = 'completed';
  if v_recharge_id is null then
    return null;
  end if;
  return festival.apply_stripe_refund_total(v_recharge_id, p_refunded_total_cents, p_event_id, p_charge_id);
end;
$$;

/**
 * charge.refunded: `amount_refunded_cents` is Stripe's running total for the payment; only the part
 * not reversed yet moves. Before the session is credited the total is parked and applied with the
 * credit.
 */
create function public.sp_process_stripe_refund(
  stripe_payment_intent_id text,
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
  v_result jsonb;
  v_recharge festival.recharges;
begin
  perform ledger.require(length(sp_process_stripe_refund.stripe_payment_intent_id) between 1 and 255,
    'stripe_payment_intent_id', 'must be 1 to 255 characters');
  perform ledger.require(sp_process_stripe_refund.amount_refunded_cents > 0, 'amount_refunded_cents', 'must be positive');
  v_result := festival.stripe_event_replay(sp_process_stripe_refund.stripe_event_id);
  if v_result is null then
    -- Serialize with the credit of the same payment: both lock this key first.
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || sp_process_stripe_refund.stripe_payment_intent_id, 20261122));
    select * into v_recharge from festival.recharges r
    where r.stripe_payment_intent_id = sp_process_stripe_refund.stripe_payment_intent_id;
    if upper(sp_process_stripe_refund.currency) <> (select s.currency from festival.settings s) then
      perform ops.raise_alert('payment_mismatch', 'critical', v_recharge.card_id, sp_process_stripe_refund.stripe_charge_id,
        jsonb_build_object('refund_currency', upper(sp_process_stripe_refund.currency)));
      v_result := ledger.error_result('payment_mismatch', 'refund in another currency', '{}'::jsonb);
    else
      v_result := festival.refund_credited_payment(sp_process_stripe_refund.stripe_payment_intent_id,
        sp_process_stripe_refund.amount_refunded_cents, sp_process_stripe_refund.stripe_event_id,
        sp_process_stripe_refund.stripe_charge_id);
    end if;
    if v_result is null then
      insert into festival.stripe_refunds_pending (stripe_payment_intent_id, amount_refunded_cents, currency, last_event_id)
      values (sp_process_stripe_refund.stripe_payment_intent_id, sp_process_stripe_refund.amount_refunded_cents,
        upper(sp_process_stripe_refund.currency), sp_process_stripe_refund.stripe_event_id)
      on conflict on constraint stripe_refunds_pending_pkey do update
        set amount_refunded_cents = greatest(festival.stripe_refunds_pending.amount_refunded_cents, excluded.amount_refunded_cents),
          last_event_id = excluded.last_event_id, updated_at = now();
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_parked_until_credit',
        'stripe_payment_intent_id', sp_process_stripe_refund.stripe_payment_intent_id);
    end if;
    perform festival.stripe_event_done(sp_process_stripe_refund.stripe_event_id, 'charge.refunded', v_result);
  end if;
  perform ops.log_attempt('stripe_refund', v_result, sp_process_stripe_refund.stripe_event_id, null, v_recharge.card_id,
    p_amount_cents => (v_result ->> 'refund_cents')::bigint,
    p_details => jsonb_build_object('stripe_payment_intent_id', sp_process_stripe_refund.stripe_payment_intent_id,
      'user_id', v_result ->> 'user_id'));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_stripe_refund(text, text, bigint, text, text) from public, anon, authenticated;
grant execute on function public.sp_process_stripe_refund(text, text, bigint, text, text) to service_role;

create function festival.block_card_for_dispute(
  p_card_id text, p_recharge_id bigint, p_dispute_id text, p_amount_cents bigint, p_charge_id text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  -- Same lock as sales: once this commits, the card sells nothing more.
  perform festival.lock_card(p_card_id);
  update festival.cards
  set status = 'blocked', blocked_reason = 'stripe dispute ' || p_dispute_id, updated_at = now()
  where id = p_card_id;
  perform ops.raise_alert('dispute', 'critical', p_card_id, p_dispute_id,
    jsonb_build_object('recharge_id', p_recharge_id, 'amount_cents', p_amount_cents, 'stripe_charge_id', p_charge_id));
end;
$$;

/**
 * charge.dispute.created: the card of the disputed payment is blocked and an operator alerted. A
 * dispute that arrives before its payment is credited is parked and applied with the credit.
 */
create function public.sp_process_stripe_dispute(
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
  v_result jsonb;
  v_recharge festival.recharges;
begin
  perform ledger.require(length(sp_process_stripe_dispute.stripe_dispute_id) between 1 and 255, 'stripe_dispute_id',
    'must be 1 to 255 characters');
  perform ledger.require(length(sp_process_stripe_dispute.stripe_payment_intent_id) between 1 and 255,
    'stripe_payment_intent_id', 'must be 1 to 255 characters');
  v_result := festival.stripe_event_replay(sp_process_stripe_dispute.stripe_event_id);
  if v_result is null then
    -- Serialized with the credit of the same payment (same key as credits and refunds).
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || sp_process_stripe_dispute.stripe_payment_intent_id, 20261122));
    select * into v_recharge from festival.recharges r
    where r.stripe_payment_intent_id = sp_process_stripe_dispute.stripe_payment_intent_id and r.status = 'completed';
    if v_recharge.id is null then
      insert into festival.stripe_disputes_pending (stripe_payment_intent_id, stripe_dispute_id, amount_cents, last_event_id)
      values (sp_process_stripe_dispute.stripe_payment_intent_id, sp_process_stripe_dispute.stripe_dispute_id,
        coalesce(sp_process_stripe_dispute.amount_cents, 0), sp_process_stripe_dispute.stripe_event_id)
      on conflict on constraint stripe_disputes_pending_pkey do nothing;
      perform ops.raise_alert('dispute', 'critical', null, sp_process_stripe_dispute.stripe_dispute_id,
        jsonb_build_object('stripe_payment_intent_id', sp_process_stripe_dispute.stripe_payment_intent_id,
          'amount_cents', sp_process_stripe_dispute.amount_cents,
          'note', 'no credited recharge for this payment yet; the card is blocked when it is credited'));
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_unmatched');
    else
      perform festival.block_card_for_dispute(v_recharge.card_id, v_recharge.id, sp_process_stripe_dispute.stripe_dispute_id,
        sp_process_stripe_dispute.amount_cents, sp_process_stripe_dispute.stripe_charge_id);
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'card_blocked_for_dispute',
        'card_id', v_recharge.card_id, 'recharge_id', v_recharge.id);
    end if;
    perform festival.stripe_event_done(sp_process_stripe_dispute.stripe_event_id, 'charge.dispute.created', v_result);
  end if;
  perform ops.log_attempt('stripe_dispute', v_result, sp_process_stripe_dispute.stripe_event_id, null, v_recharge.card_id,
    p_details => jsonb_build_object('stripe_dispute_id', sp_process_stripe_dispute.stripe_dispute_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_stripe_dispute(text, text, text, bigint, text) from public, anon, authenticated;
grant execute on function public.sp_process_stripe_dispute(text, text, text, bigint, text) to service_role;
