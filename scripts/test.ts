// `npm test`: every check of the project, in a throwaway Postgres cluster (never the `npm start`
// one) that is created, used and deleted here. Prints one line per suite and a closing
// `N passed, N failed`; exits non-zero when anything failed or nothing ran.

import {
  buildDatabase,
  type Cluster,
  connectionArguments,
  databaseUrl,
  DB_PASSWORD,
  edgeFunctionsDatabaseUrl,
  initCluster,
  pauseScheduledJobs,
  startCluster,
  stopCluster,
  SUPABASE_CLI,
} from "./lib/cluster.ts";
import { freePort, isRoot, log, REPO_ROOT, run, waitForHttp } from "./lib/process.ts";
import { anonKey, LOCAL_JWT_SECRET } from "./lib/tokens.ts";
import { BROWSER_TEST_FILE, runBrowserSuite } from "./lib/browser-tests.ts";
import { startStripeStandIn } from "./lib/stripe-stand-in.ts";
import { LOCAL_WEBHOOK_SECRET } from "../supabase/functions/_shared/stripe.ts";
import { loadtestSmokeSuite } from "./lib/loadtest.ts";
import { staleDatabaseTypes } from "./lib/db-types.ts";

interface SuiteResult {
  name: string;
  passed: number;
  failed: number;
}

const results: SuiteResult[] = [];

// For a quick loop while developing: `TEST_FILTER=stripe npm test` runs only the pgTAP and Deno test
// files whose name contains the text (the other checks run as always). CI never sets it.
const testFilter = Deno.env.get("TEST_FILTER") ?? "";
if (testFilter) log(`TEST_FILTER=${testFilter}: only test files whose name contains it`);

function record(name: string, passed: number, failed: number, output = ""): void {
  results.push({ name, passed, failed });
  if (failed > 0 && output) console.log(output.trimEnd());
  console.log(`[test] ${name}: ${passed} passed, ${failed} failed`);
}

/** A check that is one pass or one fail (migrations, lint, advisors, type check). */
async function check(name: string, command: string, args: string[], env: Record<string, string> = {}) {
  const result = await run(command, args, { env, check: false });
  const output = `${result.stdout}\n${result.stderr}`;
  record(name, result.code === 0 ? 1 : 0, result.code === 0 ? 0 : 1, output);
  return output;
}

async function runPgTap(cluster: Cluster): Promise<void> {
  const folder = `${REPO_ROOT}/supabase/tests/database`;
  const files = [...Deno.readDirSync(folder)].map((entry) => entry.name).filter((name) => name.endsWith(".test.sql"))
    .filter((name) => name.includes(testFilter)).sort().map((name) => `${folder}/${name}`);
  if (files.length === 0 && testFilter) return; // TEST_FILTER names no pgTAP file (e.g. browser)
  if (files.length === 0) return record("pgTAP", 0, 1, "no pgTAP files found");
  const result = await run("pg_prove", [
    "--verbose",
    "--failures",
    ...connectionArguments(cluster),
    "-d",
    "postgres",
    ...files,
  ], { env: { PGPASSWORD: DB_PASSWORD }, check: false });
  const output = `${result.stdout}\n${result.stderr}`;
  const passed = (output.match(/^\s*ok \d+/gm) ?? []).length;
  let failed = (output.match(/^\s*not ok \d+/gm) ?? []).length;
  // A file that died or planned a different number of tests fails without a `not ok` line.
  if (result.code !== 0 && failed === 0) failed = 1;
  record("pgTAP", passed, failed, output);
}

async function runDenoTests(cluster: Cluster): Promise<void> {
  const functionsPort = freePort();
  // Stripe cannot be reached from here: create-checkout-session talks to the local stand-in.
  const stripeStandIn = startStripeStandIn({
    webhookUrl: `http://127.0.0.1:${functionsPort}/functions/v1/stripe-webhook`,
    webhookSecret: LOCAL_WEBHOOK_SECRET,
  });
  const env = {
    SUPABASE_DB_URL: databaseUrl(cluster),
    // The functions connect as their own role, which may only execute the public procedures.
    DB_URL: edgeFunctionsDatabaseUrl(cluster),
    SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
    SUPABASE_URL: `http://127.0.0.1:${functionsPort}`,
    FUNCTIONS_PORT: String(functionsPort),
    FUNCTIONS_URL: `http://127.0.0.1:${functionsPort}/functions/v1`,
    STRIPE_SECRET_KEY: "sk_test_local_stand_in",
    STRIPE_API_HOST: "127.0.0.1",
    STRIPE_API_PORT: String(stripeStandIn.port),
    STRIPE_API_PROTOCOL: "http",
    STRIPE_WEBHOOK_SECRET: LOCAL_WEBHOOK_SECRET,
    NO_COLOR: "1",
  };
  const server = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `${REPO_ROOT}/scripts/functions-server.ts`],
    env,
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  // The server logs one line per request; keep them for a failure report instead of the console.
  const serverLog = Promise.all([new Response(server.stdout).text(), new Response(server.stderr).text()]);
  try {
    await waitForHttp(`${env.FUNCTIONS_URL}/health`, 60_000);
    const testFiles = testFilter
      ? [...Deno.readDirSync(`${REPO_ROOT}/supabase/functions/tests`)].map((entry) => entry.name)
        .filter((name) => name.endsWith(".test.ts") && name.includes(testFilter))
        .map((name) => `supabase/functions/tests/${name}`)
      : [];
    if (!testFilter || testFiles.length > 0) {
      const result = await run(Deno.execPath(), ["test", "--allow-all", "--no-check", ...testFiles], { env, check: false });
      const output = `${result.stdout}\n${result.stderr}`;
      const summary = /(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/.exec(output);
      const passed = summary ? Number(summary[1]) : 0;
      let failed = summary ? Number(summary[2]) : 0;
      if (result.code !== 0 && failed === 0) failed = 1;
      record("deno test (unit, HTTP end-to-end, concurrency)", passed, failed, output);
    }
    // The web app in headless Chromium, against the same functions server (TEST_FILTER=browser: only these).
    if (BROWSER_TEST_FILE.includes(testFilter)) {
      const browser = await runBrowserSuite({
        functionsUrl: env.FUNCTIONS_URL,
        anonKey: await anonKey(),
        stripeStandInUrl: `http://127.0.0.1:${stripeStandIn.port}`,
      });
      record("browser (web app in headless Chromium)", browser.passed, browser.failed, browser.output);
    }
  } finally {
    await stripeStandIn.close();
    server.kill("SIGTERM");
    const [stdout, stderr] = await serverLog;
    await server.status;
    if (results.at(-1)?.failed) console.log(`--- functions server log ---\n${stdout}${stderr}`.slice(-20_000));
  }
}

const tempDir = await Deno.makeTempDir({ prefix: "festival-test-" });
// The postgres user (when we are root) must reach the cluster folder inside it.
await Deno.chmod(tempDir, 0o755);
const cluster: Cluster = { dataDir: `${tempDir}/db`, port: freePort(), throwaway: true };
const startedAt = performance.now();

try {
  log(`throwaway Postgres cluster on port ${cluster.port} in ${tempDir}${isRoot() ? " (as user postgres)" : ""}`);
  await initCluster(cluster);
  await startCluster(cluster);
  const url = databaseUrl(cluster);
  // Migrations through the Supabase CLI, which also parses and validates supabase/config.toml.
  try {
    await buildDatabase(url);
    // pg_cron's jobs run on their schedule under `npm start`; here they are paused
    // (22-scheduled-jobs checks them and runs their commands).
    await pauseScheduledJobs(url);
    record("migrations and seed (supabase CLI, config.toml)", 1, 0);
  } catch (error) {
    record("migrations and seed (supabase CLI, config.toml)", 0, 1, (error as Error).message);
    throw error;
  }
  // The committed procedure types must be what these migrations generate (`npm run gen:types`).
  const stale = await staleDatabaseTypes(url).catch((error) => `gen types failed: ${(error as Error).message}`);
  record("generated database types are current", stale ? 0 : 1, stale ? 1 : 0, stale ?? "");
  await check("type check (deno check)", Deno.execPath(), [
    "check",
    "scripts/",
    "supabase/functions/",
  ]);
  await runPgTap(cluster);
  const cliEnv = { SUPABASE_TELEMETRY_DISABLED: "1", DO_NOT_TRACK: "1" };
  await check("supabase db lint", SUPABASE_CLI, ["db", "lint", `--remote=${url}`, "--level", "warning", "--fail-on", "warning"], cliEnv);
  await check("supabase db advisors --fail-on warn", SUPABASE_CLI, ["db", "advisors", `--remote=${url}`, "--fail-on", "warn"], cliEnv);
  await runDenoTests(cluster);
  // The festival load simulation for 30 s on a stack of its own, proven from the database.
  if (!testFilter || "loadtest".includes(testFilter)) {
    const smoke = await loadtestSmokeSuite();
    record(smoke.name, smoke.passed, smoke.failed, smoke.output);
  }
} catch (error) {
  console.error(`[test] stopped early: ${(error as Error).message}`);
  if (!results.some((result) => result.failed > 0)) record("test stack", 0, 1);
} finally {
  await stopCluster(cluster);
  await Deno.remove(tempDir, { recursive: true }).catch(() => {});
}

const passed = results.reduce((sum, result) => sum + result.passed, 0);
const failed = results.reduce((sum, result) => sum + result.failed, 0);
log(`finished in ${((performance.now() - startedAt) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(failed > 0 || passed === 0 ? 1 : 0);
