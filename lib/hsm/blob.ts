/**
 * The sealed-blob envelope: which backend sealed the secret, and its data.
 *
 *   {"format":"zb-sealed/1","backend":"tpm2","data":{...}}\n
 *
 * Canonical JSON (keys sorted, no spaces) so the same seal gives the same
 * bytes; binary fields inside `data` are base64. Bounded (64 KiB) and
 * strictly checked: a blob is read in the initramfs before anything else is
 * trusted. The format is documented in docs/credentials.md.
 */
import { ZbError, type ErrorCode } from "../errors.ts";
import { BACKENDS, type BackendName, type SealedData, type UnsealFailure } from "./types.ts";

export const BLOB_FORMAT = "zb-sealed/1";
export const MAX_BLOB_BYTES = 64 * 1024;

export interface SealedBlob {
  backend: BackendName;
  data: SealedData;
}

/** Canonical bytes of a blob. */
export function encodeBlob(blob: SealedBlob): Uint8Array {
  const data: SealedData = {};
  for (const k of Object.keys(blob.data).sort()) data[k] = blob.data[k]!;
  const text = `{"backend":${JSON.stringify(blob.backend)},"data":${JSON.stringify(data)},"format":${JSON.stringify(BLOB_FORMAT)}}\n`;
  return new TextEncoder().encode(text);
}

/**
 * Parse and check a blob.
 * @throws {ZbError} CRED_INVALID when it is not a zb sealed blob of a known backend
 */
export function decodeBlob(bytes: Uint8Array, what = "sealed blob"): SealedBlob {
  const bad = (why: string) => new ZbError("CRED_INVALID", `cannot read ${what}: ${why}`);
  if (bytes.byteLength > MAX_BLOB_BYTES) throw bad(`larger than ${MAX_BLOB_BYTES} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw bad("not JSON");
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad("not a JSON object");
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!["format", "backend", "data"].includes(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  if (o.format !== BLOB_FORMAT) throw bad(`format is ${JSON.stringify(o.format)}, expected ${JSON.stringify(BLOB_FORMAT)}`);
  if (typeof o.backend !== "string" || !(BACKENDS as readonly string[]).includes(o.backend)) {
    throw bad(`unknown backend ${JSON.stringify(o.backend)}`);
  }
  const d = o.data;
  if (typeof d !== "object" || d === null || Array.isArray(d)) throw bad("data is not an object");
  for (const [k, x] of Object.entries(d)) {
    const ok = typeof x === "string" || (typeof x === "number" && Number.isSafeInteger(x)) ||
      (Array.isArray(x) && x.every((n) => typeof n === "number" && Number.isSafeInteger(n)));
    if (!ok) throw bad(`data field ${JSON.stringify(k)} is not a string, an integer or a list of integers`);
  }
  return { backend: o.backend as BackendName, data: d as SealedData };
}

const FAILURE_CODES: Record<UnsealFailure["kind"], ErrorCode> = {
  absent: "HSM_ABSENT",
  "no-match": "HSM_NO_MATCH",
  denied: "HSM_DENIED",
  failed: "HSM_FAILED",
};

/** The ZbError for an unseal failure, for stages that stop on it. */
export function unsealError(f: UnsealFailure, backend: BackendName): ZbError {
  return new ZbError(FAILURE_CODES[f.kind], `cannot unseal with ${backend}: ${f.why}`);
}

/**
 * Strict base64 decode for sealed-data fields: padded standard base64 in its
 * one canonical form (RFC 4648 §3.5: the pad bits are zero), so one blob has
 * one spelling; "AB==" and "AA==" would otherwise both decode to one 0x00.
 * @throws {ZbError} CRED_INVALID
 */
export function b64field(data: SealedData, name: string): Uint8Array {
  const v = data[name];
  const bytes = typeof v === "string" && /^[A-Za-z0-9+/]*={0,2}$/.test(v) && v.length % 4 === 0 ? Buffer.from(v, "base64") : null;
  if (bytes === null || bytes.toString("base64") !== v) {
    throw new ZbError("CRED_INVALID", `cannot read sealed data: field ${JSON.stringify(name)} is not base64`);
  }
  return new Uint8Array(bytes);
}

/** Base64 of bytes, for sealed-data fields. */
export function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}
