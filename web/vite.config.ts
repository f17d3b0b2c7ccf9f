// Build-time configuration comes from VITE_SUPABASE_URL and VITE_SUPABASE_ANON_KEY (see README).
// The local demo staff tokens are never part of the build: `npm start` serves them separately
// as /local-config.json, next to the built files.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  plugins: [react()],
  build: { outDir: process.env.WEB_OUT_DIR || "dist", emptyOutDir: true, sourcemap: false },
});
