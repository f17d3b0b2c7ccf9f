-- sp_record_nfc_scans: stored once per (device, device sequence), replays change nothing, the
-- device is recorded, an invalid scan refuses the batch (22023 naming scans[i].field), refusals.
begin;
create extension if not exists pgtap with schema extensions;
select plan(10);

create function pg_temp.bartender() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000b001'::uuid $$;
create function pg_temp.batch(p_count integer, p_from integer default 0) returns jsonb language sql stable as $$
  select jsonb_agg(jsonb_build_object('device_sequence', i, 'card_uid', 'DEMO-0051', 'status', 'ok',
    'scanned_at', to_char(now() - interval '1 minute', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')) order by i)
  from generate_series(p_from, p_from + p_count - 1) i
$$;

select is(public.sp_record_nfc_scans(pg_temp.bartender(), 'sql-terminal-1', pg_temp.batch(500), 'main-bar', null, '1.0', 'pgtap')
  - 'device_id', '{"ok": true, "replayed": false, "received": 500, "stored": 500, "already_stored": 0}'::jsonb,
  'a batch of 500 is stored');
select is(public.sp_record_nfc_scans(pg_temp.bartender(), 'sql-terminal-1', pg_temp.batch(500), 'main-bar', null, '1.0', 'pgtap')
  - 'device_id', '{"ok": true, "replayed": true, "received": 500, "stored": 0, "already_stored": 500}'::jsonb,
  'the same batch again stores nothing');
select is((select count(*)::integer from ops.nfc_scan_log where device_id = 'sql-terminal-1'), 500, 'stored once');
select results_eq($$ select point_of_sale_id, app_version, user_agent from ops.devices where device_id = 'sql-terminal-1' $$,
  $$ values ('main-bar', '1.0', 'pgtap') $$, 'the device is recorded with its point of sale and app');
select throws_ok(
  $$ select public.sp_record_nfc_scans(pg_temp.bartender(), 'sql-terminal-2',
       jsonb_set(pg_temp.batch(10), '{7,status}', '"maybe"'), 'main-bar') $$,
  '22023', null, 'an invalid status refuses the batch (22023)');
select throws_like(
  $$ select public.sp_record_nfc_scans(pg_temp.bartender(), 'sql-terminal-2',
       jsonb_set(pg_temp.batch(10), '{4,scanned_at}', '"yesterday"'), 'main-bar') $$,
  'scans[4].scanned_at:%', 'the error names the index and field');
select is((select count(*)::integer from ops.nfc_scan_log where device_id = 'sql-terminal-2'), 0, 'nothing of a refused batch is stored');
select throws_ok($$ select public.sp_record_nfc_scans(pg_temp.bartender(), 'sql-terminal-2', pg_temp.batch(501), 'main-bar') $$,
  '22023', null, 'more than 500 scans is 22023');
select is(public.sp_record_nfc_scans('00000000-0000-4000-8000-0000000000ff', 'sql-terminal-3', pg_temp.batch(1), 'main-bar')
  #>> '{error,code}', 'forbidden', 'a user who is not staff is forbidden');
select is(public.sp_record_nfc_scans(pg_temp.bartender(), 'sql-terminal-3', pg_temp.batch(1), null, 'nowhere')
  #>> '{error,code}', 'checkpoint_not_found', 'an unknown checkpoint is checkpoint_not_found');

select * from finish();
rollback;
