// Shared by the benchmarks: a durable throwaway cluster with funded cards, and pgbench runs.

import {
  buildDatabase,
  type Cluster,
  connectionArguments,
  databaseUrl,
  DB_PASSWORD,
  initCluster,
  pauseScheduledJobs,
  psql,
  startCluster,
  stopCluster,
} from "./cluster.ts";
import { freePort, log, PG_BIN, REPO_ROOT, run } from "./process.ts";

export const BENCH_CARD_FUNDS_CENTS = 25000;

/** Card id of the n-th benchmark card (1-based), as the pgbench scripts build it. */
export function benchCardId(n: number): string {
  return `BENCH-${String(n).padStart(6, "0")}`;
}

/** Runs `body` against a fresh durable cluster (fsync on, like production) and removes it after. */
export async function withBenchCluster<T>(body: (cluster: Cluster, url: string) => Promise<T>): Promise<T> {
  const tempDir = await Deno.makeTempDir({ prefix: "festival-bench-" });
  await Deno.chmod(tempDir, 0o755);
  const cluster: Cluster = { dataDir: `${tempDir}/db`, port: freePort(), throwaway: false };
  try {
    await initCluster(cluster);
    await startCluster(cluster);
    const url = databaseUrl(cluster);
    await buildDatabase(url);
    await pauseScheduledJobs(url);
    return await body(cluster, url);
  } finally {
    await stopCluster(cluster);
    await Deno.remove(tempDir, { recursive: true }).catch(() => {});
  }
}

/** Registers and funds `cardCount` cards BENCH-000001… plus BENCH-HOT, through the procedures. */
export async function prepareBenchCards(url: string, cardCount: number): Promise<void> {
  log(`registering and funding ${cardCount} cards (${BENCH_CARD_FUNDS_CENTS} cents each) and the hot card`);
  await psql(url, `
    select public.sp_admin_register_cards(
      (select array_agg('BENCH-' || lpad(n::text, 6, '0')) from generate_series(batch * 1000 + 1, least((batch + 1) * 1000, ${cardCount})) as n),
      '00000000-0000-4000-8000-00000000a001', 'bench-register-' || batch)
    from generate_series(0, (${cardCount} - 1) / 1000) as batch;
    select public.sp_admin_register_cards(array['BENCH-HOT'], '00000000-0000-4000-8000-00000000a001', 'bench-register-hot');
    select public.sp_process_checkpoint_recharge('BENCH-' || lpad(n::text, 6, '0'), ${BENCH_CARD_FUNDS_CENTS}, 'card',
      'entrance', '00000000-0000-4000-8000-00000000c001', 'bench-fund-' || n)
    from generate_series(1, ${cardCount}) as n;
    select public.sp_process_checkpoint_recharge('BENCH-HOT', ${BENCH_CARD_FUNDS_CENTS}, 'card', 'entrance',
      '00000000-0000-4000-8000-00000000c001', 'bench-fund-hot');`);
  await psql(url, "vacuum analyze");
}

export const BAR_ORDER_SCRIPT = `${REPO_ROOT}/scripts/bench/bar-order.pgbench`;
export const HOT_CARD_SCRIPT = `${REPO_ROOT}/scripts/bench/bar-order-hot-card.pgbench`;

/** Transactions per second of one pgbench run; fails on any failed transaction. */
export async function pgbench(
  cluster: Cluster,
  options: { clients: number; seconds: number; protocol: string; script: string[] },
): Promise<number> {
  const result = await run(`${PG_BIN}/pgbench`, [
    ...connectionArguments(cluster),
    "-n",
    "-M",
    options.protocol,
    "-c",
    String(options.clients),
    "-j",
    String(Math.min(options.clients, 2)),
    "-T",
    String(options.seconds),
    ...options.script,
    "postgres",
  ], { env: { PGPASSWORD: DB_PASSWORD } });
  const match = /tps = ([\d.]+) \(without initial connection time\)/.exec(result.stdout);
  const failed = /number of failed transactions: (\d+)/.exec(result.stdout);
  if (!match) throw new Error(`pgbench printed no tps:\n${result.stdout}\n${result.stderr}`);
  if (failed && Number(failed[1]) > 0) throw new Error(`pgbench reported failed transactions:\n${result.stdout}`);
  return Number(match[1]);
}

export async function reconcileDiscrepancies(url: string): Promise<number> {
  return Number(await psql(url, "select count(*) from public.ledger_reconcile()"));
}

export function cpuCount(): number {
  return navigator.hardwareConcurrency;
}
