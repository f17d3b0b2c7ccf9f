-- Operations, part 3: scheduled jobs with pg_cron (docs/architecture.md §1, `ops`).
--
-- On Supabase pg_cron is an extension of every project (preloaded; enable it in the dashboard or
-- here); the local stack preloads it (scripts/lib/cluster.ts). Where it is not available or not
-- preloaded (a plain PostgreSQL), this migration schedules nothing and says so: the jobs are
-- plain procedures that any scheduler can call (README, operations).
--
-- Every job is idempotent and safe to run twice at once:
-- - purge_expired_idempotency_keys, purge_nfc_scan_log: deletes of rows past a date;
-- - run_monitoring_job, run_reconcile_job: checks that raise or refresh deduplicated alerts, one
--   run at a time (advisory lock), alerts serialized per kind and subject;
-- - expire_stale_pending_recharges: an update of pending rows only, under row locks (a credit of
--   the same session waits, or the update skips a row the credit completed).
-- cron.schedule with a job name replaces the job of that name, so running this again (or a later
-- migration rescheduling) never duplicates a job.

do $$
begin
  begin
    -- In pg_catalog as on Supabase (its docs do the same); never in public (advisors: extension_in_public).
    create extension if not exists pg_cron with schema pg_catalog;
  exception when others then
    raise notice 'pg_cron is not available here (%): no job scheduled; see the README, operations', sqlerrm;
    return;
  end;
  perform cron.schedule('purge-idempotency-keys', '17 * * * *', 'select public.purge_expired_idempotency_keys()');
  perform cron.schedule('monitoring-checks', '* * * * *', 'select public.run_monitoring_job()');
  perform cron.schedule('expire-stale-pending-recharges', '*/10 * * * *', 'select public.expire_stale_pending_recharges()');
  perform cron.schedule('nfc-scan-retention', '23 3 * * *', 'select public.purge_nfc_scan_log()');
  perform cron.schedule('ledger-reconcile', '*/5 * * * *', 'select public.run_reconcile_job()');
end
$$;
