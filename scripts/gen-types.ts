// `npm run gen:types`: regenerates supabase/functions/_shared/database.types.ts from a throwaway
// database built by the migrations (never the `npm start` one, which may hold local changes).

import { buildDatabase, type Cluster, databaseUrl, initCluster, startCluster, stopCluster } from "./lib/cluster.ts";
import { DATABASE_TYPES_FILE, generateDatabaseTypes } from "./lib/db-types.ts";
import { freePort, log } from "./lib/process.ts";

const tempDir = await Deno.makeTempDir({ prefix: "festival-types-" });
await Deno.chmod(tempDir, 0o755);
const cluster: Cluster = { dataDir: `${tempDir}/db`, port: freePort(), throwaway: true };
try {
  await initCluster(cluster);
  await startCluster(cluster);
  await buildDatabase(databaseUrl(cluster));
  await Deno.writeTextFile(DATABASE_TYPES_FILE, await generateDatabaseTypes(databaseUrl(cluster)));
  log(`wrote ${DATABASE_TYPES_FILE}`);
} finally {
  await stopCluster(cluster);
  await Deno.remove(tempDir, { recursive: true }).catch(() => {});
}
