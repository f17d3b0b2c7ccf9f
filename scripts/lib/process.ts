// Small helpers for running commands from the stack scripts. Postgres refuses to run as root, so
// every Postgres server binary goes through `asPostgresUser` when we are root.

export const PG_BIN = Deno.env.get("PG_BIN") ?? "/usr/lib/postgresql/15/bin";
export const REPO_ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

export function isRoot(): boolean {
  return Deno.uid() === 0;
}

/** Wraps a command so that it runs as the `postgres` system user when we are root. */
export function asPostgresUser(command: string, args: string[]): [string, string[]] {
  return isRoot() ? ["runuser", ["-u", "postgres", "--", command, ...args]] : [command, args];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function run(
  command: string,
  args: string[],
  options: { env?: Record<string, string>; cwd?: string; check?: boolean } = {},
): Promise<RunResult> {
  const output = await new Deno.Command(command, {
    args,
    env: options.env,
    cwd: options.cwd ?? REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const result = {
    code: output.code,
    stdout: new TextDecoder().decode(output.stdout),
    stderr: new TextDecoder().decode(output.stderr),
  };
  if ((options.check ?? true) && result.code !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} exited with ${result.code}\n${result.stdout}\n${result.stderr}`.trim(),
    );
  }
  return result;
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

export function log(message: string): void {
  console.error(`[stack] ${message}`);
}

/** Waits until `url` answers at all (any status): a server we started is listening. */
export async function waitForHttp(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const response = await fetch(url);
      await response.body?.cancel();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
  throw new Error(`nothing answered at ${url} within ${timeoutMs} ms`);
}
