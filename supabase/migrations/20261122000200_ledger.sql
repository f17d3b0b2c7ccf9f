-- Ledger kernel: accounts, immutable double-entry transfers, operations, idempotency keys, the
-- attempt log and reconciliation (DESIGN §4, §5). Every product (festival cards, practitioner
-- credits) moves money only through `ledger.post_transfers`.
--
-- Balances:
--   * customer accounts (cards, user credits, escrow holds) store their balance on the row, are
--     locked (sorted by id) by every operation that touches them, and can never go below zero;
--   * system accounts (bar revenue, cash drawers, deposits held, Stripe clearing, ...) never store
--     a balance: it is derived from their transfers (`ledger.account_balances`). Nothing locks or
--     updates them, so sales at one bar do not queue behind each other. Each system account is
--     also split into SYSTEM_SHARDS sub-accounts chosen by a hash of the customer, which keeps the
--     foreign-key share locks of concurrent transfers on different rows.
--   The sum of all balances is zero by construction; `public.ledger_reconcile()` proves it.

create schema if not exists ledger;
create schema if not exists ops;
revoke all on schema ledger from public, anon, authenticated;
revoke all on schema ops from public, anon, authenticated;

alter default privileges in schema ledger revoke execute on functions from public;
alter default privileges in schema ops revoke execute on functions from public;

-- ---------------------------------------------------------------------------------------------
-- Accounts
-- ---------------------------------------------------------------------------------------------

create table ledger.accounts (
  id bigint generated always as identity primary key,
  kind text not null check (kind in ('card', 'user_credit', 'escrow_hold', 'system')),
  -- Human-readable and unique: 'card:DEMO-0001', 'bar_revenue:main-bar#07', 'user_credit:<uuid>'.
  code text not null unique check (length(code) between 1 and 300),
  -- System accounts only: what the money is (bar_revenue, cash_drawer, ...), whose it is, which shard.
  system_purpose text,
  owner_ref text,
  shard smallint not null default 0 check (shard >= 0),
  balance_cents bigint not null default 0,
  balance_cents_max bigint check (balance_cents_max is null or balance_cents_max >= 0),
  created_at timestamptz not null default now(),
  -- Customer money can never be negative: a CHECK, not only an IF in the procedures.
  constraint customer_balance_not_negative check (kind = 'system' or balance_cents >= 0),
  constraint balance_within_maximum check (balance_cents_max is null or balance_cents <= balance_cents_max),
  -- System balances are derived from transfers and never stored.
  constraint system_balance_not_stored check (kind <> 'system' or balance_cents = 0),
  constraint system_accounts_have_purpose check ((kind = 'system') = (system_purpose is not null and owner_ref is not null))
);

create unique index accounts_system_shard_key on ledger.accounts (system_purpose, owner_ref, shard)
  where kind = 'system';

alter table ledger.accounts enable row level security;

-- Sub-accounts per hot system account. A power of two: the shard is the low bits of a hash.
create function ledger.system_shard_count() returns integer
language sql immutable parallel safe
set search_path = ''
as $$ select 16 $$;

create function ledger.shard_for(p_key text) returns smallint
language sql immutable parallel safe
set search_path = ''
as $$ select (hashtext(p_key) & (ledger.system_shard_count() - 1))::smallint $$;

/** Creates the shards of a system account (idempotent). */
create function ledger.ensure_system_account(p_purpose text, p_owner_ref text) returns void
language sql
set search_path = ''
as $$
  insert into ledger.accounts (kind, code, system_purpose, owner_ref, shard)
  select 'system', format('%s:%s#%s', p_purpose, p_owner_ref, lpad(shard::text, 2, '0')), p_purpose, p_owner_ref, shard
  from generate_series(0, ledger.system_shard_count() - 1) as shard
  on conflict do nothing
$$;

/** The shard of a system account that transfers for `p_shard_key` (a card, a user) use. */
create function ledger.system_account_id(p_purpose text, p_owner_ref text, p_shard_key text) returns bigint
language plpgsql stable
set search_path = ''
as $$
declare
  v_account_id bigint;
begin
  select id into v_account_id
  from ledger.accounts
  where kind = 'system' and system_purpose = p_purpose and owner_ref = p_owner_ref
    and shard = ledger.shard_for(p_shard_key);
  if v_account_id is null then
    raise exception 'system account %:% does not exist', p_purpose, p_owner_ref
      using errcode = 'no_data_found';
  end if;
  return v_account_id;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Operations and transfers (append-only)
-- ---------------------------------------------------------------------------------------------

create table ledger.operations (
  id bigint generated always as identity primary key,
  kind text not null check (length(kind) between 1 and 64),
  client_request_id text check (length(client_request_id) between 1 and 255),
  actor_user_id uuid,
  created_at timestamptz not null default now(),
  metadata jsonb not null default '{}'::jsonb
);
alter table ledger.operations enable row level security;

-- Transfers are written only by ledger.post_transfers with account ids it has just read and an
-- operation created in the same transaction; accounts and operations are never deleted. Foreign
-- keys would add a query and a share lock on hot system accounts to every leg of every sale, so
-- the references are proven by ledger_reconcile() (check `orphan_transfer`) instead.
create table ledger.transfers (
  id bigint generated always as identity primary key,
  operation_id bigint not null,
  from_account_id bigint not null,
  to_account_id bigint not null,
  amount_cents bigint not null check (amount_cents > 0),
  -- Set for customer accounts only (system balances are derived, see above).
  from_balance_before_cents bigint,
  from_balance_after_cents bigint,
  to_balance_before_cents bigint,
  to_balance_after_cents bigint,
  created_at timestamptz not null default now(),
  constraint transfer_between_two_accounts check (from_account_id <> to_account_id),
  constraint from_balances_consistent check (
    (from_balance_before_cents is null and from_balance_after_cents is null)
    or from_balance_after_cents = from_balance_before_cents - amount_cents),
  constraint to_balances_consistent check (
    (to_balance_before_cents is null and to_balance_after_cents is null)
    or to_balance_after_cents = to_balance_before_cents + amount_cents)
);
create index transfers_operation_id on ledger.transfers (operation_id);
create index transfers_from_account on ledger.transfers (from_account_id, id);
create index transfers_to_account on ledger.transfers (to_account_id, id);
alter table ledger.transfers enable row level security;

/** Transfers and operations are history: a correction is a new, linked operation. */
create function ledger.refuse_history_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception '% is append-only: % is not allowed', tg_table_schema || '.' || tg_table_name, lower(tg_op)
    using errcode = 'insufficient_privilege';
end;
$$;

create trigger transfers_append_only before update or delete on ledger.transfers
  for each row execute function ledger.refuse_history_change();
create trigger transfers_no_truncate before truncate on ledger.transfers
  for each statement execute function ledger.refuse_history_change();
create trigger operations_append_only before update or delete on ledger.operations
  for each row execute function ledger.refuse_history_change();
create trigger operations_no_truncate before truncate on ledger.operations
  for each statement execute function ledger.refuse_history_change();
create trigger accounts_never_deleted before delete on ledger.accounts
  for each row execute function ledger.refuse_history_change();

/** Balance of every account: stored for customer accounts, derived from transfers for system ones. */
create view ledger.account_balances with (security_invoker = true) as
select
  a.id as account_id,
  a.code,
  a.kind,
  a.system_purpose,
  a.owner_ref,
  case when a.kind = 'system'
    then coalesce(incoming.total, 0) - coalesce(outgoing.total, 0)
    else a.balance_cents
  end as balance_cents
from ledger.accounts a
left join (select to_account_id, sum(amount_cents) as total from ledger.transfers group by to_account_id) incoming
  on incoming.to_account_id = a.id
left join (select from_account_id, sum(amount_cents) as total from ledger.transfers group by from_account_id) outgoing
  on outgoing.from_account_id = a.id;

-- One leg of an operation: `amount_cents` from one account to another.
create type ledger.transfer_leg as (from_account_id bigint, to_account_id bigint, amount_cents bigint);

/**
 * The one function that moves money. Locks every customer account of the legs in id order (so
 * concurrent operations never deadlock), applies the legs in the order given, records the balance
 * before and after of each customer account, and returns the new transfer ids.
 *
 * Callers check funds first and return `insufficient_funds`; a customer balance that would go
 * below zero at any leg raises here (check_violation) and aborts the whole operation, and the
 * CHECK on the account is the last line of defence. Balances are computed in memory and written
 * once per account, the transfers in one insert: the fewer statements, the faster every sale.
 */
create function ledger.post_transfers(p_operation_id bigint, p_legs ledger.transfer_leg[])
returns bigint[]
language plpgsql
set search_path = ''
as $$
declare
  v_touched_ids bigint[] := array[]::bigint[];
  v_customer_ids bigint[];
  v_balances bigint[];
  v_leg ledger.transfer_leg;
  v_position integer;
  v_from_ids bigint[] := array[]::bigint[];
  v_to_ids bigint[] := array[]::bigint[];
  v_amounts bigint[] := array[]::bigint[];
  v_from_before bigint[] := array[]::bigint[];
  v_from_after bigint[] := array[]::bigint[];
  v_to_before bigint[] := array[]::bigint[];
  v_to_after bigint[] := array[]::bigint[];
  v_transfer_ids bigint[];
begin
  foreach v_leg in array p_legs loop
    if v_leg.amount_cents is null or v_leg.amount_cents <= 0 then
      raise exception 'transfer amount must be positive, got %', v_leg.amount_cents
        using errcode = 'invalid_parameter_value';
    end if;
    v_touched_ids := v_touched_ids || v_leg.from_account_id || v_leg.to_account_id;
  end loop;

  -- Lock the customer accounts in id order and read their balances. System accounts are not
  -- locked: their balance is derived from transfers.
  select coalesce(array_agg(locked.id order by locked.id), '{}'),
    coalesce(array_agg(locked.balance_cents order by locked.id), '{}')
  into v_customer_ids, v_balances
  from (
    select id, balance_cents from ledger.accounts
    where id = any (v_touched_ids) and kind <> 'system'
    order by id
    for update
  ) as locked;

  foreach v_leg in array p_legs loop
    v_from_ids := v_from_ids || v_leg.from_account_id;
    v_to_ids := v_to_ids || v_leg.to_account_id;
    v_amounts := v_amounts || v_leg.amount_cents;
    v_position := array_position(v_customer_ids, v_leg.from_account_id);
    if v_position is null then
      v_from_before := v_from_before || null::bigint;
      v_from_after := v_from_after || null::bigint;
    else
      if v_balances[v_position] < v_leg.amount_cents then
        raise exception 'account % would go below zero', v_leg.from_account_id
          using errcode = 'check_violation', hint = 'check the balance before moving money';
      end if;
      v_from_before := v_from_before || v_balances[v_position];
      v_balances[v_position] := v_balances[v_position] - v_leg.amount_cents;
      v_from_after := v_from_after || v_balances[v_position];
    end if;
    v_position := array_position(v_customer_ids, v_leg.to_account_id);
    if v_position is null then
      v_to_before := v_to_before || null::bigint;
      v_to_after := v_to_after || null::bigint;
    else
      v_to_before := v_to_before || v_balances[v_position];
      v_balances[v_position] := v_balances[v_position] + v_leg.amount_cents;
      v_to_after := v_to_after || v_balances[v_position];
    end if;
  end loop;

  update ledger.accounts as account
  set balance_cents = final.balance_cents
  from unnest(v_customer_ids, v_balances) as final(id, balance_cents)
  where account.id = final.id and account.balance_cents <> final.balance_cents;

  with inserted as (
    insert into ledger.transfers (
      operation_id, from_account_id, to_account_id, amount_cents,
      from_balance_before_cents, from_balance_after_cents, to_balance_before_cents, to_balance_after_cents)
    select p_operation_id, leg.from_id, leg.to_id, leg.amount, leg.from_before, leg.from_after, leg.to_before,
      leg.to_after
    from unnest(v_from_ids, v_to_ids, v_amounts, v_from_before, v_from_after, v_to_before, v_to_after)
      with ordinality as leg(from_id, to_id, amount, from_before, from_after, to_before, to_after, position)
    order by leg.position
    returning id
  )
  select array_agg(id order by id) into v_transfer_ids from inserted;
  return v_transfer_ids;
end;
$$;

-- Helpers called on every operation are PL/pgSQL, not SQL functions: PL/pgSQL keeps its plans for
-- the whole session, a non-inlined SQL function is planned again in every transaction.

create function ledger.create_operation(p_kind text, p_client_request_id text, p_actor_user_id uuid, p_metadata jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_operation_id bigint;
begin
  insert into ledger.operations (kind, client_request_id, actor_user_id, metadata)
  values (p_kind, p_client_request_id, p_actor_user_id, coalesce(p_metadata, '{}'::jsonb))
  returning id into v_operation_id;
  return v_operation_id;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Idempotency (DESIGN §5)
-- ---------------------------------------------------------------------------------------------

create table ledger.idempotency_keys (
  key text primary key check (length(key) between 1 and 255),
  operation text not null,
  request_fingerprint text not null,
  response jsonb not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null default now() + interval '24 hours'
);
-- BRIN: keys arrive in time order, and the purge only needs ranges. Nearly free to maintain.
create index idempotency_keys_expires_at on ledger.idempotency_keys using brin (expires_at);
alter table ledger.idempotency_keys enable row level security;

/** A business outcome that is not success (DESIGN §6). */
create function ledger.error_result(p_code text, p_message text, p_details jsonb default '{}'::jsonb)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('ok', false, 'replayed', false,
    'error', jsonb_build_object('code', p_code, 'message', p_message) || coalesce(p_details, '{}'::jsonb))
$$;

/**
 * Starts an idempotent operation. Calls with the same key are serialized by a transaction-level
 * advisory lock: a concurrent duplicate waits here until the first commits, then finds its stored
 * response. Returns outcome 'new' (go ahead, then call idempotency_finish), 'replay' (response is
 * the stored one with replayed = true) or 'reused' (same key, other operation or request).
 */
create function ledger.idempotency_begin(
  p_key text, p_operation text, p_request jsonb,
  out outcome text, out fingerprint text, out response jsonb)
language plpgsql
set search_path = ''
as $$
declare
  v_stored ledger.idempotency_keys;
begin
  fingerprint := encode(sha256(convert_to(p_operation || ':' || p_request::text, 'UTF8')), 'hex');
  perform pg_advisory_xact_lock(hashtextextended(p_key, 20261122));
  select * into v_stored from ledger.idempotency_keys where key = p_key;
  if not found then
    outcome := 'new';
  elsif v_stored.operation = p_operation and v_stored.request_fingerprint = fingerprint then
    outcome := 'replay';
    response := v_stored.response || '{"replayed": true}'::jsonb;
  else
    outcome := 'reused';
    response := ledger.error_result('idempotency_key_reused',
      'this client_request_id was already used for a different request',
      jsonb_build_object('client_request_id', p_key));
  end if;
end;
$$;

create function ledger.idempotency_finish(p_key text, p_operation text, p_fingerprint text, p_response jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into ledger.idempotency_keys (key, operation, request_fingerprint, response)
  values (p_key, p_operation, p_fingerprint, p_response);
end;
$$;

/** Deletes expired keys; run it from a scheduler (pg_cron on Supabase). Returns how many. */
create function public.purge_expired_idempotency_keys() returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  delete from ledger.idempotency_keys where expires_at < now();
  get diagnostics v_deleted = row_count;
  return v_deleted;
end;
$$;
revoke execute on function public.purge_expired_idempotency_keys() from public, anon, authenticated;
grant execute on function public.purge_expired_idempotency_keys() to service_role;

-- ---------------------------------------------------------------------------------------------
-- Attempt log: one row per attempt of every operation, failures and replays included.
-- ---------------------------------------------------------------------------------------------

create table ops.app_transaction_log (
  id bigint generated always as identity primary key,
  created_at timestamptz not null default now(),
  operation_type text not null,
  status text not null check (status in ('success', 'failed', 'replayed', 'rejected')),
  error_code text,
  card_id text,
  account_id bigint,
  amount_cents bigint,
  balance_before_cents bigint,
  balance_after_cents bigint,
  operation_id bigint,
  details jsonb not null default '{}'::jsonb,
  edge_function text,
  request_id text,
  client_request_id text,
  actor_user_id uuid
);
-- Monitoring counts attempts by time window. BRIN, because rows arrive in time order and a btree
-- would cost every sale an index insert; a card's history comes from its transfers instead.
create index app_transaction_log_created_at on ops.app_transaction_log using brin (created_at);
alter table ops.app_transaction_log enable row level security;

/**
 * Records one attempt. The edge function name and its request id come from transaction-local
 * settings (`app.edge_function`, `app.request_id`) set by `_shared/rpc.ts` in the same statement.
 */
create function ops.log_attempt(
  p_operation_type text,
  p_result jsonb,
  p_client_request_id text,
  p_actor_user_id uuid,
  p_card_id text default null,
  p_account_id bigint default null,
  p_amount_cents bigint default null,
  p_balance_before_cents bigint default null,
  p_balance_after_cents bigint default null,
  p_details jsonb default '{}'::jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into ops.app_transaction_log (
    operation_type, status, error_code, card_id, account_id, amount_cents, balance_before_cents,
    balance_after_cents, operation_id, details, edge_function, request_id, client_request_id, actor_user_id)
  values (
    p_operation_type,
    case
      when coalesce((p_result ->> 'replayed')::boolean, false) then 'replayed'
      when (p_result ->> 'ok')::boolean then 'success'
      when p_result #>> '{error,code}' = 'idempotency_key_reused' then 'rejected'
      else 'failed'
    end,
    p_result #>> '{error,code}',
    p_card_id,
    p_account_id,
    p_amount_cents,
    p_balance_before_cents,
    p_balance_after_cents,
    (p_result ->> 'transaction_id')::bigint,
    coalesce(p_details, '{}'::jsonb),
    nullif(current_setting('app.edge_function', true), ''),
    nullif(current_setting('app.request_id', true), ''),
    p_client_request_id,
    p_actor_user_id);
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Argument checks shared by the procedures. Invalid arguments are programming errors of the
-- caller: they raise (SQLSTATE 22023, the failing field first in the message) and record nothing.
-- ---------------------------------------------------------------------------------------------

create function ledger.require(p_condition boolean, p_field text, p_message text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_condition is not true then
    raise exception '%: %', p_field, p_message
      using errcode = 'invalid_parameter_value', detail = p_field;
  end if;
end;
$$;

create function ledger.require_client_request_id(p_client_request_id text) returns void
language plpgsql immutable
set search_path = ''
as $$
begin
  perform ledger.require(length(p_client_request_id) between 1 and 255, 'client_request_id',
    'must be 1 to 255 characters');
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Reconciliation
-- ---------------------------------------------------------------------------------------------

/**
 * One row per discrepancy; no rows when the ledger is healthy:
 *   balance_mismatch    a customer account whose stored balance differs from its transfers
 *   negative_balance    a customer account below zero
 *   nonzero_total       the sum of all balances is not zero
 *   balance_chain       a transfer whose balance before is not the balance after the account's previous one
 *   orphan_transfer     a transfer whose account or operation does not exist
 */
create function ledger.ledger_checks()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql
stable
set search_path = ''
as $$
  with movements as (
    select to_account_id as account_id, amount_cents as delta from ledger.transfers
    union all
    select from_account_id, -amount_cents from ledger.transfers
  ),
  derived as (
    select a.id, a.code, a.kind, a.balance_cents as stored, coalesce(sum(m.delta), 0)::bigint as from_transfers
    from ledger.accounts a
    left join movements m on m.account_id = a.id
    group by a.id
  )
  select 'balance_mismatch', id, code, from_transfers, stored,
    'stored balance differs from the sum of its transfers'
  from derived
  where kind <> 'system' and stored <> from_transfers
  union all
  select 'negative_balance', id, code, 0::bigint, stored, 'customer account below zero'
  from derived
  where kind <> 'system' and stored < 0
  union all
  select 'nonzero_total', null, null, 0::bigint, total, 'the sum of all balances is not zero'
  from (select sum(case when kind = 'system' then from_transfers else stored end)::bigint as total from derived) t
  where total <> 0
  union all
  select 'balance_chain', chain.account_id, null, coalesce(chain.previous_after, 0), chain.before,
    format('transfer %s: balance before differs from the balance after the previous transfer', chain.transfer_id)
  from (
    select side.account_id, side.transfer_id, side.before,
      lag(side.after) over (partition by side.account_id order by side.transfer_id) as previous_after
    from (
      select id as transfer_id, from_account_id as account_id, from_balance_before_cents as before,
        from_balance_after_cents as after
      from ledger.transfers where from_balance_before_cents is not null
      union all
      select id, to_account_id, to_balance_before_cents, to_balance_after_cents
      from ledger.transfers where to_balance_before_cents is not null
    ) side
  ) chain
  -- Accounts open at zero, so the first transfer of an account starts from zero.
  where coalesce(chain.previous_after, 0) <> chain.before
  union all
  select 'orphan_transfer', null, null, null::bigint, t.amount_cents,
    format('transfer %s refers to a missing account or operation', t.id)
  from ledger.transfers t
  where not exists (select 1 from ledger.accounts a where a.id = t.from_account_id)
    or not exists (select 1 from ledger.accounts a where a.id = t.to_account_id)
    or not exists (select 1 from ledger.operations o where o.id = t.operation_id)
$$;

/** Every check of the deployment; later migrations add their own checks here. */
create function public.ledger_reconcile()
returns table (check_name text, account_id bigint, account_code text, expected_cents bigint, actual_cents bigint, detail text)
language sql
stable
security definer
set search_path = ''
as $$ select * from ledger.ledger_checks() $$;
revoke execute on function public.ledger_reconcile() from public, anon, authenticated;
grant execute on function public.ledger_reconcile() to service_role;

-- System accounts shared by every product.
select ledger.ensure_system_account('stripe_clearing', 'stripe');
select ledger.ensure_system_account('promotions', 'festival');
select ledger.ensure_system_account('receivables', 'festival');
select ledger.ensure_system_account('payouts', 'platform');
