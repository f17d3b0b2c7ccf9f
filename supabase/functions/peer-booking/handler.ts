// POST /functions/v1/peer-booking: a practitioner pays credits to a peer for a treatment. The
// booking practitioner is the verified token's subject, never a body field: a body naming someone
// else as the booking practitioner is refused (403), and so are anonymous sign-ins; festival staff
// are refused by the procedure. A booking id belongs to the practitioner who pays it.

import { z } from "zod";
import { authenticate, requireCreditsUser } from "../_shared/auth.ts";
import { HttpError } from "../_shared/errors.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import {
  clientRequestId,
  externalId,
  parseInput,
  resolveClientRequestId,
} from "../_shared/schemas.ts";

/** More credits than any booking could plausibly cost is a bug or an attack, not a booking (400). */
export const MAX_BOOKING_CREDITS = 1_000_000;

export const PeerBookingRequest = z.strictObject({
  treating_practitioner_id: z.guid(),
  credits: z.number().int().min(1).max(MAX_BOOKING_CREDITS),
  booking_id: externalId,
  // Accepted only to refuse a mismatch loudly: the token decides who books.
  booking_practitioner_id: z.guid().optional(),
  client_request_id: clientRequestId.optional(),
});

export function createPeerBookingHandler(
  call: RpcCall,
): (request: Request) => Promise<Response> {
  return serveFunction(
    { name: "peer-booking", methods: ["POST"] },
    async (context) => {
      const practitioner = requireCreditsUser(await authenticate(context.request));
      const body = parseInput(
        PeerBookingRequest,
        await readJsonBody(context.request),
      );
      if (
        body.booking_practitioner_id !== undefined &&
        body.booking_practitioner_id.toLowerCase() !==
          practitioner.subject.toLowerCase()
      ) {
        throw new HttpError(
          "forbidden",
          "a practitioner can only book for themselves",
        );
      }
      return respondWithProcedure(
        context,
        call,
        "process_peer_booking_credits",
        {
          booking_practitioner_id: practitioner.subject,
          treating_practitioner_id: body.treating_practitioner_id,
          credits: body.credits,
          booking_id: body.booking_id,
          client_request_id: resolveClientRequestId(
            context.request,
            body.client_request_id,
          ),
        },
      );
    },
  );
}

export const handler = createPeerBookingHandler(rpc);
