// A project-local PostgreSQL 15 cluster prepared like the Supabase Postgres image (docs/architecture.md §3).
// Used by `npm start` (persistent, under .local/) and `npm test` (throwaway, in a temp folder).

import { asPostgresUser, isRoot, log, PG_BIN, REPO_ROOT, run } from "./process.ts";

export const DB_PASSWORD = "postgres";

export interface Cluster {
  dataDir: string;
  port: number;
  /** Throwaway clusters trade durability for speed (fsync off); never used for `npm start`. */
  throwaway: boolean;
}

export function databaseUrl(cluster: Cluster, database = "postgres"): string {
  return `postgresql://postgres:${DB_PASSWORD}@127.0.0.1:${cluster.port}/${database}?sslmode=disable`;
}

/**
 * The local password of `edge_functions`, the login role the functions connect with (it may only
 * execute the public procedures). Public like the local JWT secret: a hosted project sets its own.
 */
export const EDGE_FUNCTIONS_PASSWORD = "edge-functions-local";

/** How the edge functions reach the database: as `edge_functions`, never as the owner. */
export function edgeFunctionsDatabaseUrl(cluster: Cluster): string {
  return `postgresql://edge_functions:${EDGE_FUNCTIONS_PASSWORD}@127.0.0.1:${cluster.port}/postgres?sslmode=disable`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** `-h -p -U` for the Postgres command-line tools (pg_prove, pgbench, psql). */
export function connectionArguments(cluster: Cluster): string[] {
  return ["-h", "127.0.0.1", "-p", String(cluster.port), "-U", "postgres"];
}

export function isInitialized(cluster: Cluster): Promise<boolean> {
  return exists(`${cluster.dataDir}/PG_VERSION`);
}

/** The postgres user must be able to reach the data directory through every parent folder. */
async function handDirectoryToPostgres(dir: string): Promise<void> {
  const parent = dir.replace(/\/[^/]+$/, "");
  await Deno.mkdir(parent, { recursive: true, mode: 0o755 });
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  if (!isRoot()) return;
  await run("chown", ["postgres:postgres", dir]);
  const probe = await run("runuser", ["-u", "postgres", "--", "test", "-w", dir], { check: false });
  if (probe.code !== 0) {
    throw new Error(
      `the postgres user cannot reach ${dir}; Postgres refuses to run as root, so the project folder ` +
        `must be traversable by the postgres user (for example clone it under /work or /tmp, not /root)`,
    );
  }
}

export async function initCluster(cluster: Cluster): Promise<void> {
  await handDirectoryToPostgres(cluster.dataDir);
  const passwordFile = await Deno.makeTempFile({ prefix: "pgpass-" });
  await Deno.writeTextFile(passwordFile, DB_PASSWORD + "\n");
  if (isRoot()) await run("chown", ["postgres:postgres", passwordFile]);
  try {
    const [command, args] = asPostgresUser(`${PG_BIN}/initdb`, [
      "-D",
      cluster.dataDir,
      "-U",
      "postgres",
      "-E",
      "UTF8",
      "--locale=C.UTF-8",
      "--auth-local=peer",
      "--auth-host=scram-sha-256",
      `--pwfile=${passwordFile}`,
      "--no-instructions",
    ]);
    await run(command, args);
  } finally {
    await Deno.remove(passwordFile);
  }
  const settings = [
    "listen_addresses = '127.0.0.1'",
    `port = ${cluster.port}`,
    // TCP only: no socket file in a folder that may not exist on the next machine.
    "unix_socket_directories = ''",
    "max_connections = 200",
    "shared_buffers = 256MB",
    "log_line_prefix = '%m [%p] %q%u@%d '",
    "log_min_duration_statement = 1000",
    ...(cluster.throwaway ? ["fsync = off", "synchronous_commit = off", "full_page_writes = off"] : []),
  ];
  await Deno.writeTextFile(`${cluster.dataDir}/postgresql.auto.conf`, settings.join("\n") + "\n", {
    append: true,
  });
}

function logFile(cluster: Cluster): string {
  return `${cluster.dataDir}/server.log`;
}

export async function isRunning(cluster: Cluster): Promise<boolean> {
  const [command, args] = asPostgresUser(`${PG_BIN}/pg_ctl`, ["-D", cluster.dataDir, "status"]);
  return (await run(command, args, { check: false })).code === 0;
}

/**
 * pg_cron (Debian package postgresql-15-cron, installed by scripts/setup.sh), preloaded as on
 * Supabase so that the scheduled-jobs migration can schedule its jobs. Given at each start rather
 * than written at init, so clusters created before pg_cron was added get it too. Jobs run in
 * background workers: the clusters accept only password logins over TCP, which pg_cron's own
 * connections would not have. Without the package the cluster starts without it (the migration
 * then schedules nothing).
 */
async function cronServerOptions(): Promise<string> {
  if (!(await exists(`${PG_BIN}/../lib/pg_cron.so`))) return "";
  return " -c shared_preload_libraries=pg_cron -c cron.database_name=postgres -c cron.use_background_workers=on" +
    " -c max_worker_processes=20";
}

export async function startCluster(cluster: Cluster): Promise<void> {
  const [command, args] = asPostgresUser(`${PG_BIN}/pg_ctl`, [
    "-D",
    cluster.dataDir,
    "-l",
    logFile(cluster),
    "-o",
    `-p ${cluster.port}${await cronServerOptions()}`,
    "-w",
    "-t",
    "60",
    "start",
  ]);
  const result = await run(command, args, { check: false });
  if (result.code !== 0) {
    const tail = await Deno.readTextFile(logFile(cluster)).then((text) => text.slice(-2000)).catch(() => "");
    throw new Error(`Postgres did not start on port ${cluster.port}:\n${result.stderr}\n${tail}`);
  }
}

export async function stopCluster(cluster: Cluster): Promise<void> {
  if (!(await isInitialized(cluster)) || !(await isRunning(cluster))) return;
  const [command, args] = asPostgresUser(`${PG_BIN}/pg_ctl`, ["-D", cluster.dataDir, "-m", "fast", "-w", "stop"]);
  await run(command, args, { check: false });
}

async function psqlFile(url: string, file: string): Promise<void> {
  await run(`${PG_BIN}/psql`, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-d", url, "-f", file], {
    env: { PGOPTIONS: "--client-min-messages=warning" },
  });
}

export async function psql(url: string, sql: string): Promise<string> {
  const result = await run(`${PG_BIN}/psql`, ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]);
  return result.stdout.trim();
}

/** Roles, auth and extensions schemas as on Supabase (scripts/sql/prepare-supabase.sql). */
export function prepareLikeSupabase(url: string): Promise<void> {
  return psqlFile(url, `${REPO_ROOT}/scripts/sql/prepare-supabase.sql`);
}

export const SUPABASE_CLI = `${REPO_ROOT}/node_modules/.bin/supabase`;

/** Applies pending migrations with the real Supabase CLI (which also validates config.toml). */
export async function applyMigrations(url: string): Promise<void> {
  await run(SUPABASE_CLI, ["migration", "up", "--yes", `--remote=${url}`], {
    env: { SUPABASE_TELEMETRY_DISABLED: "1", DO_NOT_TRACK: "1" },
  });
  // The migrations create the functions' role without a password; locally it gets a known one
  // (on a hosted project an operator sets a secret one, see the README).
  await psql(url, `alter role edge_functions with login password '${EDGE_FUNCTIONS_PASSWORD}'`);
}

/**
 * Pauses pg_cron's jobs (`npm test`, benchmarks): no job may change data under a running test or
 * take CPU from a measurement. `npm start` keeps them running.
 */
export async function pauseScheduledJobs(url: string): Promise<void> {
  await psql(url, "do $$ begin if to_regclass('cron.job') is not null then update cron.job set active = false; end if; end $$");
}

export function loadSeed(url: string): Promise<void> {
  return psqlFile(url, `${REPO_ROOT}/supabase/seed.sql`);
}

/** A database fresh from migrations and seed: what `supabase db reset` gives on a Docker machine. */
export async function buildDatabase(url: string): Promise<void> {
  log("preparing roles and schemas like the Supabase image");
  await prepareLikeSupabase(url);
  log("applying migrations with the Supabase CLI");
  await applyMigrations(url);
  log("loading supabase/seed.sql");
  await loadSeed(url);
}

export async function recreateDatabase(cluster: Cluster, database = "postgres"): Promise<void> {
  const adminUrl = databaseUrl(cluster, "template1");
  await psql(adminUrl, `drop database if exists ${database} with (force)`);
  await psql(adminUrl, `create database ${database}`);
}
