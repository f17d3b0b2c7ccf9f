-- Operations, part 4: the numbers behind the `metrics` function (Prometheus text exposition,
-- docs/architecture.md §1, `ops`). Functions are stateless, so every number is computed from the
-- database at each scrape, in one procedure. Names follow Prometheus conventions: base units in
-- the name (`_cents`), `_total` for counters (values that only grow), no suffix for gauges.
--
-- Counters are totals over what the database keeps: sales, recharges and webhook events are kept
-- for good; attempt counts read ops.app_transaction_log (kept for good too). The scan log is
-- trimmed by its retention, so scans are a gauge of what the log holds.

/** One metric family: name, help, type and samples ({labels, value}). */
create function ops.metric(p_name text, p_help text, p_type text, p_samples jsonb) returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('name', p_name, 'help', p_help, 'type', p_type, 'samples', coalesce(p_samples, '[]'::jsonb))
$$;

create function public.sp_metrics()
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  -- The attempt log is read once per scrape (it is the largest table): every count by operation,
  -- status, error code and point of sale, then each family sums what it needs.
  with attempts as materialized (
    select l.operation_type, l.status, l.error_code, l.details ->> 'point_of_sale_id' as point_of_sale_id, count(*) as attempts
    from ops.app_transaction_log l
    group by 1, 2, 3, 4
  )
  select jsonb_build_object('ok', true, 'metrics', jsonb_build_array(
    ops.metric('festival_bar_sales_cents_total', 'Items sold at the bars, in cents (deposits not included).', 'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('point_of_sale', p.id), 'value', coalesce(s.cents, 0))
         order by p.id)
       from festival.points_of_sale p
       left join (select o.point_of_sale_id, sum(i.line_total_cents) as cents
                  from festival.bar_order_items i join festival.bar_orders o on o.id = i.order_id
                  where i.product_kind = 'item' group by o.point_of_sale_id) s on s.point_of_sale_id = p.id)),
    ops.metric('festival_bar_orders_total', 'Bar order attempts by point of sale and outcome (success, failed, replayed, rejected).',
      'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('point_of_sale', f.point_of_sale, 'outcome', f.status),
         'value', f.attempts) order by f.point_of_sale, f.status)
       from (select coalesce(a.point_of_sale_id, 'unknown') as point_of_sale, a.status, sum(a.attempts) as attempts
             from attempts a where a.operation_type = 'bar_order' group by 1, 2) f)),
    ops.metric('festival_recharges_cents_total', 'Completed recharges in cents (bonus not included) by method and checkpoint.',
      'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('method', f.payment_method, 'checkpoint', f.checkpoint),
         'value', f.cents) order by f.payment_method, f.checkpoint)
       from (select r.payment_method, coalesce(r.checkpoint_id, 'online') as checkpoint, sum(r.amount_cents) as cents
             from festival.recharges r where r.status = 'completed' group by 1, 2) f)),
    ops.metric('festival_recharges_total', 'Completed recharges by method and checkpoint.', 'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('method', f.payment_method, 'checkpoint', f.checkpoint),
         'value', f.recharges) order by f.payment_method, f.checkpoint)
       from (select r.payment_method, coalesce(r.checkpoint_id, 'online') as checkpoint, count(*) as recharges
             from festival.recharges r where r.status = 'completed' group by 1, 2) f)),
    ops.metric('festival_online_topups', 'Online (Stripe) top-ups by status.', 'gauge',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('status', s.status), 'value',
         (select count(*) from festival.recharges r where r.payment_method = 'stripe' and r.status = s.status)) order by s.status)
       from (values ('completed'), ('failed'), ('pending')) s (status))),
    ops.metric('idempotent_replays_total', 'Requests answered from a stored response (same key, same request), by operation.',
      'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('operation', f.operation_type), 'value', f.replays)
         order by f.operation_type)
       from (select a.operation_type, sum(a.attempts) as replays from attempts a where a.status = 'replayed' group by 1) f)),
    ops.metric('festival_duplicate_taps_total', 'Bar orders refused as suspected duplicate taps, by point of sale.', 'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('point_of_sale', f.point_of_sale), 'value', f.taps)
         order by f.point_of_sale)
       from (select coalesce(a.point_of_sale_id, 'unknown') as point_of_sale, sum(a.attempts) as taps
             from attempts a where a.error_code = 'duplicate_tap_suspected' group by 1) f)),
    ops.metric('failed_attempts_total', 'Attempts refused with a business error, by error code.', 'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('code', f.code), 'value', f.failures) order by f.code)
       from (select coalesce(a.error_code, 'unknown') as code, sum(a.attempts) as failures
             from attempts a where a.status in ('failed', 'rejected') group by 1) f)),
    ops.metric('ops_open_alerts', 'Unresolved alerts by severity.', 'gauge',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('severity', s.severity), 'value',
         (select count(*) from ops.alerts a where a.status <> 'resolved' and a.severity = s.severity)) order by s.severity)
       from (values ('critical'), ('info'), ('warning')) s (severity))),
    ops.metric('festival_card_liabilities_cents', 'Sum of all card balances: what the festival owes card holders.', 'gauge',
      jsonb_build_array(jsonb_build_object('labels', '{}'::jsonb, 'value',
        (select coalesce(sum(a.balance_cents), 0) from festival.cards c join ledger.accounts a on a.id = c.account_id)))),
    ops.metric('festival_deposits_held_cents', 'Cup deposits the festival holds (sold and not yet returned).', 'gauge',
      jsonb_build_array(jsonb_build_object('labels', '{}'::jsonb, 'value',
        (select coalesce(sum(d.held_cents), 0) from festival.deposits_outstanding d)))),
    ops.metric('stripe_webhook_events_total', 'Stripe webhook events processed, by event type and outcome.', 'counter',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('type', f.type, 'outcome', f.outcome), 'value', f.events)
         order by f.type, f.outcome)
       from (select e.type, coalesce(e.result #>> '{error,code}', e.result ->> 'outcome', 'ok') as outcome, count(*) as events
             from festival.stripe_events e group by 1, 2) f)),
    ops.metric('nfc_scans', 'Scans in the NFC scan log (kept for the retention period), by status.', 'gauge',
      (select jsonb_agg(jsonb_build_object('labels', jsonb_build_object('status', s.status), 'value',
         (select count(*) from ops.nfc_scan_log n where n.status = s.status)) order by s.status)
       from (values ('blocked'), ('duplicate_ignored'), ('ok'), ('unknown_card'), ('unreadable')) s (status))),
    ops.metric('ledger_reconcile_discrepancies', 'Rows ledger_reconcile() returns now: zero when everything ties out.', 'gauge',
      jsonb_build_array(jsonb_build_object('labels', '{}'::jsonb, 'value', (select count(*) from public.ledger_reconcile()))))
  ))
$$;
revoke execute on function public.sp_metrics() from public, anon, authenticated;
grant execute on function public.sp_metrics() to service_role, edge_functions;
