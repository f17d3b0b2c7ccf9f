-- Scheduled jobs (pg_cron, preloaded by the local stack as on Supabase): each job is scheduled
-- once under its name with its schedule, and each job's command runs twice in a row without
-- error or effect the second time. (The stack pauses the schedule under `npm test`, so that no
-- job changes data under a running test; `npm start` runs them.)
begin;
create extension if not exists pgtap with schema extensions;
select plan(8);

select has_extension('pg_cron', 'pg_cron is installed');
select is(
  (select jsonb_agg(jsonb_build_array(jobname, schedule, command, database) order by jobname) from cron.job),
  '[["expire-stale-pending-recharges", "*/10 * * * *", "select public.expire_stale_pending_recharges()", "postgres"],
    ["ledger-reconcile", "*/5 * * * *", "select public.run_reconcile_job()", "postgres"],
    ["monitoring-checks", "* * * * *", "select public.run_monitoring_job()", "postgres"],
    ["nfc-scan-retention", "23 3 * * *", "select public.purge_nfc_scan_log()", "postgres"],
    ["purge-idempotency-keys", "17 * * * *", "select public.purge_expired_idempotency_keys()", "postgres"]]'::jsonb,
  'five jobs, each scheduled once'
);

-- Each job's command, twice: the second run finds nothing left to do (or refreshes the same alerts).
insert into ledger.idempotency_keys (caller_scope, key, operation, request_fingerprint, response, expires_at)
values ('service', 'cron-test-expired', 'test', 'x', '{}', now() - interval '1 minute');
select ok(public.purge_expired_idempotency_keys() >= 1 and public.purge_expired_idempotency_keys() = 0,
  'idempotency purge: twice, the second deletes nothing');
select ok(public.purge_nfc_scan_log() >= 0 and public.purge_nfc_scan_log() = 0, 'scan retention: twice');
select ok(public.expire_stale_pending_recharges() >= 0 and public.expire_stale_pending_recharges() = 0, 'expiry: twice');
select lives_ok($$ select public.run_monitoring_job(), public.run_monitoring_job() $$, 'monitoring job: twice');
select is(public.run_reconcile_job(), 0, 'reconcile job: the seeded ledger reconciles');
select is(
  (select count(*)::integer from ops.alerts a where a.kind = 'reconcile_discrepancy' and a.status <> 'resolved'), 0,
  'reconcile job: no alert when nothing is wrong');

select * from finish();
rollback;
