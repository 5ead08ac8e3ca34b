/**
 * `zb hsm probe|seal|unseal`: enrolment and diagnostics for the HSM
 * backends (docs/hsm.md). Settings come from /etc/zb/hsm.conf; flags win.
 * Secrets enter on stdin and leave into a new 0600 file or stdout.
 */
import { onlyThese, parseArgs, type OptionSpecs, type ParsedArgs } from "../../lib/cli/args.ts";
import { ZbError } from "../../lib/errors.ts";
import { decodeBlob, encodeBlob, MAX_BLOB_BYTES, unsealError } from "../../lib/hsm/blob.ts";
import { DEFAULT_HSM_CONFIG, KEYS, parsePcrs, readHsmConfig, type HsmConfig } from "../../lib/hsm/config.ts";
import { openHsm } from "../../lib/hsm/open.ts";
import { BACKENDS, type BackendName, type Hsm, type ProbeResult, type SealOptions } from "../../lib/hsm/types.ts";
import { wipe } from "../../lib/secret.ts";
import { readFdBounded, readFileBounded, type ReadLimit } from "../../lib/sys/bounded.ts";
import { waitReadable } from "../../lib/sys/fdwait.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { createNew, err, out } from "../output.ts";
import { subcommand } from "../common.ts";
import { readPinFile } from "../../lib/hsm/pkcs11/pin.ts";
import { promptPin, readSecretFd, writeSecretOutput } from "../secrets.ts";

export const HSM_OPTIONS_HELP = `HSM options (override ${DEFAULT_HSM_CONFIG}; see docs/hsm.md):
  --config FILE            the HSM config file (default ${DEFAULT_HSM_CONFIG})
  --backend B              tpm2 | pkcs11 | zymkey | soft
  --tpm ADDR               TPM device (/dev/tpmrm0) or swtpm:host=127.0.0.1,port=N
  --lock-pcr N             tpm2: also bind to PCR N at zero; zbunlock extends it
                           after unlocking, so nothing unseals again until reboot
  --pkcs11-module PATH     the PKCS#11 module (.so)
  --pkcs11-token LABEL     the token's label
  --pkcs11-token-serial S  which of several tokens with that label (unseal:
                           look at that token only)
  --pkcs11-key-label L     the RSA key pair on the token (or --pkcs11-key-id HEX)
  --pin-file FILE          the token PIN (mode 0600); without it zb asks on the terminal
  --zymkey-library PATH    libzk_app_utils.so
  --soft-enable            allow the development-only soft backend
  --soft-key-file FILE     its key file`;

/** The HSM flags; shared by `zb hsm`, `zb cred` and zbunlock. */
export const HSM_OPTIONS: OptionSpecs = {
  config: { value: true },
  backend: { value: true },
  tpm: { value: true },
  "pkcs11-module": { value: true },
  "pkcs11-token": { value: true },
  "pkcs11-token-serial": { value: true },
  "pkcs11-key-label": { value: true },
  "pkcs11-key-id": { value: true },
  "pin-file": { value: true },
  "zymkey-library": { value: true },
  "soft-enable": {},
  "soft-key-file": { value: true },
  "lock-pcr": { value: true },
};

const FLAG_KEYS: Record<string, string> = {
  backend: "backend",
  tpm: "tpm2.device",
  "pkcs11-module": "pkcs11.module",
  "pkcs11-token": "pkcs11.token",
  "pkcs11-token-serial": "pkcs11.token-serial",
  "pkcs11-key-label": "pkcs11.key-label",
  "pkcs11-key-id": "pkcs11.key-id",
  "pin-file": "pkcs11.pin-file",
  "zymkey-library": "zymkey.library",
  "soft-key-file": "soft.key-file",
  "lock-pcr": "tpm2.lock-pcr",
};

/**
 * The config file, then the flags on top. The default file (`configPath`, else
 * /etc/zb/hsm.conf) may be absent; a file named by --config must exist.
 * @throws {ZbError} CONFIG for the file, USAGE for a bad flag value
 */
export function hsmConfigFrom(args: ParsedArgs, configPath?: string): HsmConfig {
  const named = args.values.get("config");
  // The default file is optional; one named by --config that is not there is a typo, not "no settings".
  if (named !== undefined && !new HostSys().stat(named)) {
    throw new ZbError("CONFIG", `cannot read the HSM config ${named}: no such file`, { hint: `without --config, zb reads ${configPath ?? DEFAULT_HSM_CONFIG} if it exists` });
  }
  const cfg = readHsmConfig(new HostSys(), named ?? configPath ?? DEFAULT_HSM_CONFIG);
  for (const [flag, key] of Object.entries(FLAG_KEYS)) {
    const v = args.values.get(flag);
    if (v !== undefined) KEYS[key]!(cfg, v, (why) => new ZbError("USAGE", `cannot use --${flag}: ${why}`));
  }
  if (args.flags.has("soft-enable")) cfg.soft.enabled = true;
  return cfg;
}

/** PINs a person may type at the prompt before a wrong one counts as a refusal. */
const PROMPT_PIN_ATTEMPTS = 3;

/** Open backend `name` with PINs from the PIN file or the terminal, warnings to stderr. */
export function hsmFor(name: BackendName, cfg: HsmConfig, tty?: string | readonly string[]): Hsm {
  return openHsm(name, cfg, {
    pin: async () => (cfg.pkcs11.pinFile ? readPinFile(cfg.pkcs11.pinFile) : promptPin(`PIN for ${cfg.pkcs11.token ?? "the token"}: `, tty)),
    // A typing error at the prompt is not a refusal for good (zbunlock would mark the slot invalid): three tries.
    pinAttempts: cfg.pkcs11.pinFile ? 1 : PROMPT_PIN_ATTEMPTS,
    warn: (line) => err(line.endsWith("\n") ? line : `${line}\n`),
  });
}

const USAGE = `usage: zb hsm probe [--backend B] [--json] [HSM options]
       zb hsm seal [--backend B] [--pcrs LIST] [--json] -o BLOB|- [HSM options]  < SECRET
       zb hsm unseal BLOB|- -o FILE|- [HSM options]

probe:   is each HSM there? (exit 4 when --backend B is given and absent)
seal:    seal the secret read from stdin (at most 4096 bytes; a TPM takes
         up to 128) to the HSM; BLOB is a zb sealed blob (docs/credentials.md),
         a new file (left behind only when the seal succeeded), or stdout with -o -
         --pcrs 0,7  tpm2: bind to these PCRs of the sha256 bank (default tpm2.pcrs)
         --json      a JSON summary (backend, bytes, output, PCRs) on stdout,
                     on stderr when the blob itself goes to stdout (-o -)
unseal:  unseal BLOB with the backend, token, key and PCRs it names (the flags
         that choose them for a seal are refused); the secret goes to a new
         file created 0600 (never replaced), or stdout with -o -
         exit 4 absent, 19 another HSM, 20 refused by policy/PIN, 21 failed

${HSM_OPTIONS_HELP}`;

export async function hsmMain(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  const positionals = { probe: 0, seal: 0, unseal: 1 };
  // Before the options and the config: a typo in the subcommand is the first thing to report, and reads nothing.
  const sub = subcommand("hsm", first, Object.keys(positionals) as (keyof typeof positionals)[], USAGE + "\n");
  if (sub === null) return 0;
  const specs: OptionSpecs = { ...HSM_OPTIONS, pcrs: { value: true }, output: { short: "o", value: true }, json: {}, help: { short: "h" } };
  const args = parseArgs(rest, specs, `zb hsm ${sub}`, { repeats: "refuse" });
  if (args.flags.has("help")) {
    out(USAGE + "\n");
    return 0;
  }
  onlyThese(args, null, positionals[sub], `zb hsm ${sub}`);
  // unseal's output is the secret; a summary next to it has nothing to say that the blob does not.
  if (sub === "unseal" && args.flags.has("json")) throw new ZbError("USAGE", "cannot unseal: --json applies to probe and seal", { hint: "the blob is JSON: it shows what it was sealed to" });
  const cfg = hsmConfigFrom(args);
  if (sub === "probe") return probe(args, cfg);
  if (sub === "seal") return seal(args, cfg);
  return unseal(args, cfg);
}

/**
 * Seal options for a backend: PCRs and the lock PCR are the TPM's.
 * @throws {ZbError} USAGE when --pcrs or --lock-pcr is given for another
 *   backend (it would be ignored: no PCR binding), or when the lock PCR is
 *   one of the PCRs: the policy would want its current value and zero at
 *   once, so the blob could never be unsealed
 */
export function sealOptions(name: BackendName, cfg: HsmConfig, pcrs: number[], args: ParsedArgs, what: string): SealOptions {
  if (name !== "tpm2") {
    if (args.values.has("pcrs") || args.values.has("lock-pcr")) throw new ZbError("USAGE", `cannot ${what}: --pcrs and --lock-pcr apply to tpm2 only, not ${name}`);
    return {};
  }
  const lock = cfg.tpm2.lockPcr;
  if (lock !== null && pcrs.includes(lock)) {
    throw new ZbError("USAGE", `cannot ${what}: PCR ${lock} is both a bound PCR and the lock PCR, so the sealed key could never be unsealed`, { hint: "leave the lock PCR out of --pcrs (docs/hsm/tpm2.md)" });
  }
  return lock === null ? { pcrs } : { pcrs, lockPcr: lock };
}

async function probe(args: ParsedArgs, cfg: HsmConfig): Promise<number> {
  const only = args.values.get("backend") as BackendName | undefined;
  const names = only ? [only] : [...BACKENDS];
  const results: ProbeResult[] = [];
  for (const name of names) {
    if (!only && name === "pkcs11" && !cfg.pkcs11.module) {
      results.push({ backend: name, present: false, detail: "not configured (pkcs11.module)" });
      continue;
    }
    if (!only && name === "soft" && !cfg.soft.enabled) {
      results.push({ backend: name, present: false, detail: "not enabled (development only)" });
      continue;
    }
    const hsm = hsmFor(name, cfg);
    try {
      results.push(await hsm.probe());
    } finally {
      await hsm.close();
    }
  }
  if (args.flags.has("json")) out(JSON.stringify({ configured: cfg.backend, backends: results }) + "\n");
  else for (const r of results) out(`${r.backend.padEnd(7)} ${r.present ? "present" : "absent "}  ${r.detail}${r.backend === cfg.backend ? "  (configured)" : ""}\n`);
  return only && !results[0]!.present ? 4 : 0;
}

async function seal(args: ParsedArgs, cfg: HsmConfig): Promise<number> {
  const name = cfg.backend;
  if (!name) throw new ZbError("USAGE", "cannot seal: no backend given", { hint: "pass --backend tpm2|pkcs11|zymkey|soft or set backend= in the config" });
  const output = args.values.get("output");
  if (!output) throw new ZbError("USAGE", "cannot seal: -o BLOB is required");
  const pcrsFlag = args.values.get("pcrs");
  const pcrs = pcrsFlag !== undefined ? parsePcrs(pcrsFlag) : cfg.tpm2.pcrs;
  const options = sealOptions(name, cfg, pcrs, args, "seal");
  // Claimed before the secret is read and sealed: an existing file (a key, another blob) is never
  // replaced. From here on every failure (an empty or too long secret, a backend that cannot be
  // opened, the seal itself) removes it again: a failed seal leaves no empty blob behind.
  const file = output === "-" ? null : createNew(output, 0o600, "the sealed blob");
  let secret: Uint8Array | undefined;
  let hsm: Hsm | undefined;
  let blob: Uint8Array;
  try {
    secret = readSecretFd(0);
    hsm = hsmFor(name, cfg);
    blob = encodeBlob({ backend: name, data: await hsm.seal(secret, options) });
  } catch (e) {
    file?.abandon();
    throw e;
  } finally {
    wipe(secret);
    await hsm?.close();
  }
  if (file) file.finish(blob);
  else out(blob, { mustArrive: true });
  if (args.flags.has("json")) {
    // On stdout like every --json, unless stdout carries the blob itself.
    const summary = JSON.stringify({ backend: name, bytes: blob.length, output, pcrs: name === "tpm2" ? pcrs : undefined, lockPcr: options.lockPcr }) + "\n";
    if (file) out(summary);
    else err(summary);
  }
  return 0;
}

/** What a blob records itself: given to unseal, these flags would be ignored, so they are refused. */
const SEALED_IN_BLOB = ["backend", "pkcs11-token", "pkcs11-key-label", "pkcs11-key-id", "pcrs", "lock-pcr"];

async function unseal(args: ParsedArgs, cfg: HsmConfig): Promise<number> {
  const file = args.positional[0];
  if (!file) throw new ZbError("USAGE", "cannot unseal: no BLOB given");
  const ignored = SEALED_IN_BLOB.filter((f) => args.values.has(f));
  if (ignored.length > 0) {
    throw new ZbError("USAGE", `cannot unseal: ${ignored.map((f) => `--${f}`).join(", ")} ${ignored.length > 1 ? "apply" : "applies"} to seal; the blob names its backend, token, key and PCRs`, {
      hint: "the blob is JSON: it shows what it was sealed to",
    });
  }
  const output = args.values.get("output");
  if (!output) throw new ZbError("USAGE", "cannot unseal: -o FILE|- is required");
  // At most a blob's size: a path that is no blob (/dev/zero, a disk) is refused, not read until memory runs out.
  const limit: ReadLimit = { max: MAX_BLOB_BYTES, code: "CRED_INVALID", what: file === "-" ? "the sealed blob on stdin" : file, wait: waitReadable };
  const blob = decodeBlob(file === "-" ? readFdBounded(0, limit) : readFileBounded(file, limit), file);
  const hsm = hsmFor(blob.backend, cfg);
  try {
    const r = await hsm.unseal(blob.data);
    if (r.kind !== "ok") throw unsealError(r, blob.backend);
    try {
      writeSecretOutput(output, r.secret);
    } finally {
      wipe(r.secret);
    }
  } finally {
    await hsm.close();
  }
  return 0;
}
