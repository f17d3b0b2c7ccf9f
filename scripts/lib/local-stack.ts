// The persistent local stack of `npm start` and `npm run db:reset`: ports and paths of docs/architecture.md §10.

import { anonKey, LOCAL_JWT_SECRET, serviceRoleKey } from "./tokens.ts";
import { type Cluster, databaseUrl, edgeFunctionsDatabaseUrl } from "./cluster.ts";
import { REPO_ROOT } from "./process.ts";

export const LOCAL_DB_PORT = 54322;
export const LOCAL_FUNCTIONS_PORT = 54321;

export const localCluster: Cluster = {
  dataDir: `${REPO_ROOT}/.local/db`,
  port: Number(Deno.env.get("LOCAL_DB_PORT") ?? LOCAL_DB_PORT),
  throwaway: false,
};

/**
 * The environment a hosted Supabase project gives its functions, with local values. Without a
 * STRIPE_SECRET_KEY of your own, checkout sessions go to the local Stripe stand-in on `stripePort`.
 */
export async function functionsEnvironment(
  cluster: Cluster,
  functionsPort: number,
  stripePort: number,
): Promise<Record<string, string>> {
  const stripe: Record<string, string> = Deno.env.get("STRIPE_SECRET_KEY") ? {} : {
    STRIPE_SECRET_KEY: "sk_test_local_stand_in",
    STRIPE_API_HOST: "127.0.0.1",
    STRIPE_API_PORT: String(stripePort),
    STRIPE_API_PROTOCOL: "http",
  };
  return {
    ...stripe,
    SUPABASE_DB_URL: databaseUrl(cluster),
    // What the functions use (DB_URL wins over SUPABASE_DB_URL): their own restricted role.
    DB_URL: edgeFunctionsDatabaseUrl(cluster),
    SUPABASE_URL: `http://127.0.0.1:${functionsPort}`,
    SUPABASE_JWT_SECRET: Deno.env.get("SUPABASE_JWT_SECRET") ?? LOCAL_JWT_SECRET,
    SUPABASE_ANON_KEY: await anonKey(),
    SUPABASE_SERVICE_ROLE_KEY: await serviceRoleKey(),
  };
}
