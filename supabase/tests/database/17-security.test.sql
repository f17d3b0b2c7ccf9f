-- Who can reach what: no function or table of ours is open to the Data API roles, the edge
-- functions' role can execute exactly the public procedures, append-only tables refuse TRUNCATE,
-- and idempotency keys (and the request ids the business tables keep) are scoped by caller.
begin;
create extension if not exists pgtap with schema extensions;
select plan(22);

-- Schemas that belong to the platform (Supabase, PostgreSQL, extensions), not to this project.
create function pg_temp.is_ours(p_schema name) returns boolean language sql immutable as $$
  select p_schema not like 'pg\_%' and p_schema not in ('information_schema', 'extensions', 'auth', 'supabase_migrations',
    'cron', 'storage', 'graphql', 'graphql_public', 'realtime', 'vault', 'pgsodium', 'pgsodium_masks', 'net',
    'supabase_functions', 'pgbouncer', 'pgtle')
$$;

-- The allow-list: functions and tables of ours that anon or authenticated may reach on purpose,
-- each with the reason. Empty: every client goes through an edge function.
create temp table data_api_allow_list (object_name text primary key, reason text not null);

-- ---------------------------------------------------------------------------------------------
-- No function or table of ours is reachable by anon or authenticated
-- ---------------------------------------------------------------------------------------------

select is_empty($$
  select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where pg_temp.is_ours(n.nspname)
    and (has_function_privilege('anon', p.oid, 'execute') or has_function_privilege('authenticated', p.oid, 'execute'))
    and n.nspname || '.' || p.proname not in (select object_name from data_api_allow_list)
$$, 'no function in our schemas is executable by anon or authenticated');

select is_empty($$
  select n.nspname || '.' || c.relname
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where pg_temp.is_ours(n.nspname) and c.relkind in ('r', 'v', 'm', 'p', 'f', 'S')
    and (has_table_privilege('anon', c.oid, 'select, insert, update, delete, truncate, references, trigger')
      or has_table_privilege('authenticated', c.oid, 'select, insert, update, delete, truncate, references, trigger'))
    and n.nspname || '.' || c.relname not in (select object_name from data_api_allow_list)
$$, 'no table, view or sequence in our schemas is readable or writable by anon or authenticated');

select is_empty($$
  select nspname from pg_namespace
  where pg_temp.is_ours(nspname) and nspname <> 'public'
    and (has_schema_privilege('anon', oid, 'usage') or has_schema_privilege('authenticated', oid, 'usage'))
$$, 'the private schemas are not usable by anon or authenticated');

-- A future migration that forgets its REVOKE: the global default keeps the function closed.
create function public.forgot_its_revoke() returns integer language sql as $$ select 1 $$;
select ok(not has_function_privilege('anon', 'public.forgot_its_revoke()', 'execute'),
  'a new function in public without its own REVOKE is not executable by anon');
create schema later_module;
create function later_module.forgot_its_revoke() returns integer language sql as $$ select 1 $$;
select ok(not has_function_privilege('public', 'later_module.forgot_its_revoke()', 'execute'),
  'a new function in a new schema is not executable by PUBLIC either');
drop schema later_module cascade;
drop function public.forgot_its_revoke();

-- ---------------------------------------------------------------------------------------------
-- The edge functions' role
-- ---------------------------------------------------------------------------------------------

select has_role('edge_functions', 'the edge functions have a role of their own');
select results_eq($$
  select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication from pg_roles where rolname = 'edge_functions'
$$, $$ values (false, false, false, false, false) $$, 'edge_functions has no special powers');
select is_empty($$ select roleid::regrole::text from pg_auth_members where member = 'edge_functions'::regrole $$,
  'edge_functions inherits no other role (not service_role, not postgres)');
select set_eq($$
  select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'public' and has_function_privilege('edge_functions', p.oid, 'execute')
$$, $$
  select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'public' and has_function_privilege('service_role', p.oid, 'execute')
$$, 'edge_functions can execute exactly the public procedures the service role can');
select is_empty($$
  select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where pg_temp.is_ours(n.nspname) and n.nspname <> 'public' and has_function_privilege('edge_functions', p.oid, 'execute')
$$, 'edge_functions cannot execute any private function');
select is_empty($$
  select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where pg_temp.is_ours(n.nspname) and c.relkind in ('r', 'v', 'm', 'p', 'f', 'S')
    and has_table_privilege('edge_functions', c.oid, 'select, insert, update, delete, truncate')
$$, 'edge_functions can read or write no table');
select ok(not has_schema_privilege('edge_functions', 'ledger', 'usage'), 'edge_functions cannot even see the ledger schema');

-- ---------------------------------------------------------------------------------------------
-- Append-only tables refuse TRUNCATE
-- ---------------------------------------------------------------------------------------------

select is_empty($$
  select distinct c.oid::regclass::text
  from pg_trigger t join pg_class c on c.oid = t.tgrelid
  where t.tgfoid = 'ledger.refuse_history_change'::regproc and (t.tgtype & 8) <> 0 -- a DELETE guard
    and not exists (
      select 1 from pg_trigger guard
      where guard.tgrelid = t.tgrelid and guard.tgfoid = 'ledger.refuse_history_change'::regproc
        and (guard.tgtype & 32) <> 0) -- a TRUNCATE guard
$$, 'every table that refuses DELETE refuses TRUNCATE too');
select throws_ok('truncate festival.bar_orders cascade', '42501', null, 'TRUNCATE of bar orders is refused');
select throws_ok('truncate festival.recharges cascade', '42501', null, 'TRUNCATE of recharges is refused');

-- ---------------------------------------------------------------------------------------------
-- Idempotency keys scoped by caller
-- ---------------------------------------------------------------------------------------------

-- An anonymous festival-goer starts an online top-up with a key...
select set_config('app.caller', 'anon', true);
select is(public.sp_prepare_online_recharge('DEMO-0071', 2000, null, 'scope-shared-key') ->> 'ok', 'true',
  'scope: an anonymous checkout uses a key');
-- ...and a cashier's device happens to use the same key: it is the cashier's own key.
select set_config('app.caller', 'user:00000000-0000-4000-8000-00000000c001', true);
select is(
  public.sp_process_checkpoint_recharge('DEMO-0071', 1000, 'cash', 'entrance', '00000000-0000-4000-8000-00000000c001',
    'scope-shared-key') ->> 'ok',
  'true', 'scope: a cashier''s key is not blocked by an anonymous checkout''s');

-- Two bartenders whose devices use the same key each get their own order.
select set_config('app.caller', 'user:00000000-0000-4000-8000-00000000b001', true);
select is(public.sp_process_bar_order('DEMO-0072', '[{"product_id": "water", "quantity": 1}]', 'main-bar',
  'scope-bar-key', '00000000-0000-4000-8000-00000000b001') ->> 'ok', 'true', 'scope: the first bartender''s order');
select set_config('app.caller', 'user:00000000-0000-4000-8000-00000000b002', true);
select is(public.sp_process_bar_order('DEMO-0073', '[{"product_id": "water", "quantity": 1}]', 'beach-bar',
  'scope-bar-key', '00000000-0000-4000-8000-00000000b002') ->> 'ok', 'true',
  'scope: the second bartender''s order under the same key is not a replay of the first');
select is((select count(*) from festival.bar_orders where client_request_id = 'scope-bar-key'), 2::bigint,
  'scope: two orders, one per bartender');
-- Within one caller the key still means one request.
select is(public.sp_process_bar_order('DEMO-0073', '[{"product_id": "beer", "quantity": 1}]', 'beach-bar',
  'scope-bar-key', '00000000-0000-4000-8000-00000000b002') #>> '{error,code}', 'idempotency_key_reused',
  'scope: the same caller reusing its key for another request is still idempotency_key_reused');
select set_config('app.caller', '', true);
select is(
  (select caller_scope from ledger.idempotency_keys where key = 'scope-bar-key' order by caller_scope limit 1),
  'user:00000000-0000-4000-8000-00000000b001', 'scope: the key is stored under its caller');

select * from finish();
rollback;
