// POST /functions/v1/nfc-scans: a terminal sends the NFC scans it made, in batches of up to 500
// (it buffers while offline). Each scan is stored once per (device_id, device_sequence), so
// resending a batch changes nothing; a batch with one invalid scan is refused whole, naming the
// failing `scans[i].field` (docs/architecture.md §1, `ops`). Staff tokens only.

import { z } from "zod";
import { authenticateUser } from "../_shared/auth.ts";
import { readJsonBody, serveFunction } from "../_shared/http.ts";
import { respondWithProcedure } from "../_shared/procedure.ts";
import { rpc, type RpcCall } from "../_shared/rpc.ts";
import { freeText, identifier, parseInput } from "../_shared/schemas.ts";

export const MAX_SCANS_PER_BATCH = 500;
// 500 scans with raw data do not fit the default 64 KiB body limit.
const MAX_BATCH_BYTES = 1024 * 1024;

const visible = (max: number) => z.string().regex(new RegExp(`^[\\x21-\\x7e]{1,${max}}$`), `1 to ${max} visible characters`);

export const NfcScan = z.strictObject({
  device_sequence: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  card_uid: visible(128).optional(),
  // deno-lint-ignore no-control-regex -- matching control characters is the point of this check
  raw_data: z.string().max(2048).regex(/^[^\u0000]*$/, "no NUL characters").optional(),
  status: z.enum(["ok", "unreadable", "unknown_card", "duplicate_ignored", "blocked"]),
  scanned_at: z.iso.datetime({ offset: true }),
}).refine((scan) => scan.card_uid !== undefined || scan.status === "unreadable", {
  path: ["card_uid"],
  message: "required unless the status is unreadable",
});

export const NfcScanBatch = z.strictObject({
  device_id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9:._-]{0,63}$/, "1 to 64 letters, digits, ':', '.', '_' or '-'"),
  point_of_sale_id: identifier.optional(),
  checkpoint_id: identifier.optional(),
  app_version: freeText(64).optional(),
  scans: z.array(NfcScan).min(1).max(MAX_SCANS_PER_BATCH),
}).refine((batch) => (batch.point_of_sale_id === undefined) !== (batch.checkpoint_id === undefined), {
  path: ["point_of_sale_id"],
  message: "exactly one of point_of_sale_id and checkpoint_id is required",
});

export function createNfcScansHandler(call: RpcCall): (request: Request) => Promise<Response> {
  return serveFunction({ name: "nfc-scans", methods: ["POST"] }, async (context) => {
    const staff = await authenticateUser(context.request);
    const body = parseInput(NfcScanBatch, await readJsonBody(context.request, MAX_BATCH_BYTES));
    return respondWithProcedure(context, call, "sp_record_nfc_scans", {
      staff_user_id: staff.subject,
      device_id: body.device_id,
      scans: body.scans,
      point_of_sale_id: body.point_of_sale_id ?? null,
      checkpoint_id: body.checkpoint_id ?? null,
      app_version: body.app_version ?? null,
      user_agent: context.request.headers.get("user-agent")?.slice(0, 512) ?? null,
    });
  });
}

export const handler = createNfcScansHandler(rpc);
