// `npm run bench:sql`: sp_process_bar_order under pgbench at 1, 8 and 16 clients against pgbench's
// built-in tpcb-like on the same server in the same run, plus the hot-card case. Uses its own
// durable (fsync on) throwaway cluster; prints a table and checks ledger_reconcile() afterwards.
//
//   BENCH_SECONDS=15 BENCH_CARDS=20000 BENCH_CLIENTS=1,8,16 BENCH_PROTOCOL=prepared npm run bench:sql

import {
  BAR_ORDER_SCRIPT,
  cpuCount,
  HOT_CARD_SCRIPT,
  pgbench,
  prepareBenchCards,
  reconcileDiscrepancies,
  withBenchCluster,
} from "./lib/bench.ts";
import { PG_BIN, run, log } from "./lib/process.ts";
import { psql } from "./lib/cluster.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? "15");
const cardCount = Number(Deno.env.get("BENCH_CARDS") ?? "20000");
const clientCounts = (Deno.env.get("BENCH_CLIENTS") ?? "1,8,16").split(",").map(Number);
const protocol = Deno.env.get("BENCH_PROTOCOL") ?? "prepared";
// tpcb-like updates one of `scale` branch rows per transaction: a scale below the client count
// would make it queue on branches and flatter us. Use at least as many branches as clients.
const tpcbScale = Math.max(...clientCounts);

await withBenchCluster(async (cluster, url) => {
  await prepareBenchCards(url, cardCount);
  log(`initializing pgbench tables at scale ${tpcbScale}`);
  await run(`${PG_BIN}/pgbench`, ["-i", "-q", "-s", String(tpcbScale), "-d", url]);

  const rows: string[][] = [];
  for (const clients of clientCounts) {
    log(`${clients} client(s): sp_process_bar_order, then tpcb-like, ${seconds} s each`);
    const orders = await pgbench(cluster, {
      clients,
      seconds,
      protocol,
      script: ["-D", `cards=${cardCount}`, "-f", BAR_ORDER_SCRIPT],
    });
    const tpcb = await pgbench(cluster, { clients, seconds, protocol, script: ["-b", "tpcb-like"] });
    rows.push([`${clients}`, orders.toFixed(0), tpcb.toFixed(0), (orders / tpcb).toFixed(2)]);
  }
  const hotClients = clientCounts.includes(8) ? 8 : Math.max(...clientCounts);
  log(`hot card: ${hotClients} clients on one card`);
  const hot = await pgbench(cluster, { clients: hotClients, seconds, protocol, script: ["-f", HOT_CARD_SCRIPT] });

  const discrepancies = await reconcileDiscrepancies(url);
  const [succeeded, failed] = (await psql(url, `
    select count(*) filter (where status = 'success') || '|' || count(*) filter (where status <> 'success')
    from ops.app_transaction_log where operation_type = 'bar_order'`)).split("|");

  console.log(`
bench:sql  PostgreSQL 15, ${cpuCount()} cores, fsync on, ${seconds} s per run, pgbench -M ${protocol}, ${cardCount} funded cards, all orders at main-bar

| clients | sp_process_bar_order tps | tpcb-like tps (scale ${tpcbScale}) | ratio |
| ---: | ---: | ---: | ---: |
${rows.map((row) => `| ${row.join(" | ")} |`).join("\n")}

hot card (${hotClients} clients, one card): ${hot.toFixed(0)} orders/s
orders recorded: ${succeeded} successful, ${failed} business failures; ledger_reconcile(): ${discrepancies === 0 ? "empty" : `${discrepancies} discrepancies`}`);
  if (discrepancies !== 0) Deno.exitCode = 1;
});
