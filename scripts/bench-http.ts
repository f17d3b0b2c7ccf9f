// `npm run bench:http`: process-bar-order over HTTP from several concurrent connections for a
// fixed time (unique keys, random funded cards; then all connections on one hot card). Prints
// requests per second, p50/p95/p99 latency and errors, checks that ledger_reconcile() is empty and
// that the successful responses add up to the change in card balances, and compares with the
// SQL-level rate (pgbench calling sp_process_bar_order) at the same concurrency, in the same run.
//
//   BENCH_SECONDS=15 BENCH_CARDS=20000 BENCH_CONNECTIONS=8 npm run bench:http

import {
  BAR_ORDER_SCRIPT,
  benchCardId,
  cpuCount,
  pgbench,
  prepareBenchCards,
  reconcileDiscrepancies,
  withBenchCluster,
} from "./lib/bench.ts";
import { edgeFunctionsDatabaseUrl, psql } from "./lib/cluster.ts";
import { freePort, log, REPO_ROOT, waitForHttp } from "./lib/process.ts";
import { DEMO_STAFF, LOCAL_JWT_SECRET, userToken } from "./lib/tokens.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? "15");
const cardCount = Number(Deno.env.get("BENCH_CARDS") ?? "20000");
const connections = Number(Deno.env.get("BENCH_CONNECTIONS") ?? "8");

interface LoadResult {
  requests: number;
  errors: number;
  statuses: Map<number, number>;
  latenciesMs: number[];
  chargedCents: number;
  elapsedSeconds: number;
}

function percentile(sortedValues: number[], fraction: number): number {
  if (sortedValues.length === 0) return Number.NaN;
  return sortedValues[Math.min(sortedValues.length - 1, Math.floor(fraction * sortedValues.length))];
}

async function driveLoad(url: string, token: string, body: (index: number) => unknown): Promise<LoadResult> {
  const result: LoadResult = { requests: 0, errors: 0, statuses: new Map(), latenciesMs: [], chargedCents: 0, elapsedSeconds: 0 };
  const startedAt = performance.now();
  const deadline = startedAt + seconds * 1000;
  let counter = 0;
  async function connection(): Promise<void> {
    while (performance.now() < deadline) {
      const requestStartedAt = performance.now();
      try {
        const response = await fetch(url, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify(body(counter++)),
        });
        const payload = await response.json();
        result.statuses.set(response.status, (result.statuses.get(response.status) ?? 0) + 1);
        if (response.status === 200) result.chargedCents += payload.total_cents;
        else result.errors++;
      } catch {
        result.errors++;
      }
      result.latenciesMs.push(performance.now() - requestStartedAt);
      result.requests++;
    }
  }
  await Promise.all(Array.from({ length: connections }, connection));
  result.elapsedSeconds = (performance.now() - startedAt) / 1000;
  result.latenciesMs.sort((a, b) => a - b);
  return result;
}

async function totalCardBalance(url: string): Promise<number> {
  return Number(await psql(url, `
    select coalesce(sum(a.balance_cents), 0) from festival.cards c join ledger.accounts a on a.id = c.account_id
    where c.id like 'BENCH-%'`));
}

function row(label: string, load: LoadResult): string {
  const rate = load.requests / load.elapsedSeconds;
  const statuses = [...load.statuses].map(([status, count]) => `${status}: ${count}`).join(", ");
  return `| ${label} | ${rate.toFixed(0)} | ${percentile(load.latenciesMs, 0.5).toFixed(1)} | ` +
    `${percentile(load.latenciesMs, 0.95).toFixed(1)} | ${percentile(load.latenciesMs, 0.99).toFixed(1)} | ` +
    `${load.errors} | ${statuses} |`;
}

await withBenchCluster(async (cluster, url) => {
  await prepareBenchCards(url, cardCount);
  const port = freePort();
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `${REPO_ROOT}/scripts/functions-server.ts`],
    env: {
      SUPABASE_DB_URL: url,
      DB_URL: edgeFunctionsDatabaseUrl(cluster),
      SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
      FUNCTIONS_PORT: String(port),
      DB_POOL_MAX: String(connections),
    },
    stdout: "null",
    stderr: "null",
    stdin: "null",
  }).spawn();
  try {
    const functionUrl = `http://127.0.0.1:${port}/functions/v1/process-bar-order`;
    await waitForHttp(`http://127.0.0.1:${port}/functions/v1/health`, 30_000);
    const token = await userToken(DEMO_STAFF.bartender);
    const runId = crypto.randomUUID();
    const orderFor = (cardId: string, items: unknown) => (index: number) => ({
      card_id: cardId,
      items,
      point_of_sale_id: "main-bar",
      client_request_id: `http-bench-${runId}-${index}`,
      confirm_duplicate: true,
    });

    // Warm the connection pools and the per-connection plan caches before measuring.
    log("warming up");
    await driveLoad(functionUrl, token, (index) => orderFor(benchCardId(1 + (index % cardCount)), [{ product_id: "water", quantity: 1 }, { product_id: "cup-return", quantity: 1 }])(index));

    const balanceBefore = await totalCardBalance(url);
    log(`${connections} connections, random cards, ${seconds} s`);
    const random = await driveLoad(
      functionUrl,
      token,
      (index) => orderFor(benchCardId(1 + Math.floor(Math.random() * cardCount)), [{ product_id: "beer", quantity: 1 }])(index + 10_000_000),
    );
    log(`${connections} connections, one hot card, ${seconds} s`);
    const hot = await driveLoad(
      functionUrl,
      token,
      (index) => orderFor("BENCH-HOT", [{ product_id: "water", quantity: 1 }, { product_id: "cup-return", quantity: 1 }])(index + 20_000_000),
    );
    const balanceAfter = await totalCardBalance(url);
    const charged = random.chargedCents + hot.chargedCents;

    log(`SQL level: pgbench calling sp_process_bar_order with ${connections} clients, ${seconds} s`);
    const sqlRate = await pgbench(cluster, {
      clients: connections,
      seconds,
      protocol: "prepared",
      script: ["-D", `cards=${cardCount}`, "-f", BAR_ORDER_SCRIPT],
    });
    const discrepancies = await reconcileDiscrepancies(url);
    const httpRate = random.requests / random.elapsedSeconds;

    console.log(`
bench:http  ${cpuCount()} cores, fsync on, ${seconds} s per run, ${connections} connections, ${cardCount} funded cards, all at main-bar
(load generator, functions server and Postgres share the machine)

| run | requests/s | p50 ms | p95 ms | p99 ms | errors | statuses |
| --- | ---: | ---: | ---: | ---: | ---: | --- |
${row("random cards", random)}
${row("hot card", hot)}

SQL level (pgbench, same concurrency): ${sqlRate.toFixed(0)} orders/s; HTTP / SQL = ${(httpRate / sqlRate).toFixed(2)}
money: successful responses charged ${charged} cents; card balances fell by ${balanceBefore - balanceAfter} cents: ${
      charged === balanceBefore - balanceAfter ? "equal" : "DIFFERENT"
    }
ledger_reconcile(): ${discrepancies === 0 ? "empty" : `${discrepancies} discrepancies`}`);
    if (discrepancies !== 0 || charged !== balanceBefore - balanceAfter) Deno.exitCode = 1;
  } finally {
    server.kill("SIGTERM");
    await server.status;
  }
});
