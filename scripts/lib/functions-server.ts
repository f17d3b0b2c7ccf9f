// One Deno process serving every function folder at /functions/v1/<name>, as `supabase functions
// serve` does on a Docker machine. Like Supabase's gateway it rejects requests without a valid JWT
// for functions whose config.toml section says `verify_jwt = true` (the default).

import { parse as parseToml } from "smol-toml";
import { jwtVerify } from "jose";
import { REPO_ROOT } from "./process.ts";

export const FUNCTIONS_DIR = `${REPO_ROOT}/supabase/functions`;

type Handler = (request: Request) => Response | Promise<Response>;

interface FunctionEntry {
  handler: Handler;
  verifyJwt: boolean;
}

/** Function folders: every folder with a handler.ts, except shared code and tests. */
export async function listFunctionNames(): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(FUNCTIONS_DIR)) {
    if (!entry.isDirectory || entry.name.startsWith("_") || entry.name === "tests") continue;
    try {
      await Deno.stat(`${FUNCTIONS_DIR}/${entry.name}/handler.ts`);
      names.push(entry.name);
    } catch {
      // a folder without handler.ts is not a function
    }
  }
  return names.sort();
}

export async function readVerifyJwtSettings(): Promise<Record<string, boolean>> {
  const config = parseToml(await Deno.readTextFile(`${REPO_ROOT}/supabase/config.toml`)) as {
    functions?: Record<string, { verify_jwt?: boolean }>;
  };
  const settings: Record<string, boolean> = {};
  for (const [name, section] of Object.entries(config.functions ?? {})) {
    settings[name] = section.verify_jwt ?? true;
  }
  return settings;
}

function gatewayError(status: number, message: string): Response {
  return new Response(JSON.stringify({ code: status, message }), {
    status,
    headers: {
      "content-type": "application/json",
      "access-control-allow-origin": "*",
      "access-control-expose-headers": "x-request-id",
      "x-request-id": crypto.randomUUID(),
    },
  });
}

async function gatewayRejects(request: Request, jwtSecret: Uint8Array): Promise<Response | null> {
  const header = request.headers.get("authorization");
  if (!header) return gatewayError(401, "Missing authorization header");
  const token = header.replace(/^Bearer\s+/i, "");
  try {
    await jwtVerify(token, jwtSecret, { algorithms: ["HS256"] });
    return null;
  } catch {
    return gatewayError(401, "Invalid JWT");
  }
}

export interface FunctionsServerOptions {
  port: number;
  hostname?: string;
  jwtSecret: string;
  onListen?: (address: Deno.NetAddr) => void;
}

/** Loads every function's handler (the environment must already be set) and serves them. */
export async function serveFunctions(options: FunctionsServerOptions): Promise<Deno.HttpServer<Deno.NetAddr>> {
  const verifyJwt = await readVerifyJwtSettings();
  const functions = new Map<string, FunctionEntry>();
  for (const name of await listFunctionNames()) {
    const module = await import(`${FUNCTIONS_DIR}/${name}/handler.ts`);
    functions.set(name, { handler: module.handler as Handler, verifyJwt: verifyJwt[name] ?? true });
  }
  const secret = new TextEncoder().encode(options.jwtSecret);
  return Deno.serve({
    port: options.port,
    hostname: options.hostname ?? "127.0.0.1",
    onListen: options.onListen ?? (() => {}),
  }, async (request) => {
    const match = /^\/functions\/v1\/([a-z0-9_-]+)(\/.*)?$/.exec(new URL(request.url).pathname);
    const entry = match ? functions.get(match[1]) : undefined;
    if (!entry) return gatewayError(404, "Function not found");
    // The gateway lets CORS preflights through: browsers never send credentials with them.
    if (entry.verifyJwt && request.method !== "OPTIONS") {
      const rejection = await gatewayRejects(request, secret);
      if (rejection) return rejection;
    }
    return await entry.handler(request);
  });
}
