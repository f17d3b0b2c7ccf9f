-- Foundation: the database looks like Supabase's, and nothing in public is executable by the
-- Data API roles unless granted on purpose.
begin;
create extension if not exists pgtap with schema extensions;
select plan(8);

select has_role('anon', 'anon role exists');
select has_role('authenticated', 'authenticated role exists');
select has_role('service_role', 'service_role role exists');
select has_function('auth', 'uid', 'auth.uid() exists');

select is(
  (public.health_check() ->> 'migration'),
  (select max(version) from supabase_migrations.schema_migrations),
  'health_check reports the newest applied migration'
);

select ok(
  has_function_privilege('service_role', 'public.health_check()', 'execute'),
  'service_role can execute health_check'
);
select ok(
  not has_function_privilege('anon', 'public.health_check()', 'execute')
  and not has_function_privilege('authenticated', 'public.health_check()', 'execute'),
  'anon and authenticated cannot execute health_check'
);

-- Every function in public: security definer ones must pin search_path and be closed to anon.
select is_empty(
  $$
    select p.oid::regprocedure::text
    from pg_proc p
    join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = 'public'
      and (
        not coalesce(p.proconfig::text[] @> array['search_path=""'], false)
        or has_function_privilege('anon', p.oid, 'execute')
      )
  $$,
  'every function in public pins search_path and is not executable by anon'
);

select * from finish();
rollback;
