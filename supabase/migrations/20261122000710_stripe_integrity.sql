-- Stripe integrity for festival cards.
--
-- 1. A dispute no longer blocks the card: a stranger could top up someone's card with 5 EUR,
--    dispute it and freeze everything on it. A dispute now moves only the disputed money (and the
--    bonus that came with it, in proportion) from the card into a hold account of its own; what the
--    card no longer has is booked as a receivable. charge.dispute.closed releases the hold to the
--    card (won) or pays it out to Stripe clearing (lost). A dispute that arrives before its payment
--    is credited, or a close that arrives before its dispute, is parked and applied in order.
-- 2. A refund that fails (charge.refund.updated, status failed) restores what it reversed, once
--    per refund, in any order: refunded totals and failures are timed and kept, and the card is
--    moved to what they say together (festival.refund_target_cents).
-- 3. A signed event our procedures refuse becomes an invalid_event alert before Stripe is answered.
-- 4. Proportions (the bonus share of a refund or dispute) are computed in numeric: a bigint
--    product of two large amounts would overflow.
-- 5. Pending online top-ups count toward the card maximum until their session expires (30
--    minutes), and so do open dispute holds: a won dispute gives its hold back to the card, which
--    must then still fit under the maximum.

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------

-- A dispute hold is a customer-kind account: locked by every operation that moves it, never
-- below zero (the CHECK on ledger.accounts), its balance proven by ledger_reconcile like a card's.
alter table ledger.accounts drop constraint accounts_kind_check;
alter table ledger.accounts add constraint accounts_kind_check
  check (kind in ('card', 'user_credit', 'escrow_hold', 'system', 'dispute_hold'));

alter table ops.alerts drop constraint alerts_kind_check;
alter table ops.alerts add constraint alerts_kind_check check (kind in (
  'refund_receivable', 'dispute', 'payment_mismatch', 'unmatched_payment', 'unmatched_refund', 'plan_not_found',
  'invalid_event', 'dispute_receivable', 'refund_failed'));

-- A receivable of a dispute that was won is cancelled: the holder owes nothing after all.
alter table festival.receivables drop constraint receivables_status_check;
alter table festival.receivables add constraint receivables_status_check
  check (status in ('open', 'settled', 'written_off', 'cancelled'));
alter table festival.receivables
  add column stripe_dispute_id text,
  add column closed_operation_id bigint references ledger.operations (id);

-- When an online top-up's Checkout Session expires: until then it counts toward the card maximum.
alter table festival.recharges add column expires_at timestamptz;
-- Sessions created before this migration expire after Stripe's default of 24 hours.
update festival.recharges set expires_at = created_at + interval '24 hours'
where payment_method = 'stripe' and status = 'pending';
create index recharges_pending_online on festival.recharges (card_id) where status = 'pending';

/**
 * One row per card dispute, kept for good. The hold account holds amount + bonus while the
 * dispute is open (from_card_cents from the card, receivable_cents from receivables) and nothing
 * once it is closed.
 */
create table festival.card_disputes (
  stripe_dispute_id text primary key check (length(stripe_dispute_id) between 1 and 255),
  stripe_payment_intent_id text not null,
  stripe_charge_id text,
  recharge_id bigint not null references festival.recharges (id),
  card_id text not null references festival.cards (id),
  hold_account_id bigint not null unique references ledger.accounts (id),
  -- What Stripe says is disputed; amount_cents is the part of it this recharge can answer for.
  disputed_cents bigint not null check (disputed_cents >= 0),
  amount_cents bigint not null check (amount_cents >= 0),
  bonus_cents bigint not null check (bonus_cents >= 0),
  from_card_cents bigint not null check (from_card_cents >= 0),
  receivable_cents bigint not null check (receivable_cents >= 0),
  receivable_id bigint references festival.receivables (id),
  status text not null default 'open' check (status in ('open', 'won', 'lost')),
  stripe_status text,
  open_operation_id bigint not null references ledger.operations (id),
  close_operation_id bigint references ledger.operations (id),
  opened_at timestamptz not null default now(),
  closed_at timestamptz,
  constraint hold_is_card_plus_receivable check (from_card_cents + receivable_cents = amount_cents + bonus_cents),
  constraint closed_has_operation check ((status = 'open') = (close_operation_id is null))
);
create index card_disputes_open on festival.card_disputes (card_id) where status = 'open';
alter table festival.card_disputes enable row level security;
create trigger card_disputes_never_deleted before delete on festival.card_disputes
  for each row execute function ledger.refuse_history_change();
create trigger card_disputes_no_truncate before truncate on festival.card_disputes
  for each statement execute function ledger.refuse_history_change();

-- A close (charge.dispute.closed) that arrives before its payment is credited waits with the dispute.
alter table festival.stripe_disputes_pending
  add column stripe_charge_id text,
  add column closed_status text check (closed_status in ('won', 'lost')),
  add column closed_stripe_status text,
  add column closed_event_id text;

/**
 * Every refunded total Stripe reported for a payment (charge.refunded's running amount_refunded)
 * with the time it was taken (the event's creation time). Kept for good: with the failed refunds
 * they say what the refunds must have reversed, whatever order the events arrive in.
 */
create table festival.stripe_refund_totals (
  stripe_event_id text primary key check (length(stripe_event_id) between 1 and 255),
  stripe_payment_intent_id text not null,
  total_cents bigint not null check (total_cents > 0),
  taken_at timestamptz not null,
  recorded_at timestamptz not null default now()
);
create index stripe_refund_totals_intent on festival.stripe_refund_totals (stripe_payment_intent_id);
alter table festival.stripe_refund_totals enable row level security;
create trigger stripe_refund_totals_append_only before update or delete on festival.stripe_refund_totals
  for each row execute function ledger.refuse_history_change();
create trigger stripe_refund_totals_no_truncate before truncate on festival.stripe_refund_totals
  for each statement execute function ledger.refuse_history_change();
-- What was reversed before this migration stands as a total taken now (failures of those refunds
-- come later), and totals parked before their credit keep their time.
insert into festival.stripe_refund_totals (stripe_event_id, stripe_payment_intent_id, total_cents, taken_at)
select 'before-migration:recharge:' || id, stripe_payment_intent_id, refunded_cents, now()
from festival.recharges where refunded_cents > 0 and stripe_payment_intent_id is not null;
insert into festival.stripe_refund_totals (stripe_event_id, stripe_payment_intent_id, total_cents, taken_at)
select 'before-migration:parked:' || stripe_payment_intent_id, stripe_payment_intent_id, amount_refunded_cents, updated_at
from festival.stripe_refunds_pending;

/**
 * Every failed refund, once per Stripe refund id (several events can report the same failure).
 * A refunded total taken after the refund was created and before it failed still contains it.
 */
create table festival.stripe_refund_failures (
  stripe_refund_id text primary key check (length(stripe_refund_id) between 1 and 255),
  stripe_payment_intent_id text not null,
  stripe_charge_id text,
  amount_cents bigint not null check (amount_cents > 0),
  refund_created_at timestamptz not null,
  failed_at timestamptz not null,
  event_id text not null,
  recorded_at timestamptz not null default now()
);
create index stripe_refund_failures_intent on festival.stripe_refund_failures (stripe_payment_intent_id);
alter table festival.stripe_refund_failures enable row level security;
create trigger stripe_refund_failures_never_deleted before delete on festival.stripe_refund_failures
  for each row execute function ledger.refuse_history_change();
create trigger stripe_refund_failures_no_truncate before truncate on festival.stripe_refund_failures
  for each statement execute function ledger.refuse_history_change();

-- ---------------------------------------------------------------------------------------------
-- Proportions
-- ---------------------------------------------------------------------------------------------

/**
 * The bonus share of `p_part_cents` of a payment of `p_amount_cents` with `p_bonus_cents` bonus:
 * all of it for the whole payment, otherwise in proportion, rounded down. In numeric: the product
 * of two amounts overflows bigint long before either amount does.
 */
create function festival.bonus_share(p_bonus_cents bigint, p_part_cents bigint, p_amount_cents bigint) returns bigint
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_part_cents >= p_amount_cents then
    return p_bonus_cents;
  end if;
  if p_part_cents <= 0 then
    return 0;
  end if;
  return floor(p_bonus_cents::numeric * p_part_cents::numeric / p_amount_cents::numeric)::bigint;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- The card maximum counts pending online top-ups and open dispute holds
-- ---------------------------------------------------------------------------------------------

/**
 * Money on its way to the card that is not in its balance yet: online top-ups whose session has
 * not expired (paid ones are credited even above the maximum, so they must be counted before),
 * and what open disputes took from the card (a won dispute gives it back).
 */
create function festival.card_committed_cents(p_card_id text) returns numeric
language plpgsql stable
set search_path = ''
as $$
begin
  return coalesce((
    select sum(r.amount_cents::numeric + r.bonus_cents)
    from festival.recharges r
    where r.card_id = p_card_id and r.status = 'pending' and r.payment_method = 'stripe' and r.expires_at > now()), 0)
    + coalesce((
    select sum(d.from_card_cents::numeric)
    from festival.card_disputes d
    where d.card_id = p_card_id and d.status = 'open'), 0);
end;
$$;

/** recharge_limit_error on the balance plus what is committed to the card (see card_committed_cents). */
create function festival.card_recharge_limit_error(
  p_card_id text, p_amount_cents bigint, p_balance_cents bigint, p_bonus_cents bigint)
returns jsonb
language plpgsql stable
set search_path = ''
as $$
declare
  v_committed numeric := festival.card_committed_cents(p_card_id);
  v_maximum bigint := (select card_balance_max_cents from festival.settings);
  v_error jsonb := festival.recharge_limit_error(p_amount_cents, p_balance_cents, p_bonus_cents);
begin
  if v_error is not null then
    return v_error;
  end if;
  if p_balance_cents::numeric + v_committed + p_amount_cents + p_bonus_cents > v_maximum then
    return ledger.error_result('limit_exceeded',
      'the card would hold more than the maximum balance with its pending top-ups and dispute holds',
      jsonb_build_object('amount_cents', p_amount_cents, 'bonus_cents', p_bonus_cents, 'balance_cents', p_balance_cents,
        'committed_cents', v_committed, 'card_balance_max_cents', v_maximum));
  end if;
  return null;
end;
$$;

/** Minutes an online top-up's Checkout Session stays open (Stripe's minimum is 30). */
create function festival.online_session_lifetime() returns interval
language sql immutable
set search_path = ''
-- 30 minutes, plus one so that the expiry Stripe receives is still 30 minutes away by its own
-- clock when the request arrives (Stripe refuses anything shorter).
as $$ select interval '31 minutes' $$;

create or replace function festival.pending_recharge_response(p_recharge festival.recharges) returns jsonb
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
    'checkout_url', p_recharge.checkout_url,
    'expires_at', p_recharge.expires_at)
$$;

-- The two recharge paths with the card maximum on balance plus committed money (the rest as before).

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
  v_limit_error := festival.card_recharge_limit_error(p_card_id, v_amount_cents, v_card.balance_cents, v_bonus_cents);
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
  -- Business failures are recorded outcomes too, under the ordinary idempotency keys.
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
      -- The card is locked: two checkouts of one card cannot both see room for themselves.
      v_error := festival.card_recharge_limit_error(sp_prepare_online_recharge.card_id, v_amount_cents,
        v_card.balance_cents, v_bonus_cents);
      v_result := v_error;
    end if;
  end if;
  if v_result is null then
    insert into festival.recharges (
      card_id, amount_cents, bonus_cents, package_code, payment_method, client_request_id, status, currency,
      request_fingerprint, expires_at)
    values (
      sp_prepare_online_recharge.card_id, v_amount_cents, v_bonus_cents, sp_prepare_online_recharge.package_code,
      'stripe', sp_prepare_online_recharge.client_request_id, 'pending',
      (select currency from festival.settings), v_fingerprint,
      -- Whole seconds: Stripe's expires_at is a Unix time, and a retry must send the same value.
      date_trunc('second', now() + festival.online_session_lifetime()))
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

-- ---------------------------------------------------------------------------------------------
-- Refunds: proportions in numeric; failed refunds
-- ---------------------------------------------------------------------------------------------

/**
 * What the refunds of a completed online recharge must have reversed. Each refunded total Stripe
 * reported, less the refunds that failed after it was taken (Stripe's total stops counting a
 * refund once it fails; a total taken before the failure still counts it), is a lower bound of
 * what is refunded now: refunds only ever leave through a failure. The largest bound is the answer
 * once every event has arrived, in any order; an event still on its way can only make it larger
 * (a refund) or a known bound smaller (a failure), and the card follows. Never above the amount.
 */
create function festival.refund_target_cents(p_recharge festival.recharges) returns bigint
language plpgsql stable
set search_path = ''
as $$
declare
  v_target numeric;
begin
  select max(t.total_cents - coalesce((
      select sum(f.amount_cents) from festival.stripe_refund_failures f
      where f.stripe_payment_intent_id = t.stripe_payment_intent_id
        and f.refund_created_at <= t.taken_at and f.failed_at > t.taken_at), 0))
  into v_target
  from festival.stripe_refund_totals t
  where t.stripe_payment_intent_id = p_recharge.stripe_payment_intent_id;
  return greatest(least(coalesce(v_target, 0), p_recharge.amount_cents::numeric), 0)::bigint;
end;
$$;

/** Records one refunded total of a payment (once per event). */
create function festival.record_refund_total(p_event_id text, p_payment_intent_id text, p_total_cents bigint,
  p_taken_at timestamptz)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into festival.stripe_refund_totals (stripe_event_id, stripe_payment_intent_id, total_cents, taken_at)
  values (p_event_id, p_payment_intent_id, p_total_cents, p_taken_at)
  on conflict on constraint stripe_refund_totals_pkey do nothing;
end;
$$;

/**
 * Moves the card to what its refunds must have reversed (festival.refund_target_cents), from what
 * they have reversed so far (recharges.refunded_cents, with the bonus in proportion):
 *   more to reverse: the money to Stripe clearing and the bonus share to promotions, from the card
 *     as far as it goes, the rest owed (an open receivable and an alert);
 *   less (a refund failed): the money comes back from Stripe clearing and the bonus from
 *     promotions, first cancelling open refund receivables of the recharge, the rest to the card.
 */
create function festival.sync_stripe_refunds(p_recharge_id bigint, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recharge festival.recharges;
  v_card festival.locked_card;
  v_target_cents bigint;
  v_refund_cents bigint;
  v_bonus_cents bigint;
  v_from_card_refund bigint;
  v_from_card_bonus bigint;
  v_receivable_cents bigint;
  v_open_receivable_cents bigint;
  v_to_receivables bigint;
  v_money_to_receivables bigint;
  v_bonus_to_receivables bigint;
  v_operation_id bigint;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
  v_clearing bigint;
  v_promotions bigint;
  v_receivables bigint;
  v_receivable festival.receivables;
  v_left bigint;
begin
  select * into v_recharge from festival.recharges where id = p_recharge_id for update;
  v_target_cents := festival.refund_target_cents(v_recharge);
  v_refund_cents := v_target_cents - v_recharge.refunded_cents;
  if v_refund_cents = 0 then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_already_applied',
      'recharge_id', p_recharge_id, 'refunded_cents', v_recharge.refunded_cents);
  end if;
  -- Signed: negative when a failed refund gives back.
  v_bonus_cents := festival.bonus_share(v_recharge.bonus_cents, v_target_cents, v_recharge.amount_cents)
    - v_recharge.bonus_reversed_cents;
  v_card := festival.lock_card(v_recharge.card_id);
  v_clearing := ledger.system_account_id('stripe_clearing', 'stripe', v_recharge.card_id);
  v_promotions := ledger.system_account_id('promotions', 'festival', v_recharge.card_id);
  v_receivables := ledger.system_account_id('receivables', 'festival', v_recharge.card_id);

  if v_refund_cents > 0 then
    v_bonus_cents := greatest(v_bonus_cents, 0);
    v_from_card_refund := least(v_refund_cents, v_card.balance_cents);
    v_from_card_bonus := least(v_bonus_cents, v_card.balance_cents - v_from_card_refund);
    v_receivable_cents := (v_refund_cents - v_from_card_refund) + (v_bonus_cents - v_from_card_bonus);
    v_operation_id := ledger.create_operation('stripe_refund', p_event_id, null,
      jsonb_build_object('card_id', v_recharge.card_id, 'recharge_id', p_recharge_id, 'stripe_charge_id', p_charge_id));
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
    perform ledger.post_transfers(v_operation_id, v_legs);
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
  end if;

  -- A refund failed: give back -v_refund_cents of money and -v_bonus_cents of bonus.
  v_refund_cents := -v_refund_cents;
  v_bonus_cents := greatest(-v_bonus_cents, 0);
  select coalesce(sum(amount_cents), 0) into v_open_receivable_cents from festival.receivables
  where recharge_id = p_recharge_id and status = 'open' and reason = 'stripe_refund';
  v_to_receivables := least(v_refund_cents + v_bonus_cents, v_open_receivable_cents);
  v_money_to_receivables := least(v_refund_cents, v_to_receivables);
  v_bonus_to_receivables := v_to_receivables - v_money_to_receivables;
  v_operation_id := ledger.create_operation('stripe_refund_failed', p_event_id, null,
    jsonb_build_object('card_id', v_recharge.card_id, 'recharge_id', p_recharge_id, 'stripe_charge_id', p_charge_id));
  if v_money_to_receivables > 0 then
    v_legs := v_legs || (v_clearing, v_receivables, v_money_to_receivables)::ledger.transfer_leg;
  end if;
  if v_refund_cents > v_money_to_receivables then
    v_legs := v_legs || (v_clearing, v_card.account_id, v_refund_cents - v_money_to_receivables)::ledger.transfer_leg;
  end if;
  if v_bonus_to_receivables > 0 then
    v_legs := v_legs || (v_promotions, v_receivables, v_bonus_to_receivables)::ledger.transfer_leg;
  end if;
  if v_bonus_cents > v_bonus_to_receivables then
    v_legs := v_legs || (v_promotions, v_card.account_id, v_bonus_cents - v_bonus_to_receivables)::ledger.transfer_leg;
  end if;
  perform ledger.post_transfers(v_operation_id, v_legs);
  -- The cancelled receivables; a partly covered one is replaced by an open one for the rest.
  v_left := v_to_receivables;
  for v_receivable in
    select * from festival.receivables
    where recharge_id = p_recharge_id and status = 'open' and reason = 'stripe_refund' order by id
  loop
    exit when v_left <= 0;
    update festival.receivables set status = 'cancelled', closed_operation_id = v_operation_id where id = v_receivable.id;
    if v_receivable.amount_cents > v_left then
      insert into festival.receivables (card_id, recharge_id, amount_cents, reason, operation_id)
      values (v_recharge.card_id, p_recharge_id, v_receivable.amount_cents - v_left, 'stripe_refund', v_operation_id);
    end if;
    v_left := v_left - v_receivable.amount_cents;
  end loop;
  update festival.recharges
  set refunded_cents = refunded_cents - v_refund_cents, bonus_reversed_cents = bonus_reversed_cents - v_bonus_cents
  where id = p_recharge_id;
  perform ops.raise_alert('refund_failed', 'warning', v_recharge.card_id, p_charge_id,
    jsonb_build_object('recharge_id', p_recharge_id, 'restored_cents', v_refund_cents,
      'bonus_restored_cents', v_bonus_cents, 'receivable_cancelled_cents', v_to_receivables,
      'note', 'Stripe could not pay a refund out; the money is back in our Stripe balance and on the card'));
  return jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'refund_failure_restored',
    'transaction_id', v_operation_id,
    'recharge_id', p_recharge_id,
    'card_id', v_recharge.card_id,
    'restored_cents', v_refund_cents,
    'bonus_restored_cents', v_bonus_cents,
    'receivable_cancelled_cents', v_to_receivables,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents + (v_refund_cents + v_bonus_cents - v_to_receivables));
end;
$$;

/**
 * A refunded total (Stripe's running amount_refunded) for a completed online recharge: recorded
 * (sp_process_stripe_refund has recorded it already, with the time Stripe took it; a direct call
 * uses the clock), then the card is moved to match.
 */
create or replace function festival.apply_stripe_refund_total(
  p_recharge_id bigint, p_refunded_total_cents bigint, p_event_id text, p_charge_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  perform festival.record_refund_total(p_event_id,
    (select stripe_payment_intent_id from festival.recharges where id = p_recharge_id), p_refunded_total_cents,
    clock_timestamp());
  return festival.sync_stripe_refunds(p_recharge_id, p_event_id, p_charge_id);
end;
$$;

drop function public.sp_process_stripe_refund(text, text, bigint, text, text);

/**
 * charge.refunded: `amount_refunded_cents` is Stripe's running total for the payment, taken at
 * `stripe_event_created_at` (the event's creation time; the clock when null); only the part not
 * reversed yet moves, and a total older than one already seen moves nothing. Before the session
 * is credited the total is parked and applied with the credit.
 */
create function public.sp_process_stripe_refund(
  stripe_payment_intent_id text,
  stripe_charge_id text,
  amount_refunded_cents bigint,
  currency text,
  stripe_event_id text,
  stripe_event_created_at timestamptz default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_recharge festival.recharges;
  v_taken_at timestamptz := coalesce(sp_process_stripe_refund.stripe_event_created_at, clock_timestamp());
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
      -- Kept whoever's payment it is; a card recharge credited later counts it then.
      perform festival.record_refund_total(sp_process_stripe_refund.stripe_event_id,
        sp_process_stripe_refund.stripe_payment_intent_id, sp_process_stripe_refund.amount_refunded_cents, v_taken_at);
      v_result := festival.refund_credited_payment(sp_process_stripe_refund.stripe_payment_intent_id,
        sp_process_stripe_refund.amount_refunded_cents, sp_process_stripe_refund.stripe_event_id,
        sp_process_stripe_refund.stripe_charge_id);
    end if;
    if v_result is null then
      -- A card recharge credited later applies festival.stripe_refund_totals; the parked row also
      -- serves payments of other kinds (credit purchases read it when they are credited).
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
revoke execute on function public.sp_process_stripe_refund(text, text, bigint, text, text, timestamptz)
  from public, anon, authenticated;
grant execute on function public.sp_process_stripe_refund(text, text, bigint, text, text, timestamptz)
  to service_role, edge_functions;

/**
 * charge.refund.updated with status failed: Stripe could not pay a refund out, so the money is ours
 * again and the card gets back what that refund reversed. Once per refund id, in any order: the
 * failure is timed (`refund_created_at`, `stripe_event_created_at`; the clock when null), so a
 * refunded total taken before it still counts the refund and one taken after it does not (see
 * festival.refund_target_cents). Before the payment is credited it waits for the credit.
 */
create function public.sp_process_stripe_refund_failure(
  stripe_payment_intent_id text,
  stripe_charge_id text,
  stripe_refund_id text,
  amount_cents bigint,
  currency text,
  stripe_event_id text,
  refund_created_at timestamptz default null,
  stripe_event_created_at timestamptz default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
  v_recharge festival.recharges;
begin
  perform ledger.require(length(sp_process_stripe_refund_failure.stripe_payment_intent_id) between 1 and 255,
    'stripe_payment_intent_id', 'must be 1 to 255 characters');
  perform ledger.require(length(sp_process_stripe_refund_failure.stripe_refund_id) between 1 and 255,
    'stripe_refund_id', 'must be 1 to 255 characters');
  perform ledger.require(sp_process_stripe_refund_failure.amount_cents > 0, 'amount_cents', 'must be positive');
  perform ledger.require(sp_process_stripe_refund_failure.currency ~ '^[A-Za-z]{3}$', 'currency', 'must be a 3-letter code');
  v_result := festival.stripe_event_replay(sp_process_stripe_refund_failure.stripe_event_id);
  if v_result is null then
    -- Serialized with the credit, the refunds and the disputes of the same payment.
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || sp_process_stripe_refund_failure.stripe_payment_intent_id,
      20261122));
    select * into v_recharge from festival.recharges r
    where r.stripe_payment_intent_id = sp_process_stripe_refund_failure.stripe_payment_intent_id and r.status = 'completed';
    if upper(sp_process_stripe_refund_failure.currency) <> (select s.currency from festival.settings s) then
      perform ops.raise_alert('payment_mismatch', 'critical', v_recharge.card_id, sp_process_stripe_refund_failure.stripe_refund_id,
        jsonb_build_object('refund_currency', upper(sp_process_stripe_refund_failure.currency)));
      v_result := ledger.error_result('payment_mismatch', 'refund in another currency', '{}'::jsonb);
    elsif exists (select 1 from festival.stripe_refund_failures f
        where f.stripe_refund_id = sp_process_stripe_refund_failure.stripe_refund_id) then
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_failure_already_applied',
        'stripe_refund_id', sp_process_stripe_refund_failure.stripe_refund_id);
    else
      insert into festival.stripe_refund_failures (stripe_refund_id, stripe_payment_intent_id, stripe_charge_id, amount_cents,
        refund_created_at, failed_at, event_id)
      values (sp_process_stripe_refund_failure.stripe_refund_id, sp_process_stripe_refund_failure.stripe_payment_intent_id,
        sp_process_stripe_refund_failure.stripe_charge_id, sp_process_stripe_refund_failure.amount_cents,
        -- Without the refund's own time, any total seen before the failure is taken to contain it.
        coalesce(sp_process_stripe_refund_failure.refund_created_at, '-infinity'),
        coalesce(sp_process_stripe_refund_failure.stripe_event_created_at, clock_timestamp()),
        sp_process_stripe_refund_failure.stripe_event_id);
      if v_recharge.id is null then
        v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'refund_failure_parked_until_credit',
          'stripe_refund_id', sp_process_stripe_refund_failure.stripe_refund_id);
      else
        v_result := festival.sync_stripe_refunds(v_recharge.id, sp_process_stripe_refund_failure.stripe_event_id,
          sp_process_stripe_refund_failure.stripe_charge_id);
        if v_result ->> 'outcome' = 'refund_already_applied' then
          -- Nothing reversed contains this refund (yet): the totals that do will not count it.
          v_result := v_result || jsonb_build_object('outcome', 'refund_failure_recorded');
        end if;
      end if;
      v_result := v_result || jsonb_build_object('stripe_refund_id', sp_process_stripe_refund_failure.stripe_refund_id);
    end if;
    perform festival.stripe_event_done(sp_process_stripe_refund_failure.stripe_event_id, 'charge.refund.updated', v_result);
  end if;
  perform ops.log_attempt('stripe_refund_failed', v_result, sp_process_stripe_refund_failure.stripe_event_id, null,
    v_recharge.card_id, p_amount_cents => (v_result ->> 'restored_cents')::bigint,
    p_details => jsonb_build_object('stripe_refund_id', sp_process_stripe_refund_failure.stripe_refund_id));
  return v_result;
end;
$$;
revoke execute on function public.sp_process_stripe_refund_failure(text, text, text, bigint, text, text, timestamptz, timestamptz)
  from public, anon, authenticated;
grant execute on function public.sp_process_stripe_refund_failure(text, text, text, bigint, text, text, timestamptz, timestamptz)
  to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Disputes
-- ---------------------------------------------------------------------------------------------

/**
 * Opens the hold of a dispute on a credited recharge, once per dispute id. The hold takes the
 * disputed money (at most what the recharge has not refunded) and its bonus share: from the card
 * what it still has, the rest from receivables (owed by the holder, alerted). The card stays active.
 */
create function festival.open_card_dispute(
  p_recharge_id bigint, p_payment_intent_id text, p_charge_id text, p_dispute_id text, p_disputed_cents bigint,
  p_event_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_recharge festival.recharges;
  v_dispute festival.card_disputes;
  v_card festival.locked_card;
  v_amount_cents bigint;
  v_bonus_cents bigint;
  v_from_card bigint;
  v_receivable_cents bigint;
  v_hold_account bigint;
  v_operation_id bigint;
  v_receivable_id bigint;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
begin
  select * into v_dispute from festival.card_disputes where stripe_dispute_id = p_dispute_id for update;
  if found then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_already_recorded',
      'stripe_dispute_id', p_dispute_id, 'card_id', v_dispute.card_id, 'status', v_dispute.status);
  end if;
  select * into v_recharge from festival.recharges where id = p_recharge_id for update;
  v_amount_cents := greatest(least(coalesce(p_disputed_cents, 0), v_recharge.amount_cents - v_recharge.refunded_cents), 0);
  v_bonus_cents := greatest(least(festival.bonus_share(v_recharge.bonus_cents, v_amount_cents, v_recharge.amount_cents),
    v_recharge.bonus_cents - v_recharge.bonus_reversed_cents), 0);
  v_card := festival.lock_card(v_recharge.card_id);
  v_from_card := least(v_amount_cents + v_bonus_cents, v_card.balance_cents);
  v_receivable_cents := v_amount_cents + v_bonus_cents - v_from_card;

  v_operation_id := ledger.create_operation('stripe_dispute', p_event_id, null,
    jsonb_build_object('card_id', v_recharge.card_id, 'recharge_id', p_recharge_id, 'stripe_dispute_id', p_dispute_id));
  insert into ledger.accounts (kind, code) values ('dispute_hold', 'dispute_hold:' || p_dispute_id)
  returning id into v_hold_account;
  if v_from_card > 0 then
    v_legs := v_legs || (v_card.account_id, v_hold_account, v_from_card)::ledger.transfer_leg;
  end if;
  if v_receivable_cents > 0 then
    v_legs := v_legs || (ledger.system_account_id('receivables', 'festival', v_recharge.card_id), v_hold_account,
      v_receivable_cents)::ledger.transfer_leg;
  end if;
  if cardinality(v_legs) > 0 then
    perform ledger.post_transfers(v_operation_id, v_legs);
  end if;
  if v_receivable_cents > 0 then
    insert into festival.receivables (card_id, recharge_id, amount_cents, reason, operation_id, stripe_dispute_id)
    values (v_recharge.card_id, p_recharge_id, v_receivable_cents, 'stripe_dispute', v_operation_id, p_dispute_id)
    returning id into v_receivable_id;
    perform ops.raise_alert('dispute_receivable', 'warning', v_recharge.card_id, p_dispute_id,
      jsonb_build_object('recharge_id', p_recharge_id, 'receivable_cents', v_receivable_cents));
  end if;
  insert into festival.card_disputes (stripe_dispute_id, stripe_payment_intent_id, stripe_charge_id, recharge_id, card_id,
    hold_account_id, disputed_cents, amount_cents, bonus_cents, from_card_cents, receivable_cents, receivable_id,
    open_operation_id)
  values (p_dispute_id, p_payment_intent_id, p_charge_id, p_recharge_id, v_recharge.card_id, v_hold_account,
    greatest(coalesce(p_disputed_cents, 0), 0), v_amount_cents, v_bonus_cents, v_from_card, v_receivable_cents,
    v_receivable_id, v_operation_id);
  perform ops.raise_alert('dispute', 'critical', v_recharge.card_id, p_dispute_id,
    jsonb_build_object('recharge_id', p_recharge_id, 'disputed_cents', p_disputed_cents, 'held_cents',
      v_amount_cents + v_bonus_cents, 'receivable_cents', v_receivable_cents, 'stripe_charge_id', p_charge_id));
  return jsonb_build_object(
    'ok', true, 'replayed', false, 'outcome', 'dispute_hold_opened',
    'transaction_id', v_operation_id,
    'stripe_dispute_id', p_dispute_id,
    'card_id', v_recharge.card_id,
    'recharge_id', p_recharge_id,
    'held_cents', v_amount_cents + v_bonus_cents,
    'bonus_held_cents', v_bonus_cents,
    'from_card_cents', v_from_card,
    'receivable_cents', v_receivable_cents,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents - v_from_card);
end;
$$;

/**
 * Closes an open dispute once: won gives the card back what the hold took from it and cancels
 * the receivable; lost pays the money to Stripe clearing and the bonus back to promotions (what
 * the holder owes stays an open receivable). A release may take the card above its maximum:
 * that money was the holder's before the dispute; top-ups count open holds so it rarely does.
 */
create function festival.close_card_dispute(p_dispute_id text, p_outcome text, p_stripe_status text, p_event_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_dispute festival.card_disputes;
  v_card festival.locked_card;
  v_operation_id bigint;
  v_legs ledger.transfer_leg[] := array[]::ledger.transfer_leg[];
  v_receivables bigint;
begin
  select * into v_dispute from festival.card_disputes where stripe_dispute_id = p_dispute_id for update;
  if not found then
    -- Callers open the dispute first; reaching this is a bug, and nothing may move.
    raise exception 'dispute % is not recorded', p_dispute_id using errcode = 'no_data_found';
  end if;
  if v_dispute.status <> 'open' then
    return jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_already_closed',
      'stripe_dispute_id', p_dispute_id, 'card_id', v_dispute.card_id, 'status', v_dispute.status);
  end if;
  v_card := festival.lock_card(v_dispute.card_id);
  v_operation_id := ledger.create_operation('stripe_dispute_' || p_outcome, p_event_id, null,
    jsonb_build_object('card_id', v_dispute.card_id, 'recharge_id', v_dispute.recharge_id, 'stripe_dispute_id', p_dispute_id));
  v_receivables := ledger.system_account_id('receivables', 'festival', v_dispute.card_id);
  if p_outcome = 'won' then
    if v_dispute.from_card_cents > 0 then
      v_legs := v_legs || (v_dispute.hold_account_id, v_card.account_id, v_dispute.from_card_cents)::ledger.transfer_leg;
    end if;
    if v_dispute.receivable_cents > 0 then
      v_legs := v_legs || (v_dispute.hold_account_id, v_receivables, v_dispute.receivable_cents)::ledger.transfer_leg;
      update festival.receivables set status = 'cancelled', closed_operation_id = v_operation_id
      where id = v_dispute.receivable_id;
    end if;
  else
    if v_dispute.amount_cents > 0 then
      v_legs := v_legs || (v_dispute.hold_account_id, ledger.system_account_id('stripe_clearing', 'stripe', v_dispute.card_id),
        v_dispute.amount_cents)::ledger.transfer_leg;
    end if;
    if v_dispute.bonus_cents > 0 then
      v_legs := v_legs || (v_dispute.hold_account_id, ledger.system_account_id('promotions', 'festival', v_dispute.card_id),
        v_dispute.bonus_cents)::ledger.transfer_leg;
    end if;
  end if;
  if cardinality(v_legs) > 0 then
    perform ledger.post_transfers(v_operation_id, v_legs);
  end if;
  update festival.card_disputes
  set status = p_outcome, stripe_status = p_stripe_status, close_operation_id = v_operation_id, closed_at = now()
  where stripe_dispute_id = p_dispute_id;
  return jsonb_build_object(
    'ok', true, 'replayed', false,
    'outcome', case p_outcome when 'won' then 'dispute_won_released' else 'dispute_lost_written_off' end,
    'transaction_id', v_operation_id,
    'stripe_dispute_id', p_dispute_id,
    'card_id', v_dispute.card_id,
    'recharge_id', v_dispute.recharge_id,
    'released_to_card_cents', case p_outcome when 'won' then v_dispute.from_card_cents else 0 end,
    'receivable_cancelled_cents', case p_outcome when 'won' then v_dispute.receivable_cents else 0 end,
    'written_off_cents', case p_outcome when 'lost' then v_dispute.amount_cents + v_dispute.bonus_cents else 0 end,
    'previous_balance_cents', v_card.balance_cents,
    'new_balance_cents', v_card.balance_cents + case p_outcome when 'won' then v_dispute.from_card_cents else 0 end);
end;
$$;

/** Stripe's final dispute status to ours: lost, or won (the money stays: won, an inquiry closed, prevented). */
create function festival.dispute_outcome(p_stripe_status text) returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  perform ledger.require(p_stripe_status in ('won', 'lost', 'warning_closed', 'prevented'), 'status',
    'must be a closed dispute status: won, lost, warning_closed or prevented');
  return case p_stripe_status when 'lost' then 'lost' else 'won' end;
end;
$$;

/**
 * charge.dispute.created: the disputed money (with its bonus share) moves into a hold; the card
 * stays usable. A dispute that arrives before its payment is credited is parked and opened with
 * the credit.
 */
create or replace function public.sp_process_stripe_dispute(
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
  perform ledger.require(coalesce(sp_process_stripe_dispute.amount_cents >= 0, true), 'amount_cents', 'must be zero or more');
  v_result := festival.stripe_event_replay(sp_process_stripe_dispute.stripe_event_id);
  if v_result is null then
    -- Serialized with the credit of the same payment (same key as credits and refunds).
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || sp_process_stripe_dispute.stripe_payment_intent_id, 20261122));
    select * into v_recharge from festival.recharges r
    where r.stripe_payment_intent_id = sp_process_stripe_dispute.stripe_payment_intent_id and r.status = 'completed';
    if v_recharge.id is null then
      insert into festival.stripe_disputes_pending (stripe_payment_intent_id, stripe_dispute_id, amount_cents, last_event_id,
        stripe_charge_id)
      values (sp_process_stripe_dispute.stripe_payment_intent_id, sp_process_stripe_dispute.stripe_dispute_id,
        coalesce(sp_process_stripe_dispute.amount_cents, 0), sp_process_stripe_dispute.stripe_event_id,
        sp_process_stripe_dispute.stripe_charge_id)
      on conflict on constraint stripe_disputes_pending_pkey do nothing;
      perform ops.raise_alert('dispute', 'critical', null, sp_process_stripe_dispute.stripe_dispute_id,
        jsonb_build_object('stripe_payment_intent_id', sp_process_stripe_dispute.stripe_payment_intent_id,
          'amount_cents', sp_process_stripe_dispute.amount_cents,
          'note', 'no credited recharge for this payment yet; the disputed money is held when it is credited'));
      v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_unmatched');
    else
      v_result := festival.open_card_dispute(v_recharge.id, sp_process_stripe_dispute.stripe_payment_intent_id,
        sp_process_stripe_dispute.stripe_charge_id, sp_process_stripe_dispute.stripe_dispute_id,
        sp_process_stripe_dispute.amount_cents, sp_process_stripe_dispute.stripe_event_id);
    end if;
    perform festival.stripe_event_done(sp_process_stripe_dispute.stripe_event_id, 'charge.dispute.created', v_result);
  end if;
  perform ops.log_attempt('stripe_dispute', v_result, sp_process_stripe_dispute.stripe_event_id, null, v_recharge.card_id,
    p_amount_cents => (v_result ->> 'held_cents')::bigint,
    p_details => jsonb_build_object('stripe_dispute_id', sp_process_stripe_dispute.stripe_dispute_id));
  return v_result;
end;
$$;

/**
 * charge.dispute.closed: won (also an inquiry closed, a dispute prevented) releases the hold to the
 * card; lost writes it off to Stripe clearing. Once per dispute. A close that arrives before its
 * dispute is known opens the hold first (the payment is credited) or waits with it (it is not).
 */
create function public.sp_close_stripe_dispute(
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
  v_result jsonb;
  v_outcome text;
  v_recharge festival.recharges;
  v_opened jsonb;
begin
  perform ledger.require(length(sp_close_stripe_dispute.stripe_dispute_id) between 1 and 255, 'stripe_dispute_id',
    'must be 1 to 255 characters');
  perform ledger.require(length(sp_close_stripe_dispute.stripe_payment_intent_id) between 1 and 255,
    'stripe_payment_intent_id', 'must be 1 to 255 characters');
  perform ledger.require(coalesce(sp_close_stripe_dispute.amount_cents >= 0, true), 'amount_cents', 'must be zero or more');
  v_outcome := festival.dispute_outcome(sp_close_stripe_dispute.status);
  v_result := festival.stripe_event_replay(sp_close_stripe_dispute.stripe_event_id);
  if v_result is null then
    perform pg_advisory_xact_lock(hashtextextended('stripe-intent:' || sp_close_stripe_dispute.stripe_payment_intent_id, 20261122));
    if exists (select 1 from festival.card_disputes d where d.stripe_dispute_id = sp_close_stripe_dispute.stripe_dispute_id) then
      v_result := festival.close_card_dispute(sp_close_stripe_dispute.stripe_dispute_id, v_outcome,
        sp_close_stripe_dispute.status, sp_close_stripe_dispute.stripe_event_id);
    else
      select * into v_recharge from festival.recharges r
      where r.stripe_payment_intent_id = sp_close_stripe_dispute.stripe_payment_intent_id and r.status = 'completed';
      if v_recharge.id is not null then
        -- The created event is late: open the hold now so that the close has something to close.
        v_opened := festival.open_card_dispute(v_recharge.id, sp_close_stripe_dispute.stripe_payment_intent_id,
          sp_close_stripe_dispute.stripe_charge_id, sp_close_stripe_dispute.stripe_dispute_id,
          sp_close_stripe_dispute.amount_cents, sp_close_stripe_dispute.stripe_event_id);
        v_result := festival.close_card_dispute(sp_close_stripe_dispute.stripe_dispute_id, v_outcome,
          sp_close_stripe_dispute.status, sp_close_stripe_dispute.stripe_event_id) || jsonb_build_object('opened', v_opened);
      else
        insert into festival.stripe_disputes_pending (stripe_payment_intent_id, stripe_dispute_id, amount_cents, last_event_id,
          stripe_charge_id, closed_status, closed_stripe_status, closed_event_id)
        values (sp_close_stripe_dispute.stripe_payment_intent_id, sp_close_stripe_dispute.stripe_dispute_id,
          coalesce(sp_close_stripe_dispute.amount_cents, 0), sp_close_stripe_dispute.stripe_event_id,
          sp_close_stripe_dispute.stripe_charge_id, v_outcome, sp_close_stripe_dispute.status,
          sp_close_stripe_dispute.stripe_event_id)
        on conflict on constraint stripe_disputes_pending_pkey do update
          set closed_status = excluded.closed_status, closed_stripe_status = excluded.closed_stripe_status,
            closed_event_id = excluded.closed_event_id
          where festival.stripe_disputes_pending.stripe_dispute_id = excluded.stripe_dispute_id
            and festival.stripe_disputes_pending.closed_status is null;
        v_result := jsonb_build_object('ok', true, 'replayed', false, 'outcome', 'dispute_close_parked',
          'stripe_dispute_id', sp_close_stripe_dispute.stripe_dispute_id);
      end if;
    end if;
    perform festival.stripe_event_done(sp_close_stripe_dispute.stripe_event_id, 'charge.dispute.closed', v_result);
  end if;
  perform ops.log_attempt('stripe_dispute_closed', v_result, sp_close_stripe_dispute.stripe_event_id, null,
    v_result ->> 'card_id', p_details => jsonb_build_object('stripe_dispute_id', sp_close_stripe_dispute.stripe_dispute_id,
      'status', sp_close_stripe_dispute.status));
  return v_result;
end;
$$;
revoke execute on function public.sp_close_stripe_dispute(text, text, text, bigint, text, text) from public, anon, authenticated;
grant execute on function public.sp_close_stripe_dispute(text, text, text, bigint, text, text) to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Crediting a paid session: parked disputes and refund failures are applied with the credit
-- ---------------------------------------------------------------------------------------------

create or replace function festival.credit_stripe_session(
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
  v_dispute jsonb;
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

  -- Refunds (with their failures, which festival.refund_target_cents counts) and disputes that
  -- arrived before this credit are applied now: the refunds first, then the dispute (and its close).
  if p_payment_intent_id is not null then
    delete from festival.stripe_refunds_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_refund;
    -- The parked totals themselves are in festival.stripe_refund_totals already.
    if v_pending_refund.stripe_payment_intent_id is not null
        or exists (select 1 from festival.stripe_refund_failures where stripe_payment_intent_id = p_payment_intent_id) then
      v_result := v_result || jsonb_build_object('refund',
        festival.sync_stripe_refunds(v_recharge.id, coalesce(v_pending_refund.last_event_id, p_event_id), null));
    end if;
    delete from festival.stripe_disputes_pending where stripe_payment_intent_id = p_payment_intent_id
    returning * into v_pending_dispute;
    if v_pending_dispute.stripe_payment_intent_id is not null then
      v_dispute := festival.open_card_dispute(v_recharge.id, p_payment_intent_id, v_pending_dispute.stripe_charge_id,
        v_pending_dispute.stripe_dispute_id, v_pending_dispute.amount_cents, v_pending_dispute.last_event_id);
      if v_pending_dispute.closed_status is not null then
        v_dispute := v_dispute || jsonb_build_object('closed', festival.close_card_dispute(v_pending_dispute.stripe_dispute_id,
          v_pending_dispute.closed_status, v_pending_dispute.closed_stripe_status, v_pending_dispute.closed_event_id));
      end if;
      v_result := v_result || jsonb_build_object('dispute', v_dispute);
    end if;
  end if;
  return v_result;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Refused events
-- ---------------------------------------------------------------------------------------------

/**
 * A signed Stripe event whose data a procedure refused as invalid (SQLSTATE 22xxx): a retry can
 * never succeed, so the webhook answers 200, but only after this alert exists for a person to
 * look at. One alert per event id.
 */
create function public.sp_record_invalid_stripe_event(
  stripe_event_id text,
  event_type text,
  refused_by text,
  sqlstate text,
  message text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_alert_id bigint;
begin
  perform ledger.require(length(sp_record_invalid_stripe_event.stripe_event_id) between 1 and 255, 'stripe_event_id',
    'must be 1 to 255 characters');
  -- Deliveries of one event are serialized, so a concurrent resend cannot add a second alert.
  perform pg_advisory_xact_lock(hashtextextended('stripe-event:' || sp_record_invalid_stripe_event.stripe_event_id, 20261122));
  select id into v_alert_id from ops.alerts
  where kind = 'invalid_event' and stripe_object_id = sp_record_invalid_stripe_event.stripe_event_id;
  if v_alert_id is null then
    insert into ops.alerts (kind, severity, stripe_object_id, details)
    values ('invalid_event', 'critical', sp_record_invalid_stripe_event.stripe_event_id, jsonb_build_object(
      'event_type', left(sp_record_invalid_stripe_event.event_type, 255),
      'refused_by', left(sp_record_invalid_stripe_event.refused_by, 255),
      'sqlstate', left(sp_record_invalid_stripe_event.sqlstate, 5),
      'message', left(sp_record_invalid_stripe_event.message, 1000)))
    returning id into v_alert_id;
  end if;
  return jsonb_build_object('ok', true, 'replayed', false, 'alert_id', v_alert_id);
end;
$$;
revoke execute on function public.sp_record_invalid_stripe_event(text, text, text, text, text) from public, anon, authenticated;
grant execute on function public.sp_record_invalid_stripe_event(text, text, text, text, text) to service_role, edge_functions;
