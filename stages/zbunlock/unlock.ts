/**
 * zbunlock's unlock step: after the boot transition let the boot go on,
 * find this slot's credentials in the initramfs, unseal the keys with the
 * HSM and open the LUKS volumes (lib/unlock/unlock.ts). A failure is handed
 * to the state machine as an `unlock-failed` event (rows U1–U5), which
 * decides between retrying, rolling back, recovery and stopping.
 */
import { join } from "node:path";
import type { ParsedArgs } from "../../lib/cli/args.ts";
import type { Platform } from "../../lib/bootloader/platform.ts";
import { looseSealedBlobs, readCredentials } from "../../lib/luks/credentials.ts";
import { CRED_DIR, ROOT_MAPPING, type LoadedCredentials } from "../../lib/luks/credmeta.ts";
import { CODES, isZbError, ZbError } from "../../lib/errors.ts";
import { CryptsetupCli, isWrongKey } from "../../lib/luks/cryptsetup.ts";
import { dmsetupRemover } from "../../lib/luks/dmsetup.ts";
import { closeLeftovers, leftoverLines, nothingLeft, TEMP_MAPPING_PREFIX, ZB_MAPPINGS } from "../../lib/unlock/leftover.ts";
import { findLuksDevice } from "../../lib/unlock/devices.ts";
import { credentialsFailure, lockableKeys, lockKeys, lockWarning, looseLockable, unlockSlot, type UnlockOutcome } from "../../lib/unlock/unlock.ts";
import type { Sys } from "../../lib/sys/sys.ts";
import type { BackendName, Hsm, SealedData } from "../../lib/hsm/types.ts";
import type { Tpm2Hsm } from "../../lib/hsm/tpm2/index.ts";
import { hsmConfigFrom, hsmFor } from "../zb/hsm.ts";
import { defaultHsmConfig, settingIn } from "../../lib/hsm/config.ts";
import { err, out } from "../output.ts";

export interface UnlockStep {
  /** null: this initramfs carries no credentials (an unencrypted root): nothing to do. */
  outcome: UnlockOutcome | null;
}

/** The zb.* kernel parameters zbunlock and the initramfs scripts read (docs/boot-flow.md). */
const KNOWN_PARAMS = new Set(["zb.slot", "zb.boot", "zb.boot_wait", "zb.hsm_wait", "zb.prestart_wait", "zb.skip"]);

/** Console lines for zb.* words of the command line nobody reads (a typo would otherwise go unnoticed). */
export function unknownParamWarnings(p: Platform): string[] {
  return [...p.params.keys()].filter((k) => k.startsWith("zb.") && !KNOWN_PARAMS.has(k)).map((k) => `zbunlock: warning: ignoring the unknown kernel parameter ${k}= (docs/boot-flow.md lists those zb reads)`);
}

/**
 * A SECONDS kernel parameter (zb.hsm_wait=, zb.boot_wait=): a number up to
 * 600, else null (the default applies; a value that is given but unusable
 * is said on the console: each is read once per run).
 */
export function secondsParam(p: Platform, name: string): number | null {
  const v = p.params.get(name);
  if (v === undefined) return null;
  if (/^\d+(\.\d+)?$/.test(v) && Number(v) <= 600) return Number(v);
  err(`zbunlock: warning: ignoring ${name}=${v.slice(0, 40)}: expected seconds, at most 600; the default applies\n`);
  return null;
}

/**
 * This initramfs's credentials, read at most once per run: null when it
 * carries none (no DIR/zb/credentials). A read error is kept and thrown
 * again on each call, so it surfaces where the unlock step reports it.
 */
export function credentialsOnce(sys: Sys, credRoot: string): () => LoadedCredentials | null {
  let r: { creds: LoadedCredentials | null } | { error: unknown } | undefined;
  return () => {
    if (r === undefined) {
      try {
        r = { creds: sys.stat(join(credRoot, CRED_DIR)) ? readCredentials(sys, credRoot) : null };
      } catch (error) {
        r = { error };
      }
    }
    if ("error" in r) throw r.error;
    return r.creds;
  };
}

/**
 * The backend the credentials were sealed with, or null when there are none
 * or they cannot be read (the unlock step reports why).
 */
export function credentialBackend(creds: () => LoadedCredentials | null): BackendName | null {
  try {
    return creds()?.meta.backend ?? null;
  } catch {
    return null;
  }
}

/**
 * Run the unlock of `slot` (the booted one). Throws only for bugs.
 * Credentials that cannot work are a failure for the state machine like an
 * HSM that refuses: unreadable (CRED_INVALID: U2, IO: U3), another slot's
 * (U2), none although the command line mounts the root zbunlock opens (U2:
 * an initramfs rebuilt without its credentials), or an HSM configuration
 * (/etc/zb/hsm.conf of this initramfs) that cannot be used (U2, exit 8).
 */
export async function unlockStep(args: ParsedArgs, sys: Sys, root: string, p: Platform, credentials: () => LoadedCredentials | null, slot: string, whileWaiting?: () => void): Promise<UnlockStep> {
  let creds: LoadedCredentials | null;
  const where = join(args.values.get("credentials") ?? root, CRED_DIR);
  try {
    creds = credentials();
  } catch (e) {
    if (!(e instanceof ZbError)) throw e;
    return { outcome: credentialsFailure(`the credentials in ${where}: ${e.message}`, e.code === "CRED_INVALID", e.code, e.hint) };
  }
  if (creds === null) {
    if (p.params.get("root") === `/dev/mapper/${ROOT_MAPPING}`) {
      return { outcome: credentialsFailure(`the command line mounts root=/dev/mapper/${ROOT_MAPPING}, but there are no credentials in ${where} (an initramfs rebuilt without them?)`, true) };
    }
    if (!args.flags.has("json")) out(`zbunlock: no credentials in ${where}: nothing to unlock\n`);
    return { outcome: null };
  }
  if (creds.meta.slot !== slot) {
    return { outcome: credentialsFailure(`the credentials in ${where} are for slot ${creds.meta.slot}, this is slot ${slot}`, true) };
  }
  const confFile = join(root, "etc/zb/hsm.conf");
  let cfg: ReturnType<typeof hsmConfigFrom>;
  let hsm: Hsm;
  try {
    cfg = hsmConfigFrom(args, confFile);
    hsm = hsmFor(creds.meta.backend, cfg, pinTerminal(root));
  } catch (e) {
    // The HSM configuration ships in this slot's initramfs with its credentials: a file that
    // cannot be used is this slot's defect, for good, like credentials of another slot (U2:
    // roll back), not a reason to stop at a shell while the other slot could boot.
    // USAGE (a flag given by hand) stays a thrown error: the slot is not at fault.
    if (!(e instanceof ZbError) || e.code !== "CONFIG") throw e;
    return { outcome: credentialsFailure(`the HSM configuration ${confFile}: ${e.message}`, true, e.code, e.hint) };
  }
  const wait = secondsParam(p, "zb.hsm_wait") ?? cfg.waitSeconds;
  const crypt = new CryptsetupCli();
  try {
    const outcome = await unlockSlot(creds, {
      hsm,
      luks: crypt,
      findDevice: (uuid) => findLuksDevice(sys, root, uuid),
      wrongKey: isWrongKey,
      deadline: Date.now() + wait * 1000,
      now: Date.now,
      sleep: (ms) => Bun.sleep(ms),
      log: (line) => err(`zbunlock: ${line}\n`),
      ...(whileWaiting ? { whileWaiting } : {}),
    });
    return { outcome };
  } finally {
    await hsm.close();
  }
}

/**
 * After a boot that ends without the unlock (zbunlock fails or needs a
 * reboot it did not make), before initramfs-tools' panic may leave a shell:
 * lock this slot's keys anyway (tpm2: extend the lock PCR) so the shell
 * cannot unseal them, then stop any cryptsetup still opening zb-root or
 * zb-data (one a killed zbunlock left behind) and close what is open, with
 * cryptsetup's leftover keyslot mappings (lib/unlock/leftover.ts). Never
 * throws; the console says what happened.
 * @returns 0 when the shell may come; LUKS_FAILED (22) when a volume is (or
 *   may soon be) open; HSM_FAILED (21) when the HSM is there but the keys
 *   could not be locked: the caller must not let a shell come
 */
export async function lockAfterFailureStep(args: ParsedArgs, sys: Sys, root: string, credentials: () => LoadedCredentials | null): Promise<number> {
  const log = (line: string) => err(`zbunlock: ${line}\n`);
  const locked = await lockOnly(args, sys, root, credentials, log);
  const crypt = new CryptsetupCli({ timeoutMs: CLOSE_TIMEOUT_MS });
  const report = await closeLeftovers({
    sys,
    procRoot: join(root, "proc"),
    root,
    names: ZB_MAPPINGS,
    tempPrefix: TEMP_MAPPING_PREFIX,
    selfPid: process.pid,
    kill: (pid) => process.kill(pid, "SIGKILL"),
    close: (name) => crypt.close(name),
    dmRemove: dmsetupRemover("dmsetup", { timeoutMs: CLOSE_TIMEOUT_MS }),
    now: () => performance.now(),
    sleep: (ms) => Bun.sleep(ms),
  });
  for (const line of leftoverLines(report)) log(line);
  if (!nothingLeft(report)) return CODES.LUKS_FAILED;
  return locked ? 0 : CODES.HSM_FAILED;
}

/**
 * A close (cryptsetup or dmsetup) that takes longer is stuck (a device-mapper ioctl that does not
 * return): it is killed, and after a short bound (lib/luks/tool.ts) its volume counts as open.
 */
const CLOSE_TIMEOUT_MS = 30_000;

/**
 * The lock of {@link lockAfterFailureStep}. True when no key stays
 * unsealable through an HSM that answers: locked, nothing names a lock PCR
 * (a backend without one), the HSM is absent, or the credentials cannot be
 * read (then nothing here knows a lock PCR, and their sealed keys cannot be
 * used either). False when a lock failed while the HSM was there.
 *
 * An HSM configuration that cannot be used (a typo in hsm.conf, a
 * tpm2.device that is no TPM) is not a failure by itself: the unlock fails
 * on it at every boot, and where no other slot can boot a failure here
 * would turn the shell a person needs into an endless reboot loop. A shell
 * could still unseal through the kernel's TPM device, so the lock is made
 * there instead ({@link lockAtDefaultTpm}).
 */
async function lockOnly(args: ParsedArgs, sys: Sys, root: string, credentials: () => LoadedCredentials | null, log: (line: string) => void): Promise<boolean> {
  let groups: Map<BackendName, SealedData[]>;
  try {
    const creds = credentials();
    if (creds === null) return true; // no credentials: nothing to lock
    groups = new Map([[creds.meta.backend, lockableKeys(creds)]]);
  } catch (e) {
    // The set is refused (a meta.json this zb does not know, one damaged blob), but a blob
    // in it may still unseal: each is read on its own, and those naming a lock PCR are locked.
    groups = looseLockable(looseSealedBlobs(sys, args.values.get("credentials") ?? root));
    const why = (e as Error).message ?? String(e);
    log(groups.size > 0 ? `${why}; locking each sealed key that can be read on its own` : `${why}; no sealed key in them names a lock, nothing to lock`);
  }
  let ok = true;
  for (const [backend, keys] of groups) if (keys.length > 0 && !(await lockBackend(args, sys, root, backend, keys, log))) ok = false;
  return ok;
}

/** Lock `keys` of `backend` through the configured HSM, or at the default TPM when the configuration cannot be used. @returns false when a lock failed while the HSM answered */
async function lockBackend(args: ParsedArgs, sys: Sys, root: string, backend: BackendName, keys: SealedData[], log: (line: string) => void): Promise<boolean> {
  let failed: unknown[];
  try {
    const cfg = hsmConfigFrom(args, join(root, "etc/zb/hsm.conf"));
    failed = await lockWith(hsmFor(backend, cfg, pinTerminal(root)), keys, log);
  } catch (e) {
    log(lockWarning(e));
    failed = [e];
  }
  if (failed.length === 0) return true;
  if (!failed.every(unusableConfig)) return false;
  return lockAtDefaultTpm(args, sys, root, backend, keys, log);
}

/** lockKeys with `hsm`, closed afterwards. @returns the failures that leave a key unsealable */
async function lockWith(hsm: Hsm, keys: SealedData[], log: (line: string) => void): Promise<unknown[]> {
  try {
    return await lockKeys(keys, { hsm, log });
  } finally {
    await hsm.close();
  }
}

/** A configuration (file or flag) that cannot be used, rather than an HSM that failed. */
function unusableConfig(e: unknown): boolean {
  return isZbError(e, "CONFIG", "USAGE");
}

/**
 * The kernel's TPM devices, as tpm2 finds one without configuration: the
 * resource manager first (tpm2/transport.ts DEFAULT_DEVICE), then the raw
 * device of a kernel without one.
 */
const DEFAULT_TPM_NODES = ["dev/tpmrm0", "dev/tpm0"];

/**
 * Where a tpm2 key may be locked when the HSM configuration cannot be used:
 * the device the configuration names, when that can still be read (`--tpm`,
 * or the file's own `tpm2.device` line: a typo elsewhere rejects the whole
 * file, not that line), then each of {@link DEFAULT_TPM_NODES} under `root`
 * that exists.
 */
function lockCandidates(args: ParsedArgs, sys: Sys, root: string): string[] {
  const named: string[] = [];
  const flag = args.values.get("tpm");
  if (flag !== undefined) named.push(flag);
  else {
    try {
      const device = settingIn(sys.readText(args.values.get("config") ?? join(root, "etc/zb/hsm.conf")), "tpm2.device");
      if (device) named.push(device);
    } catch {
      // no file, or unreadable: the kernel's devices only
    }
  }
  const present = (path: string): boolean => {
    try {
      return sys.stat(path) !== null;
    } catch {
      return true; // cannot tell: try it
    }
  };
  const kernel = DEFAULT_TPM_NODES.map((n) => join(root, n)).filter(present);
  return [...new Set([...named, ...kernel])];
}

/**
 * Lock `keys` (tpm2, each with its lock PCR) on whichever of
 * {@link lockCandidates} holds the storage key they were sealed to (the
 * pinned name, Tpm2Hsm.lockIfPinned), with the defaults of every other
 * setting. A candidate that is no TPM or absent is passed over; a TPM that
 * holds another storage key cannot unseal the keys and is left alone.
 * True when every key was locked, or when no candidate holds its storage
 * key (no TPM zb can find could unseal it: the limit documented in
 * docs/boot-flow.md, "Failed boots and the shell"); false when the TPM that
 * holds it fails the lock, also when it is busy (another process holds
 * /dev/tpm0: the shell could unseal once it is free).
 */
async function lockAtDefaultTpm(args: ParsedArgs, sys: Sys, root: string, backend: BackendName, keys: SealedData[], log: (line: string) => void): Promise<boolean> {
  if (backend !== "tpm2") return false; // only tpm2 has a lock; another backend's keys never reach here
  const candidates = lockCandidates(args, sys, root);
  if (candidates.length === 0) {
    log(`the HSM configuration cannot be used, and there is no ${DEFAULT_TPM_NODES.map((n) => join(root, n)).join(" or ")}: no TPM to lock the keys with`);
    return true;
  }
  let open = keys;
  for (const device of candidates) {
    if (open.length === 0) break;
    log(`the HSM configuration cannot be used: locking the sealed keys through ${device} instead`);
    const left = await lockAtDevice(device, open, root, log);
    if (left === null) return false;
    open = left;
  }
  if (open.length > 0) log(`no TPM to lock the keys with: none of ${candidates.join(", ")} holds the storage key they were sealed to, so none can unseal them`);
  return true;
}

/** The keys of `keys` that `device` does not hold (not locked there), or null when it holds one and fails to lock it. */
async function lockAtDevice(device: string, keys: SealedData[], root: string, log: (line: string) => void): Promise<SealedData[] | null> {
  const cfg = defaultHsmConfig();
  cfg.tpm2.device = device;
  let hsm: Hsm;
  try {
    hsm = hsmFor("tpm2", cfg, pinTerminal(root));
  } catch (e) {
    log(lockWarning(e));
    return unusableConfig(e) ? keys : null;
  }
  const left: SealedData[] = [];
  try {
    for (const key of keys) {
      const outcome = await (hsm as Tpm2Hsm).lockIfPinned(key).catch((e: unknown) => e);
      if (outcome === "locked") log(`locked: PCR ${key.lockPcr} extended through ${device}, the keys cannot be unsealed again until reboot`);
      else if (outcome === "other-tpm") {
        log(`${device} is not the TPM the keys were sealed to (another storage key): nothing to lock there`);
        left.push(key);
      } else if (outcome !== "no-lock") {
        log(lockWarning(outcome));
        // No TPM there (absent, a path that is no TPM): another candidate may be it. Data no TPM can use: nothing to lock.
        if (isZbError(outcome, "HSM_ABSENT", "CONFIG", "USAGE")) left.push(key);
        else if (!isZbError(outcome, "CRED_INVALID")) return null;
      }
    }
    return left;
  } finally {
    await hsm.close();
  }
}

/**
 * Where to ask for a PIN, in order: the controlling terminal, then the
 * console. In an initramfs /dev/tty exists (devtmpfs makes it) but /init has
 * no controlling terminal, so opening it fails (ENXIO) and the console is used.
 */
function pinTerminal(root: string): string[] {
  return [join(root, "dev/tty"), join(root, "dev/console")];
}
