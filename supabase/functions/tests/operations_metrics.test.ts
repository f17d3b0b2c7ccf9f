// The metrics function: Prometheus text exposition computed from the database. A real Prometheus
// server (Debian package `prometheus`, our own config and data folder, free ports) scrapes it, and
// its HTTP API must report the sales total the database has. Also: who may scrape, the format of
// every family, and that every query of the Grafana dashboard names a metric that is exposed.

import assert from "node:assert/strict";
import { call, connectDatabase, FUNCTIONS_URL } from "./http_helpers.ts";
import { BARTENDER, order, recharge, registerCards, rpcClient } from "./festival_fixtures.ts";
import { serviceRoleKey, userToken } from "../../../scripts/lib/tokens.ts";
import { freePort, REPO_ROOT } from "../../../scripts/lib/process.ts";
import { LOCAL_METRICS_TOKEN } from "../metrics/handler.ts";
import { renderMetrics } from "../metrics/exposition.ts";

async function scrape(token?: string): Promise<{ status: number; text: string; contentType: string }> {
  const response = await fetch(`${FUNCTIONS_URL}/metrics`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  return { status: response.status, text: await response.text(), contentType: response.headers.get("content-type") ?? "" };
}

/** Metric family names declared by `# TYPE` lines. */
function exposedFamilies(text: string): Set<string> {
  return new Set([...text.matchAll(/^# TYPE (\S+) (counter|gauge)$/gm)].map((match) => match[1]));
}

async function databaseSalesCents(): Promise<Record<string, number>> {
  const sql = connectDatabase(1);
  try {
    const rows = await sql`
      select o.point_of_sale_id, sum(i.line_total_cents)::bigint::text as cents
      from festival.bar_order_items i join festival.bar_orders o on o.id = i.order_id
      where i.product_kind = 'item' group by 1`;
    return Object.fromEntries(rows.map((row) => [row.point_of_sale_id, Number(row.cents)]));
  } finally {
    await sql.end();
  }
}

Deno.test("metrics: the metrics token or the service key; nobody else", async () => {
  assert.equal((await scrape()).status, 401);
  assert.equal((await scrape("not-the-token")).status, 401);
  assert.equal((await scrape(await userToken(BARTENDER))).status, 403);
  const withToken = await scrape(LOCAL_METRICS_TOKEN);
  assert.equal(withToken.status, 200);
  assert.match(withToken.contentType, /^text\/plain; version=0\.0\.4/);
  assert.equal((await scrape(await serviceRoleKey())).status, 200);
  const post = await call("metrics", { method: "POST", token: LOCAL_METRICS_TOKEN });
  assert.equal(post.status, 405);
});

Deno.test("metrics: every family has help and type, names follow Prometheus conventions", async () => {
  const { text } = await scrape(LOCAL_METRICS_TOKEN);
  const families = exposedFamilies(text);
  for (
    const name of [
      "festival_bar_sales_cents_total",
      "festival_bar_orders_total",
      "festival_recharges_cents_total",
      "festival_recharges_total",
      "festival_online_topups",
      "idempotent_replays_total",
      "festival_duplicate_taps_total",
      "failed_attempts_total",
      "ops_open_alerts",
      "festival_card_liabilities_cents",
      "festival_deposits_held_cents",
      "stripe_webhook_events_total",
      "nfc_scans",
      "ledger_reconcile_discrepancies",
    ]
  ) {
    assert.ok(families.has(name), `${name} is exposed`);
    assert.match(text, new RegExp(`^# HELP ${name} \\S`, "m"), `${name} has help`);
  }
  for (const match of text.matchAll(/^# TYPE (\S+) (counter|gauge)$/gm)) {
    assert.equal(match[1].endsWith("_total"), match[2] === "counter", `${match[1]}: _total exactly for counters`);
  }
  assert.match(text, /^ledger_reconcile_discrepancies 0$/m, "the test database reconciles");
});

Deno.test("metrics: the formatter escapes label values and keeps integers exact", async () => {
  const text = await renderMetrics([{
    name: "example_total",
    help: "An example.",
    type: "counter",
    samples: [{ labels: { bar: 'say "hi"\\\n' }, value: 9007199254740991 }],
  }]);
  assert.match(text, /^example_total\{bar="say \\"hi\\"\\\\\\n"\} 9007199254740991$/m);
});

Deno.test("metrics: a real Prometheus scrapes the sales total the database has", async () => {
  // A sale now, so the total is not zero.
  const client = rpcClient(1);
  try {
    const [card] = await registerCards(client, 1, "PROM");
    assert.equal((await recharge(client, card, 2000)).ok, true);
    assert.equal((await order(client, card, [{ product_id: "beer", quantity: 2 }])).ok, true);
  } finally {
    await client.end();
  }
  const expected = await databaseSalesCents();
  const expectedTotal = Object.values(expected).reduce((sum, cents) => sum + cents, 0);
  assert.ok(expectedTotal >= 900);

  const folder = await Deno.makeTempDir({ prefix: "prometheus-test-" });
  const port = freePort();
  const functions = new URL(FUNCTIONS_URL);
  await Deno.writeTextFile(
    `${folder}/prometheus.yml`,
    [
      "global:",
      // Each scrape runs ledger_reconcile() over the whole test database, which after the full
      // suite takes more than a second on a busy machine.
      "  scrape_interval: 5s",
      "  scrape_timeout: 5s",
      "scrape_configs:",
      "  - job_name: festival-payments",
      `    metrics_path: ${functions.pathname}/metrics`,
      "    authorization:",
      "      type: Bearer",
      `      credentials: ${LOCAL_METRICS_TOKEN}`,
      "    static_configs:",
      `      - targets: ["${functions.host}"]`,
      "",
    ].join("\n"),
  );
  const prometheus = new Deno.Command("prometheus", {
    args: [
      `--config.file=${folder}/prometheus.yml`,
      `--storage.tsdb.path=${folder}/data`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const output = Promise.all([new Response(prometheus.stdout).text(), new Response(prometheus.stderr).text()]);
  try {
    const query = async (expression: string) => {
      const response = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(expression)}`);
      const body = await response.json();
      return body.data?.result as Array<{ metric: Record<string, string>; value: [number, string] }> | undefined;
    };
    let scraped: Array<{ metric: Record<string, string>; value: [number, string] }> | undefined;
    const deadline = Date.now() + 45_000;
    while (Date.now() < deadline) {
      try {
        scraped = await query("festival_bar_sales_cents_total");
        if (scraped && scraped.length > 0) break;
      } catch {
        // Prometheus is still starting.
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    assert.ok(scraped && scraped.length > 0, "Prometheus scraped the metrics function");
    const up = await query('up{job="festival-payments"}');
    assert.equal(up?.[0]?.value[1], "1", "the scrape target is up");
    const scrapedByBar = Object.fromEntries(
      scraped.map((sample) => [sample.metric.point_of_sale, Number(sample.value[1])]),
    );
    for (const [bar, cents] of Object.entries(expected)) assert.equal(scrapedByBar[bar], cents, `sales at ${bar}`);
    const total = await query("sum(festival_bar_sales_cents_total)");
    assert.equal(Number(total?.[0]?.value[1]), expectedTotal, "the scraped sales total equals the database's");
  } finally {
    prometheus.kill("SIGTERM");
    await prometheus.status;
    await output;
    await Deno.remove(folder, { recursive: true });
  }
});

Deno.test("monitoring/: every Grafana dashboard query names a metric the function exposes", async () => {
  const exposed = exposedFamilies((await scrape(LOCAL_METRICS_TOKEN)).text);
  const dashboard = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}/monitoring/grafana-dashboard.json`));
  const expressions: string[] = dashboard.panels.flatMap((panel: { targets?: { expr: string }[] }) =>
    (panel.targets ?? []).map((target) => target.expr)
  );
  assert.ok(expressions.length >= 10);
  for (const expression of expressions) {
    // Drop label matchers, ranges, strings, grouping clauses and function calls; what is left
    // (identifiers) are metric names.
    const names = expression
      .replace(/"[^"]*"/g, " ")
      .replace(/\{[^}]*\}/g, " ")
      .replace(/\[[^\]]*\]/g, " ")
      .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
      .replace(/\b[a-z_]+\s*\(/g, " ")
      .match(/\b[a-zA-Z_:][a-zA-Z0-9_:]*\b/g) ?? [];
    assert.ok(names.length > 0, `${expression} names a metric`);
    for (const name of names) assert.ok(exposed.has(name), `${expression}: ${name} is exposed by metrics`);
  }
  const config = await Deno.readTextFile(`${REPO_ROOT}/monitoring/prometheus.yml`);
  assert.match(config, /metrics_path: \/functions\/v1\/metrics/);
});
