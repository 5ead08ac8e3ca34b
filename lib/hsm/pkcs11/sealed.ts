/**
 * The pkcs11 backend's sealed data (the `data` object of a zb-sealed/1 blob,
 * lib/hsm/blob.ts), read strictly and written canonically. Pure.
 *
 *   mechanism     "rsa-oaep-sha256" | "rsa-oaep-sha1" | "rsa-pkcs1"
 *   token         token label (CK_TOKEN_INFO.label, trailing blanks removed)
 *   keyId         CKA_ID, lower-case hex          } at least one of the two
 *   keyLabel      CKA_LABEL                       }
 *   pubkeySha256  base64 SHA-256 of the key's DER SubjectPublicKeyInfo (optional on import)
 *   ciphertext    base64 RSA ciphertext, as long as the modulus
 */
import { ZbError } from "../../errors.ts";
import { b64, b64field } from "../blob.ts";
import type { SealedData } from "../types.ts";
import type { OaepHash } from "./layout.ts";

/** How the ciphertext was made. `rsa-pkcs1` (PKCS#1 v1.5) is only ever read: systemd-cryptenroll writes it. */
export const MECHANISMS = ["rsa-oaep-sha256", "rsa-oaep-sha1", "rsa-pkcs1"] as const;
export type Mechanism = (typeof MECHANISMS)[number];

/** The mechanism name of OAEP with `hash`. */
export function oaepMechanism(hash: OaepHash): Mechanism {
  return hash === "sha256" ? "rsa-oaep-sha256" : "rsa-oaep-sha1";
}

/** How a key is named on the token; at least one field is set to find it. */
export interface KeySelector {
  /** CKA_ID bytes. */
  id?: Uint8Array;
  /** CKA_LABEL text. */
  label?: string;
}

/** Parsed sealed data. */
export interface Sealed {
  mechanism: Mechanism;
  token: string;
  sel: KeySelector;
  pubkeySha256?: Uint8Array;
  ciphertext: Uint8Array;
}

const FIELDS = ["mechanism", "token", "keyId", "keyLabel", "pubkeySha256", "ciphertext"];
/** The longest RSA ciphertext accepted: a 16384-bit modulus. */
const MAX_CIPHERTEXT = 2048;

/**
 * A key selector from option or sealed-data spelling.
 * @param bad makes the error for a malformed id
 * @throws {ZbError} from `bad` when keyId is not an even number of hex digits
 */
export function parseSelector(keyId: string | undefined, keyLabel: string | undefined, bad: (why: string) => ZbError): KeySelector {
  const sel: KeySelector = {};
  if (keyId !== undefined) {
    if (!/^([0-9a-fA-F]{2})+$/.test(keyId)) throw bad(`key id ${JSON.stringify(keyId)} is not hex bytes`);
    sel.id = new Uint8Array(Buffer.from(keyId, "hex"));
  }
  if (keyLabel !== undefined) sel.label = keyLabel;
  return sel;
}

/**
 * Parse sealed data strictly: it comes from the initramfs and is checked
 * before anything in it is used.
 * @throws {ZbError} CRED_INVALID on an unknown field, a wrong type, an unknown mechanism or no key name
 */
export function readSealed(data: SealedData): Sealed {
  const bad = (why: string) => new ZbError("CRED_INVALID", `cannot read pkcs11 sealed data: ${why}`);
  for (const k of Object.keys(data)) if (!FIELDS.includes(k)) throw bad(`unknown field ${JSON.stringify(k)}`);
  const str = (k: string): string | undefined => {
    const v = data[k];
    if (v !== undefined && typeof v !== "string") throw bad(`${k} is not a string`);
    return v;
  };
  const mechanism = str("mechanism");
  if (!(MECHANISMS as readonly (string | undefined)[]).includes(mechanism)) throw bad(`unknown mechanism ${JSON.stringify(mechanism)}`);
  const token = str("token");
  if (!token) throw bad("no token label");
  const sel = parseSelector(str("keyId"), str("keyLabel"), bad);
  if (sel.id === undefined && sel.label === undefined) throw bad("neither keyId nor keyLabel");
  const ciphertext = b64field(data, "ciphertext");
  if (ciphertext.byteLength === 0 || ciphertext.byteLength > MAX_CIPHERTEXT) throw bad(`ciphertext is ${ciphertext.byteLength} bytes`);
  const sealed: Sealed = { mechanism: mechanism as Mechanism, token, sel, ciphertext };
  if (data.pubkeySha256 !== undefined) {
    sealed.pubkeySha256 = b64field(data, "pubkeySha256");
    if (sealed.pubkeySha256.byteLength !== 32) throw bad("pubkeySha256 is not 32 bytes");
  }
  return sealed;
}

/** Sealed data for a blob; binary fields as base64, the id as lower-case hex. */
export function writeSealed(s: Sealed): SealedData {
  const data: SealedData = { mechanism: s.mechanism, token: s.token };
  if (s.sel.id !== undefined) data.keyId = Buffer.from(s.sel.id).toString("hex");
  if (s.sel.label !== undefined) data.keyLabel = s.sel.label;
  if (s.pubkeySha256 !== undefined) data.pubkeySha256 = b64(s.pubkeySha256);
  data.ciphertext = b64(s.ciphertext);
  return data;
}
