-- Operations, part 6: alert notifications (docs/architecture.md §1, `ops`). When an alert is
-- raised, or escalated to a higher severity, one notification is queued for that state (unique
-- per alert and state: refreshes never notify again). The alert-notifications function claims
-- due notifications, posts them to ALERT_WEBHOOK_URL (Slack-compatible JSON) and records each
-- delivery; a failed one is retried with exponential backoff, up to 8 attempts. Postgres cannot
-- make HTTP calls itself (no pg_net locally), so the queue lives here and the sender is a function.

create table ops.alert_notifications (
  id bigint generated always as identity primary key,
  alert_id bigint not null references ops.alerts (id),
  -- 'raised:<severity>' or 'escalated:<severity>': what the notification says about the alert.
  state text not null check (state ~ '^(raised|escalated):(info|warning|critical)$'),
  payload jsonb not null,
  status text not null default 'pending' check (status in ('pending', 'sending', 'delivered', 'failed', 'expired')),
  attempts integer not null default 0 check (attempts >= 0),
  next_attempt_at timestamptz not null default now(),
  lease_until timestamptz,
  last_error text check (length(last_error) <= 1000),
  last_http_status integer,
  delivered_at timestamptz,
  created_at timestamptz not null default now(),
  constraint alert_notifications_once_per_state unique (alert_id, state)
);
create index alert_notifications_due on ops.alert_notifications (next_attempt_at) where status in ('pending', 'sending');
alter table ops.alert_notifications enable row level security;

create function ops.notification_payload(p_alert ops.alerts, p_state text) returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'text', format('%s [%s] %s: %s (%s, seen %s times)%s',
      case p_alert.severity when 'critical' then ':rotating_light:' when 'warning' then ':warning:' else ':information_source:' end,
      p_alert.severity, p_alert.kind, p_alert.subject,
      case when p_state like 'escalated:%' then 'escalated' else 'new alert' end, p_alert.occurrence_count,
      coalesce(E'\n' || (select k.operator_action from ops.alert_kinds k where k.kind = p_alert.kind), '')),
    'alert', jsonb_build_object('id', p_alert.id, 'kind', p_alert.kind, 'severity', p_alert.severity,
      'subject', p_alert.subject, 'state', p_state, 'first_seen_at', p_alert.first_seen_at))
$$;

/** Queues a notification for a new alert, and for each severity an alert is escalated to. */
create function ops.queue_alert_notification() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_state text;
begin
  if tg_op = 'INSERT' then
    v_state := 'raised:' || new.severity;
  elsif new.status <> 'resolved' and ops.severity_rank(new.severity) > ops.severity_rank(old.severity) then
    v_state := 'escalated:' || new.severity;
  else
    return null;
  end if;
  insert into ops.alert_notifications (alert_id, state, payload)
  values (new.id, v_state, ops.notification_payload(new, v_state))
  on conflict on constraint alert_notifications_once_per_state do nothing;
  return null;
end;
$$;
create trigger alerts_notify after insert or update of severity on ops.alerts
  for each row execute function ops.queue_alert_notification();

/**
 * Claims up to `batch_size` due notifications for one sender: pending ones whose backoff is over,
 * and ones whose sender's lease ran out (it crashed mid-send). Concurrent senders skip each
 * other's rows. Notifications queued more than a day ago are expired instead of sent (a webhook
 * configured today should not replay yesterday's noise).
 */
create function public.sp_claim_alert_notifications(batch_size integer default 20)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_claimed jsonb;
begin
  perform ledger.require(sp_claim_alert_notifications.batch_size between 1 and 100, 'batch_size', 'must be 1 to 100');
  -- The function checks the service key too; a user's token never reaches the queue.
  if ledger.caller_scope() <> 'service' then
    return ledger.error_result('forbidden', 'alert notifications are sent by the service', '{}'::jsonb);
  end if;
  update ops.alert_notifications set status = 'expired', lease_until = null
  where status in ('pending', 'sending') and created_at < now() - interval '1 day';
  with due as (
    select n.id from ops.alert_notifications n
    where (n.status = 'pending' and n.next_attempt_at <= now()) or (n.status = 'sending' and n.lease_until < now())
    order by n.id
    limit sp_claim_alert_notifications.batch_size
    for update skip locked
  ), claimed as (
    update ops.alert_notifications n
    set status = 'sending', attempts = n.attempts + 1, lease_until = now() + interval '2 minutes'
    from due where n.id = due.id
    returning n.id, n.alert_id, n.state, n.payload, n.attempts
  )
  select coalesce(jsonb_agg(to_jsonb(claimed) order by claimed.id), '[]'::jsonb) into v_claimed from claimed;
  return jsonb_build_object('ok', true, 'notifications', v_claimed);
end;
$$;
revoke execute on function public.sp_claim_alert_notifications(integer) from public, anon, authenticated;
grant execute on function public.sp_claim_alert_notifications(integer) to service_role, edge_functions;

/**
 * Records what happened to claimed notifications: `results` is [{id, delivered, http_status?,
 * error?}]. A failure is retried after 30 s, 60 s, 120 s ... (at most an hour), up to 8 attempts,
 * then marked failed. Only a notification still being sent is changed (a late report is ignored).
 */
create function public.sp_record_alert_deliveries(results jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_updated integer;
begin
  perform ledger.require(jsonb_typeof(sp_record_alert_deliveries.results) = 'array', 'results', 'must be an array');
  if ledger.caller_scope() <> 'service' then
    return ledger.error_result('forbidden', 'alert notifications are sent by the service', '{}'::jsonb);
  end if;
  update ops.alert_notifications n
  set status = case when (r ->> 'delivered')::boolean then 'delivered' when n.attempts >= 8 then 'failed' else 'pending' end,
    delivered_at = case when (r ->> 'delivered')::boolean then now() end,
    next_attempt_at = case when (r ->> 'delivered')::boolean then n.next_attempt_at
      else now() + make_interval(secs => least(3600, 30 * power(2, n.attempts - 1))) end,
    lease_until = null,
    last_http_status = (r ->> 'http_status')::integer,
    last_error = left(r ->> 'error', 1000)
  from jsonb_array_elements(sp_record_alert_deliveries.results) r
  where n.id = (r ->> 'id')::bigint and n.status = 'sending';
  get diagnostics v_updated = row_count;
  return jsonb_build_object('ok', true, 'recorded', v_updated);
end;
$$;
revoke execute on function public.sp_record_alert_deliveries(jsonb) from public, anon, authenticated;
grant execute on function public.sp_record_alert_deliveries(jsonb) to service_role, edge_functions;
