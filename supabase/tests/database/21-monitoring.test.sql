-- Monitoring (ops.run_monitoring_checks, sp_monitoring_report and the jobs): every check is
-- provoked and raises its alert kind once; a second run refreshes (count 2) instead of repeating;
-- each alert is acknowledged and resolved; thresholds come from ops.monitoring_settings; the jobs
-- (expiry of stale pending recharges, scan retention, reconciliation) do their work once.
begin;
create extension if not exists pgtap with schema extensions;
select plan(23);

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;
create function pg_temp.admin() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000a001'::uuid $$;
create function pg_temp.client() returns uuid language sql immutable as $$ select 'c0000000-0000-4000-8000-000000000f01'::uuid $$;
create function pg_temp.check_status(p_report jsonb, p_name text) returns text language sql immutable as $$
  select c ->> 'status' from jsonb_array_elements(p_report) c where c ->> 'name' = p_name
$$;

-- The alerts of the subjects this file provokes (other rows of the database are not ours).
create temp table provoked (kind text, subject text, primary key (kind, subject));
insert into provoked values
  ('high_failure_rate', 'function:mon_test_op'),
  ('high_failure_rate', 'point_of_sale:beach-bar'),
  ('excessive_nfc_scans', 'MON-CARD-1'),
  ('duplicate_tap_rate', 'point_of_sale:vip-bar'),
  ('silent_device', 'device:mon-terminal-1'),
  ('stale_pending_recharge', 'cs_mon_stale'),
  ('open_receivables', 'receivables:festival'),
  ('old_escrow_hold', 'escrow:mon-order-1'),
  ('webhook_failures', 'webhook:mon_test_failure'),
  ('reconcile_discrepancy', 'reconcile:balance_mismatch');

-- Before: nothing of ours is alerted; the seed festival is healthy.
select is_empty($$ select a.kind, a.subject from ops.alerts a join provoked p using (kind, subject) $$,
  'before: none of the provoked alerts exists');
insert into responses select 'healthy', public.sp_monitoring_report(pg_temp.admin());
select is(pg_temp.response('healthy') ->> 'status', 'healthy', 'before: the demo festival is healthy');

-- ---------------------------------------------------------------------------------------------
-- Provoke every check
-- ---------------------------------------------------------------------------------------------

-- Six failures of one function and at one bar (threshold: more than 5 within the hour).
insert into ops.app_transaction_log (operation_type, status, error_code, details)
select 'mon_test_op', 'failed', 'insufficient_funds', '{}' from generate_series(1, 6);
insert into ops.app_transaction_log (operation_type, status, error_code, details, created_at)
select 'bar_order', 'failed', 'insufficient_funds', '{"point_of_sale_id": "beach-bar"}', now() - interval '10 minutes'
from generate_series(1, 6);
-- An old failure outside the window does not count.
insert into ops.app_transaction_log (operation_type, status, error_code, details, created_at)
select 'mon_old_op', 'failed', 'insufficient_funds', '{}', now() - interval '3 hours' from generate_series(1, 10);
-- Eleven scans of one card within the hour.
insert into ops.nfc_scan_log (device_id, device_sequence, card_uid, status, point_of_sale_id, scanned_at)
select 'mon-terminal-2', i, 'MON-CARD-1', 'ok', 'main-bar', now() - make_interval(mins => i) from generate_series(1, 11) i;
-- vip-bar: 3 duplicate-tap refusals out of 10 attempts (rate 0.3 > 0.2).
insert into ops.app_transaction_log (operation_type, status, error_code, details)
select 'bar_order', case when i <= 3 then 'failed' else 'success' end,
  case when i <= 3 then 'duplicate_tap_suspected' end, '{"point_of_sale_id": "vip-bar"}'
from generate_series(1, 10) i;
-- A terminal last heard of 10 minutes ago (always open by default).
insert into ops.devices (device_id, point_of_sale_id, first_seen_at, last_seen_at)
values ('mon-terminal-1', 'main-bar', now() - interval '2 hours', now() - interval '10 minutes');
-- An online top-up pending for two hours.
insert into responses select 'prepare', public.sp_prepare_online_recharge('DEMO-0030', null, 'MINI', 'mon-prepare');
select public.sp_attach_checkout_session((pg_temp.response('prepare') ->> 'recharge_id')::bigint, 'cs_mon_stale',
  'https://checkout.stripe.test/c/pay/cs_mon_stale');
update festival.recharges set created_at = now() - interval '2 hours' where stripe_session_id = 'cs_mon_stale';
-- An open receivable.
insert into festival.receivables (card_id, amount_cents, reason, operation_id)
values ('DEMO-0031', 700, 'stripe_refund', (select max(id) from ledger.operations));
-- An escrow hold locked 15 days ago.
insert into auth.users (id, aud, role, email) values
  (pg_temp.client(), 'authenticated', 'authenticated', 'mon@credits.test'),
  ('c0000000-0000-4000-8000-000000000f02', 'authenticated', 'authenticated', 'mon-provider@credits.test');
select public.allocate_monthly_credits(pg_temp.client(), 100, 'mon-subscription', '2026-01-01 00:00+00', '2026-02-01 00:00+00', 'mon-fund');
-- The credits escrow contract names the provider at lock on newer branches (issue 9): whichever exists.
do $$
begin
  if to_regprocedure('public.lock_credits(uuid, uuid, bigint, text, text)') is not null then
    execute $call$ select public.lock_credits(user_id => $1, provider_id => $2, amount => 40, order_id => 'mon-order-1',
      client_request_id => 'mon-lock') $call$ using pg_temp.client(), 'c0000000-0000-4000-8000-000000000f02'::uuid;
  else
    execute $call$ select public.lock_credits(user_id => $1, amount => 40, order_id => 'mon-order-1',
      client_request_id => 'mon-lock') $call$ using pg_temp.client();
  end if;
end
$$;
select is((select status from credits.escrow_holds where order_id = 'mon-order-1'), 'held', 'setup: a hold of 40 credits');
update credits.escrow_holds set created_at = now() - interval '15 days' where order_id = 'mon-order-1';
-- A failed Stripe webhook event.
insert into ops.app_transaction_log (operation_type, status, error_code, edge_function, client_request_id)
values ('stripe_recharge', 'failed', 'mon_test_failure', 'stripe-webhook', 'evt_mon_1');
-- A card balance that differs from its transfers.
update ledger.accounts set balance_cents = balance_cents + 1
where id = (select account_id from festival.cards where id = 'DEMO-0032');

-- ---------------------------------------------------------------------------------------------
-- Raised once, then refreshed
-- ---------------------------------------------------------------------------------------------

insert into responses select 'report-1', public.sp_monitoring_report(pg_temp.admin());
select results_eq(
  $$ select p.kind, p.subject, count(a.id)::integer, min(a.occurrence_count), min(a.status)
     from provoked p left join ops.alerts a using (kind, subject) group by 1, 2 order by 1, 2 $$,
  $$ select kind, subject, 1, 1, 'open' from provoked order by 1, 2 $$,
  'first run: every provoked kind raised once'
);
select is_empty($$ select subject from ops.alerts where subject = 'function:mon_old_op' $$,
  'failures outside the window do not count');
select is(pg_temp.response('report-1') ->> 'status', 'critical', 'report: critical (a reconcile discrepancy)');
select results_eq(
  $$ select c ->> 'name', c ->> 'status' from jsonb_array_elements(pg_temp.response('report-1') -> 'checks') c order by 1 $$,
  $$ values ('duplicate_tap_rate', 'warning'), ('excessive_nfc_scans', 'warning'), ('failed_webhook_events', 'warning'),
            ('failure_rate_by_function', 'warning'), ('failure_rate_by_location', 'warning'),
            ('ledger_reconcile', 'critical'), ('old_escrow_holds', 'warning'), ('open_receivables', 'info'),
            ('silent_devices', 'warning'), ('stale_pending_recharges', 'warning') $$,
  'report: one entry per check with its status'
);
select ok((select count(*) from jsonb_array_elements(pg_temp.response('report-1') -> 'alerts') a
  join provoked p on p.kind = a ->> 'kind' and p.subject = a ->> 'subject') = 10, 'report: the open alerts are listed');
select results_eq(
  $$ select a.severity, a.card_id from ops.alerts a where a.kind = 'excessive_nfc_scans' and a.subject = 'MON-CARD-1' $$,
  $$ values ('warning', 'MON-CARD-1') $$, 'excessive scans: the card is named');

select public.run_monitoring_job();
select public.run_reconcile_job();
select results_eq(
  $$ select p.kind, p.subject, count(a.id)::integer, min(a.occurrence_count)
     from provoked p left join ops.alerts a using (kind, subject) group by 1, 2 order by 1, 2 $$,
  $$ select kind, subject, 1, 2 from provoked order by 1, 2 $$,
  'second run (the minute and the five-minute jobs): each alert refreshed, count 2, not repeated'
);

select throws_ok($$ update ops.monitoring_settings set time_zone = 'Mars/Olympus_Mons' $$, '22023', null,
  'settings: an unknown time zone is refused');
-- Settings: a higher threshold, and closed opening hours, find nothing more.
update ops.monitoring_settings set nfc_scan_threshold = 20, opening_time = (now() + interval '1 hour')::time,
  closing_time = (now() + interval '2 hours')::time, time_zone = 'UTC';
insert into responses select 'report-settings', public.sp_monitoring_report(null);
select results_eq(
  $$ select pg_temp.check_status(pg_temp.response('report-settings') -> 'checks', 'excessive_nfc_scans'),
            pg_temp.check_status(pg_temp.response('report-settings') -> 'checks', 'silent_devices') $$,
  $$ values ('ok', 'ok') $$,
  'settings: thresholds and opening hours apply'
);

-- ---------------------------------------------------------------------------------------------
-- Acknowledged and resolved
-- ---------------------------------------------------------------------------------------------

insert into responses
select 'ack:' || a.kind || ':' || a.subject, public.sp_acknowledge_alert(a.id, pg_temp.admin(), 'mon-ack-' || a.id, 'on it')
from ops.alerts a join provoked p using (kind, subject);
select results_eq(
  $$ select count(*)::integer, min(a.status), max(a.status), min(a.acknowledgement_note) from ops.alerts a join provoked p using (kind, subject) $$,
  $$ values (10, 'acknowledged', 'acknowledged', 'on it') $$,
  'every provoked alert acknowledged'
);
insert into responses
select 'resolve:' || a.kind || ':' || a.subject, public.sp_resolve_alert(a.id, pg_temp.admin(), 'mon-resolve-' || a.id, 'fixed')
from ops.alerts a join provoked p using (kind, subject);
select results_eq(
  $$ select count(*)::integer, min(a.status), max(a.status), bool_and(a.resolved_by = pg_temp.admin()) from ops.alerts a join provoked p using (kind, subject) $$,
  $$ values (10, 'resolved', 'resolved', true) $$,
  'every provoked alert resolved'
);

-- ---------------------------------------------------------------------------------------------
-- Who may ask; the jobs
-- ---------------------------------------------------------------------------------------------

select is(public.sp_monitoring_report('00000000-0000-4000-8000-00000000b001') #>> '{error,code}', 'forbidden',
  'report: a bartender is forbidden');
select set_config('app.caller', 'anon', true);
select is(public.sp_monitoring_report(null) #>> '{error,code}', 'forbidden', 'report: no staff id is the service only');
select set_config('app.caller', '', true);

-- Stale pending recharges expire after the setting (25 hours by default), once.
update festival.recharges set created_at = now() - interval '26 hours' where stripe_session_id = 'cs_mon_stale';
select is(public.expire_stale_pending_recharges(), 1, 'expiry: the stale pending recharge is closed');
select results_eq($$ select status, failure_reason from festival.recharges where stripe_session_id = 'cs_mon_stale' $$,
  $$ values ('failed', 'expired') $$, 'expiry: failed, reason expired');
select is(public.expire_stale_pending_recharges(), 0, 'expiry: a second run changes nothing');

-- Scan retention: scans older than the setting are deleted, once.
insert into ops.nfc_scan_log (device_id, device_sequence, card_uid, status, scanned_at)
values ('mon-terminal-3', 1, 'MON-CARD-2', 'ok', now() - interval '31 days'),
       ('mon-terminal-3', 2, 'MON-CARD-2', 'ok', now() - interval '29 days');
select is(public.purge_nfc_scan_log(), 1, 'retention: scans older than 30 days deleted');
select is(public.purge_nfc_scan_log(), 0, 'retention: a second run deletes nothing');
select throws_ok($$ update ops.nfc_scan_log set status = 'blocked' $$, '42501', null, 'the scan log refuses updates');

-- Reconciliation: once the balance is right again the job finds nothing.
update ledger.accounts set balance_cents = balance_cents - 1
where id = (select account_id from festival.cards where id = 'DEMO-0032');
delete from festival.receivables where card_id = 'DEMO-0031' and amount_cents = 700;
select is(public.run_reconcile_job(), 0, 'reconcile job: no discrepancy once the balance is right');

select * from finish();
rollback;
