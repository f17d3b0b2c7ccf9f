-- Operations: terminals send their NFC scans (docs/architecture.md §1, `ops`). Scans
-- arrive in batches of up to 500 (a terminal buffers while offline and resends the whole batch
-- until it is acknowledged), so each scan is stored once per (device, device sequence): a replay,
-- whole or partial, changes nothing. The natural key is the idempotency key here: it outlives
-- the 24-hour keys, and a terminal that lost its batch id can still resend safely. A batch with
-- one invalid scan is refused whole (SQLSTATE 22023 naming `scans[i].field`): storing part of a
-- batch would make the terminal's retry logic guess which part. The monitoring checks
-- (20261122000920_monitoring.sql) read the scan log and the devices.

-- ---------------------------------------------------------------------------------------------
-- Devices and the NFC scan log
-- ---------------------------------------------------------------------------------------------

/** Every terminal that ever sent scans: where it is, when it was last heard of, which app. */
create table ops.devices (
  device_id text primary key check (device_id ~ '^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$'),
  point_of_sale_id text references festival.points_of_sale (id),
  checkpoint_id text references festival.checkpoints (id),
  app_version text check (length(app_version) <= 64),
  user_agent text check (length(user_agent) <= 512),
  last_staff_user_id uuid,
  first_seen_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now()
);
alter table ops.devices enable row level security;

/**
 * One row per scan a terminal made, stored once per (device, device sequence): terminals buffer
 * while offline and resend whole batches. Rows are never changed; retention deletes old ones.
 */
create table ops.nfc_scan_log (
  id bigint generated always as identity primary key,
  device_id text not null,
  device_sequence bigint not null check (device_sequence >= 0),
  -- As read: may be garbage for an unreadable tag (then possibly absent).
  card_uid text check (length(card_uid) between 1 and 128),
  raw_data text check (length(raw_data) <= 2048),
  status text not null check (status in ('ok', 'unreadable', 'unknown_card', 'duplicate_ignored', 'blocked')),
  point_of_sale_id text,
  checkpoint_id text,
  scanned_at timestamptz not null,
  received_at timestamptz not null default now(),
  user_agent text check (length(user_agent) <= 512),
  staff_user_id uuid,
  constraint nfc_scan_log_device_sequence unique (device_id, device_sequence),
  constraint card_uid_unless_unreadable check (status = 'unreadable' or card_uid is not null)
);
create index nfc_scan_log_card_scanned_at on ops.nfc_scan_log (card_uid, scanned_at);
create index nfc_scan_log_scanned_at on ops.nfc_scan_log using brin (scanned_at);
alter table ops.nfc_scan_log enable row level security;
create trigger nfc_scan_log_append_only before update on ops.nfc_scan_log
  for each row execute function ledger.refuse_history_change();
create trigger nfc_scan_log_no_truncate before truncate on ops.nfc_scan_log
  for each statement execute function ledger.refuse_history_change();

-- ---------------------------------------------------------------------------------------------
-- Receiving a batch
-- ---------------------------------------------------------------------------------------------

/** `scans[i].field` must hold; raises 22023 with that field. */
create function ops.require_scan(p_condition boolean, p_index integer, p_field text, p_message text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  perform ledger.require(p_condition, format('scans[%s].%s', p_index, p_field), p_message);
end;
$$;

create function public.sp_record_nfc_scans(
  staff_user_id uuid,
  device_id text,
  scans jsonb,
  point_of_sale_id text default null,
  checkpoint_id text default null,
  app_version text default null,
  user_agent text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_scan jsonb;
  v_index integer;
  v_count integer;
  v_stored integer;
  v_result jsonb;
begin
  perform ledger.require(sp_record_nfc_scans.staff_user_id is not null, 'staff_user_id', 'is required');
  perform ledger.require(sp_record_nfc_scans.device_id ~ '^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$', 'device_id',
    '1 to 64 letters, digits, '':'', ''.'', ''_'' or ''-''');
  perform ledger.require((sp_record_nfc_scans.point_of_sale_id is null) <> (sp_record_nfc_scans.checkpoint_id is null),
    'point_of_sale_id', 'exactly one of point_of_sale_id and checkpoint_id is required');
  perform ledger.require(coalesce(length(sp_record_nfc_scans.app_version), 0) <= 64, 'app_version', 'at most 64 characters');
  perform ledger.require(jsonb_typeof(sp_record_nfc_scans.scans) = 'array', 'scans', 'must be an array');
  v_count := jsonb_array_length(sp_record_nfc_scans.scans);
  perform ledger.require(v_count between 1 and 500, 'scans', 'must hold 1 to 500 scans');
  for v_scan, v_index in select value, (ordinality - 1)::integer from jsonb_array_elements(sp_record_nfc_scans.scans) with ordinality loop
    perform ops.require_scan(jsonb_typeof(v_scan) = 'object', v_index, 'scan', 'must be an object');
    perform ops.require_scan(v_scan ->> 'device_sequence' ~ '^[0-9]{1,15}$' and jsonb_typeof(v_scan -> 'device_sequence') = 'number',
      v_index, 'device_sequence', 'must be an integer from 0');
    perform ops.require_scan(v_scan ->> 'status' in ('ok', 'unreadable', 'unknown_card', 'duplicate_ignored', 'blocked'),
      v_index, 'status', 'must be ok, unreadable, unknown_card, duplicate_ignored or blocked');
    perform ops.require_scan(coalesce(v_scan ->> 'card_uid' ~ '^[\x21-\x7e]{1,128}$', v_scan ->> 'status' = 'unreadable'),
      v_index, 'card_uid', '1 to 128 visible characters (may be absent for an unreadable tag)');
    perform ops.require_scan(coalesce(length(v_scan ->> 'raw_data'), 0) <= 2048, v_index, 'raw_data', 'at most 2048 characters');
    perform ops.require_scan(v_scan ->> 'scanned_at' ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$',
      v_index, 'scanned_at', 'must be an ISO 8601 time with a zone');
    perform ops.require_scan((v_scan ->> 'scanned_at')::timestamptz < now() + interval '1 day', v_index, 'scanned_at',
      'must not be in the future');
  end loop;

  if festival.staff_role(sp_record_nfc_scans.staff_user_id) is null then
    v_result := ledger.error_result('forbidden', 'only active festival staff can send scans',
      jsonb_build_object('staff_user_id', sp_record_nfc_scans.staff_user_id));
  elsif sp_record_nfc_scans.point_of_sale_id is not null
      and not exists (select 1 from festival.points_of_sale p where p.id = sp_record_nfc_scans.point_of_sale_id) then
    v_result := ledger.error_result('point_of_sale_not_found', 'no point of sale with this id',
      jsonb_build_object('point_of_sale_id', sp_record_nfc_scans.point_of_sale_id));
  elsif sp_record_nfc_scans.checkpoint_id is not null
      and not exists (select 1 from festival.checkpoints c where c.id = sp_record_nfc_scans.checkpoint_id) then
    v_result := ledger.error_result('checkpoint_not_found', 'no checkpoint with this id',
      jsonb_build_object('checkpoint_id', sp_record_nfc_scans.checkpoint_id));
  else
    insert into ops.nfc_scan_log (device_id, device_sequence, card_uid, raw_data, status, point_of_sale_id, checkpoint_id,
      scanned_at, user_agent, staff_user_id)
    select sp_record_nfc_scans.device_id, (s ->> 'device_sequence')::bigint, s ->> 'card_uid', s ->> 'raw_data', s ->> 'status',
      sp_record_nfc_scans.point_of_sale_id, sp_record_nfc_scans.checkpoint_id, (s ->> 'scanned_at')::timestamptz,
      left(sp_record_nfc_scans.user_agent, 512), sp_record_nfc_scans.staff_user_id
    from jsonb_array_elements(sp_record_nfc_scans.scans) s
    on conflict on constraint nfc_scan_log_device_sequence do nothing;
    get diagnostics v_stored = row_count;
    insert into ops.devices (device_id, point_of_sale_id, checkpoint_id, app_version, user_agent, last_staff_user_id)
    values (sp_record_nfc_scans.device_id, sp_record_nfc_scans.point_of_sale_id, sp_record_nfc_scans.checkpoint_id,
      sp_record_nfc_scans.app_version, left(sp_record_nfc_scans.user_agent, 512), sp_record_nfc_scans.staff_user_id)
    on conflict on constraint devices_pkey do update
      set point_of_sale_id = excluded.point_of_sale_id, checkpoint_id = excluded.checkpoint_id,
        app_version = coalesce(excluded.app_version, ops.devices.app_version),
        user_agent = coalesce(excluded.user_agent, ops.devices.user_agent),
        last_staff_user_id = excluded.last_staff_user_id, last_seen_at = now();
    v_result := jsonb_build_object('ok', true, 'replayed', v_stored = 0, 'device_id', sp_record_nfc_scans.device_id,
      'received', v_count, 'stored', v_stored, 'already_stored', v_count - v_stored);
  end if;
  perform ops.log_attempt('nfc_scans', v_result, null, sp_record_nfc_scans.staff_user_id,
    p_details => jsonb_strip_nulls(jsonb_build_object('device_id', sp_record_nfc_scans.device_id, 'scans', v_count,
      'point_of_sale_id', sp_record_nfc_scans.point_of_sale_id, 'checkpoint_id', sp_record_nfc_scans.checkpoint_id)));
  return v_result;
end;
$$;
revoke execute on function public.sp_record_nfc_scans(uuid, text, jsonb, text, text, text, text) from public, anon, authenticated;
grant execute on function public.sp_record_nfc_scans(uuid, text, jsonb, text, text, text, text) to service_role, edge_functions;
