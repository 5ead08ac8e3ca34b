/**
 * The HSM configuration file, `/etc/zb/hsm.conf` (docs/hsm.md): one
 * `key = value` per line, `#` comments, blank lines ignored. Unknown keys are
 * refused so a typo cannot silently select a weaker setup. Every key can
 * also be given as a flag; flags win (stages/zb/hsm.ts).
 *
 *   backend = tpm2                 # tpm2 | pkcs11 | zymkey | soft
 *   wait = 10                      # seconds zbunlock waits for the HSM to appear
 *   tpm2.device = /dev/tpmrm0      # or swtpm:host=127.0.0.1,port=2321
 *   tpm2.pcrs = 7                  # PCRs (sha256 bank) new seals bind to; empty: none
 *   tpm2.lock-pcr = 15             # zbunlock extends it after unlocking: no unseal until reboot
 *   pkcs11.module = /usr/lib/…/libsofthsm2.so
 *   pkcs11.token = zb              # token label
 *   pkcs11.token-serial = 4f3a…    # which of several tokens with that label
 *   pkcs11.key-label = zb-luks     # RSA key pair on the token
 *   pkcs11.key-id = 01             # (hex) alternative to the label
 *   pkcs11.pin-file = /etc/zb/pin  # else zb asks on the terminal
 *   pkcs11.oaep = auto             # sha256 | sha1 | auto (ask the token)
 *   zymkey.library = libzk_app_utils.so
 *   soft.enable = yes              # development only
 *   soft.key-file = /var/lib/zb/soft.key
 *
 * Pure: text in, values out; readHsmConfig() is the one place that reads.
 */
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import { BACKENDS, type BackendName } from "./types.ts";
import { DEFAULT_DEVICE } from "./tpm2/transport.ts";

export const DEFAULT_HSM_CONFIG = "/etc/zb/hsm.conf";
/** The kernel resource manager, as tpm2/transport.ts names it. */
export const DEFAULT_TPM_DEVICE = DEFAULT_DEVICE;
export const DEFAULT_WAIT_SECONDS = 10;
const MAX_WAIT_SECONDS = 600;

export interface HsmConfig {
  backend: BackendName | null;
  waitSeconds: number;
  tpm2: { device: string; pcrs: number[]; lockPcr: number | null };
  pkcs11: { module: string | null; token: string | null; tokenSerial: string | null; keyLabel: string | null; keyId: string | null; pinFile: string | null; oaep: "sha256" | "sha1" | "auto" };
  zymkey: { library: string | null };
  soft: { enabled: boolean; keyFile: string | null };
}

export function defaultHsmConfig(): HsmConfig {
  return {
    backend: null,
    waitSeconds: DEFAULT_WAIT_SECONDS,
    tpm2: { device: DEFAULT_TPM_DEVICE, pcrs: [], lockPcr: null },
    pkcs11: { module: null, token: null, tokenSerial: null, keyLabel: null, keyId: null, pinFile: null, oaep: "auto" },
    zymkey: { library: null },
    soft: { enabled: false, keyFile: null },
  };
}

type Setter = (c: HsmConfig, v: string, bad: (why: string) => ZbError) => void;

const str = (v: string) => (v === "" ? null : v);

/** The keys of the file and of `--set`-like flags; each validates its value. */
export const KEYS: Record<string, Setter> = {
  backend: (c, v, bad) => {
    if (!(BACKENDS as readonly string[]).includes(v)) throw bad(`unknown backend ${JSON.stringify(v)} (known: ${BACKENDS.join(", ")})`);
    c.backend = v as BackendName;
  },
  wait: (c, v, bad) => {
    const n = Number(v);
    if (!/^\d+(\.\d+)?$/.test(v) || n > MAX_WAIT_SECONDS) throw bad(`wait must be seconds between 0 and ${MAX_WAIT_SECONDS}`);
    c.waitSeconds = n;
  },
  "tpm2.device": (c, v, bad) => {
    if (v === "") throw bad("tpm2.device is empty");
    c.tpm2.device = v;
  },
  "tpm2.pcrs": (c, v, bad) => {
    c.tpm2.pcrs = parsePcrs(v, bad);
  },
  "tpm2.lock-pcr": (c, v, bad) => {
    if (v === "") {
      c.tpm2.lockPcr = null;
      return;
    }
    const [pcr] = parsePcrs(v, bad);
    if (pcr === undefined || v.includes(",")) throw bad("tpm2.lock-pcr is one PCR");
    c.tpm2.lockPcr = pcr;
  },
  "pkcs11.module": (c, v) => void (c.pkcs11.module = str(v)),
  "pkcs11.token": (c, v) => void (c.pkcs11.token = str(v)),
  "pkcs11.token-serial": (c, v, bad) => {
    // CK_TOKEN_INFO.serialNumber is 16 blank-padded printable characters (v2.40 §3.2).
    if (v.length > 16 || !/^[\x21-\x7e]*$/.test(v)) throw bad("pkcs11.token-serial must be the token's serial number: at most 16 printable characters, no blanks");
    c.pkcs11.tokenSerial = str(v);
  },
  "pkcs11.key-label": (c, v) => void (c.pkcs11.keyLabel = str(v)),
  "pkcs11.key-id": (c, v, bad) => {
    if (v !== "" && !/^([0-9a-fA-F]{2})+$/.test(v)) throw bad("pkcs11.key-id must be hex bytes");
    c.pkcs11.keyId = str(v.toLowerCase());
  },
  "pkcs11.pin-file": (c, v) => void (c.pkcs11.pinFile = str(v)),
  "pkcs11.oaep": (c, v, bad) => {
    if (v !== "sha256" && v !== "sha1" && v !== "auto") throw bad("pkcs11.oaep must be sha256, sha1 or auto");
    c.pkcs11.oaep = v;
  },
  "zymkey.library": (c, v) => void (c.zymkey.library = str(v)),
  "soft.enable": (c, v, bad) => {
    if (!["yes", "no", "1", "0", "true", "false"].includes(v)) throw bad("soft.enable must be yes or no (1/0 and true/false are read the same)");
    c.soft.enabled = ["yes", "1", "true"].includes(v);
  },
  "soft.key-file": (c, v) => void (c.soft.keyFile = str(v)),
};

/**
 * PCR list `0,7` or `sha256:0,7` (tpm2-tools spelling; only the sha256 bank).
 * @throws {ZbError} from `bad` when malformed
 */
export function parsePcrs(v: string, bad: (why: string) => ZbError = (w) => new ZbError("USAGE", `cannot read the PCR list: ${w}`)): number[] {
  const list = v.startsWith("sha256:") ? v.slice(7) : v;
  if (list.trim() === "") return [];
  const out = new Set<number>();
  for (const part of list.split(",")) {
    const t = part.trim();
    if (!/^\d{1,2}$/.test(t) || Number(t) > 23) throw bad(`PCR ${JSON.stringify(t)} is not 0…23 (bank sha256 only)`);
    out.add(Number(t));
  }
  return [...out].sort((a, b) => a - b);
}

/**
 * Parse the config text on top of `base` (defaults when absent).
 * @throws {ZbError} CONFIG on a malformed line, an unknown key, a key set twice or a bad value
 */
export function parseHsmConfig(text: string, path: string, base = defaultHsmConfig()): HsmConfig {
  const c = structuredClone(base);
  const seen = new Map<string, number>();
  for (const { line, key, value } of settingLines(text)) {
    const bad = (why: string) => new ZbError("CONFIG", `cannot read ${path}:${line}: ${why}`);
    if (key === null) throw bad("expected key = value");
    const set = KEYS[key];
    if (!set) throw bad(`unknown key ${JSON.stringify(key)}`);
    // Twice is a leftover or a typo: which one was meant is not ours to guess.
    if (seen.has(key)) throw bad(`${key} is set again (first on line ${seen.get(key)})`);
    seen.set(key, line);
    set(c, value, bad);
  }
  return c;
}

/**
 * The value the first line setting `key` gives it, whatever else in the
 * text is malformed: for a caller that must act although the file as a
 * whole is refused (zbunlock's lock before a shell looks for the TPM the
 * file names). Read as {@link parseHsmConfig} reads lines; the value is not
 * checked.
 * @example settingIn("tpm2.devcie = x\ntpm2.device = /dev/tpmrm1 # B\n", "tpm2.device") // "/dev/tpmrm1"
 */
export function settingIn(text: string, key: string): string | undefined {
  return settingLines(text).find((s) => s.key === key)?.value;
}

/** The lines of a config text that say something (comments and blanks dropped): line number, key (null without '='), value. */
function settingLines(text: string): { line: number; key: string | null; value: string }[] {
  const out: { line: number; key: string | null; value: string }[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") return;
    const eq = line.indexOf("=");
    out.push(eq < 0 ? { line: i + 1, key: null, value: line } : { line: i + 1, key: line.slice(0, eq).trim(), value: line.slice(eq + 1).trim() });
  });
  return out;
}

/**
 * Largest hsm.conf read: 64 KiB. The file is a dozen `key = value` lines;
 * a larger one is no hsm.conf (`--config /dev/zero`, a disk), refused once
 * these bytes are past instead of read until memory runs out.
 */
export const MAX_HSM_CONFIG_BYTES = 64 * 1024;

/**
 * Read `path`; a missing file gives the defaults (a config file is optional).
 * @throws {ZbError} CONFIG when malformed or larger than {@link MAX_HSM_CONFIG_BYTES}; IO when unreadable
 * @example readHsmConfig(new HostSys()).backend
 */
export function readHsmConfig(sys: Sys, path = DEFAULT_HSM_CONFIG): HsmConfig {
  if (!sys.stat(path)) return defaultHsmConfig();
  return parseHsmConfig(sys.readText(path, { max: MAX_HSM_CONFIG_BYTES, code: "CONFIG", what: `the HSM config ${path}` }), path);
}
