-- Operations: monitoring settings and checks, the jobs' procedures (expiry of stale pending
-- recharges, scan retention, reconciliation) (docs/architecture.md §1, `ops`).
--
-- The attempt log (ops.app_transaction_log) already records every attempt; nothing read it. The
-- checks below read it, the scan log, the devices and the business tables, and raise or refresh
-- one alert per kind and subject (20261122000900_operations.sql). They run every minute from
-- pg_cron (20261122000930_scheduled_jobs.sql) and on demand from the monitoring-service function.

-- ---------------------------------------------------------------------------------------------
-- Settings: thresholds and windows of the checks and jobs (one row, like festival.settings)
-- ---------------------------------------------------------------------------------------------

create table ops.monitoring_settings (
  id boolean primary key default true check (id),
  -- More than `failure_threshold` failed attempts of one function or at one point of sale within the window.
  failure_window_minutes integer not null default 60 check (failure_window_minutes between 1 and 1440),
  failure_threshold integer not null default 5 check (failure_threshold >= 0),
  -- More than `nfc_scan_threshold` scans of one card within the window.
  nfc_scan_window_minutes integer not null default 60 check (nfc_scan_window_minutes between 1 and 1440),
  nfc_scan_threshold integer not null default 10 check (nfc_scan_threshold >= 0),
  -- A bar whose share of duplicate-tap refusals passes the rate, once it has enough attempts.
  duplicate_tap_window_minutes integer not null default 60 check (duplicate_tap_window_minutes between 1 and 1440),
  duplicate_tap_rate_threshold numeric not null default 0.2 check (duplicate_tap_rate_threshold between 0 and 1),
  duplicate_tap_min_attempts integer not null default 10 check (duplicate_tap_min_attempts >= 1),
  -- Devices heard of within the lookback but silent for longer than this, during opening hours
  -- (local time in `time_zone`; opening = closing means always open; closing before opening
  -- means the festival is open past midnight).
  silent_device_minutes integer not null default 5 check (silent_device_minutes >= 1),
  silent_device_lookback_hours integer not null default 12 check (silent_device_lookback_hours >= 1),
  opening_time time not null default '00:00',
  closing_time time not null default '00:00',
  time_zone text not null default 'UTC',
  -- Online top-ups pending longer than this are alerted; longer than the expiry they are closed
  -- (Stripe Checkout sessions live 24 hours at most; a late payment is still credited).
  pending_recharge_alert_minutes integer not null default 60 check (pending_recharge_alert_minutes >= 1),
  pending_recharge_expiry_minutes integer not null default 1500 check (pending_recharge_expiry_minutes >= 60),
  escrow_hold_max_days integer not null default 14 check (escrow_hold_max_days >= 1),
  -- More than `webhook_failure_threshold` failed Stripe webhook events within the window.
  webhook_failure_window_minutes integer not null default 60 check (webhook_failure_window_minutes between 1 and 1440),
  webhook_failure_threshold integer not null default 0 check (webhook_failure_threshold >= 0),
  nfc_scan_retention_days integer not null default 30 check (nfc_scan_retention_days >= 1)
);
insert into ops.monitoring_settings default values;
alter table ops.monitoring_settings enable row level security;

/** A zone Postgres does not know would break every run of the checks: refuse it when it is set. */
create function ops.check_monitoring_settings() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform now() at time zone new.time_zone;
  return new;
end;
$$;
create trigger monitoring_settings_time_zone before insert or update on ops.monitoring_settings
  for each row execute function ops.check_monitoring_settings();

-- ---------------------------------------------------------------------------------------------
-- Checks: each returns its findings, one jsonb object per subject
-- ---------------------------------------------------------------------------------------------

create function ops.failed_attempts_by_function(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', 'function:' || f.name, 'function', f.name, 'failed', f.failed,
    'attempts', f.attempts, 'window_minutes', s.failure_window_minutes) order by f.name), '[]'::jsonb)
  from (
    select coalesce(l.edge_function, l.operation_type) as name,
      count(*) filter (where l.status = 'failed') as failed, count(*) as attempts
    from ops.app_transaction_log l
    where l.created_at > now() - make_interval(mins => s.failure_window_minutes)
    group by 1
  ) f
  where f.failed > s.failure_threshold
$$;

create function ops.failed_attempts_by_location(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', f.location, 'failed', f.failed, 'attempts', f.attempts,
    'window_minutes', s.failure_window_minutes) order by f.location), '[]'::jsonb)
  from (
    select coalesce('point_of_sale:' || (l.details ->> 'point_of_sale_id'), 'checkpoint:' || (l.details ->> 'checkpoint_id'))
        as location,
      count(*) filter (where l.status = 'failed') as failed, count(*) as attempts
    from ops.app_transaction_log l
    where l.created_at > now() - make_interval(mins => s.failure_window_minutes)
      and (l.details ? 'point_of_sale_id' or l.details ? 'checkpoint_id')
    group by 1
  ) f
  where f.failed > s.failure_threshold
$$;

create function ops.excessive_nfc_scans(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', f.card_uid, 'card_id', f.card_uid, 'scans', f.scans,
    'window_minutes', s.nfc_scan_window_minutes) order by f.card_uid), '[]'::jsonb)
  from (
    select n.card_uid, count(*) as scans
    from ops.nfc_scan_log n
    where n.scanned_at > now() - make_interval(mins => s.nfc_scan_window_minutes) and n.card_uid is not null
    group by n.card_uid
  ) f
  where f.scans > s.nfc_scan_threshold
$$;

create function ops.duplicate_tap_rates(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', 'point_of_sale:' || f.point_of_sale_id,
    'duplicate_taps', f.duplicates, 'attempts', f.attempts, 'rate', round(f.duplicates::numeric / f.attempts, 3),
    'window_minutes', s.duplicate_tap_window_minutes) order by f.point_of_sale_id), '[]'::jsonb)
  from (
    select l.details ->> 'point_of_sale_id' as point_of_sale_id,
      count(*) filter (where l.error_code = 'duplicate_tap_suspected') as duplicates, count(*) as attempts
    from ops.app_transaction_log l
    where l.operation_type = 'bar_order' and l.details ? 'point_of_sale_id'
      and l.created_at > now() - make_interval(mins => s.duplicate_tap_window_minutes)
    group by 1
  ) f
  where f.attempts >= s.duplicate_tap_min_attempts and f.duplicates::numeric / f.attempts > s.duplicate_tap_rate_threshold
$$;

/** Whether the festival is open now, local time in the settings' zone. */
create function ops.is_open(s ops.monitoring_settings, p_at timestamptz) returns boolean
language sql stable
set search_path = ''
as $$
  select case
    when s.opening_time = s.closing_time then true
    when s.opening_time < s.closing_time then (p_at at time zone s.time_zone)::time >= s.opening_time
      and (p_at at time zone s.time_zone)::time < s.closing_time
    else (p_at at time zone s.time_zone)::time >= s.opening_time or (p_at at time zone s.time_zone)::time < s.closing_time
  end
$$;

create function ops.silent_devices(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', 'device:' || d.device_id, 'device_id', d.device_id,
    'point_of_sale_id', d.point_of_sale_id, 'checkpoint_id', d.checkpoint_id, 'last_seen_at', d.last_seen_at)
    order by d.device_id), '[]'::jsonb)
  from ops.devices d
  where ops.is_open(s, now())
    and d.last_seen_at < now() - make_interval(mins => s.silent_device_minutes)
    and d.last_seen_at > now() - make_interval(hours => s.silent_device_lookback_hours)
$$;

create function ops.stale_pending_recharges(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', coalesce(r.stripe_session_id, 'recharge:' || r.id),
    'stripe_object_id', r.stripe_session_id, 'card_id', r.card_id, 'recharge_id', r.id, 'amount_cents', r.amount_cents,
    'pending_since', r.created_at) order by r.id), '[]'::jsonb)
  from festival.recharges r
  where r.status = 'pending' and r.created_at < now() - make_interval(mins => s.pending_recharge_alert_minutes)
$$;

create function ops.open_receivables() returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(f.finding order by f.finding ->> 'subject'), '[]'::jsonb)
  from (
    select jsonb_build_object('subject', 'receivables:festival', 'open', count(*), 'amount_cents', sum(amount_cents)) as finding
    from festival.receivables where status = 'open' having count(*) > 0
    union all
    select jsonb_build_object('subject', 'receivables:credits', 'open', count(*), 'amount_credits', sum(amount_credits))
    from credits.receivables where status = 'open' having count(*) > 0
  ) f
$$;

create function ops.old_escrow_holds(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', 'escrow:' || h.order_id, 'order_id', h.order_id,
    'user_id', h.client_user_id, 'amount_credits', h.amount_credits, 'status', h.status, 'held_since', h.created_at)
    order by h.order_id), '[]'::jsonb)
  from credits.escrow_holds h
  where h.status in ('held', 'accepted') and h.created_at < now() - make_interval(days => s.escrow_hold_max_days)
$$;

create function ops.reconcile_discrepancies() returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', 'reconcile:' || f.check_name, 'check_name', f.check_name,
    'rows', f.row_count, 'sample', f.sample) order by f.check_name), '[]'::jsonb)
  from (
    select r.check_name, count(*) as row_count,
      (jsonb_agg(to_jsonb(r) order by r.account_id nulls last) -> 0) as sample
    from public.ledger_reconcile() r
    group by r.check_name
  ) f
$$;

create function ops.failed_webhook_events(s ops.monitoring_settings) returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object('subject', 'webhook:' || f.error_code, 'error_code', f.error_code,
    'failed', f.failed, 'last_event_id', f.last_event_id, 'window_minutes', s.webhook_failure_window_minutes)
    order by f.error_code), '[]'::jsonb)
  from (
    select coalesce(l.error_code, 'unknown') as error_code, count(*) as failed,
      (array_agg(l.client_request_id order by l.id desc))[1] as last_event_id
    from ops.app_transaction_log l
    where l.status = 'failed' and (l.edge_function = 'stripe-webhook' or l.operation_type like 'stripe\_%')
      and l.created_at > now() - make_interval(mins => s.webhook_failure_window_minutes)
    group by 1
  ) f
  where f.failed > s.webhook_failure_threshold
$$;

/** Raises or refreshes one alert per finding; returns the check's report. */
create function ops.report_check(p_check text, p_kind text, p_findings jsonb, p_threshold jsonb) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_finding jsonb;
  v_severity text := (select k.default_severity from ops.alert_kinds k where k.kind = p_kind);
begin
  for v_finding in select value from jsonb_array_elements(p_findings) loop
    perform ops.raise_subject_alert(p_kind, v_severity, v_finding ->> 'subject', v_finding,
      v_finding ->> 'card_id', v_finding ->> 'stripe_object_id', (v_finding ->> 'user_id')::uuid);
  end loop;
  return jsonb_build_object('name', p_check, 'alert_kind', p_kind,
    'status', case when jsonb_array_length(p_findings) = 0 then 'ok' else v_severity end,
    'threshold', p_threshold, 'findings', p_findings);
end;
$$;

/**
 * Runs every check, raising or refreshing alerts; returns one report per check. Runs one at a
 * time (a second caller waits, then runs on what the first left), so pg_cron overlapping itself
 * or a monitoring-service call during the job only refreshes alerts. Reconciliation reads the
 * whole ledger: the minute job leaves it out, the five-minute job runs it.
 */
create function ops.run_monitoring_checks(p_include_reconcile boolean default true) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  s ops.monitoring_settings;
  v_checks jsonb;
begin
  perform pg_advisory_xact_lock(hashtextextended('ops.run_monitoring_checks', 20261122));
  select * into s from ops.monitoring_settings;
  v_checks := jsonb_build_array(
    ops.report_check('failure_rate_by_function', 'high_failure_rate', ops.failed_attempts_by_function(s),
      jsonb_build_object('failed_more_than', s.failure_threshold, 'window_minutes', s.failure_window_minutes)),
    ops.report_check('failure_rate_by_location', 'high_failure_rate', ops.failed_attempts_by_location(s),
      jsonb_build_object('failed_more_than', s.failure_threshold, 'window_minutes', s.failure_window_minutes)),
    ops.report_check('excessive_nfc_scans', 'excessive_nfc_scans', ops.excessive_nfc_scans(s),
      jsonb_build_object('scans_more_than', s.nfc_scan_threshold, 'window_minutes', s.nfc_scan_window_minutes)),
    ops.report_check('duplicate_tap_rate', 'duplicate_tap_rate', ops.duplicate_tap_rates(s),
      jsonb_build_object('rate_above', s.duplicate_tap_rate_threshold, 'min_attempts', s.duplicate_tap_min_attempts,
        'window_minutes', s.duplicate_tap_window_minutes)),
    ops.report_check('silent_devices', 'silent_device', ops.silent_devices(s),
      jsonb_build_object('silent_minutes', s.silent_device_minutes, 'open_now', ops.is_open(s, now()))),
    ops.report_check('stale_pending_recharges', 'stale_pending_recharge', ops.stale_pending_recharges(s),
      jsonb_build_object('pending_minutes', s.pending_recharge_alert_minutes)),
    ops.report_check('open_receivables', 'open_receivables', ops.open_receivables(), '{}'::jsonb),
    ops.report_check('old_escrow_holds', 'old_escrow_hold', ops.old_escrow_holds(s),
      jsonb_build_object('older_than_days', s.escrow_hold_max_days)),
    ops.report_check('failed_webhook_events', 'webhook_failures', ops.failed_webhook_events(s),
      jsonb_build_object('failed_more_than', s.webhook_failure_threshold, 'window_minutes', s.webhook_failure_window_minutes)));
  if p_include_reconcile then
    v_checks := v_checks || jsonb_build_array(
      ops.report_check('ledger_reconcile', 'reconcile_discrepancy', ops.reconcile_discrepancies(), '{}'::jsonb));
  end if;
  return v_checks;
end;
$$;

/**
 * What monitoring-service answers: the checks (run now), the unresolved alerts and an overall
 * status: critical when a check or an unacknowledged alert is critical, degraded when one is a
 * warning, healthy otherwise. Admins or the service (no staff id) only.
 */
create function public.sp_monitoring_report(staff_user_id uuid default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_refusal jsonb := ops.operator_refusal(sp_monitoring_report.staff_user_id);
  v_checks jsonb;
  v_alerts jsonb;
  v_worst integer;
begin
  if v_refusal is not null then
    return v_refusal;
  end if;
  v_checks := ops.run_monitoring_checks(true);
  select coalesce(jsonb_agg(ops.alert_json(a) order by ops.severity_rank(a.severity) desc, a.last_seen_at desc), '[]'::jsonb)
  into v_alerts
  from (select * from ops.alerts a where a.status <> 'resolved' order by a.last_seen_at desc limit 200) a;
  select max(rank) into v_worst from (
    select ops.severity_rank(c ->> 'status') as rank from jsonb_array_elements(v_checks) c where c ->> 'status' <> 'ok'
    union all
    select ops.severity_rank(a.severity) from ops.alerts a where a.status = 'open'
  ) ranks;
  return jsonb_build_object('ok', true,
    'status', case when v_worst = 3 then 'critical' when v_worst = 2 then 'degraded' else 'healthy' end,
    'checked_at', now(), 'checks', v_checks, 'alerts', v_alerts);
end;
$$;
revoke execute on function public.sp_monitoring_report(uuid) from public, anon, authenticated;
grant execute on function public.sp_monitoring_report(uuid) to service_role, edge_functions;

-- ---------------------------------------------------------------------------------------------
-- Jobs (scheduled by 20261122000930_scheduled_jobs.sql; each safe to run twice at once)
-- ---------------------------------------------------------------------------------------------

/** Runs the checks (without reconciliation); returns how many found something. For pg_cron. */
create function public.run_monitoring_job() returns integer
language sql
security definer
set search_path = ''
as $$
  select count(*)::integer from jsonb_array_elements(ops.run_monitoring_checks(false)) c where c ->> 'status' <> 'ok'
$$;
revoke execute on function public.run_monitoring_job() from public, anon, authenticated;
grant execute on function public.run_monitoring_job() to service_role, edge_functions;

/** Reconciles the ledger; every discrepancy is a critical reconcile_discrepancy alert. Returns their number. */
create function public.run_reconcile_job() returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_findings jsonb := ops.reconcile_discrepancies();
begin
  perform ops.report_check('ledger_reconcile', 'reconcile_discrepancy', v_findings, '{}'::jsonb);
  return jsonb_array_length(v_findings);
end;
$$;
revoke execute on function public.run_reconcile_job() from public, anon, authenticated;
grant execute on function public.run_reconcile_job() to service_role, edge_functions;

/**
 * Closes online top-ups pending longer than the expiry (their Checkout session has expired):
 * status failed, reason 'expired'. Nothing moves; a payment that still arrives is credited, as
 * for any failed session. Row locks make a concurrent run or credit wait, then skip the row.
 */
create function public.expire_stale_pending_recharges() returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_expired integer;
begin
  update festival.recharges r
  set status = 'failed', failure_reason = 'expired'
  where r.status = 'pending' and r.payment_method = 'stripe'
    and r.created_at < now() - make_interval(mins => (select pending_recharge_expiry_minutes from ops.monitoring_settings));
  get diagnostics v_expired = row_count;
  return v_expired;
end;
$$;
revoke execute on function public.expire_stale_pending_recharges() from public, anon, authenticated;
grant execute on function public.expire_stale_pending_recharges() to service_role, edge_functions;

/** Deletes scans older than the retention (a setting, 30 days by default). Returns how many. */
create function public.purge_nfc_scan_log() returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  delete from ops.nfc_scan_log
  where scanned_at < now() - make_interval(days => (select nfc_scan_retention_days from ops.monitoring_settings));
  get diagnostics v_deleted = row_count;
  return v_deleted;
end;
$$;
revoke execute on function public.purge_nfc_scan_log() from public, anon, authenticated;
grant execute on function public.purge_nfc_scan_log() to service_role, edge_functions;
