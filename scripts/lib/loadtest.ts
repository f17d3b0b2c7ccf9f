// The festival load simulation behind `npm run loadtest` and the smoke run of `npm test`:
// a stack of its own (or a deployed target), 2,000 funded load-test cards and practitioners,
// Artillery driving loadtest/festival.yml, then the checks that matter to users, made from the
// database: every successful response's amount is the change it made, each card's and user's
// responses add up to its balance change, no key took effect twice, ledger_reconcile() is empty.

import postgres from "postgres";
import { buildDatabase, type Cluster, databaseUrl, initCluster, startCluster, stopCluster } from "./cluster.ts";
import { functionsEnvironment } from "./local-stack.ts";
import { freePort, log, REPO_ROOT, run, waitForHttp } from "./process.ts";
import { startStripeStandIn, type StripeStandIn } from "./stripe-stand-in.ts";
import { DEMO_STAFF, LOCAL_JWT_SECRET, signToken, userToken } from "./tokens.ts";

export const LOADTEST_CARDS = 2000;
export const LOADTEST_PRACTITIONERS = 200;
const LOCAL_WEBHOOK_SECRET = "whsec_local_development";
const ARTILLERY = `${REPO_ROOT}/node_modules/artillery/bin/run`;
const SCENARIO = `${REPO_ROOT}/loadtest/festival.yml`;

/** Business refusals the simulation provokes on purpose: they are answers, not failures. */
export const DELIBERATE_REFUSALS = new Set([
  "insufficient_funds",
  "duplicate_tap_suspected",
  "limit_exceeded",
  "no_deposit_outstanding",
]);

export interface Phase {
  name: string;
  duration: number;
  arrivalRate: number;
  rampTo?: number;
}

/** The seed's shape, 10 → 20 → 50 → 80 → 20 arrivals/s, over `totalSeconds`. */
export function seedPhases(totalSeconds: number): Phase[] {
  const step = Math.round(totalSeconds / 6);
  return [
    { name: "10/s", duration: step, arrivalRate: 10 },
    { name: "10→20/s", duration: step, arrivalRate: 10, rampTo: 20 },
    { name: "20→50/s", duration: step, arrivalRate: 20, rampTo: 50 },
    { name: "50→80/s", duration: step, arrivalRate: 50, rampTo: 80 },
    { name: "80/s peak", duration: step, arrivalRate: 80 },
    { name: "80→20/s", duration: step, arrivalRate: 80, rampTo: 20 },
  ];
}

export const PEAK_PHASE = "80/s peak";

/** 30 seconds for `npm test`: enough traffic on every flow to prove consistency, no latency goal. */
export const SMOKE_PHASES: Phase[] = [
  { name: "5/s", duration: 10, arrivalRate: 5 },
  { name: "5→25/s", duration: 10, arrivalRate: 5, rampTo: 25 },
  { name: "25/s", duration: 10, arrivalRate: 25 },
];

// ---------------------------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------------------------

export interface Target {
  /** Base URL of the functions: .../functions/v1 */
  functionsUrl: string;
  /** The database, as its owner: setup and the checks. */
  databaseUrl: string;
  jwtSecret: string;
  webhookSecret: string;
  /** Sent as `apikey` with every request, as Supabase clients do (a deployed project's gateway). */
  serviceKey?: string;
  /** Lines the functions server wrote (local stack only): per-request durations inside the function. */
  functionLog?: () => string;
  /** Local stack only: the postmaster and the functions server, to attribute CPU time. */
  pids?: { postgres?: number; functions?: number };
  stop: () => Promise<void>;
}

/**
 * A fresh stack of its own: a cluster on a free port (durable, fsync on, like production, unless
 * `throwaway`), migrations and seed, the Stripe stand-in and the functions server on free ports.
 */
export async function startLocalTarget(
  options: { throwaway: boolean; statements: boolean; poolMax?: number },
): Promise<Target> {
  const tempDir = await Deno.makeTempDir({ prefix: "festival-loadtest-" });
  await Deno.chmod(tempDir, 0o755);
  const cluster: Cluster = { dataDir: `${tempDir}/db`, port: freePort(), throwaway: options.throwaway };
  let standIn: StripeStandIn | undefined;
  let server: Deno.ChildProcess | undefined;
  let serverLog = "";
  const stop = async () => {
    if (server) {
      try {
        server.kill("SIGTERM");
      } catch { /* already gone */ }
      await server.status;
    }
    await standIn?.close();
    await stopCluster(cluster);
    await Deno.remove(tempDir, { recursive: true }).catch(() => {});
  };
  try {
    log(`load-test cluster on port ${cluster.port} (${options.throwaway ? "fsync off" : "durable: fsync on"})`);
    await initCluster(cluster);
    if (options.statements) {
      // Where the time goes inside the procedures: every statement, nested ones included.
      await Deno.writeTextFile(
        `${cluster.dataDir}/postgresql.auto.conf`,
        "shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n",
        { append: true },
      );
    }
    await startCluster(cluster);
    const url = databaseUrl(cluster);
    await buildDatabase(url);
    if (options.statements) {
      await run(`${Deno.env.get("PG_BIN") ?? "/usr/lib/postgresql/15/bin"}/psql`, [
        "-X",
        "-q",
        "-d",
        url,
        "-c",
        "create extension if not exists pg_stat_statements with schema extensions",
      ]);
    }
    standIn = startStripeStandIn();
    const port = freePort();
    const environment = {
      ...(await functionsEnvironment(cluster, port, standIn.port)),
      // Always the stand-in: a load test must never create sessions on a real Stripe account.
      STRIPE_SECRET_KEY: "sk_test_local_stand_in",
      STRIPE_API_HOST: "127.0.0.1",
      STRIPE_API_PORT: String(standIn.port),
      STRIPE_API_PROTOCOL: "http",
      STRIPE_WEBHOOK_SECRET: LOCAL_WEBHOOK_SECRET,
      SUPABASE_JWT_SECRET: LOCAL_JWT_SECRET,
      FUNCTIONS_PORT: String(port),
      DB_POOL_MAX: String(options.poolMax ?? 8),
      NO_COLOR: "1",
    };
    server = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", `${REPO_ROOT}/scripts/functions-server.ts`],
      env: environment,
      cwd: REPO_ROOT,
      stdout: "piped",
      stderr: "piped",
      stdin: "null",
    }).spawn();
    // Keep the request log (one JSON line per request) for the "where the time goes" table.
    const decoder = new TextDecoder();
    for (const stream of [server.stdout, server.stderr]) {
      (async () => {
        for await (const chunk of stream) serverLog += decoder.decode(chunk, { stream: true });
      })().catch(() => {});
    }
    const functionsUrl = `http://127.0.0.1:${port}/functions/v1`;
    await waitForHttp(`${functionsUrl}/health`, 60_000);
    return {
      functionsUrl,
      databaseUrl: url,
      jwtSecret: LOCAL_JWT_SECRET,
      webhookSecret: LOCAL_WEBHOOK_SECRET,
      functionLog: () => serverLog,
      pids: {
        postgres: Number((await Deno.readTextFile(`${cluster.dataDir}/postmaster.pid`)).split("\n")[0]),
        functions: server.pid,
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Load-test data: 2,000 funded cards and 200 practitioners with credits
// ---------------------------------------------------------------------------------------------

export function loadCardId(n: number): string {
  return `LOAD-${String(n).padStart(4, "0")}`;
}

export function practitionerId(n: number): string {
  return `10ad0000-0000-4000-8000-${String(n).padStart(12, "0")}`;
}

export interface LoadData {
  runId: string;
  cards: string[];
  practitioners: { id: string; token: string }[];
  tokens: Record<"bartender" | "bartender2" | "cashier" | "cashier2", string>;
  anonKey: string;
  webhookSecret: string;
}

/**
 * Registers and funds the cards (a quarter with 1000 cents, so that they run dry and
 * insufficient_funds is normal traffic; the rest 3000 to 7000) and gives each practitioner 40
 * credits, through the procedures. Idempotent: a second run on the same target adds nothing.
 */
export async function prepareLoadData(target: Target): Promise<LoadData> {
  log(`registering and funding ${LOADTEST_CARDS} load-test cards and ${LOADTEST_PRACTITIONERS} practitioners`);
  const sql = postgres(target.databaseUrl, { max: 1, onnotice: () => {} });
  try {
    await sql.unsafe(`
      select public.sp_admin_register_cards(
        (select array_agg('LOAD-' || lpad(n::text, 4, '0')) from generate_series(batch * 1000 + 1,
          least((batch + 1) * 1000, ${LOADTEST_CARDS})) as n),
        '${DEMO_STAFF.admin}', 'loadtest-register-' || batch)
      from generate_series(0, (${LOADTEST_CARDS} - 1) / 1000) as batch`);
    await sql.unsafe(`
      select public.sp_process_checkpoint_recharge('LOAD-' || lpad(n::text, 4, '0'),
        case when n % 4 = 0 then 1000 else 3000 + (n % 5) * 1000 end, 'card', 'entrance',
        '${DEMO_STAFF.cashier}', 'loadtest-fund-' || n)
      from generate_series(1, ${LOADTEST_CARDS}) as n`);
    await sql.unsafe(`
      insert into auth.users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data, email_confirmed_at)
      select ('10ad0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'authenticated', 'authenticated',
        'practitioner-' || n || '@loadtest.invalid', '{}', '{"name": "Load-test practitioner"}', now()
      from generate_series(1, ${LOADTEST_PRACTITIONERS}) as n
      on conflict (id) do nothing`);
    await sql.unsafe(`
      select public.allocate_monthly_credits(('10ad0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 40,
        'loadtest-subscription-' || n, timestamptz '2026-01-01', timestamptz '2026-02-01', 'loadtest-allocation-' || n)
      from generate_series(1, ${LOADTEST_PRACTITIONERS}) as n`);
    await sql.unsafe("analyze");
  } finally {
    await sql.end();
  }
  const practitioners = [];
  for (let n = 1; n <= LOADTEST_PRACTITIONERS; n++) {
    practitioners.push({ id: practitionerId(n), token: await userToken(practitionerId(n), { secret: target.jwtSecret }) });
  }
  return {
    runId: crypto.randomUUID().slice(0, 8),
    cards: Array.from({ length: LOADTEST_CARDS }, (_, index) => loadCardId(index + 1)),
    practitioners,
    tokens: {
      bartender: await userToken(DEMO_STAFF.bartender, { secret: target.jwtSecret }),
      bartender2: await userToken(DEMO_STAFF.bartender2, { secret: target.jwtSecret }),
      cashier: await userToken(DEMO_STAFF.cashier, { secret: target.jwtSecret }),
      cashier2: await userToken(DEMO_STAFF.cashier2, { secret: target.jwtSecret }),
    },
    anonKey: await signToken({ role: "anon" }, { secret: target.jwtSecret }),
    webhookSecret: target.webhookSecret,
  };
}

export interface Balances {
  cards: Map<string, number>;
  users: Map<string, number>;
}

export async function readBalances(databaseUrl: string): Promise<Balances> {
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    const cards = await sql<{ id: string; balance: string }[]>`
      select c.id, a.balance_cents::text as balance from festival.cards c join ledger.accounts a on a.id = c.account_id
      where c.id like 'LOAD-%'`;
    const users = await sql<{ id: string; balance: string }[]>`
      select u.user_id::text as id, a.balance_cents::text as balance
      from credits.user_accounts u join ledger.accounts a on a.id = u.account_id
      where u.user_id::text like '10ad0000-%'`;
    return {
      cards: new Map(cards.map((row) => [row.id, Number(row.balance)])),
      users: new Map(users.map((row) => [row.id, Number(row.balance)])),
    };
  } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------------------------
// Running Artillery
// ---------------------------------------------------------------------------------------------

export interface ResponseRecord {
  t: number;
  ms: number;
  flow: string;
  step: string;
  status: number;
  code: string | null;
  key?: string;
  card?: string;
  user?: string;
  session?: string;
  /** A duplicate tap: the key of the order it repeats. */
  original?: string;
  // deno-lint-ignore no-explicit-any
  body?: any;
}

export interface ArtilleryRun {
  records: ResponseRecord[];
  /** Requests that got no HTTP response at all (timeouts, refused connections), by error. */
  transportErrors: Record<string, number>;
  startedAt: number;
  phases: Phase[];
  cpu?: CpuShares;
}

/** Runs loadtest/festival.yml with the given phases; records land in `folder`. */
export async function runArtillery(
  target: Target,
  data: LoadData,
  phases: Phase[],
  folder: string,
  label: string,
): Promise<ArtilleryRun> {
  await Deno.mkdir(`${folder}/records-${label}`, { recursive: true });
  const dataFile = `${folder}/data-${label}.json`;
  await Deno.writeTextFile(dataFile, JSON.stringify(data));
  const reportFile = `${folder}/artillery-${label}.json`;
  const overrides = {
    config: {
      target: target.functionsUrl,
      phases,
      ...(target.serviceKey ? { defaults: { headers: { apikey: target.serviceKey } } } : {}),
    },
  };
  const seconds = phases.reduce((sum, phase) => sum + phase.duration, 0);
  log(`artillery: ${label}, ${seconds} s, ${phases.map((phase) => phase.name).join(", ")}`);
  const startedAt = Date.now();
  const stopSampling = sampleCpu(target.pids ?? {});
  const result = await run("node", [
    ARTILLERY,
    "run",
    "--overrides",
    JSON.stringify(overrides),
    "--output",
    reportFile,
    SCENARIO,
  ], {
    env: {
      LOADTEST_DATA: dataFile,
      LOADTEST_RECORDS_DIR: `${folder}/records-${label}`,
      // Nothing may phone home from here: no telemetry, no update checks.
      ARTILLERY_DISABLE_TELEMETRY: "true",
      DO_NOT_TRACK: "1",
      NO_UPDATE_NOTIFIER: "1",
    },
    check: false,
  });
  const cpu = await stopSampling();
  await Deno.writeTextFile(`${folder}/artillery-${label}.log`, `${result.stdout}\n${result.stderr}`);
  if (result.code !== 0) {
    throw new Error(`artillery exited with ${result.code}:\n${(result.stdout + result.stderr).slice(-3000)}`);
  }
  const records: ResponseRecord[] = [];
  for await (const entry of Deno.readDir(`${folder}/records-${label}`)) {
    const text = await Deno.readTextFile(`${folder}/records-${label}/${entry.name}`);
    for (const line of text.split("\n")) if (line) records.push(JSON.parse(line));
  }
  records.sort((a, b) => a.t - b.t);
  const report = JSON.parse(await Deno.readTextFile(reportFile));
  const transportErrors: Record<string, number> = {};
  for (const [name, count] of Object.entries(report.aggregate?.counters ?? {})) {
    if (name.startsWith("errors.")) transportErrors[name.slice("errors.".length)] = count as number;
  }
  return { records, transportErrors, startedAt: records[0]?.t ?? startedAt, phases, cpu };
}

// ---------------------------------------------------------------------------------------------
// The consistency checks, from the database
// ---------------------------------------------------------------------------------------------

interface Claim {
  i: number;
  op: number;
  card: string | null;
  usr: string | null;
  delta: number;
  before: number;
  after: number;
}

/** What a successful, first-time (not replayed) response says it changed. */
export function claimsOf(record: ResponseRecord): Omit<Claim, "i">[] {
  const body = record.body;
  if (record.status !== 200 || !body) return [];
  // The webhook answers {received, outcome, result}: the procedure's result is inside.
  const firstTime = record.step.startsWith("webhook") || (body.ok === true && body.replayed !== true);
  if (!firstTime) return [];
  switch (record.step) {
    case "order":
    case "order_resend":
    case "duplicate_tap":
      return [{
        op: body.transaction_id,
        card: body.card_id,
        usr: null,
        delta: -body.total_cents,
        before: body.previous_balance_cents,
        after: body.new_balance_cents,
      }];
    case "recharge":
    case "recharge_resend":
      return [{
        op: body.transaction_id,
        card: body.card_id,
        usr: null,
        delta: body.amount_cents + body.bonus_cents,
        before: body.previous_balance_cents,
        after: body.new_balance_cents,
      }];
    case "webhook":
    case "webhook_repeat":
    case "webhook_out_of_order":
    case "webhook_late_unpaid": {
      const result = body.result;
      if (!result || result.outcome !== "credited" || result.replayed === true) return [];
      return [{
        op: result.transaction_id,
        card: result.card_id,
        usr: null,
        delta: result.amount_cents + result.bonus_cents,
        before: result.previous_balance_cents,
        after: result.new_balance_cents,
      }];
    }
    case "peer_booking":
    case "peer_booking_resend":
      return [
        {
          op: body.transaction_id,
          card: null,
          usr: body.booking_practitioner.user_id,
          delta: -body.credits,
          before: body.booking_practitioner.balance_before_credits,
          after: body.booking_practitioner.balance_after_credits,
        },
        {
          op: body.transaction_id,
          card: null,
          usr: body.treating_practitioner.user_id,
          delta: body.credits,
          before: body.treating_practitioner.balance_before_credits,
          after: body.treating_practitioner.balance_after_credits,
        },
      ];
    case "escrow_lock":
      return [{
        op: body.transaction_id,
        card: null,
        usr: body.user_id,
        delta: -body.amount_credits,
        before: body.balance_before_credits,
        after: body.balance_after_credits,
      }];
    case "escrow_unlock":
      return [{
        op: body.transaction_id,
        card: null,
        usr: body.user_id,
        delta: body.amount_credits,
        before: body.balance_before_credits,
        after: body.balance_after_credits,
      }];
    default:
      return [];
  }
}

export interface CheckResult {
  name: string;
  ok: boolean;
  detail: string;
}

function sameExceptReplayed(first: unknown, second: unknown): boolean {
  const strip = (value: unknown) => {
    if (!value || typeof value !== "object") return value;
    const { replayed: _replayed, ...rest } = value as Record<string, unknown>;
    return rest;
  };
  return JSON.stringify(strip(first)) === JSON.stringify(strip(second));
}

export async function checkConsistency(
  target: Target,
  data: LoadData,
  records: ResponseRecord[],
  before: Balances,
): Promise<CheckResult[]> {
  const results: CheckResult[] = [];
  const claims: Claim[] = records.flatMap(claimsOf).map((claim, i) => ({ ...claim, i }));
  const sql = postgres(target.databaseUrl, { max: 1, onnotice: () => {} });
  try {
    // 1. Every successful response's amount is the change its operation made to that account,
    //    from the balance it reports to the balance it reports.
    const mismatched = await sql.unsafe(
      `
      with claims as (
        select * from jsonb_to_recordset($1::jsonb)
          as c(i integer, op bigint, card text, usr uuid, delta bigint, before bigint, after bigint)
      ), accounts as (
        select c.*, coalesce(card.account_id, credit.account_id) as account_id
        from claims c
        left join festival.cards card on card.id = c.card
        left join credits.user_accounts credit on credit.user_id = c.usr
      ), moves as (
        select a.i, a.delta, a.before, a.after,
          coalesce(sum(case when t.to_account_id = a.account_id then t.amount_cents else -t.amount_cents end), 0)
            as actual,
          (array_agg(case when t.to_account_id = a.account_id then t.to_balance_before_cents
            else t.from_balance_before_cents end order by t.id))[1] as first_before,
          (array_agg(case when t.to_account_id = a.account_id then t.to_balance_after_cents
            else t.from_balance_after_cents end order by t.id desc))[1] as last_after
        from accounts a
        left join ledger.transfers t on t.operation_id = a.op
          and (t.to_account_id = a.account_id or t.from_account_id = a.account_id)
        group by a.i, a.delta, a.before, a.after
      )
      select i, delta::text, actual::text, before::text, first_before::text, after::text, last_after::text
      from moves
      where actual <> delta or first_before is distinct from before or last_after is distinct from after`,
      // postgres.js serializes the value itself for a jsonb parameter.
      // deno-lint-ignore no-explicit-any
      [claims as any],
    );
    results.push({
      name: "every successful response's amount equals the change it made",
      ok: claims.length > 0 && mismatched.length === 0,
      detail: mismatched.length === 0
        ? `${claims.length} account changes of ${new Set(claims.map((claim) => claim.op)).size} operations proven`
        : `${mismatched.length} differ, e.g. ${JSON.stringify(mismatched.slice(0, 3))}`,
    });

    // 2. Per card and per practitioner: the responses add up to the balance change.
    const after = await readBalances(target.databaseUrl);
    const claimed = { cards: new Map<string, number>(), users: new Map<string, number>() };
    for (const claim of claims) {
      const [map, id] = claim.card ? [claimed.cards, claim.card] : [claimed.users, claim.usr!];
      map.set(id, (map.get(id) ?? 0) + claim.delta);
    }
    const differences: string[] = [];
    for (const [kind, beforeMap, afterMap, claimedMap] of [
      ["card", before.cards, after.cards, claimed.cards],
      ["user", before.users, after.users, claimed.users],
    ] as const) {
      for (const id of new Set([...afterMap.keys(), ...claimedMap.keys()])) {
        const change = (afterMap.get(id) ?? 0) - (beforeMap.get(id) ?? 0);
        if (change !== (claimedMap.get(id) ?? 0)) {
          differences.push(`${kind} ${id}: balance changed by ${change}, responses say ${claimedMap.get(id) ?? 0}`);
        }
      }
    }
    results.push({
      name: "per card and per practitioner, the responses add up to the balance change",
      ok: differences.length === 0,
      detail: differences.length === 0
        ? `${after.cards.size} cards, ${after.users.size} practitioners`
        : `${differences.length} differ: ${differences.slice(0, 5).join("; ")}`,
    });

    // 3. No key took effect twice: one operation per key at most, one credit per Stripe session,
    //    as many operations as first-time successful responses, and every resend answered with
    //    the stored response.
    // Matched anywhere in the stored key, in case keys are stored scoped by caller.
    const prefix = `%lt-${data.runId}-%`;
    const [keys] = await sql<{ twice: string; operations: string }[]>`
      select count(*) filter (where n > 1)::text as twice, coalesce(sum(n), 0)::text as operations
      from (select client_request_id, count(*) as n from ledger.operations where client_request_id like ${prefix}
        group by client_request_id) per_key`;
    const sessions = records.filter((record) => record.session).map((record) => record.session!);
    const [stripe] = await sql<{ twice: string; credits: string }[]>`
      select count(*) filter (where n > 1)::text as twice, coalesce(sum(n), 0)::text as credits
      from (select metadata ->> 'stripe_session_id' as session, count(*) as n from ledger.operations
        where kind = 'stripe_recharge' and metadata ->> 'stripe_session_id' = any (${[...new Set(sessions)]})
        group by 1) per_session`;
    const firstTimeOperations = new Set(claims.map((claim) => claim.op));
    const stripeOperations = new Set(
      records.filter((record) => record.step.startsWith("webhook")).flatMap(claimsOf).map((claim) => claim.op),
    );
    const keyedOperations = firstTimeOperations.size - stripeOperations.size;
    const resendProblems: string[] = [];
    const firstByKey = new Map<string, ResponseRecord>();
    for (const record of records) {
      if (!record.key || record.step.endsWith("_resend") || record.step === "webhook_repeat") continue;
      firstByKey.set(`${record.step}:${record.key}`, record);
    }
    let resends = 0;
    for (const record of records) {
      const originalStep = record.step === "webhook_repeat"
        ? undefined
        : record.step.endsWith("_resend")
        ? record.step.replace(/_resend$/, "")
        : null;
      if (originalStep === null) continue;
      resends++;
      if (originalStep === undefined) {
        // A repeated Stripe event: answered 200 with the first delivery's result, replayed.
        const result = record.body?.result;
        if (record.status !== 200 || (result && result.outcome === "credited" && result.replayed !== true)) {
          resendProblems.push(`event ${record.key}: ${record.status} ${JSON.stringify(record.body).slice(0, 200)}`);
        }
        continue;
      }
      const original = firstByKey.get(`${originalStep}:${record.key}`);
      if (!original) continue;
      if (record.status !== original.status || record.body?.replayed !== true || !sameExceptReplayed(original.body, record.body)) {
        resendProblems.push(`key ${record.key}: first ${original.status}, resend ${record.status}`);
      }
    }
    // A duplicate tap right after a successful order must be refused as duplicate_tap_suspected.
    const taps = records.filter((record) => record.step === "duplicate_tap");
    const tapProblems = taps.filter((tap) => {
      const original = firstByKey.get(`order:${tap.original}`);
      // Refused for another reason first (insufficient_funds: the card cannot pay twice) is fine too.
      return original?.body?.ok === true && tap.status >= 200 && tap.status < 300;
    });
    const keyProblems = [
      Number(keys.twice) > 0 ? `${keys.twice} keys with more than one operation` : "",
      Number(stripe.twice) > 0 ? `${stripe.twice} Stripe sessions credited more than once` : "",
      Number(keys.operations) !== keyedOperations
        ? `${keys.operations} operations under this run's keys, ${keyedOperations} successful first responses`
        : "",
      Number(stripe.credits) !== stripeOperations.size
        ? `${stripe.credits} Stripe credits, ${stripeOperations.size} 'credited' answers`
        : "",
      ...resendProblems.slice(0, 5),
      ...tapProblems.slice(0, 3).map((tap) => `duplicate tap ${tap.key} was charged`),
    ].filter(Boolean);
    results.push({
      name: "no key took effect twice",
      ok: keyProblems.length === 0,
      detail: keyProblems.length === 0
        ? `${keys.operations} keyed operations, ${stripe.credits} Stripe credits for ${new Set(sessions).size} sessions, ` +
          `${resends} resends answered from storage, ${taps.length} duplicate taps (${
            taps.filter((tap) => tap.code === "duplicate_tap_suspected").length
          } refused as duplicate_tap_suspected, none charged)`
        : keyProblems.join("; "),
    });

    // 4. The ledger proves itself.
    const discrepancies = await sql`select * from public.ledger_reconcile()`;
    results.push({
      name: "ledger_reconcile() is empty",
      ok: discrepancies.length === 0,
      detail: discrepancies.length === 0
        ? "no discrepancy"
        : `${discrepancies.length} rows, e.g. ${JSON.stringify(discrepancies.slice(0, 3))}`,
    });
  } finally {
    await sql.end();
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report
// ---------------------------------------------------------------------------------------------

export function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)];
}

export interface Row {
  flow: string;
  phase: string;
  requests: number;
  rate: number;
  p50: number;
  p95: number;
  p99: number;
  successes: number;
  deliberate: number;
  failures: number;
  outcomes: string;
}

function isSuccess(record: ResponseRecord): boolean {
  return record.status >= 200 && record.status < 300;
}

export function isDeliberate(record: ResponseRecord): boolean {
  return record.code !== null && DELIBERATE_REFUSALS.has(record.code);
}

/** Which phase a record belongs to: by its start time relative to the first request. */
export function phaseOf(run: ArtilleryRun, record: ResponseRecord): string {
  let offset = (record.t - run.startedAt) / 1000;
  for (const phase of run.phases) {
    if (offset < phase.duration) return phase.name;
    offset -= phase.duration;
  }
  return run.phases.at(-1)!.name;
}

export function row(flow: string, phase: string, records: ResponseRecord[], seconds: number): Row {
  const latencies = records.map((record) => record.ms).sort((a, b) => a - b);
  const outcomes = new Map<string, number>();
  for (const record of records) {
    if (isSuccess(record)) continue;
    const label = `${record.status} ${record.code ?? ""}`.trim();
    outcomes.set(label, (outcomes.get(label) ?? 0) + 1);
  }
  return {
    flow,
    phase,
    requests: records.length,
    rate: records.length / Math.max(seconds, 1),
    p50: percentile(latencies, 0.5),
    p95: percentile(latencies, 0.95),
    p99: percentile(latencies, 0.99),
    successes: records.filter(isSuccess).length,
    deliberate: records.filter((record) => !isSuccess(record) && isDeliberate(record)).length,
    failures: records.filter((record) => !isSuccess(record) && !isDeliberate(record)).length,
    outcomes: [...outcomes].sort((a, b) => b[1] - a[1])
      .map(([label, count]) => `${label} ${(100 * count / records.length).toFixed(1)}%`).join(", "),
  };
}

export function tableRows(run: ArtilleryRun): Row[] {
  const rows: Row[] = [];
  const flows = [...new Set(run.records.map((record) => record.flow))].sort();
  for (const phase of run.phases) {
    const inPhase = run.records.filter((record) => phaseOf(run, record) === phase.name);
    for (const flow of flows) {
      const records = inPhase.filter((record) => record.flow === flow);
      if (records.length > 0) rows.push(row(flow, phase.name, records, phase.duration));
    }
    rows.push(row("all", phase.name, inPhase, phase.duration));
  }
  const total = run.phases.reduce((sum, phase) => sum + phase.duration, 0);
  for (const flow of flows) rows.push(row(flow, "whole run", run.records.filter((record) => record.flow === flow), total));
  rows.push(row("all", "whole run", run.records, total));
  return rows;
}

const fmt = (value: number) => Number.isNaN(value) ? "–" : value < 10 ? value.toFixed(1) : value.toFixed(0);

export function markdownTable(rows: Row[]): string {
  return [
    "| phase | flow | requests | req/s | p50 ms | p95 ms | p99 ms | not 2xx (status code: share) |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ...rows.map((r) =>
      `| ${r.phase} | ${r.flow} | ${r.requests} | ${r.rate.toFixed(1)} | ${fmt(r.p50)} | ${fmt(r.p95)} | ${fmt(r.p99)} | ${
        r.outcomes || "–"
      } |`
    ),
  ].join("\n");
}

/** Seconds-long buckets of throughput and latency over time, for the chart. */
export function timeSeries(run: ArtilleryRun, bucketSeconds: number) {
  const buckets = new Map<number, ResponseRecord[]>();
  for (const record of run.records) {
    const bucket = Math.floor((record.t - run.startedAt) / 1000 / bucketSeconds);
    buckets.set(bucket, [...(buckets.get(bucket) ?? []), record]);
  }
  const last = Math.max(...buckets.keys(), 0);
  const series = [];
  for (let bucket = 0; bucket <= last; bucket++) {
    const records = buckets.get(bucket) ?? [];
    const latencies = records.map((record) => record.ms).sort((a, b) => a - b);
    series.push({
      second: bucket * bucketSeconds,
      throughput: records.length / bucketSeconds,
      failures: records.filter((record) => !isSuccess(record) && !isDeliberate(record)).length / bucketSeconds,
      p50: percentile(latencies, 0.5),
      p95: percentile(latencies, 0.95),
      p99: percentile(latencies, 0.99),
    });
  }
  let offset = 0;
  const phases = run.phases.map((phase) => {
    const span = { name: phase.name, from: offset, to: offset + phase.duration };
    offset += phase.duration;
    return span;
  });
  return { bucketSeconds, series, phases };
}

/** Renders the chart as SVG and PNG with loadtest/chart.mjs (ECharts server-side, resvg). */
export async function renderChart(folder: string, name: string, title: string, series: ReturnType<typeof timeSeries>) {
  const input = `${folder}/${name}-series.json`;
  await Deno.writeTextFile(input, JSON.stringify({ title, ...series }));
  await run("node", [`${REPO_ROOT}/loadtest/chart.mjs`, input, `${folder}/${name}.svg`, `${folder}/${name}.png`]);
  return { svg: await Deno.readTextFile(`${folder}/${name}.svg`), png: `${folder}/${name}.png` };
}

export async function machineConditions(): Promise<string> {
  const load = await Deno.readTextFile("/proc/loadavg").then((text) => text.split(" ").slice(0, 3).join(", ")).catch(() =>
    "unknown"
  );
  return `${navigator.hardwareConcurrency} cores, load average ${load} (1, 5, 15 min)`;
}

/** Server-side time per function from the functions' request log: where the time goes. */
export function functionDurations(functionLog: string): { name: string; requests: number; p50: number; p95: number }[] {
  const byFunction = new Map<string, number[]>();
  for (const line of functionLog.split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const entry = JSON.parse(line);
      if (typeof entry.duration_ms !== "number" || !entry.function) continue;
      byFunction.set(entry.function, [...(byFunction.get(entry.function) ?? []), entry.duration_ms]);
    } catch { /* not a log line */ }
  }
  return [...byFunction].map(([name, values]) => {
    values.sort((a, b) => a - b);
    return { name, requests: values.length, p50: percentile(values, 0.5), p95: percentile(values, 0.95) };
  }).sort((a, b) => b.requests - a.requests);
}

/** The statements the procedures spent their time in (pg_stat_statements, nested included). */
export async function topStatements(databaseUrl: string, limit = 12) {
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    return await sql<{ query: string; calls: string; mean_ms: string; total_ms: string }[]>`
      select regexp_replace(left(query, 140), '\\s+', ' ', 'g') as query, calls::text,
        round(mean_exec_time::numeric, 3)::text as mean_ms, round(total_exec_time::numeric, 0)::text as total_ms
      from extensions.pg_stat_statements
      where query !~* 'pg_stat_statements|ledger_reconcile|^(begin|commit|set|show)'
      order by total_exec_time desc limit ${limit}`;
  } catch {
    return [];
  } finally {
    await sql.end();
  }
}

export async function resetStatements(databaseUrl: string): Promise<void> {
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  try {
    await sql`select extensions.pg_stat_statements_reset()`;
  } catch { /* not enabled */ } finally {
    await sql.end();
  }
}

// ---------------------------------------------------------------------------------------------
// The smoke run of `npm test`
// ---------------------------------------------------------------------------------------------

/**
 * 30 seconds of the festival scenario on a throwaway stack, then the consistency checks (no
 * latency threshold: `npm test` runs on busy machines). One test per check, plus one per flow
 * that must have had successful responses (a run that did nothing proves nothing).
 */
export async function loadtestSmokeSuite(): Promise<{ name: string; passed: number; failed: number; output: string }> {
  const name = "load test smoke run (30 s, consistency from the database)";
  const lines: string[] = [];
  let passed = 0;
  let failed = 0;
  let target: Target | undefined;
  const folder = await Deno.makeTempDir({ prefix: "festival-loadtest-smoke-" });
  try {
    target = await startLocalTarget({ throwaway: true, statements: false, poolMax: 4 });
    const data = await prepareLoadData(target);
    const before = await readBalances(target.databaseUrl);
    const run = await runArtillery(target, data, SMOKE_PHASES, folder, "smoke");
    const flows = ["bar_order", "balance_read", "checkpoint_recharge", "stripe_topup", "credits"];
    for (const flow of flows) {
      const ok = run.records.some((record) => record.flow === flow && isSuccess(record));
      lines.push(`${ok ? "ok" : "not ok"} - flow ${flow} had successful responses`);
      ok ? passed++ : failed++;
    }
    // Steps that a contract change could silently turn into 400s inside a flow that still succeeds.
    for (const step of ["escrow_lock", "escrow_unlock"]) {
      const ok = run.records.some((record) => record.step === step && isSuccess(record));
      lines.push(`${ok ? "ok" : "not ok"} - step ${step} had successful responses`);
      ok ? passed++ : failed++;
    }
    for (const check of await checkConsistency(target, data, run.records, before)) {
      lines.push(`${check.ok ? "ok" : "not ok"} - ${check.name}: ${check.detail}`);
      check.ok ? passed++ : failed++;
    }
    lines.push(markdownTable(tableRows(run).filter((r) => r.phase === "whole run")));
  } catch (error) {
    failed++;
    lines.push(`not ok - smoke run stopped: ${(error as Error).message}`);
  } finally {
    await target?.stop();
    await Deno.remove(folder, { recursive: true }).catch(() => {});
  }
  return { name, passed, failed, output: lines.join("\n") };
}

// ---------------------------------------------------------------------------------------------
// Who uses the CPU during a run: this stack's Postgres, its functions server, the load generator
// (Artillery, our child), and everything else on the machine (from /proc, once a second)
// ---------------------------------------------------------------------------------------------

export interface CpuShares {
  postgres: number;
  functions: number;
  loadGenerator: number;
  otherProcesses: number;
  idle: number;
}

async function procStat(pid: string): Promise<{ ppid: number; ticks: number } | null> {
  try {
    const text = await Deno.readTextFile(`/proc/${pid}/stat`);
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]) };
  } catch {
    return null;
  }
}

async function machineTicks(): Promise<{ busy: number; idle: number }> {
  const values = (await Deno.readTextFile("/proc/stat")).split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = values[3] + values[4];
  return { busy: values.reduce((sum, value) => sum + value, 0) - idle, idle };
}

/** Samples until the returned function is called; shares are in cores (2.0 = both cores busy). */
export function sampleCpu(roots: { postgres?: number; functions?: number }): () => Promise<CpuShares> {
  const last = new Map<number, number>();
  const used = { postgres: 0, functions: 0, loadGenerator: 0 };
  let running = true;
  const loop = (async () => {
    const start = await machineTicks();
    let first = true;
    while (running) {
      const stats = new Map<number, { ppid: number; ticks: number }>();
      for await (const entry of Deno.readDir("/proc")) {
        if (!/^\d+$/.test(entry.name)) continue;
        const stat = await procStat(entry.name);
        if (stat) stats.set(Number(entry.name), stat);
      }
      for (const [pid, stat] of stats) {
        let ancestor = pid;
        let kind: keyof typeof used | null = null;
        for (let depth = 0; depth < 30 && ancestor > 1; depth++) {
          if (ancestor === roots.postgres) kind = "postgres";
          else if (ancestor === roots.functions) kind = "functions";
          else if (ancestor === Deno.pid && pid !== Deno.pid) kind = "loadGenerator";
          if (kind) break;
          ancestor = stats.get(ancestor)?.ppid ?? 0;
        }
        const previous = last.get(pid);
        last.set(pid, stat.ticks);
        if (kind && !first) used[kind] += stat.ticks - (previous ?? 0);
      }
      first = false;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    return start;
  })();
  return async () => {
    running = false;
    const start = await loop;
    const end = await machineTicks();
    const total = (end.busy + end.idle) - (start.busy + start.idle);
    const cores = navigator.hardwareConcurrency;
    const share = (ticks: number) => cores * ticks / Math.max(total, 1);
    const ours = used.postgres + used.functions + used.loadGenerator;
    return {
      postgres: share(used.postgres),
      functions: share(used.functions),
      loadGenerator: share(used.loadGenerator),
      otherProcesses: Math.max(0, share(end.busy - start.busy - ours)),
      idle: share(end.idle - start.idle),
    };
  };
}

export function describeCpu(cpu: CpuShares): string {
  const f = (value: number) => value.toFixed(2);
  return `CPU in cores: Postgres ${f(cpu.postgres)}, functions server ${f(cpu.functions)}, load generator ` +
    `${f(cpu.loadGenerator)}, other processes on the machine ${f(cpu.otherProcesses)}, idle ${f(cpu.idle)}`;
}
