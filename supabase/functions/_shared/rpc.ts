// Calls a PL/pgSQL procedure in `public` by name with named arguments and returns its jsonb.
// postgres.js straight to Postgres over SUPABASE_DB_URL: the same RPC PostgREST would make, one
// hop shorter. `prepare: false` because hosted projects sit behind the transaction pooler.

import postgres from "postgres";
import { currentCallerScope } from "./caller.ts";

import type { Database, Json } from "./database.types.ts";

type Procedures = Database["public"]["Functions"];

/** The public procedures that answer jsonb: every one a function may call (`database.types.ts`). */
export type ProcedureName = {
  [Name in keyof Procedures]: Json extends Procedures[Name]["Returns"] ? Name : never;
}[keyof Procedures];

/**
 * A procedure's named arguments, as the migrations declare them. SQL null is accepted for any of
 * them: the procedure itself refuses a missing required value with the field's name.
 */
export type ProcedureArgs<Name extends ProcedureName> = {
  [Argument in keyof Procedures[Name]["Args"]]: Procedures[Name]["Args"][Argument] | null;
};

export type ProcedureArguments = Record<string, string | number | boolean | null | object | undefined>;
/** A procedure's jsonb answer: an outcome object (`{ok: true, ...}` or `{ok: false, error}`). */
export type ProcedureResult = Record<string, unknown>;
export type RpcCall = <Name extends ProcedureName>(
  procedure: Name,
  args: ProcedureArgs<Name>,
  context?: CallContext,
) => Promise<ProcedureResult>;

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/** A Postgres error raised by the procedure (invalid arguments, bugs); carries the SQLSTATE. */
export class ProcedureError extends Error {
  constructor(readonly procedure: string, readonly sqlState: string | undefined, message: string) {
    super(message);
    this.name = "ProcedureError";
  }
}

/** The database could not be reached at all: nothing ran, the caller may retry with the same key. */
export class DatabaseUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DatabaseUnavailableError";
  }
}

// Serialization failures and deadlocks roll the whole call back, idempotency record included, so
// running it again is safe. Our procedures lock in a fixed order and should never produce them.
const RETRYABLE_SQLSTATES = new Set(["40001", "40P01"]);
const MAX_ATTEMPTS = 3;

const CONNECTION_ERROR_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "ETIMEDOUT",
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "57P01", // admin_shutdown
  "57P03", // cannot_connect_now
]);

/** Who is calling, recorded by the procedures in the attempt log (ops.app_transaction_log). */
export interface CallContext {
  functionName?: string;
  requestId?: string;
  /** Scopes idempotency keys (`user:<id>`, `anon`, `service`); defaults to the request's verified caller. */
  caller?: string;
}

/**
 * Builds `select public.name(arg => $1, ...)`; names are checked, values always go as parameters.
 * The call context travels as transaction-local settings set in the same statement (so it is
 * safe behind the transaction pooler): the one-row subquery runs before the procedure.
 */
export function buildCall(
  procedure: string,
  args: ProcedureArguments,
  context: CallContext = {},
): { text: string; values: unknown[] } {
  if (!IDENTIFIER.test(procedure)) throw new Error(`invalid procedure name: ${procedure}`);
  const names = Object.keys(args).filter((name) => args[name] !== undefined);
  for (const name of names) {
    if (!IDENTIFIER.test(name)) throw new Error(`invalid argument name: ${name}`);
  }
  const placeholders = names.map((name, index) => `${name} => $${index + 1}`).join(", ");
  const contextStart = names.length + 1;
  return {
    text: `select public.${procedure}(${placeholders}) as result from (select ` +
      `set_config('app.edge_function', $${contextStart}, true), ` +
      `set_config('app.request_id', $${contextStart + 1}, true), ` +
      `set_config('app.caller', $${contextStart + 2}, true)) as call_context`,
    values: [
      ...names.map((name) => args[name]),
      context.functionName ?? "",
      context.requestId ?? "",
      context.caller ?? currentCallerScope() ?? "",
    ],
  };
}

export interface RpcClient {
  call: RpcCall;
  end: () => Promise<void>;
}

export function createRpc(databaseUrl: string, options: { maxConnections?: number } = {}): RpcClient {
  const sql = postgres(databaseUrl, {
    prepare: false,
    max: options.maxConnections ?? Number(Deno.env.get("DB_POOL_MAX") ?? "4"),
    idle_timeout: 30,
    connect_timeout: 5,
    onnotice: () => {},
    connection: { application_name: "edge-functions" },
  });

  async function call<Name extends ProcedureName>(
    procedure: Name,
    args: ProcedureArgs<Name>,
    context: CallContext = {},
  ): Promise<ProcedureResult> {
    const { text, values } = buildCall(procedure, args as ProcedureArguments, context);
    for (let attempt = 1;; attempt++) {
      try {
        // postgres.js asks the server for the parameter types and serializes each value for its
        // type: objects go as JSON to jsonb, numbers to bigint, strings to text or uuid.
        const rows = await sql.unsafe(text, values as never[]);
        return rows[0].result as ProcedureResult;
      } catch (error) {
        const code = (error as { code?: string }).code;
        if (code && RETRYABLE_SQLSTATES.has(code) && attempt < MAX_ATTEMPTS) {
          // Safe to retry (the whole call rolled back), but never silent: our lock order should
          // make this impossible, so an operator must hear about it.
          console.error(JSON.stringify({
            level: "warn",
            message: `retrying ${procedure} after SQLSTATE ${code}`,
            attempt,
            function: context.functionName,
            request_id: context.requestId,
          }));
          continue;
        }
        if (code && CONNECTION_ERROR_CODES.has(code)) throw new DatabaseUnavailableError((error as Error).message);
        if (error instanceof postgres.PostgresError) throw new ProcedureError(procedure, code, error.message);
        throw error;
      }
    }
  }

  return { call, end: () => sql.end({ timeout: 5 }) };
}

let defaultClient: RpcClient | undefined;

/**
 * The process-wide client, created on first use. DB_URL (a secret you can set, e.g. the transaction
 * pooler's URL) wins over SUPABASE_DB_URL (set by the platform; the SUPABASE_ prefix is reserved).
 */
export const rpc: RpcCall = (procedure, args, context) => {
  if (!defaultClient) {
    const url = Deno.env.get("DB_URL") ?? Deno.env.get("SUPABASE_DB_URL");
    if (!url) throw new Error("neither DB_URL nor SUPABASE_DB_URL is set");
    if (!Deno.env.get("DB_URL")) {
      // SUPABASE_DB_URL connects as the database owner, who can do anything: say so loudly.
      console.error(JSON.stringify({
        level: "error",
        message: "DB_URL is not set: the functions connect with SUPABASE_DB_URL as the database owner; " +
          "set DB_URL to the edge_functions role (see the README's deployment section)",
      }));
    }
    defaultClient = createRpc(url);
  }
  return defaultClient.call(procedure, args, context);
};
