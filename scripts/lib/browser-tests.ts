// The web app's browser tests (web/tests/browser.test.mjs): builds web/ for the test stack, serves
// it on a free port with the local demo-staff config, and runs the suite with Node, which drives
// the Debian `chromium` through puppeteer-core. Called by scripts/test.ts while its functions
// server and Stripe stand-in are up; screenshots go to docs/screenshots/.

import { freePort, REPO_ROOT, run } from "./process.ts";
import { DEMO_STAFF, userToken } from "./tokens.ts";
import { buildWeb, localWebConfig, serveWeb } from "./web.ts";

export const BROWSER_TEST_FILE = "web/tests/browser.test.mjs";

export interface BrowserSuiteResult {
  passed: number;
  failed: number;
  output: string;
}

function chromiumPath(): string | null {
  for (const candidate of [Deno.env.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (!candidate) continue;
    try {
      Deno.statSync(candidate);
      return candidate;
    } catch {
      // try the next one
    }
  }
  return null;
}

export async function runBrowserSuite(
  options: { functionsUrl: string; anonKey: string; stripeStandInUrl: string },
): Promise<BrowserSuiteResult> {
  const chromium = chromiumPath();
  if (!chromium) return { passed: 0, failed: 1, output: "chromium not found: run scripts/setup.sh as root (Debian package chromium)" };
  const outDir = await Deno.makeTempDir({ prefix: "festival-web-" });
  const port = freePort();
  let server: Deno.HttpServer | undefined;
  try {
    await buildWeb({ supabaseUrl: options.functionsUrl.replace(/\/functions\/v1\/?$/, ""), anonKey: options.anonKey, outDir });
    server = serveWeb({ dir: outDir, port, localConfig: await localWebConfig() });
    const result = await run("node", [`${REPO_ROOT}/${BROWSER_TEST_FILE}`], {
      check: false,
      cwd: `${REPO_ROOT}/web`,
      env: {
        WEB_URL: `http://127.0.0.1:${port}`,
        FUNCTIONS_URL: options.functionsUrl,
        STRIPE_STAND_IN_URL: options.stripeStandInUrl,
        CHROMIUM: chromium,
        // Every run writes its screenshots; into the committed docs/screenshots/ only when asked
        // (UPDATE_SCREENSHOTS=1), so that running the tests leaves the work tree clean.
        SCREENSHOT_DIR: Deno.env.get("UPDATE_SCREENSHOTS") === "1"
          ? `${REPO_ROOT}/docs/screenshots`
          : `${REPO_ROOT}/.local/screenshots`,
        ADMIN_TOKEN: await userToken(DEMO_STAFF.admin),
        CASHIER_TOKEN: await userToken(DEMO_STAFF.cashier),
      },
    });
    const output = `${result.stdout}\n${result.stderr}`;
    const passed = (output.match(/^ok - /gm) ?? []).length;
    let failed = (output.match(/^not ok - /gm) ?? []).length;
    if (result.code !== 0 && failed === 0) failed = 1;
    return { passed, failed, output };
  } catch (error) {
    return { passed: 0, failed: 1, output: (error as Error).message };
  } finally {
    await server?.shutdown();
    await Deno.remove(outDir, { recursive: true }).catch(() => {});
  }
}
