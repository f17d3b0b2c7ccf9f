// `npm run bench:sql`: sp_process_bar_order under pgbench at 1, 8 and 16 clients against pgbench's
// built-in tpcb-like on the same server in the same run, plus the hot-card case. Uses its own
// durable (fsync on) throwaway cluster; prints a table and checks ledger_reconcile() afterwards.
//
//   BENCH_SECONDS=15 BENCH_CARDS=20000 npm run bench:sql

import {
  buildDatabase,
  type Cluster,
  connectionArguments,
  databaseUrl,
  DB_PASSWORD,
  initCluster,
  psql,
  startCluster,
  stopCluster,
} from "./lib/cluster.ts";
import { freePort, log, PG_BIN, REPO_ROOT, run } from "./lib/process.ts";

const seconds = Number(Deno.env.get("BENCH_SECONDS") ?? "15");
const cardCount = Number(Deno.env.get("BENCH_CARDS") ?? "20000");
const clientCounts = (Deno.env.get("BENCH_CLIENTS") ?? "1,8,16").split(",").map(Number);
const protocol = Deno.env.get("BENCH_PROTOCOL") ?? "prepared";
// tpcb-like updates one of `scale` branch rows per transaction: a scale below the client count
// would make it queue on branches and flatter us. Use at least as many branches as clients.
const tpcbScale = Math.max(...clientCounts);

async function pgbench(cluster: Cluster, clients: number, script: string[]): Promise<number> {
  const result = await run(`${PG_BIN}/pgbench`, [
    ...connectionArguments(cluster),
    "-n",
    "-M",
    protocol,
    "-c",
    String(clients),
    "-j",
    String(Math.min(clients, 2)),
    "-T",
    String(seconds),
    ...script,
    "postgres",
  ], { env: { PGPASSWORD: DB_PASSWORD } });
  const match = /tps = ([\d.]+) \(without initial connection time\)/.exec(result.stdout);
  const failed = /number of failed transactions: (\d+)/.exec(result.stdout);
  if (!match) throw new Error(`pgbench printed no tps:\n${result.stdout}\n${result.stderr}`);
  if (failed && Number(failed[1]) > 0) throw new Error(`pgbench reported failed transactions:\n${result.stdout}`);
  return Number(match[1]);
}

async function prepareBenchData(url: string): Promise<void> {
  log(`registering and funding ${cardCount} cards (25000 cents each) and the hot card`);
  await psql(url, `
    select public.sp_admin_register_cards(
      (select array_agg('BENCH-' || lpad(n::text, 6, '0')) from generate_series(batch * 1000 + 1, least((batch + 1) * 1000, ${cardCount})) as n),
      '00000000-0000-4000-8000-00000000a001', 'bench-register-' || batch)
    from generate_series(0, (${cardCount} - 1) / 1000) as batch;
    select public.sp_admin_register_cards(array['BENCH-HOT'], '00000000-0000-4000-8000-00000000a001', 'bench-register-hot');
    select public.sp_process_checkpoint_recharge('BENCH-' || lpad(n::text, 6, '0'), 25000, 'card', 'entrance',
      '00000000-0000-4000-8000-00000000c001', 'bench-fund-' || n)
    from generate_series(1, ${cardCount}) as n;
    select public.sp_process_checkpoint_recharge('BENCH-HOT', 25000, 'card', 'entrance',
      '00000000-0000-4000-8000-00000000c001', 'bench-fund-hot');`);
  await psql(url, "vacuum analyze");
  log(`initializing pgbench tables at scale ${tpcbScale}`);
  await run(`${PG_BIN}/pgbench`, ["-i", "-q", "-s", String(tpcbScale), "-d", url]);
}

const tempDir = await Deno.makeTempDir({ prefix: "festival-bench-" });
await Deno.chmod(tempDir, 0o755);
// Durable like production: fsync and synchronous commit on.
const cluster: Cluster = { dataDir: `${tempDir}/db`, port: freePort(), throwaway: false };
try {
  await initCluster(cluster);
  await startCluster(cluster);
  const url = databaseUrl(cluster);
  await buildDatabase(url);
  await prepareBenchData(url);

  const rows: string[][] = [];
  for (const clients of clientCounts) {
    log(`${clients} client(s): sp_process_bar_order, then tpcb-like, ${seconds} s each`);
    const orders = await pgbench(cluster, clients, ["-D", `cards=${cardCount}`, "-f", `${REPO_ROOT}/scripts/bench/bar-order.pgbench`]);
    const tpcb = await pgbench(cluster, clients, ["-b", "tpcb-like"]);
    rows.push([`${clients}`, orders.toFixed(0), tpcb.toFixed(0), (orders / tpcb).toFixed(2)]);
  }
  const hotClients = clientCounts.includes(8) ? 8 : Math.max(...clientCounts);
  log(`hot card: ${hotClients} clients on one card`);
  const hot = await pgbench(cluster, hotClients, ["-f", `${REPO_ROOT}/scripts/bench/bar-order-hot-card.pgbench`]);

  const discrepancies = await psql(url, "select count(*) from public.ledger_reconcile()");
  const [orderCount, failures] = (await psql(url, `
    select count(*) filter (where status = 'success') || '|' || count(*) filter (where status <> 'success')
    from ops.app_transaction_log where operation_type = 'bar_order'`)).split("|");

  const cpu = (await Deno.readTextFile("/proc/cpuinfo")).match(/^processor/gm)?.length ?? "?";
  console.log(`
bench:sql  PostgreSQL 15, ${cpu} cores, fsync on, ${seconds} s per run, pgbench -M ${protocol}, ${cardCount} funded cards, all orders at main-bar

| clients | sp_process_bar_order tps | tpcb-like tps (scale ${tpcbScale}) | ratio |
| ---: | ---: | ---: | ---: |
${rows.map((row) => `| ${row.join(" | ")} |`).join("\n")}

hot card (${hotClients} clients, one card): ${hot.toFixed(0)} orders/s
orders recorded: ${orderCount} successful, ${failures} business failures; ledger_reconcile(): ${discrepancies === "0" ? "empty" : `${discrepancies} discrepancies`}`);
  if (discrepancies !== "0") Deno.exitCode = 1;
} finally {
  await stopCluster(cluster);
  await Deno.remove(tempDir, { recursive: true }).catch(() => {});
}
