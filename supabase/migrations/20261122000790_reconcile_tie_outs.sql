-- Reconciliation that sees the business records, not only the ledger. Until now
-- ledger_reconcile() compared balances with transfers: an order recorded with one total but
-- charged another, or a journal row with no transfer behind it, went unnoticed. Each check below
-- ties a record to the transfers of its own operation and names the record when they differ.
-- And each kind of system account has the sign its money must have.

/** The net movement of each account in each operation: what came in minus what went out. */
create function ledger.operation_account_net(p_operation_ids bigint[])
returns table (operation_id bigint, account_id bigint, net_cents bigint)
language sql stable
set search_path = ''
as $$
  select movement.operation_id, movement.account_id, sum(movement.delta)::bigint
  from (
    select t.operation_id, t.to_account_id as account_id, t.amount_cents as delta
    from ledger.transfers t where t.operation_id = any (p_operation_ids)
    union all
    select t.operation_id, t.from_account_id, -t.amount_cents
    from ledger.transfers t where t.operation_id = any (p_operation_ids)
  ) as movement
  group by movement.operation_id, movement.account_id
$$;

/**
 * System accounts whose total has the wrong sign. Money comes into the festival through cash
 * drawers, card terminals and promotions (their balances go negative as they fund cards) and
 * ends in bar revenue and deposits held (never negative). Each shard of the deposits held is
 * checked too, since returns take from a shard.
 */
create function ledger.system_sign_checks()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql stable
set search_path = ''
as $$
  with totals as (
    select system_purpose, owner_ref, sum(balance_cents)::bigint as balance_cents
    from ledger.account_balances where kind = 'system'
    group by system_purpose, owner_ref
  )
  select 'system_account_sign', null::bigint, system_purpose || ':' || owner_ref, 0::bigint, balance_cents,
    format('%s:%s must be %s zero', system_purpose, owner_ref,
      case when system_purpose in ('bar_revenue', 'deposits_held') then 'at least' else 'at most' end)
  from totals
  where (system_purpose in ('bar_revenue', 'deposits_held') and balance_cents < 0)
    or (system_purpose in ('cash_drawer', 'card_terminal', 'promotions') and balance_cents > 0)
  union all
  select 'system_account_sign', b.account_id, b.code, 0::bigint, b.balance_cents,
    'a shard of the deposits held is below zero'
  from ledger.account_balances b
  where b.system_purpose = 'deposits_held' and b.balance_cents < 0
  union all
  select 'card_liabilities_sign', null::bigint, null::text, 0::bigint, sum(a.balance_cents)::bigint,
    'the cards together hold less than nothing'
  from ledger.accounts a where a.kind = 'card'
  having sum(a.balance_cents) < 0
$$;

/**
 * Festival records against their operations:
 *   bar_order_total       the card moved by the order's operation differs from its total, or the
 *                         lines do not add up to it
 *   recharge_amount       a completed recharge's amount plus bonus differs from what its
 *                         operation credited to the card
 *   bar_order_revenue     the bar's revenue moved by the order's operation differs from its items
 *   recharge_source       the drawer, terminal or Stripe clearing (and promotions, for the bonus)
 *                         did not fund the recharge's operation by exactly its amount (and bonus)
 *   deposits_outstanding  a shard of festival.deposits_outstanding differs from the ledger, or
 *                         its row is missing
 *   card_dispute_hold     an open card dispute's hold account does not hold the disputed amount and
 *                         its bonus (from the card and receivables), or a closed one holds anything
 *   refund_reversal       what an online recharge says was refunded and reversed (money plus
 *                         bonus) differs from what its refund operations (and restored failed
 *                         refunds) moved back to Stripe clearing and promotions
 */
create function festival.tie_out_checks()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql stable
set search_path = ''
as $$
  with orders as (
    select o.id, o.operation_id, o.total_cents, c.account_id,
      (select coalesce(sum(i.line_total_cents), 0) from festival.bar_order_items i where i.order_id = o.id)::bigint
        as lines_cents
    from festival.bar_orders o left join festival.cards c on c.id = o.card_id
  ),
  order_moves as (
    select * from ledger.operation_account_net((select array_agg(operation_id) from orders))
  ),
  recharges as (
    select r.id, r.operation_id, r.amount_cents + r.bonus_cents as credited_cents, c.account_id
    from festival.recharges r join festival.cards c on c.id = r.card_id
    where r.status = 'completed'
  ),
  recharge_moves as (
    select * from ledger.operation_account_net((select array_agg(operation_id) from recharges))
  ),
  refund_moves as (
    select (o.metadata ->> 'recharge_id')::bigint as recharge_id,
      sum(case when a.id = t.to_account_id then t.amount_cents else -t.amount_cents end)::bigint as reversed_cents
    from ledger.operations o
    join ledger.transfers t on t.operation_id = o.id
    join ledger.accounts a on a.id in (t.to_account_id, t.from_account_id)
      and a.system_purpose in ('stripe_clearing', 'promotions')
    where o.kind in ('stripe_refund', 'stripe_refund_failed') and o.metadata ? 'recharge_id'
    group by 1
  )
  select 'bar_order_total', o.account_id, null::text, -o.total_cents, coalesce(m.net_cents, 0),
    format('bar order %s: the card moved by %s, the order says %s', o.id, coalesce(m.net_cents, 0), -o.total_cents)
  from orders o left join order_moves m on m.operation_id = o.operation_id and m.account_id = o.account_id
  where coalesce(m.net_cents, 0) <> -o.total_cents
  union all
  select 'bar_order_total', o.account_id, null::text, o.total_cents, o.lines_cents,
    format('bar order %s: its lines add up to %s, its total is %s', o.id, o.lines_cents, o.total_cents)
  from orders o
  where o.lines_cents <> o.total_cents
  union all
  select 'recharge_amount', r.account_id, null::text, r.credited_cents, coalesce(m.net_cents, 0),
    format('recharge %s: amount plus bonus is %s, its operation credited %s', r.id, r.credited_cents,
      coalesce(m.net_cents, 0))
  from recharges r left join recharge_moves m on m.operation_id = r.operation_id and m.account_id = r.account_id
  where coalesce(m.net_cents, 0) <> r.credited_cents
  union all
  select 'bar_order_revenue', null::bigint, 'bar_revenue:' || o.point_of_sale_id, o.items_cents,
    coalesce(revenue.net_cents, 0),
    format('bar order %s: its items are %s, the revenue of %s moved by %s', o.id, o.items_cents, o.point_of_sale_id,
      coalesce(revenue.net_cents, 0))
  from (
    select bar_order.id, bar_order.operation_id, bar_order.point_of_sale_id,
      (select coalesce(sum(i.line_total_cents), 0) from festival.bar_order_items i
       where i.order_id = bar_order.id and i.product_kind = 'item')::bigint as items_cents
    from festival.bar_orders bar_order
  ) o
  left join lateral (
    select sum(m.net_cents)::bigint as net_cents
    from order_moves m join ledger.accounts a on a.id = m.account_id
    where m.operation_id = o.operation_id and a.system_purpose = 'bar_revenue' and a.owner_ref = o.point_of_sale_id
  ) revenue on true
  where coalesce(revenue.net_cents, 0) <> o.items_cents
  union all
  select 'recharge_source', null::bigint, source.purpose || ':' || source.owner_ref, source.expected_cents,
    coalesce(funded.net_cents, 0),
    format('recharge %s: %s:%s should have funded %s, it moved %s', source.id, source.purpose, source.owner_ref,
      -source.expected_cents, coalesce(-funded.net_cents, 0))
  from (
    select r.id, r.operation_id, case r.payment_method when 'cash' then 'cash_drawer' when 'card' then 'card_terminal'
        else 'stripe_clearing' end as purpose,
      case when r.payment_method = 'stripe' then 'stripe' else r.checkpoint_id end as owner_ref,
      -r.amount_cents as expected_cents
    from festival.recharges r where r.status = 'completed'
    union all
    select r.id, r.operation_id, 'promotions', 'festival', -r.bonus_cents
    from festival.recharges r where r.status = 'completed'
  ) source
  left join lateral (
    select sum(m.net_cents)::bigint as net_cents
    from recharge_moves m join ledger.accounts a on a.id = m.account_id
    where m.operation_id = source.operation_id and a.system_purpose = source.purpose and a.owner_ref = source.owner_ref
  ) funded on true
  where coalesce(funded.net_cents, 0) <> source.expected_cents
  union all
  select 'refund_reversal', null::bigint, null::text, r.refunded_cents + r.bonus_reversed_cents,
    coalesce(m.reversed_cents, 0),
    format('recharge %s: %s refunded and %s of its bonus reversed, its refund operations moved back %s', r.id,
      r.refunded_cents, r.bonus_reversed_cents, coalesce(m.reversed_cents, 0))
  from festival.recharges r left join refund_moves m on m.recharge_id = r.id
  where r.payment_method = 'stripe' and r.refunded_cents + r.bonus_reversed_cents <> coalesce(m.reversed_cents, 0)
  union all
  select 'card_dispute_hold', d.hold_account_id, a.code,
    case when d.status = 'open' then d.amount_cents + d.bonus_cents else 0 end, a.balance_cents,
    format('dispute %s (%s) of recharge %s: the hold should hold %s, it holds %s', d.stripe_dispute_id, d.status,
      d.recharge_id, case when d.status = 'open' then d.amount_cents + d.bonus_cents else 0 end, a.balance_cents)
  from festival.card_disputes d join ledger.accounts a on a.id = d.hold_account_id
  where a.balance_cents <> case when d.status = 'open' then d.amount_cents + d.bonus_cents else 0 end
  union all
  select 'deposits_outstanding', b.account_id, b.code, b.balance_cents, d.held_cents,
    format('deposits held shard %s: the counter says %s, the ledger %s', a.shard, coalesce(d.held_cents::text, 'nothing'),
      b.balance_cents)
  from ledger.accounts a
  join ledger.account_balances b on b.account_id = a.id
  left join festival.deposits_outstanding d on d.shard = a.shard
  where a.kind = 'system' and a.system_purpose = 'deposits_held' and a.owner_ref = 'festival'
    and b.balance_cents is distinct from d.held_cents
$$;

/**
 * Credit records against their journal rows (and through them, the ledger, which credit_checks
 * ties to the journal):
 *   booking_journal     a booking whose payer's debit or the treating practitioner's earning in
 *                       its operation differs from the booking's credits
 *   allocation_journal  an allocation whose journal row differs from its credits
 *   purchase_journal    a completed purchase whose journal row differs from its credits
 *   hold_journal        a hold whose lock row differs from its amount
 *   purchase_refund     a purchase's reversed credits differ from what its refund operations took
 *                       back plus what they left as receivables
 *   credit_dispute_hold the credits held for open disputes differ from what the credit_disputes
 *                       account holds
 *   hold_release        a released hold whose release operation did not move exactly its amount
 *                       from the hold to the client (unlocked) or to the named provider (paid out)
 */
create function credits.tie_out_checks()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql stable
set search_path = ''
as $$
  select 'booking_journal', null::bigint, null::text, b.credits, journal.debit_credits,
    format('booking %s: %s credits, the payer was debited %s and the treating practitioner earned %s', b.booking_id,
      b.credits, journal.debit_credits, journal.earning_credits)
  from credits.booking_payments b
  cross join lateral (
    select
      coalesce(-sum(t.amount_credits) filter (
        where t.user_id = b.booking_practitioner_id and t.type = 'peer_booking_debit'), 0)::bigint as debit_credits,
      coalesce(sum(t.amount_credits) filter (
        where t.user_id = b.treating_practitioner_id and t.type = 'session_earning'), 0)::bigint as earning_credits
    from credits.credit_transactions t where t.operation_id = b.operation_id
  ) journal
  where journal.debit_credits <> b.credits or journal.earning_credits <> b.credits
  union all
  select 'allocation_journal', null::bigint, null::text, a.credits, coalesce(journal.moved, 0)::bigint,
    format('allocation %s from %s: %s credits, the journal says %s', a.subscription_id, a.period_start, a.credits,
      coalesce(journal.moved, 0))
  from credits.allocations a
  left join lateral (
    select sum(t.amount_credits) as moved from credits.credit_transactions t
    where t.operation_id = a.operation_id and t.user_id = a.user_id and t.type = 'monthly_allocation'
  ) journal on true
  where journal.moved is distinct from a.credits
  union all
  select 'purchase_journal', null::bigint, null::text, p.credits, coalesce(journal.moved, 0)::bigint,
    format('purchase %s: %s credits, the journal says %s', p.stripe_session_id, p.credits, coalesce(journal.moved, 0))
  from credits.credit_purchases p
  left join lateral (
    select sum(t.amount_credits) as moved from credits.credit_transactions t
    where t.operation_id = p.operation_id and t.user_id = p.user_id and t.type = 'purchase'
  ) journal on true
  where p.status = 'completed' and journal.moved is distinct from p.credits
  union all
  select 'purchase_refund', null::bigint, null::text, p.credits_reversed, coalesce(taken.credits, 0) + coalesce(owed.credits, 0),
    format('purchase %s: %s credits reversed, its refunds took back %s and left %s owed', p.stripe_session_id,
      p.credits_reversed, coalesce(taken.credits, 0), coalesce(owed.credits, 0))
  from credits.credit_purchases p
  left join (
    select o.metadata ->> 'stripe_session_id' as stripe_session_id, sum(t.amount_cents)::bigint as credits
    from ledger.operations o
    join ledger.transfers t on t.operation_id = o.id
    join ledger.accounts a on a.id = t.to_account_id and a.system_purpose = 'credit_issuance'
    where o.kind = 'credit_purchase_refund'
    group by 1
  ) taken on taken.stripe_session_id = p.stripe_session_id
  left join (
    select r.stripe_session_id, sum(r.amount_credits)::bigint as credits
    from credits.receivables r where r.reason = 'stripe_refund' and r.stripe_session_id is not null
    group by 1
  ) owed on owed.stripe_session_id = p.stripe_session_id
  where p.credits_reversed <> coalesce(taken.credits, 0) + coalesce(owed.credits, 0)
  union all
  select 'credit_dispute_hold', null::bigint, 'credit_disputes', held.credits, coalesce(ledger_side.credits, 0),
    format('open credit disputes hold %s credits, the credit_disputes account holds %s', held.credits,
      coalesce(ledger_side.credits, 0))
  from (select coalesce(sum(held_credits), 0)::bigint as credits from credits.dispute_holds where status = 'held') held
  cross join (
    select sum(balance_cents)::bigint as credits from ledger.account_balances where system_purpose = 'credit_disputes'
  ) ledger_side
  where held.credits <> coalesce(ledger_side.credits, 0)
  union all
  select 'hold_journal', h.account_id, null::text, h.amount_credits, coalesce(journal.moved, 0)::bigint,
    format('hold %s: %s credits locked, the journal says %s', h.order_id, h.amount_credits, coalesce(journal.moved, 0))
  from credits.escrow_holds h
  left join lateral (
    select -sum(t.amount_credits) as moved from credits.credit_transactions t
    where t.operation_id = h.lock_operation_id and t.user_id = h.client_user_id and t.type = 'lock'
  ) journal on true
  where journal.moved is distinct from h.amount_credits
  union all
  select 'hold_release', h.account_id, null::text, h.amount_credits, coalesce(released.to_recipient, 0)::bigint,
    format('hold %s of %s (%s): %s credits, the release moved %s out of the hold and %s to %s', h.order_id,
      h.client_user_id, h.status, h.amount_credits, coalesce(-released.from_hold, 0), coalesce(released.to_recipient, 0),
      case h.status when 'unlocked' then 'the client' else 'the provider' end)
  from credits.escrow_holds h
  left join lateral (
    select
      sum(t.amount_cents) filter (where t.from_account_id = h.account_id) * -1 as from_hold,
      sum(t.amount_cents) filter (where t.to_account_id = (
        select ua.account_id from credits.user_accounts ua
        where ua.user_id = case h.status when 'unlocked' then h.client_user_id else h.provider_id end)) as to_recipient
    from ledger.transfers t where t.operation_id = h.release_operation_id
  ) released on true
  where h.status in ('unlocked', 'paid_out')
    and (released.from_hold is distinct from -h.amount_credits or released.to_recipient is distinct from h.amount_credits)
$$;

/** Every check of the deployment: one row per discrepancy, none when everything ties out. */
create or replace function public.ledger_reconcile()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql
stable
security definer
set search_path = ''
as $$
  select * from ledger.ledger_checks()
  union all
  select * from ledger.system_sign_checks()
  union all
  select * from festival.tie_out_checks()
  union all
  select * from credits.credit_checks()
  union all
  select * from credits.tie_out_checks()
$$;
revoke execute on function public.ledger_reconcile() from public, anon, authenticated;
grant execute on function public.ledger_reconcile() to service_role, edge_functions;
