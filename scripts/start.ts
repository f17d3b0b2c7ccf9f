// `npm start`: the local stack without Docker. Starts (or creates) the Postgres cluster under
// .local/, applies migrations, serves every function on :54321, prints how to call them, and stays
// in the foreground until Ctrl-C, which stops the server and the database.

import {
  applyMigrations,
  buildDatabase,
  databaseUrl,
  initCluster,
  isInitialized,
  isRunning,
  prepareLikeSupabase,
  startCluster,
  stopCluster,
} from "./lib/cluster.ts";
import { serveFunctions } from "./lib/functions-server.ts";
import { functionsEnvironment, LOCAL_FUNCTIONS_PORT, localCluster } from "./lib/local-stack.ts";
import { log } from "./lib/process.ts";
import { DEMO_STAFF, userToken } from "./lib/tokens.ts";
import { startStripeStandIn } from "./lib/stripe-stand-in.ts";
import { buildWeb, LOCAL_WEB_PORT, localWebConfig, serveWeb } from "./lib/web.ts";

const functionsPort = Number(Deno.env.get("LOCAL_FUNCTIONS_PORT") ?? LOCAL_FUNCTIONS_PORT);
const cluster = localCluster;
const url = databaseUrl(cluster);

let server: Deno.HttpServer | undefined;
let webServer: Deno.HttpServer | undefined;
let stopping = false;

async function stop(exitCode: number): Promise<never> {
  if (stopping) Deno.exit(exitCode);
  stopping = true;
  log("stopping functions server and database");
  await server?.shutdown().catch(() => {});
  await webServer?.shutdown().catch(() => {});
  await stopCluster(cluster);
  log("stopped");
  Deno.exit(exitCode);
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => void stop(0));
}

try {
  const fresh = !(await isInitialized(cluster));
  if (fresh) {
    log(`creating a new Postgres cluster in ${cluster.dataDir}`);
    await initCluster(cluster);
  }
  if (await isRunning(cluster)) {
    log("the database was already running (left over from an earlier run); reusing it");
  } else {
    await startCluster(cluster);
  }
  if (fresh) {
    await buildDatabase(url);
  } else {
    // Existing data is kept; only migrations added since the last start are applied.
    await prepareLikeSupabase(url);
    await applyMigrations(url);
  }

  const stripeStandIn = Deno.env.get("STRIPE_SECRET_KEY") ? undefined : startStripeStandIn({
    webhookUrl: `http://127.0.0.1:${functionsPort}/functions/v1/stripe-webhook`,
    webhookSecret: Deno.env.get("STRIPE_WEBHOOK_SECRET"),
    localCheckoutPages: true,
  });
  const environment = await functionsEnvironment(cluster, functionsPort, stripeStandIn?.port ?? 0);
  for (const [name, value] of Object.entries(environment)) Deno.env.set(name, value);
  server = await serveFunctions({ port: functionsPort, jwtSecret: environment.SUPABASE_JWT_SECRET });
  // Alert notifications: on a hosted project pg_cron calls alert-notifications through pg_net
  // (README, operations); pg_net is not part of the local stack, so a timer calls it here.
  if (Deno.env.get("ALERT_WEBHOOK_URL")) {
    setInterval(() => {
      fetch(`http://127.0.0.1:${functionsPort}/functions/v1/alert-notifications`, {
        method: "POST",
        headers: { authorization: `Bearer ${environment.SUPABASE_SERVICE_ROLE_KEY}` },
      }).then((response) => response.body?.cancel()).catch(() => {});
    }, 30_000);
  }

  // The web app, built for this stack; the demo staff come from /local-config.json, never the build.
  const webPort = Number(Deno.env.get("LOCAL_WEB_PORT") ?? LOCAL_WEB_PORT);
  log("building the web app (web/) with Vite");
  await buildWeb({
    supabaseUrl: `http://127.0.0.1:${functionsPort}`,
    anonKey: environment.SUPABASE_ANON_KEY,
    outDir: `${cluster.dataDir}/../web-dist`,
  });
  webServer = serveWeb({ dir: `${cluster.dataDir}/../web-dist`, port: webPort, localConfig: await localWebConfig() });

  const tokens = {
    admin: await userToken(DEMO_STAFF.admin),
    bartender: await userToken(DEMO_STAFF.bartender),
    cashier: await userToken(DEMO_STAFF.cashier),
  };
  console.log(`
Local stack is running (Ctrl-C stops it).

  Web app         http://127.0.0.1:${webPort}   (/pos, /checkpoint, /me, /ops)
  Functions URL   http://127.0.0.1:${functionsPort}/functions/v1/<name>
  Database URL    ${url.replace("?sslmode=disable", "")}

  Anon key            ${environment.SUPABASE_ANON_KEY}
  Service role key    ${environment.SUPABASE_SERVICE_ROLE_KEY}
  Admin token         ${tokens.admin}
  Bartender token     ${tokens.bartender}
  Cashier token       ${tokens.cashier}

  Stripe              ${
    stripeStandIn
      ? `local stand-in for checkout sessions at http://127.0.0.1:${stripeStandIn.port} (set STRIPE_SECRET_KEY to use Stripe)`
      : "Stripe API with your STRIPE_SECRET_KEY"
  }
  Webhook secret      ${Deno.env.get("STRIPE_WEBHOOK_SECRET") ? "from STRIPE_WEBHOOK_SECRET" : "whsec_local_development"}

  Try:  curl http://127.0.0.1:${functionsPort}/functions/v1/health
`);
  await server.finished;
} catch (error) {
  console.error(`[stack] ${(error as Error).message}`);
  await stop(1);
}
