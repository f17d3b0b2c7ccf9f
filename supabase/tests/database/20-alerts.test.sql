-- Alerts (ops.alerts, ops.alert_kinds): one row per unresolved kind and subject whatever writes
-- it (ops.raise_alert, ops.raise_subject_alert, a direct insert), refreshed with count, last seen
-- and a severity that only rises; acknowledged with a note and resolved by an admin, idempotently;
-- a resolved alert's next occurrence is a new alert; listing with filters; denied roles.
begin;
create extension if not exists pgtap with schema extensions;
select plan(33);

create temp table responses (name text primary key, result jsonb not null);
create function pg_temp.response(p_name text) returns jsonb
language sql stable as $$ select result from responses where name = p_name $$;
create function pg_temp.admin() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000a001'::uuid $$;
create function pg_temp.bartender() returns uuid language sql immutable as $$ select '00000000-0000-4000-8000-00000000b001'::uuid $$;

-- ---------------------------------------------------------------------------------------------
-- Kinds are a lookup table
-- ---------------------------------------------------------------------------------------------

select ok((select count(*) from ops.alert_kinds) >= 15, 'alert kinds: a row per kind');
select is_empty($$ select kind from ops.alert_kinds where description = '' or operator_action = '' $$,
  'alert kinds: each says what it means and what the operator does');
select throws_ok($$ select ops.raise_alert('no_such_kind', 'warning', 'DEMO-0001', null, '{}') $$,
  '23503', null, 'an unknown kind is refused (add a row to ops.alert_kinds first)');

-- ---------------------------------------------------------------------------------------------
-- Deduplicated: raised once, refreshed
-- ---------------------------------------------------------------------------------------------

select ops.raise_alert('payment_mismatch', 'warning', 'DEMO-0020', 'cs_alert_1', '{"attempt": 1}');
select ops.raise_alert('payment_mismatch', 'warning', 'DEMO-0020', 'cs_alert_1', '{"attempt": 2}');
select results_eq(
  $$ select count(*)::integer, min(occurrence_count), min(subject), min(status), min(details ->> 'attempt')
     from ops.alerts where kind = 'payment_mismatch' and subject = 'cs_alert_1' $$,
  $$ values (1, 2, 'cs_alert_1', 'open', '2') $$,
  'raise_alert twice: one open alert, count 2, subject = the Stripe object, latest details'
);
select ok((select last_seen_at >= first_seen_at from ops.alerts where subject = 'cs_alert_1'),
  'refresh: first and last seen kept');
-- A direct insert (as the credits code does) is deduplicated the same way.
insert into ops.alerts (kind, severity, stripe_object_id, details) values ('payment_mismatch', 'critical', 'cs_alert_1', '{}');
select results_eq(
  $$ select count(*)::integer, min(occurrence_count), min(severity), bool_and(escalated_at is not null)
     from ops.alerts where kind = 'payment_mismatch' and subject = 'cs_alert_1' $$,
  $$ values (1, 3, 'critical', true) $$,
  'a direct insert refreshes it too; a higher severity escalates it'
);
select ops.raise_alert('payment_mismatch', 'info', 'DEMO-0020', 'cs_alert_1', '{}');
select is((select severity from ops.alerts where subject = 'cs_alert_1'), 'critical', 'severity never drops on a refresh');
-- The richer variant names any subject; without a card or Stripe object the card is the subject.
select is(ops.raise_subject_alert('high_failure_rate', 'warning', 'point_of_sale:main-bar', '{"failed": 6}'),
  ops.raise_subject_alert('high_failure_rate', 'warning', 'point_of_sale:main-bar', '{"failed": 7}'),
  'raise_subject_alert: the same id for the same kind and subject');
select ops.raise_alert('dispute', 'critical', 'DEMO-0021', null, '{}');
select is((select subject from ops.alerts where kind = 'dispute' and card_id = 'DEMO-0021'), 'DEMO-0021',
  'no Stripe object: the card is the subject');
select is((select count(*)::integer from ops.alerts where kind = 'refund_receivable' and subject = 'cs_alert_1'), 0,
  'another kind with the same subject is another alert');

-- ---------------------------------------------------------------------------------------------
-- Acknowledge, resolve
-- ---------------------------------------------------------------------------------------------

create temp table ids as select id from ops.alerts where subject = 'cs_alert_1';
create function pg_temp.alert_id() returns bigint language sql stable as $$ select id from ids $$;

insert into responses select 'ack-bartender', public.sp_acknowledge_alert(pg_temp.alert_id(), pg_temp.bartender(), 'al-ack-b', 'on it');
select is(pg_temp.response('ack-bartender') #>> '{error,code}', 'forbidden', 'acknowledge: a bartender is forbidden');
select set_config('app.caller', 'user:00000000-0000-4000-8000-00000000b001', true);
insert into responses select 'ack-anonymous-user', public.sp_acknowledge_alert(pg_temp.alert_id(), null, 'al-ack-x', null);
select set_config('app.caller', '', true);
select is(pg_temp.response('ack-anonymous-user') #>> '{error,code}', 'forbidden',
  'acknowledge: no staff id is the service only, not a user');
insert into responses select 'ack', public.sp_acknowledge_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-ack', 'looking at Stripe');
select results_eq(
  $$ select (pg_temp.response('ack') ->> 'ok')::boolean, pg_temp.response('ack') #>> '{alert,status}',
       status, acknowledged_by, acknowledgement_note, acknowledged_at is not null
     from ops.alerts where id = pg_temp.alert_id() $$,
  $$ values (true, 'acknowledged', 'acknowledged', pg_temp.admin(), 'looking at Stripe', true) $$,
  'acknowledge: status, who, when and the note'
);
insert into responses select 'ack-replay', public.sp_acknowledge_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-ack', 'looking at Stripe');
select is(pg_temp.response('ack-replay') - 'replayed', pg_temp.response('ack') - 'replayed', 'acknowledge replay: the stored response');
select is(pg_temp.response('ack-replay') -> 'replayed', 'true'::jsonb, 'acknowledge replay: marked replayed');
insert into responses select 'ack-reused', public.sp_acknowledge_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-ack', 'another note');
select is(pg_temp.response('ack-reused') #>> '{error,code}', 'idempotency_key_reused', 'acknowledge: key reuse with another note');
insert into responses select 'ack-again', public.sp_acknowledge_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-ack-2', null);
select is(pg_temp.response('ack-again') #>> '{error,code}', 'alert_already_acknowledged', 'acknowledge twice: alert_already_acknowledged');

select ops.raise_alert('payment_mismatch', 'critical', 'DEMO-0020', 'cs_alert_1', '{}');
select results_eq(
  $$ select status, occurrence_count from ops.alerts where kind = 'payment_mismatch' and subject = 'cs_alert_1' $$,
  $$ values ('acknowledged', 5) $$,
  'an acknowledged alert is still refreshed, not repeated'
);

insert into responses select 'resolve', public.sp_resolve_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-resolve', 'refunded in Stripe');
select results_eq(
  $$ select status, resolved_by, resolution_note, resolved_at is not null from ops.alerts where id = pg_temp.alert_id() $$,
  $$ values ('resolved', pg_temp.admin(), 'refunded in Stripe', true) $$,
  'resolve: status, who, when and the note'
);
insert into responses select 'resolve-again', public.sp_resolve_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-resolve-2', null);
select is(pg_temp.response('resolve-again') #>> '{error,code}', 'alert_already_resolved', 'resolve twice: alert_already_resolved');
insert into responses select 'ack-resolved', public.sp_acknowledge_alert(pg_temp.alert_id(), pg_temp.admin(), 'al-ack-3', null);
select is(pg_temp.response('ack-resolved') #>> '{error,code}', 'alert_already_resolved', 'acknowledge a resolved alert: alert_already_resolved');
insert into responses select 'missing', public.sp_resolve_alert(-1, pg_temp.admin(), 'al-missing', null);
select is(pg_temp.response('missing') #>> '{error,code}', 'alert_not_found', 'resolve: alert_not_found');
insert into responses select 'service-resolve', public.sp_resolve_alert(
  (select id from ops.alerts where kind = 'dispute' and subject = 'DEMO-0021'), null, 'al-service', 'closed by a script');
select is(pg_temp.response('service-resolve') #>> '{alert,status}', 'resolved', 'the service (no staff id) may resolve');

select ops.raise_alert('payment_mismatch', 'warning', 'DEMO-0020', 'cs_alert_1', '{}');
select results_eq(
  $$ select status, occurrence_count, severity from ops.alerts where kind = 'payment_mismatch' and subject = 'cs_alert_1' order by id $$,
  $$ values ('resolved', 5, 'critical'), ('open', 1, 'warning') $$,
  'after resolving, the next occurrence is a new alert'
);

-- ---------------------------------------------------------------------------------------------
-- Listing
-- ---------------------------------------------------------------------------------------------

insert into responses select 'list-open', public.sp_list_alerts(pg_temp.admin(), 'open', null, 'payment_mismatch', 'cs_alert_1', 10);
select results_eq(
  $$ select jsonb_array_length(pg_temp.response('list-open') -> 'alerts'),
       pg_temp.response('list-open') #>> '{alerts,0,status}', (pg_temp.response('list-open') #>> '{alerts,0,count}')::integer,
       pg_temp.response('list-open') #>> '{alerts,0,operator_action}' is not null $$,
  $$ values (1, 'open', 1, true) $$,
  'list: filters by status, kind and subject; each alert says what to do'
);
insert into responses select 'list-resolved', public.sp_list_alerts(pg_temp.admin(), 'resolved', 'critical', null, null, 100);
select ok((select bool_and(a ->> 'status' = 'resolved' and a ->> 'severity' = 'critical')
  from jsonb_array_elements(pg_temp.response('list-resolved') -> 'alerts') a)
  and jsonb_array_length(pg_temp.response('list-resolved') -> 'alerts') >= 2, 'list: filters by status and severity');
select is(public.sp_list_alerts(pg_temp.bartender()) #>> '{error,code}', 'forbidden', 'list: a bartender is forbidden');
select throws_ok($$ select public.sp_list_alerts(pg_temp.admin(), 'closed') $$, '22023', null, 'list: an unknown status is 22023');
select throws_ok($$ select public.sp_resolve_alert(1, pg_temp.admin(), '', null) $$, '22023', null,
  'resolve: an empty client_request_id is 22023');
select is((select count(*)::integer from ops.app_transaction_log where operation_type in ('acknowledge_alert', 'resolve_alert')), 11,
  'every acknowledge and resolve attempt is logged');

-- ---------------------------------------------------------------------------------------------
-- Every kind of ops.alert_kinds (also kinds added later): raised once, refreshed, acknowledged, resolved
-- ---------------------------------------------------------------------------------------------

select ops.raise_subject_alert(k.kind, null, 'lifecycle:' || k.kind, '{"n": 1}') from ops.alert_kinds k;
select ops.raise_subject_alert(k.kind, null, 'lifecycle:' || k.kind, '{"n": 2}') from ops.alert_kinds k;
select results_eq(
  $$ select k.kind, count(a.id)::integer, min(a.occurrence_count), min(a.severity) = k.default_severity
     from ops.alert_kinds k left join ops.alerts a on a.kind = k.kind and a.subject = 'lifecycle:' || k.kind
     group by k.kind, k.default_severity order by 1 $$,
  $$ select kind, 1, 2, true from ops.alert_kinds order by 1 $$,
  'every kind: raised once at its default severity, refreshed to count 2'
);
select public.sp_acknowledge_alert(a.id, pg_temp.admin(), 'lifecycle-ack-' || a.kind, 'seen')
from ops.alerts a where a.subject like 'lifecycle:%';
select is_empty($$ select kind from ops.alerts where subject like 'lifecycle:%' and status <> 'acknowledged' $$,
  'every kind: acknowledged');
select public.sp_resolve_alert(a.id, pg_temp.admin(), 'lifecycle-resolve-' || a.kind, 'done')
from ops.alerts a where a.subject like 'lifecycle:%';
select is_empty($$ select kind from ops.alerts where subject like 'lifecycle:%' and status <> 'resolved' $$,
  'every kind: resolved');

select * from finish();
rollback;
