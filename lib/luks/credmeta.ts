/**
 * What a slot's credentials are (docs/credentials.md): the paths they have
 * in the initramfs, the device-mapper names, meta.json's schema and codec,
 * and the check that the sealed blobs agree with the metadata. Kept apart
 * from credentials.ts (the cpio archive, where it is read from and found)
 * and credappend.ts (writing it onto an initramfs): this is the data, with
 * no bytes of an archive or a file in view. Pure.
 */
import type { Slot } from "../bootstate/state.ts";
import { ZbError } from "../errors.ts";
import { decodeBlob, type SealedBlob } from "../hsm/blob.ts";
import { BACKENDS, type BackendName } from "../hsm/types.ts";

export const CRED_FORMAT = "zb-credentials/1";
export const CRED_DIR = "zb/credentials";
export const META_PATH = `${CRED_DIR}/meta.json`;
export const ROOT_BLOB_PATH = `${CRED_DIR}/root.sealed`;
export const DATA_BLOB_PATH = `${CRED_DIR}/data.sealed`;
/** device-mapper names zbunlock opens the volumes as (/dev/mapper/zb-root, /dev/mapper/zb-data). */
export const ROOT_MAPPING = "zb-root";
export const DATA_MAPPING = "zb-data";
export const MAX_META_BYTES = 16 * 1024;

/** meta.json. Every field is documented in docs/credentials.md. */
export interface CredentialMeta {
  format: typeof CRED_FORMAT;
  slot: Slot;
  /** The backend that sealed both keys. */
  backend: BackendName;
  /** When the slot was enrolled: ISO 8601, UTC. */
  created: string;
  root: { uuid: string; name: typeof ROOT_MAPPING };
  data?: { uuid: string; name: typeof DATA_MAPPING };
}

/** The three parts; the blobs are the canonical bytes of lib/hsm/blob.ts's envelope. */
export interface Credentials {
  meta: CredentialMeta;
  root: Uint8Array;
  data?: Uint8Array;
}

/** Credentials whose blobs were decoded and checked against the metadata. */
export interface LoadedCredentials extends Credentials {
  rootBlob: SealedBlob;
  dataBlob?: SealedBlob;
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO_UTC_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

/** The CRED_INVALID error every credentials reader throws: "cannot read credentials: <why>". */
export function invalid(why: string, hint?: string): ZbError {
  return new ZbError("CRED_INVALID", `cannot read credentials: ${why}`, hint === undefined ? {} : { hint });
}

/**
 * meta.json bytes: fixed key order, two-space indent, final newline.
 * @throws {ZbError} CRED_INVALID when `meta` breaks the schema
 * @example encodeMeta({ format: "zb-credentials/1", slot: "a", backend: "tpm2", created: new Date().toISOString(), root: { uuid, name: "zb-root" } })
 */
export function encodeMeta(meta: CredentialMeta): Uint8Array {
  const m = parseMetaObject(meta);
  const ordered: Record<string, unknown> = { format: m.format, slot: m.slot, backend: m.backend, created: m.created, root: m.root };
  if (m.data) ordered.data = m.data;
  return new TextEncoder().encode(`${JSON.stringify(ordered, ["format", "slot", "backend", "created", "root", "data", "uuid", "name"], 2)}\n`);
}

/**
 * Parse and check meta.json.
 * @throws {ZbError} CRED_INVALID naming the first field that is wrong
 */
export function parseMeta(bytes: Uint8Array): CredentialMeta {
  if (bytes.length > MAX_META_BYTES) throw invalid(`meta.json is larger than ${MAX_META_BYTES} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid("meta.json is not JSON");
  }
  return parseMetaObject(v);
}

function parseMetaObject(v: unknown): CredentialMeta {
  const o = plainObject(v, "meta.json");
  onlyKeys(o, ["format", "slot", "backend", "created", "root", "data"], "meta.json");
  if (o.format !== CRED_FORMAT) throw invalid(`meta.json format is ${JSON.stringify(o.format)}, expected ${JSON.stringify(CRED_FORMAT)}`);
  if (o.slot !== "a" && o.slot !== "b") throw invalid(`meta.json slot is ${JSON.stringify(o.slot)}, expected "a" or "b"`);
  if (typeof o.backend !== "string" || !(BACKENDS as readonly string[]).includes(o.backend)) {
    throw invalid(`meta.json backend ${JSON.stringify(o.backend)} is not one of ${BACKENDS.join(", ")}`);
  }
  if (typeof o.created !== "string" || !ISO_UTC_RE.test(o.created) || Number.isNaN(Date.parse(o.created))) {
    throw invalid(`meta.json created ${JSON.stringify(o.created)} is not an ISO 8601 UTC time`);
  }
  const meta: CredentialMeta = {
    format: CRED_FORMAT, slot: o.slot, backend: o.backend as BackendName, created: o.created,
    root: volume(o.root, "root", ROOT_MAPPING) as CredentialMeta["root"],
  };
  if (o.data !== undefined) meta.data = volume(o.data, "data", DATA_MAPPING) as NonNullable<CredentialMeta["data"]>;
  if (meta.data && meta.data.uuid === meta.root.uuid) throw invalid("meta.json root and data have the same UUID");
  return meta;
}

function volume(v: unknown, field: string, name: string): { uuid: string; name: string } {
  const o = plainObject(v, `meta.json ${field}`);
  onlyKeys(o, ["uuid", "name"], `meta.json ${field}`);
  if (typeof o.uuid !== "string" || !UUID_RE.test(o.uuid)) throw invalid(`meta.json ${field}.uuid ${JSON.stringify(o.uuid)} is not a lower-case LUKS UUID`);
  if (o.name !== name) throw invalid(`meta.json ${field}.name is ${JSON.stringify(o.name)}, expected ${JSON.stringify(name)}`);
  return { uuid: o.uuid, name };
}

function plainObject(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw invalid(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

function onlyKeys(o: Record<string, unknown>, keys: string[], what: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw invalid(`${what} has an unknown field ${JSON.stringify(k)}`);
}

/**
 * Decode both blobs and check them against the metadata: the data blob is
 * there exactly when meta.data is, and both were sealed by meta.backend.
 * @throws {ZbError} CRED_INVALID
 */
export function checkCredentials(c: Credentials): LoadedCredentials {
  const meta = parseMetaObject(c.meta);
  const rootBlob = decodeBlob(c.root, "root.sealed");
  if (rootBlob.backend !== meta.backend) throw invalid(`root.sealed was sealed by ${rootBlob.backend}, meta.json says ${meta.backend}`);
  if (!meta.data !== !c.data) throw invalid(meta.data ? "meta.json names a data volume but data.sealed is missing" : "data.sealed is present but meta.json names no data volume");
  const out: LoadedCredentials = { meta, root: c.root, rootBlob };
  if (c.data) {
    out.data = c.data;
    out.dataBlob = decodeBlob(c.data, "data.sealed");
    if (out.dataBlob.backend !== meta.backend) throw invalid(`data.sealed was sealed by ${out.dataBlob.backend}, meta.json says ${meta.backend}`);
  }
  return out;
}
