-- Foundation: privilege defaults and the health probe.
--
-- Nothing in `public` is callable by the Data API roles unless a migration grants it explicitly:
-- procedures move money and are granted to service_role only (DESIGN §7).

alter default privileges in schema public revoke execute on functions from public;
alter default privileges in schema public revoke execute on functions from anon, authenticated;
alter default privileges for role postgres in schema public revoke execute on functions from public;
alter default privileges for role postgres in schema public revoke execute on functions from anon, authenticated;

-- Health probe for the `health` edge function: proves a round trip and reports the newest
-- migration the database has applied.
create or replace function public.health_check()
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  latest_version text;
begin
  select max(version) into latest_version from supabase_migrations.schema_migrations;
  return jsonb_build_object('ok', true, 'migration', latest_version);
end;
$$;

revoke execute on function public.health_check() from public, anon, authenticated;
grant execute on function public.health_check() to service_role;
