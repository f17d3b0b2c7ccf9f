-- Catalogue reads for the terminals: what a bar sells at which price (the `menu` function, issue 12's
-- contract; POS buttons are drawn from it) and which top-up packages exist (the `topup-packages`
-- function; checkpoint and festival-goer screens offer them). Read-only: no key, no log line.
-- Today every active product is sold at every active bar; a per-bar assortment would narrow the
-- product query here and nowhere else.

/**
 * The menu of one bar for a staff member: active products with their current price, deposits and
 * cup returns included. `forbidden` for anyone who is not active staff, `point_of_sale_not_found`
 * for an unknown or inactive bar.
 */
create function public.sp_menu(point_of_sale_id text, staff_user_id uuid)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_point_of_sale festival.points_of_sale;
  v_products jsonb;
begin
  perform ledger.require(length(sp_menu.point_of_sale_id) between 1 and 64, 'point_of_sale_id',
    'must be 1 to 64 characters');
  perform ledger.require(sp_menu.staff_user_id is not null, 'staff_user_id', 'is required');
  if festival.staff_role(sp_menu.staff_user_id) is null then
    return ledger.error_result('forbidden', 'only active staff can read a menu',
      jsonb_build_object('staff_user_id', sp_menu.staff_user_id));
  end if;
  select * into v_point_of_sale
  from festival.points_of_sale
  where id = sp_menu.point_of_sale_id and active;
  if not found then
    return ledger.error_result('point_of_sale_not_found', 'unknown or inactive point of sale',
      jsonb_build_object('point_of_sale_id', sp_menu.point_of_sale_id));
  end if;

  -- Items first, then deposits and returns; cheapest first within a kind, like a price board.
  select coalesce(jsonb_agg(jsonb_build_object(
      'product_id', product.id,
      'name', product.name,
      'kind', product.kind,
      'category', product.category,
      'price_cents', product.price_cents)
      order by array_position(array['item', 'deposit', 'deposit_return'], product.kind), product.price_cents, product.id),
    '[]'::jsonb)
  into v_products
  from festival.products product
  where product.active;

  return jsonb_build_object(
    'ok', true,
    'point_of_sale_id', v_point_of_sale.id,
    'name', v_point_of_sale.name,
    'currency', (select currency from festival.settings),
    'products', v_products);
end;
$$;
revoke execute on function public.sp_menu(text, uuid) from public, anon, authenticated;
grant execute on function public.sp_menu(text, uuid) to service_role, edge_functions;

/** Active top-up packages (price and bonus in cents), cheapest first. Public facts: no caller check. */
create function public.sp_topup_packages()
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'ok', true,
    'currency', (select currency from festival.settings),
    'packages', coalesce((
      select jsonb_agg(jsonb_build_object(
          'package_code', package.code,
          'name', package.name,
          'price_cents', package.price_cents,
          'bonus_cents', package.bonus_cents)
          order by package.price_cents, package.code)
      from festival.topup_packages package
      where package.active), '[]'::jsonb));
end;
$$;
revoke execute on function public.sp_topup_packages() from public, anon, authenticated;
grant execute on function public.sp_topup_packages() to service_role, edge_functions;
