// The web app (web/) for the local stack: build it with Vite for a given functions URL and anon key,
// and serve the built files with the local-only /local-config.json (the demo staff and their
// tokens). A production build (`npm run build:web`) never contains that file.

import { REPO_ROOT, run } from "./process.ts";
import { DEMO_STAFF, userToken } from "./tokens.ts";

export const LOCAL_WEB_PORT = 54323;
export const WEB_DIR = `${REPO_ROOT}/web`;
const VITE = `${WEB_DIR}/node_modules/vite/bin/vite.js`;
const TSC = `${WEB_DIR}/node_modules/typescript/bin/tsc`;

/**
 * Type-checks web/ (Vite itself does not) and builds it into `outDir` with the functions URL and
 * anon key baked in (Vite env variables).
 */
export async function buildWeb(options: { supabaseUrl: string; anonKey: string; outDir: string }): Promise<void> {
  await run("node", [TSC, "-p", "."], { cwd: WEB_DIR });
  await run("node", [VITE, "build", "--logLevel", "warn"], {
    cwd: WEB_DIR,
    env: {
      VITE_SUPABASE_URL: options.supabaseUrl,
      VITE_SUPABASE_ANON_KEY: options.anonKey,
      WEB_OUT_DIR: options.outDir,
    },
  });
}

/** The demo staff the local sign-in screen offers, with their tokens. */
export async function localWebConfig() {
  return {
    demo_staff: [
      { user_id: DEMO_STAFF.bartender, name: "Bob Bartender", role: "bartender", token: await userToken(DEMO_STAFF.bartender) },
      { user_id: DEMO_STAFF.bartender2, name: "Bea Bartender", role: "bartender", token: await userToken(DEMO_STAFF.bartender2) },
      { user_id: DEMO_STAFF.cashier, name: "Cid Cashier", role: "cashier", token: await userToken(DEMO_STAFF.cashier) },
      { user_id: DEMO_STAFF.cashier2, name: "Cat Cashier", role: "cashier", token: await userToken(DEMO_STAFF.cashier2) },
      { user_id: DEMO_STAFF.admin, name: "Ada Admin", role: "admin", token: await userToken(DEMO_STAFF.admin) },
    ],
  };
}

const CONTENT_TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  json: "application/json",
  svg: "image/svg+xml",
  png: "image/png",
  ico: "image/x-icon",
  txt: "text/plain; charset=utf-8",
};

/** Serves `dir` on 127.0.0.1:`port`; unknown paths get index.html (the app routes itself). */
export function serveWeb(options: { dir: string; port: number; localConfig: unknown }): Deno.HttpServer<Deno.NetAddr> {
  const configBody = JSON.stringify(options.localConfig);
  return Deno.serve({ hostname: "127.0.0.1", port: options.port, onListen: () => {} }, async (request) => {
    const path = decodeURIComponent(new URL(request.url).pathname);
    if (path === "/local-config.json") {
      return new Response(configBody, { headers: { "content-type": "application/json", "cache-control": "no-store" } });
    }
    const relative = path.replace(/^\/+/, "");
    if (!relative.split("/").includes("..") && relative !== "") {
      try {
        const file = await Deno.readFile(`${options.dir}/${relative}`);
        const extension = relative.split(".").pop() ?? "";
        return new Response(file, {
          headers: {
            "content-type": CONTENT_TYPES[extension] ?? "application/octet-stream",
            "cache-control": relative.startsWith("assets/") ? "public, max-age=31536000, immutable" : "no-cache",
          },
        });
      } catch {
        // not a file: the app's own route
      }
    }
    return new Response(await Deno.readFile(`${options.dir}/index.html`), {
      headers: { "content-type": CONTENT_TYPES.html, "cache-control": "no-cache" },
    });
  });
}
