// `npm run db:reset`: rebuilds the local database from migrations and seed (all local data is
// lost), like `supabase db reset`. Works whether or not `npm start` is running.

import {
  buildDatabase,
  databaseUrl,
  initCluster,
  isInitialized,
  isRunning,
  recreateDatabase,
  startCluster,
  stopCluster,
} from "./lib/cluster.ts";
import { localCluster } from "./lib/local-stack.ts";
import { log } from "./lib/process.ts";

const cluster = localCluster;
if (!(await isInitialized(cluster))) await initCluster(cluster);
const wasRunning = await isRunning(cluster);
if (!wasRunning) await startCluster(cluster);
try {
  log("dropping and recreating the local database");
  await recreateDatabase(cluster);
  await buildDatabase(databaseUrl(cluster));
  log("local database rebuilt from migrations and seed");
} finally {
  // Leave the database as we found it: running for a live `npm start`, stopped otherwise.
  if (!wasRunning) await stopCluster(cluster);
}
