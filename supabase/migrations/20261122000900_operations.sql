-- Operations, part 1: alerts an operator can work with (docs/architecture.md §1, `ops`).
--
-- Until now an alert was a row per occurrence with a CHECK list of kinds that every migration
-- dropped and re-added, and nobody could acknowledge one. Now:
-- - kinds are rows of `ops.alert_kinds` (what the alert means, what the operator does); adding a
--   kind is one insert, and the README's operations section lists the same rows;
-- - an alert is deduplicated by kind and subject: while one is not resolved, the same kind and
--   subject refresh it (count, last seen, latest details, severity only ever raised) instead of
--   adding a row. This holds for every writer, `ops.raise_alert` and direct inserts alike (a
--   trigger), and under concurrency (an advisory lock per kind and subject, then a unique index);
-- - an admin acknowledges an alert (with a note) and resolves it; both are idempotent calls.

-- ---------------------------------------------------------------------------------------------
-- Kinds
-- ---------------------------------------------------------------------------------------------

create table ops.alert_kinds (
  kind text primary key check (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
  default_severity text not null check (default_severity in ('info', 'warning', 'critical')),
  description text not null check (length(description) between 1 and 500),
  operator_action text not null check (length(operator_action) between 1 and 1000)
);
alter table ops.alert_kinds enable row level security;

-- One row per kind. Keep the README's operations section equal to these rows.
insert into ops.alert_kinds (kind, default_severity, description, operator_action) values
  ('refund_receivable', 'warning', 'A Stripe refund (or dispute) took more than the card or credit balance held; the rest is an open receivable.',
    'Contact the holder to settle the receivable, or write it off; then resolve the alert.'),
  ('dispute', 'critical', 'A payment was disputed; the disputed money is held (the card or credits stay usable) until Stripe closes the dispute.',
    'Answer the dispute in the Stripe dashboard with the top-up or purchase evidence; charge.dispute.closed releases or writes off the hold.'),
  ('dispute_receivable', 'warning', 'A dispute took more than the card still held of the disputed payment; the rest is an open receivable.',
    'Contact the holder to settle the receivable if the dispute is lost, or write it off; then resolve the alert.'),
  ('refund_failed', 'warning', 'A Stripe refund failed after it had been reversed here; what it reversed was restored.',
    'Check the refund in Stripe and refund again if the holder is still owed the money; then resolve the alert.'),
  ('invalid_event', 'critical', 'A correctly signed Stripe event was refused by the database as invalid; it was acknowledged so Stripe stops retrying, and nothing moved.',
    'Read the event in the Stripe dashboard and the alert details; apply it by hand with a new operation if it should have moved money.'),
  ('payment_mismatch', 'critical', 'Stripe reported an amount, currency or purchase that differs from the pending payment we created; nothing was credited.',
    'Compare the Stripe payment with the pending row; refund the payment in Stripe or credit it by hand, then resolve.'),
  ('unmatched_payment', 'critical', 'A paid Stripe session names a card or user that does not exist (yet); Stripe keeps retrying.',
    'Register the card (or find the user); the next retry credits it. Otherwise refund the payment in Stripe.'),
  ('unmatched_refund', 'warning', 'A refund arrived for a payment we never credited.',
    'Check the payment in Stripe; nothing to undo here if it was never credited.'),
  ('plan_not_found', 'critical', 'A subscription invoice names a plan that does not exist or is inactive; no credits were allocated.',
    'Create or reactivate the plan; Stripe retries the invoice event and the credits are allocated.'),
  ('high_failure_rate', 'warning', 'Many failed attempts for one function or one point of sale within the monitoring window.',
    'Look at the failed attempts (ops.app_transaction_log) of that function or bar: a broken terminal, a wrong price list, a card problem.'),
  ('excessive_nfc_scans', 'warning', 'One card was scanned more often than the threshold within an hour.',
    'Check the card at the bar: a stuck reader, a cloned card or a fraud attempt; block the card if needed.'),
  ('duplicate_tap_rate', 'warning', 'A bar refuses many orders as suspected duplicate taps.',
    'Check the bar''s terminal (double taps, slow network) and brief the staff about confirm_duplicate.'),
  ('silent_device', 'warning', 'A device that was active has sent nothing for longer than the threshold during opening hours.',
    'Call the point of sale: the terminal may be off, offline or out of battery (it buffers scans while offline).'),
  ('stale_pending_recharge', 'warning', 'An online top-up has been pending for longer than the threshold.',
    'Look the session up in Stripe: if it was paid, resend its webhook event; otherwise it expires by itself.'),
  ('open_receivables', 'info', 'Receivables are open: refunds or disputes took more than balances held.',
    'Work through the open receivables; settle or write them off.'),
  ('old_escrow_hold', 'warning', 'Credits have been held in escrow for longer than the threshold.',
    'Ask the client and provider of the order to pay out or unlock the hold.'),
  ('reconcile_discrepancy', 'critical', 'ledger_reconcile() found a discrepancy: balances, history or a business record do not tie out.',
    'Stop and investigate before any correction: run select * from ledger_reconcile(), find the operation, correct it with a new linked operation.'),
  ('webhook_failures', 'warning', 'Stripe webhook events failed within the monitoring window.',
    'Read the failed events (ops.app_transaction_log, edge_function stripe-webhook) and the webhook log in the Stripe dashboard.');

-- ---------------------------------------------------------------------------------------------
-- Alerts: a subject, a lifecycle, occurrences
-- ---------------------------------------------------------------------------------------------

alter table ops.alerts drop constraint alerts_kind_check;
alter table ops.alerts
  add constraint alerts_kind_fkey foreign key (kind) references ops.alert_kinds (kind),
  add column subject text,
  add column status text not null default 'open' check (status in ('open', 'acknowledged', 'resolved')),
  add column occurrence_count integer not null default 1 check (occurrence_count >= 1),
  add column first_seen_at timestamptz not null default now(),
  add column last_seen_at timestamptz not null default now(),
  add column escalated_at timestamptz,
  add column acknowledged_by uuid,
  add column acknowledgement_note text check (length(acknowledgement_note) <= 1000),
  add column resolved_at timestamptz,
  add column resolved_by uuid,
  add column resolution_note text check (length(resolution_note) <= 1000);
update ops.alerts
set subject = coalesce(stripe_object_id, card_id, user_id::text, kind),
  first_seen_at = created_at, last_seen_at = created_at,
  status = case when acknowledged_at is null then 'open' else 'acknowledged' end;
alter table ops.alerts alter column subject set not null,
  add constraint alerts_subject_length check (length(subject) between 1 and 255);
-- At most one unresolved alert per kind and subject: the dedupe below relies on it.
create unique index alerts_unresolved_subject on ops.alerts (kind, subject) where status <> 'resolved';
create index alerts_last_seen on ops.alerts (last_seen_at);

create function ops.severity_rank(p_severity text) returns integer
language sql immutable
set search_path = ''
as $$ select case p_severity when 'critical' then 3 when 'warning' then 2 else 1 end $$;

/**
 * Before every insert into ops.alerts: fills the subject (the caller's, else the Stripe object,
 * else the card, else the user) and, when an unresolved alert of the same kind and subject exists,
 * refreshes it and drops the insert. The advisory lock makes two writers of the same alert wait
 * for each other, so the second sees the first's row instead of failing on the unique index.
 */
create function ops.dedupe_alert() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_existing ops.alerts;
begin
  new.subject := left(coalesce(new.subject, new.stripe_object_id, new.card_id, new.user_id::text, new.kind), 255);
  new.severity := coalesce(new.severity,
    (select k.default_severity from ops.alert_kinds k where k.kind = new.kind), 'warning');
  perform pg_advisory_xact_lock(hashtextextended('alert:' || new.kind || ':' || new.subject, 20261122));
  select * into v_existing from ops.alerts a
  where a.kind = new.kind and a.subject = new.subject and a.status <> 'resolved'
  for update;
  if not found then
    new.status := 'open';
    new.first_seen_at := now();
    new.last_seen_at := now();
    new.occurrence_count := 1;
    return new;
  end if;
  update ops.alerts a
  set occurrence_count = a.occurrence_count + 1,
    last_seen_at = now(),
    details = coalesce(new.details, a.details),
    card_id = coalesce(a.card_id, new.card_id),
    user_id = coalesce(a.user_id, new.user_id),
    stripe_object_id = coalesce(a.stripe_object_id, new.stripe_object_id),
    severity = case when ops.severity_rank(new.severity) > ops.severity_rank(a.severity) then new.severity else a.severity end,
    escalated_at = case when ops.severity_rank(new.severity) > ops.severity_rank(a.severity) then now() else a.escalated_at end
  where a.id = v_existing.id;
  return null;
end;
$$;
create trigger alerts_dedupe before insert on ops.alerts for each row execute function ops.dedupe_alert();

/**
 * Raises (or refreshes) an alert and returns its id. `p_subject` names what it is about when that
 * is neither a card nor a Stripe object (a bar, a device, a reconcile check). A name of its own, not
 * an overload of ops.raise_alert: calls with untyped literals would be ambiguous between the two.
 */
create function ops.raise_subject_alert(
  p_kind text, p_severity text, p_subject text, p_details jsonb,
  p_card_id text default null, p_stripe_object_id text default null, p_user_id uuid default null)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_subject text := left(coalesce(p_subject, p_stripe_object_id, p_card_id, p_user_id::text, p_kind), 255);
begin
  insert into ops.alerts (kind, severity, subject, card_id, stripe_object_id, user_id, details)
  values (p_kind, p_severity, v_subject, p_card_id, p_stripe_object_id, p_user_id, coalesce(p_details, '{}'::jsonb));
  return (select a.id from ops.alerts a where a.kind = p_kind and a.subject = v_subject and a.status <> 'resolved');
end;
$$;

-- The signature the Stripe code (and other branches) call: same arguments, now deduplicated.
create or replace function ops.raise_alert(p_kind text, p_severity text, p_card_id text, p_stripe_object_id text, p_details jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform ops.raise_subject_alert(p_kind, p_severity, null, p_details, p_card_id, p_stripe_object_id, null);
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Admin: list, acknowledge, resolve
-- ---------------------------------------------------------------------------------------------

/** Null when the caller may operate alerts: an admin, or the service itself (no staff user). */
create function ops.operator_refusal(p_staff_user_id uuid) returns jsonb
language plpgsql stable
set search_path = ''
as $$
begin
  if p_staff_user_id is null and ledger.caller_scope() = 'service' then
    return null;
  end if;
  if p_staff_user_id is not null and festival.staff_role(p_staff_user_id) = 'admin' then
    return null;
  end if;
  return ledger.error_result('forbidden', 'only admins (or the service key) can operate alerts',
    jsonb_build_object('staff_user_id', p_staff_user_id));
end;
$$;

create function ops.alert_json(p_alert ops.alerts) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'id', p_alert.id, 'kind', p_alert.kind, 'severity', p_alert.severity, 'subject', p_alert.subject,
    'status', p_alert.status, 'count', p_alert.occurrence_count,
    'first_seen_at', p_alert.first_seen_at, 'last_seen_at', p_alert.last_seen_at, 'escalated_at', p_alert.escalated_at,
    'card_id', p_alert.card_id, 'user_id', p_alert.user_id, 'stripe_object_id', p_alert.stripe_object_id,
    'details', p_alert.details,
    'acknowledged_at', p_alert.acknowledged_at, 'acknowledged_by', p_alert.acknowledged_by,
    'acknowledgement_note', p_alert.acknowledgement_note,
    'resolved_at', p_alert.resolved_at, 'resolved_by', p_alert.resolved_by, 'resolution_note', p_alert.resolution_note,
    'description', (select k.description from ops.alert_kinds k where k.kind = p_alert.kind),
    'operator_action', (select k.operator_action from ops.alert_kinds k where k.kind = p_alert.kind))
$$;

/** Alerts, newest activity first; every filter optional. `status` 'unresolved' = open or acknowledged. */
create function public.sp_list_alerts(
  staff_user_id uuid default null, status text default null, severity text default null, kind text default null,
  subject text default null, alert_limit integer default 100)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_refusal jsonb := ops.operator_refusal(sp_list_alerts.staff_user_id);
begin
  perform ledger.require(sp_list_alerts.status is null or sp_list_alerts.status in ('open', 'acknowledged', 'resolved', 'unresolved'),
    'status', 'must be open, acknowledged, resolved or unresolved');
  perform ledger.require(sp_list_alerts.severity is null or sp_list_alerts.severity in ('info', 'warning', 'critical'),
    'severity', 'must be info, warning or critical');
  perform ledger.require(sp_list_alerts.alert_limit between 1 and 1000, 'alert_limit', 'must be 1 to 1000');
  if v_refusal is not null then
    return v_refusal;
  end if;
  return jsonb_build_object('ok', true, 'alerts', coalesce((
    select jsonb_agg(ops.alert_json(a) order by a.last_seen_at desc, a.id desc)
    from (
      select * from ops.alerts a
      where (sp_list_alerts.status is null or a.status = sp_list_alerts.status
          or (sp_list_alerts.status = 'unresolved' and a.status <> 'resolved'))
        and (sp_list_alerts.severity is null or a.severity = sp_list_alerts.severity)
        and (sp_list_alerts.kind is null or a.kind = sp_list_alerts.kind)
        and (sp_list_alerts.subject is null or a.subject = sp_list_alerts.subject)
      order by a.last_seen_at desc, a.id desc
      limit sp_list_alerts.alert_limit) a), '[]'::jsonb));
end;
$$;
revoke execute on function public.sp_list_alerts(uuid, text, text, text, text, integer) from public, anon, authenticated;
grant execute on function public.sp_list_alerts(uuid, text, text, text, text, integer) to service_role, edge_functions;

create function ops.execute_alert_transition(p_alert_id bigint, p_to text, p_staff_user_id uuid, p_note text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_refusal jsonb := ops.operator_refusal(p_staff_user_id);
  v_alert ops.alerts;
begin
  if v_refusal is not null then
    return v_refusal;
  end if;
  select * into v_alert from ops.alerts where id = p_alert_id for update;
  if not found then
    return ledger.error_result('alert_not_found', 'no alert with this id', jsonb_build_object('alert_id', p_alert_id));
  end if;
  if v_alert.status = 'resolved' then
    return ledger.error_result('alert_already_resolved', 'the alert is resolved; a new occurrence raises a new alert',
      jsonb_build_object('alert_id', p_alert_id, 'resolved_at', v_alert.resolved_at));
  end if;
  if p_to = 'acknowledged' and v_alert.status = 'acknowledged' then
    return ledger.error_result('alert_already_acknowledged', 'the alert is already acknowledged',
      jsonb_build_object('alert_id', p_alert_id, 'acknowledged_by', v_alert.acknowledged_by));
  end if;
  if p_to = 'acknowledged' then
    update ops.alerts set status = 'acknowledged', acknowledged_at = now(), acknowledged_by = p_staff_user_id,
      acknowledgement_note = p_note
    where id = p_alert_id returning * into v_alert;
  else
    update ops.alerts set status = 'resolved', resolved_at = now(), resolved_by = p_staff_user_id, resolution_note = p_note,
      acknowledged_at = coalesce(acknowledged_at, now()), acknowledged_by = coalesce(acknowledged_by, p_staff_user_id)
    where id = p_alert_id returning * into v_alert;
  end if;
  return jsonb_build_object('ok', true, 'replayed', false, 'alert', ops.alert_json(v_alert));
end;
$$;

create function ops.transition_alert(
  p_alert_id bigint, p_to text, p_staff_user_id uuid, p_note text, p_client_request_id text)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_operation text := case p_to when 'acknowledged' then 'acknowledge_alert' else 'resolve_alert' end;
  v_idempotency record;
  v_result jsonb;
begin
  perform ledger.require_client_request_id(p_client_request_id);
  perform ledger.require(p_alert_id is not null, 'alert_id', 'is required');
  perform ledger.require(p_note is null or length(p_note) between 1 and 1000, 'note', 'must be 1 to 1000 characters');
  select * into v_idempotency from ledger.idempotency_begin(p_client_request_id, v_operation,
    jsonb_build_object('alert_id', p_alert_id, 'staff_user_id', p_staff_user_id, 'note', p_note));
  if v_idempotency.outcome = 'new' then
    v_result := ops.execute_alert_transition(p_alert_id, p_to, p_staff_user_id, p_note);
    perform ledger.idempotency_finish(p_client_request_id, v_operation, v_idempotency.fingerprint, v_result);
  else
    v_result := v_idempotency.response;
  end if;
  perform ops.log_attempt(v_operation, v_result, p_client_request_id, p_staff_user_id,
    p_details => jsonb_build_object('alert_id', p_alert_id));
  return v_result;
end;
$$;

/** An admin says someone is on it (with a note); the alert still refreshes while unresolved. */
create function public.sp_acknowledge_alert(alert_id bigint, staff_user_id uuid, client_request_id text, note text default null)
returns jsonb
language sql
security definer
set search_path = ''
as $$ select ops.transition_alert(alert_id, 'acknowledged', staff_user_id, note, client_request_id) $$;
revoke execute on function public.sp_acknowledge_alert(bigint, uuid, text, text) from public, anon, authenticated;
grant execute on function public.sp_acknowledge_alert(bigint, uuid, text, text) to service_role, edge_functions;

/** An admin closes the alert; the same kind and subject later raise a new one. */
create function public.sp_resolve_alert(alert_id bigint, staff_user_id uuid, client_request_id text, note text default null)
returns jsonb
language sql
security definer
set search_path = ''
as $$ select ops.transition_alert(alert_id, 'resolved', staff_user_id, note, client_request_id) $$;
revoke execute on function public.sp_resolve_alert(bigint, uuid, text, text) from public, anon, authenticated;
grant execute on function public.sp_resolve_alert(bigint, uuid, text, text) to service_role, edge_functions;
