// The one step every money function ends with: call the procedure with the request's context and
// answer its outcome through the shared status table.

import type { OutcomeBody } from "./errors.ts";
import { outcomeResponse, type RequestContext } from "./http.ts";
import type { ProcedureArguments, RpcCall } from "./rpc.ts";

export async function respondWithProcedure(
  context: RequestContext,
  call: RpcCall,
  procedure: string,
  args: ProcedureArguments,
): Promise<Response> {
  const result = await call(procedure, args, { functionName: context.functionName, requestId: context.requestId });
  return outcomeResponse(context, result as OutcomeBody);
}
