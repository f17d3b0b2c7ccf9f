// Standalone functions server, used by `npm test` (and handy on its own):
//   SUPABASE_DB_URL=... FUNCTIONS_PORT=54321 deno run -A scripts/functions-server.ts
import { LOCAL_JWT_SECRET } from "./lib/tokens.ts";
import { serveFunctions } from "./lib/functions-server.ts";

const port = Number(Deno.env.get("FUNCTIONS_PORT") ?? "54321");
if (!Deno.env.get("SUPABASE_JWT_SECRET")) Deno.env.set("SUPABASE_JWT_SECRET", LOCAL_JWT_SECRET);
const server = await serveFunctions({
  port,
  jwtSecret: Deno.env.get("SUPABASE_JWT_SECRET")!,
  onListen: ({ hostname, port }) => console.error(`[functions] listening on http://${hostname}:${port}/functions/v1/`),
});
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => server.shutdown().then(() => Deno.exit(0)));
}
await server.finished;
