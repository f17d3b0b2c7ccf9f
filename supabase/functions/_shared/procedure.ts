// The one step every money function ends with: call the procedure with the request's context and
// answer its outcome through the shared status table.

import type { OutcomeBody } from "./errors.ts";
import { outcomeResponse, type RequestContext } from "./http.ts";
import type { ProcedureArgs, ProcedureName, RpcCall } from "./rpc.ts";

export async function respondWithProcedure<Name extends ProcedureName>(
  context: RequestContext,
  call: RpcCall,
  procedure: Name,
  args: ProcedureArgs<Name>,
): Promise<Response> {
  const result = await call(procedure, args, { functionName: context.functionName, requestId: context.requestId });
  return outcomeResponse(context, result as OutcomeBody);
}
