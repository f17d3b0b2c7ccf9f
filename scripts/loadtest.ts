// `npm run loadtest`: the festival simulation with Artillery (loadtest/festival.yml), open arrival
// model, on a fresh durable stack of its own (or a deployed one), then the consistency checks from
// the database, a report (table per flow and phase, chart over time) as HTML and PNG under
// .local/loadtest/, and thresholds that fail the command.
//
//   npm run loadtest                              short: the seed's 10→20→50→80→20 arrivals/s in 2 min
//   npm run loadtest -- --profile full            the seed's real 12 minutes
//   npm run loadtest -- --profile find-max        steps up the rate until p95 > 100 ms or errors > 0.1 %
//   npm run loadtest -- --target https://<ref>.supabase.co/functions/v1 --db-url postgresql://… --service-key …

import {
  type ArtilleryRun,
  checkConsistency,
  type CheckResult,
  describeCpu,
  functionDurations,
  isDeliberate,
  machineConditions,
  markdownTable,
  PEAK_PHASE,
  type Phase,
  prepareLoadData,
  readBalances,
  renderChart,
  type ResponseRecord,
  resetStatements,
  row,
  type Row,
  runArtillery,
  seedPhases,
  startLocalTarget,
  type Target,
  tableRows,
  timeSeries,
  topStatements,
} from "./lib/loadtest.ts";
import { log, REPO_ROOT } from "./lib/process.ts";
import { LOCAL_JWT_SECRET } from "./lib/tokens.ts";

function argument(name: string): string | undefined {
  const index = Deno.args.indexOf(`--${name}`);
  if (index >= 0) return Deno.args[index + 1];
  const inline = Deno.args.find((arg) => arg.startsWith(`--${name}=`));
  return inline?.slice(name.length + 3);
}

const profile = argument("profile") ?? Deno.env.get("LOADTEST_PROFILE") ?? "short";
if (!["short", "full", "find-max"].includes(profile)) {
  console.error(`unknown profile ${profile}: use short, full or find-max`);
  Deno.exit(2);
}
const targetUrl = argument("target") ?? Deno.env.get("LOADTEST_TARGET");
const findMaxStepSeconds = Number(Deno.env.get("LOADTEST_STEP_SECONDS") ?? "30");

// The seed's thresholds, and ours for this machine at the 80/s peak.
const THRESHOLDS = { successRate: 0.95, p95Ms: 3000, peakP95Ms: 50, peakP99Ms: 150 };
// find-max: the last rate at which the system still keeps these.
const FIND_MAX = {
  p95Ms: 100,
  errorRate: 0.001,
  startRate: Number(Deno.env.get("LOADTEST_START_RATE") ?? "20"),
  stepRate: 20,
  maxRate: 600,
};

function remoteTarget(url: string): Target {
  const databaseUrl = argument("db-url") ?? Deno.env.get("LOADTEST_DB_URL");
  const serviceKey = argument("service-key") ?? Deno.env.get("LOADTEST_SERVICE_KEY");
  if (!databaseUrl || !serviceKey) {
    console.error(
      "--target needs --service-key (LOADTEST_SERVICE_KEY) and --db-url (LOADTEST_DB_URL): the load-test " +
        "cards are set up and every response is checked in the database, as its owner",
    );
    Deno.exit(2);
  }
  return {
    functionsUrl: url.replace(/\/$/, ""),
    databaseUrl,
    serviceKey,
    jwtSecret: Deno.env.get("LOADTEST_JWT_SECRET") ?? LOCAL_JWT_SECRET,
    webhookSecret: Deno.env.get("STRIPE_WEBHOOK_SECRET") ?? "whsec_local_development",
    stop: async () => {},
  };
}

const failures = (records: ResponseRecord[]) =>
  records.filter((record) => (record.status < 200 || record.status >= 300) && !isDeliberate(record)).length;
const transportErrorCount = (run: ArtilleryRun) => Object.values(run.transportErrors).reduce((sum, n) => sum + n, 0);

interface Verdict {
  name: string;
  ok: boolean;
  detail: string;
}

function html(title: string, sections: string[]): string {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title><style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
td:last-child{text-align:left}.ok{color:#070}.fail{color:#b00;font-weight:bold}code{background:#f4f4f4}
</style></head><body><h1>${title}</h1>${sections.join("\n")}</body></html>`;
}

const escape = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function htmlTable(rows: Row[]): string {
  return `<table><tr><th>phase</th><th>flow</th><th>requests</th><th>req/s</th><th>p50 ms</th><th>p95 ms</th>` +
    `<th>p99 ms</th><th>not 2xx (status code: share)</th></tr>` +
    rows.map((r) =>
      `<tr${r.flow === "all" ? ' style="font-weight:bold"' : ""}><td>${escape(r.phase)}</td><td>${r.flow}</td>` +
      `<td>${r.requests}</td><td>${r.rate.toFixed(1)}</td><td>${r.p50.toFixed(1)}</td><td>${r.p95.toFixed(1)}</td>` +
      `<td>${r.p99.toFixed(1)}</td><td>${escape(r.outcomes || "–")}</td></tr>`
    ).join("") + "</table>";
}

function verdictList(verdicts: Verdict[]): string {
  return "<ul>" + verdicts.map((v) =>
    `<li class="${v.ok ? "ok" : "fail"}">${v.ok ? "PASS" : "FAIL"} ${escape(v.name)}: ${escape(v.detail)}</li>`
  ).join("") + "</ul>";
}

async function whereTheTimeGoes(target: Target): Promise<{ markdown: string; html: string }> {
  const functions = target.functionLog ? functionDurations(target.functionLog()) : [];
  const statements = await topStatements(target.databaseUrl);
  const markdown = [
    "Inside the functions (server-side, from their request log):",
    "",
    "| function | requests | p50 ms | p95 ms |",
    "| --- | ---: | ---: | ---: |",
    ...functions.map((f) => `| ${f.name} | ${f.requests} | ${f.p50.toFixed(1)} | ${f.p95.toFixed(1)} |`),
    "",
    "Inside Postgres (pg_stat_statements, nested statements included, by total time):",
    "",
    "| statement | calls | mean ms | total ms |",
    "| --- | ---: | ---: | ---: |",
    ...statements.map((s) => `| \`${s.query.replace(/\|/g, "\\|")}\` | ${s.calls} | ${s.mean_ms} | ${s.total_ms} |`),
  ].join("\n");
  const htmlPart = `<h2>Where the time goes</h2><h3>Inside the functions (server-side)</h3><table>` +
    `<tr><th>function</th><th>requests</th><th>p50 ms</th><th>p95 ms</th></tr>` +
    functions.map((f) => `<tr><td>${f.name}</td><td>${f.requests}</td><td>${f.p50.toFixed(1)}</td><td>${f.p95.toFixed(1)}</td></tr>`)
      .join("") +
    `</table><h3>Inside Postgres (pg_stat_statements)</h3><table><tr><th>statement</th><th>calls</th><th>mean ms</th>` +
    `<th>total ms</th></tr>` +
    statements.map((s) => `<tr><td><code>${escape(s.query)}</code></td><td>${s.calls}</td><td>${s.mean_ms}</td><td>${s.total_ms}</td></tr>`)
      .join("") + "</table>";
  return { markdown, html: htmlPart };
}

const stamp = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
const folder = `${REPO_ROOT}/.local/loadtest/${stamp}-${profile}`;
await Deno.mkdir(folder, { recursive: true });
const conditionsBefore = await machineConditions();
const command = `npm run loadtest -- --profile ${profile}${targetUrl ? ` --target ${targetUrl}` : ""}`;
let target: Target | undefined;
let exitCode = 0;

try {
  target = targetUrl
    ? remoteTarget(targetUrl)
    : await startLocalTarget({ throwaway: false, statements: true, poolMax: Number(Deno.env.get("DB_POOL_MAX") ?? "8") });
  const data = await prepareLoadData(target);
  // Warm the connection pools and plan caches with a few seconds of the same traffic (its own
  // keys; finished before the balances are read, so the checks below do not see it).
  await runArtillery(target, { ...data, runId: crypto.randomUUID().slice(0, 8) }, [
    { name: "warm-up", duration: 5, arrivalRate: 5 },
  ], folder, "warm-up");
  const before = await readBalances(target.databaseUrl);
  await resetStatements(target.databaseUrl);

  const verdicts: Verdict[] = [];
  let tableMarkdown: string;
  let tableHtml: string;
  let chartRun: ArtilleryRun;
  let allRecords: ResponseRecord[];
  let summaryLine: string;

  if (profile === "find-max") {
    // Constant-rate steps, each on a fresh Artillery process, until one misses p95 or errors.
    const steps: { rate: number; run: ArtilleryRun; row: Row; errorRate: number; ok: boolean }[] = [];
    let retried = false;
    for (let rate = FIND_MAX.startRate; rate <= FIND_MAX.maxRate; rate += FIND_MAX.stepRate) {
      const phase: Phase = { name: `${rate}/s`, duration: findMaxStepSeconds, arrivalRate: rate };
      const run = await runArtillery(target, data, [phase], folder, `step-${rate}${retried ? "-again" : ""}`);
      const stepRow = row("all", phase.name, run.records, findMaxStepSeconds);
      const total = run.records.length + transportErrorCount(run);
      const errorRate = (failures(run.records) + transportErrorCount(run)) / Math.max(total, 1);
      const ok = stepRow.p95 <= FIND_MAX.p95Ms && errorRate <= FIND_MAX.errorRate;
      steps.push({ rate, run, row: stepRow, errorRate, ok });
      log(`${rate} arrivals/s: ${stepRow.rate.toFixed(0)} responses/s, p95 ${stepRow.p95.toFixed(1)} ms, ` +
        `errors ${(100 * errorRate).toFixed(2)} %; ${run.cpu ? describeCpu(run.cpu) : ""}`);
      if (!ok && !retried) {
        // Once per search, a missed step is tried again: on a shared machine one 30-s window
        // can be spoiled by a neighbour's burst.
        retried = true;
        rate -= FIND_MAX.stepRate;
        continue;
      }
      if (!ok) break;
    }
    const sustained = steps.filter((step) => step.ok).at(-1);
    summaryLine = sustained
      ? `find-max: sustained ${sustained.rate} arrivals/s (${sustained.row.rate.toFixed(0)} responses/s, p95 ` +
        `${sustained.row.p95.toFixed(1)} ms); the next step missed p95 ≤ ${FIND_MAX.p95Ms} ms or errors ≤ 0.1 %`
      : `find-max: even ${FIND_MAX.startRate} arrivals/s missed p95 ≤ ${FIND_MAX.p95Ms} ms or errors ≤ 0.1 %`;
    verdicts.push({ name: "find-max reports a rate", ok: sustained !== undefined, detail: summaryLine });
    const rows = steps.map((step) => ({
      ...step.row,
      outcomes: `${step.row.outcomes}${step.ok ? "" : " (missed)"}${step.run.cpu ? `; ${describeCpu(step.run.cpu)}` : ""}`,
    }));
    tableMarkdown = markdownTable(rows);
    tableHtml = htmlTable(rows);
    // One timeline for the chart: the steps back to back (Artillery's start-up gaps removed).
    let offset = 0;
    const shifted: ResponseRecord[] = [];
    const phases: Phase[] = [];
    const origin = steps[0].run.startedAt;
    for (const step of steps) {
      for (const record of step.run.records) {
        shifted.push({ ...record, t: origin + offset * 1000 + (record.t - step.run.startedAt) });
      }
      phases.push(step.run.phases[0]);
      offset += findMaxStepSeconds;
    }
    chartRun = { records: shifted, transportErrors: {}, startedAt: origin, phases };
    allRecords = steps.flatMap((step) => step.run.records);
  } else {
    const phases = seedPhases(profile === "full" ? 720 : 120);
    const run = await runArtillery(target, data, phases, folder, profile);
    const rows = tableRows(run);
    tableMarkdown = markdownTable(rows);
    tableHtml = htmlTable(rows);
    chartRun = run;
    allRecords = run.records;
    const whole = rows.find((r) => r.flow === "all" && r.phase === "whole run")!;
    const peak = rows.find((r) => r.flow === "all" && r.phase === PEAK_PHASE)!;
    const transport = transportErrorCount(run);
    const counted = run.records.length + transport - whole.deliberate;
    const successRate = whole.successes / Math.max(counted, 1);
    verdicts.push(
      {
        name: `success over ${100 * THRESHOLDS.successRate} % (deliberate business refusals excluded)`,
        ok: successRate > THRESHOLDS.successRate,
        detail: `${(100 * successRate).toFixed(2)} % of ${counted} (${whole.deliberate} deliberate refusals left out, ` +
          `${transport} requests without a response)`,
      },
      { name: `p95 under ${THRESHOLDS.p95Ms} ms (whole run)`, ok: whole.p95 < THRESHOLDS.p95Ms, detail: `${whole.p95.toFixed(1)} ms` },
      { name: `p95 under ${THRESHOLDS.peakP95Ms} ms at the 80/s peak`, ok: peak.p95 < THRESHOLDS.peakP95Ms, detail: `${peak.p95.toFixed(1)} ms` },
      { name: `p99 under ${THRESHOLDS.peakP99Ms} ms at the 80/s peak`, ok: peak.p99 < THRESHOLDS.peakP99Ms, detail: `${peak.p99.toFixed(1)} ms` },
    );
    if (run.cpu) log(describeCpu(run.cpu));
    summaryLine = `${profile}: ${whole.requests} responses in ${phases.reduce((s, p) => s + p.duration, 0)} s, ` +
      `success ${(100 * successRate).toFixed(2)} %, p95 ${whole.p95.toFixed(1)} ms; peak ${peak.rate.toFixed(0)} responses/s, ` +
      `p95 ${peak.p95.toFixed(1)} ms, p99 ${peak.p99.toFixed(1)} ms${run.cpu ? `. ${describeCpu(run.cpu)}` : ""}`;
  }

  const checks: CheckResult[] = await checkConsistency(target, data, allRecords, before);
  verdicts.unshift(...checks.map((check) => ({ name: `consistency: ${check.name}`, ok: check.ok, detail: check.detail })));
  const time = await whereTheTimeGoes(target);
  const conditionsAfter = await machineConditions();
  const chart = await renderChart(
    folder,
    "chart",
    `festival load test, ${profile} (${conditionsAfter})`,
    timeSeries(chartRun, profile === "full" ? 10 : 5),
  );
  const title = `Festival load test: ${profile}`;
  await Deno.writeTextFile(
    `${folder}/report.html`,
    html(title, [
      `<p><code>${escape(command)}</code>, ${new Date().toISOString()}<br>Machine: before ${conditionsBefore}; after ` +
      `${conditionsAfter}. Load generator, functions server and Postgres (fsync on) share the machine.</p>`,
      `<p><b>${escape(summaryLine)}</b></p>`,
      "<h2>Thresholds and consistency</h2>",
      verdictList(verdicts),
      "<h2>Throughput and latency over time</h2>",
      chart.svg,
      `<p>PNG: <a href="chart.png">chart.png</a></p>`,
      "<h2>Per flow and phase</h2>",
      tableHtml,
      time.html,
    ]),
  );
  const markdown = [
    `# ${title}`,
    "",
    `\`${command}\`; machine before: ${conditionsBefore}; after: ${conditionsAfter}`,
    "",
    summaryLine,
    "",
    ...verdicts.map((v) => `- ${v.ok ? "PASS" : "FAIL"} ${v.name}: ${v.detail}`),
    "",
    tableMarkdown,
    "",
    time.markdown,
  ].join("\n");
  await Deno.writeTextFile(`${folder}/report.md`, markdown + "\n");
  console.log(markdown);
  console.log(`\nReport: ${folder}/report.html\nChart:  ${chart.png}`);
  if (verdicts.some((v) => !v.ok)) {
    console.log(`\nFAILED: ${verdicts.filter((v) => !v.ok).map((v) => v.name).join("; ")}`);
    exitCode = 1;
  }
} catch (error) {
  console.error(`[loadtest] stopped: ${(error as Error).stack ?? error}`);
  exitCode = 1;
} finally {
  await target?.stop();
}
Deno.exit(exitCode);
