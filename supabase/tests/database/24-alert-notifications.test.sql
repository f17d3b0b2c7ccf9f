-- Alert notifications (ops.alert_notifications): one per alert state (raised, escalated), never
-- for a refresh; claimed by one sender at a time; failures retried with exponential backoff up
-- to 8 attempts; old ones expire.
begin;
create extension if not exists pgtap with schema extensions;
select plan(10);

create function pg_temp.states(p_subject text) returns text[] language sql stable as $$
  select array_agg(n.state || '/' || n.status order by n.id) from ops.alert_notifications n
  join ops.alerts a on a.id = n.alert_id where a.subject = p_subject
$$;

-- Nothing else due: this file's notifications are the only ones a claim can return.
update ops.alert_notifications set status = 'delivered' where status in ('pending', 'sending');

select ops.raise_alert('dispute', 'warning', 'DEMO-0040', 'dp_notify_1', '{}');
select is(pg_temp.states('dp_notify_1'), array['raised:warning/pending'], 'a new alert queues one notification');
select ops.raise_alert('dispute', 'warning', 'DEMO-0040', 'dp_notify_1', '{}');
select ops.raise_alert('dispute', 'info', 'DEMO-0040', 'dp_notify_1', '{}');
select is(pg_temp.states('dp_notify_1'), array['raised:warning/pending'], 'refreshes queue nothing');
select ops.raise_alert('dispute', 'critical', 'DEMO-0040', 'dp_notify_1', '{}');
select is(pg_temp.states('dp_notify_1'), array['raised:warning/pending', 'escalated:critical/pending'],
  'an escalation queues one more');

select set_config('app.caller', 'user:00000000-0000-4000-8000-00000000a001', true);
select is(public.sp_claim_alert_notifications(10) #>> '{error,code}', 'forbidden', 'only the service claims notifications');
select set_config('app.caller', '', true);
create temp table claim as select public.sp_claim_alert_notifications(10) as result;
select is((select jsonb_array_length(result -> 'notifications') from claim), 2, 'a claim returns the due notifications');
select is((select jsonb_array_length(public.sp_claim_alert_notifications(10) -> 'notifications')), 0,
  'claimed notifications are not claimed again while their lease runs');
select ok((select result #>> '{notifications,0,payload,text}' like '%dispute%' from claim), 'the payload is Slack-compatible text');

select public.sp_record_alert_deliveries(jsonb_build_array(
  jsonb_build_object('id', (select (result #>> '{notifications,0,id}')::bigint from claim), 'delivered', true, 'http_status', 200),
  jsonb_build_object('id', (select (result #>> '{notifications,1,id}')::bigint from claim), 'delivered', false, 'http_status', 500,
    'error', 'HTTP 500')));
select results_eq(
  $$ select n.status, n.attempts, n.next_attempt_at > now() + interval '29 seconds', n.last_error
     from ops.alert_notifications n join ops.alerts a on a.id = n.alert_id where a.subject = 'dp_notify_1' order by n.id $$,
  $$ values ('delivered', 1, false, null::text), ('pending', 1, true, 'HTTP 500') $$,
  'delivered and failed deliveries recorded; the failure waits 30 s'
);
-- The eighth failed attempt is the last.
update ops.alert_notifications n set attempts = 7, next_attempt_at = now() from ops.alerts a
where a.id = n.alert_id and a.subject = 'dp_notify_1' and n.status = 'pending';
select public.sp_record_alert_deliveries((select jsonb_agg(jsonb_build_object('id', (n ->> 'id')::bigint, 'delivered', false))
  from jsonb_array_elements(public.sp_claim_alert_notifications(10) -> 'notifications') n));
select is(pg_temp.states('dp_notify_1'), array['raised:warning/delivered', 'escalated:critical/failed'],
  'after 8 attempts a notification is failed');

update ops.alert_notifications n set status = 'pending', created_at = now() - interval '2 days' from ops.alerts a
where a.id = n.alert_id and a.subject = 'dp_notify_1' and n.status = 'failed';
select is((select jsonb_array_length(public.sp_claim_alert_notifications(10) -> 'notifications')), 0,
  'a notification older than a day expires instead of being sent');

select * from finish();
rollback;
