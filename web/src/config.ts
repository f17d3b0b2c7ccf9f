// Where the functions are and the public anon key: build-time variables (VITE_SUPABASE_URL,
// VITE_SUPABASE_ANON_KEY). The demo staff list is only ever read at run time from
// /local-config.json, which `npm start` (and the browser tests) serve next to the build; a hosted
// deployment has no such file and signs staff in with Supabase Auth instead.

export interface DemoStaff {
  user_id: string;
  name: string;
  role: "admin" | "bartender" | "cashier";
  token: string;
}

export interface LocalConfig {
  demo_staff: DemoStaff[];
}

export const SUPABASE_URL: string = import.meta.env.VITE_SUPABASE_URL ?? "";
export const SUPABASE_ANON_KEY: string = import.meta.env.VITE_SUPABASE_ANON_KEY ?? "";

let localConfig: Promise<LocalConfig | null> | undefined;

/** The local-only demo staff config, or null on a real deployment (no such file). */
export function loadLocalConfig(): Promise<LocalConfig | null> {
  localConfig ??= fetch("/local-config.json", { cache: "no-store" })
    .then(async (response) => {
      if (!response.ok || !(response.headers.get("content-type") ?? "").includes("json")) return null;
      const body = await response.json() as LocalConfig;
      return Array.isArray(body.demo_staff) ? body : null;
    })
    .catch(() => null);
  return localConfig;
}
