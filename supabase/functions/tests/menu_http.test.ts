// menu and topup-packages over HTTP: what the POS, checkpoint and festival-goer screens draw from.

import assert from "node:assert/strict";
import { call } from "./http_helpers.ts";
import { ADMIN, BARTENDER, CASHIER } from "./festival_fixtures.ts";
import { anonKey, serviceRoleKey, userToken } from "../../../scripts/lib/tokens.ts";

const tokens = {
  anon: await anonKey(),
  service: await serviceRoleKey(),
  bartender: await userToken(BARTENDER),
  cashier: await userToken(CASHIER),
  admin: await userToken(ADMIN),
  stranger: await userToken("00000000-0000-4000-8000-0000000000ff"),
};

interface MenuProduct {
  product_id: string;
  name: string;
  kind: string;
  price_cents: number;
}

Deno.test("menu: a bartender reads what the main bar sells, at which price", async () => {
  const response = await call("menu?point_of_sale_id=main-bar", { token: tokens.bartender });
  assert.equal(response.status, 200, JSON.stringify(response.body));
  assert.equal(response.body.point_of_sale_id, "main-bar");
  assert.equal(response.body.name, "Main Bar");
  assert.equal(response.body.currency, "EUR");
  const products = response.body.products as MenuProduct[];
  const beer = products.find((product) => product.product_id === "beer");
  assert.deepEqual(beer && { name: beer.name, kind: beer.kind, price_cents: beer.price_cents }, {
    name: "Beer",
    kind: "item",
    price_cents: 450,
  });
  assert.ok(products.some((product) => product.kind === "deposit"), "cup deposits are on the menu");
  assert.ok(products.every((product) => Number.isInteger(product.price_cents) && product.price_cents > 0));
});

Deno.test("menu: 404 unknown bar, 400 bad or missing bar id, 403 not staff or not a user, 401 no token, 405 POST", async () => {
  const unknown = await call("menu?point_of_sale_id=no-such-bar", { token: tokens.admin });
  assert.equal(unknown.status, 404);
  assert.equal((unknown.body.error as { code: string }).code, "point_of_sale_not_found");
  assert.equal((await call("menu?point_of_sale_id=Main%20Bar", { token: tokens.bartender })).status, 400);
  assert.equal((await call("menu", { token: tokens.bartender })).status, 400);
  assert.equal((await call("menu?point_of_sale_id=main-bar&extra=1", { token: tokens.bartender })).status, 400);
  const stranger = await call("menu?point_of_sale_id=main-bar", { token: tokens.stranger });
  assert.equal(stranger.status, 403);
  assert.equal((stranger.body.error as { code: string }).code, "forbidden");
  assert.equal((await call("menu?point_of_sale_id=main-bar", { token: tokens.anon })).status, 403);
  assert.equal((await call("menu?point_of_sale_id=main-bar", { token: tokens.service })).status, 403);
  assert.equal((await call("menu?point_of_sale_id=main-bar", {})).status, 401);
  assert.equal((await call("menu?point_of_sale_id=main-bar", { method: "POST", token: tokens.cashier })).status, 405);
});

Deno.test("topup-packages: the anon key reads the packages with price and bonus", async () => {
  const response = await call("topup-packages", { token: tokens.anon });
  assert.equal(response.status, 200, JSON.stringify(response.body));
  assert.equal(response.body.currency, "EUR");
  const packages = response.body.packages as { package_code: string; price_cents: number; bonus_cents: number }[];
  assert.deepEqual(
    packages.filter((item) => ["MINI", "MIDI", "MAXI"].includes(item.package_code))
      .map((item) => [item.package_code, item.price_cents, item.bonus_cents]),
    [["MINI", 2000, 0], ["MIDI", 5000, 250], ["MAXI", 10000, 1000]],
  );
  assert.equal((await call("topup-packages", {})).status, 401);
  assert.equal((await call("topup-packages?x=1", { token: tokens.anon })).status, 400);
});
