/**
 * The unlock half of zbunlock: unseal each volume key of a slot with its
 * HSM and open the LUKS device with it (BRIEF §3 step 3, §4).
 *
 * Order and waiting: the HSM and the block devices may appear after the
 * initramfs starts (module probe, SPI/I²C bring-up, a slow SD card), so
 * every wait is bounded by one deadline shared by the whole unlock. Expected
 * failures are returned, not thrown, classified for the state machine
 * (lib/bootstate/rows-boot.ts rows U1–U5): `permanent` when retrying this slot
 * cannot help (the HSM is another one or refuses by policy, the key does not
 * open the header, the credentials are malformed).
 *
 * Secrets: each unsealed key lives in one Uint8Array from unseal() to
 * cryptsetup's stdin and is wiped right after, also on errors.
 */
import { isZbError, ZbError } from "../errors.ts";
import { decodeBlob, unsealError, type SealedBlob } from "../hsm/blob.ts";
import type { BackendName, Hsm, SealedData, UnsealFailure, UnsealResult } from "../hsm/types.ts";
import type { PreparedOpen } from "../luks/cryptsetup.ts";
import { wipe } from "../secret.ts";

/** The parts of a slot's credentials unlock needs (lib/luks/credmeta.ts). */
export interface SlotCredentials {
  meta: { backend: BackendName; root: Volume; data?: Volume };
  root: Uint8Array;
  data?: Uint8Array;
}

export interface Volume {
  uuid: string;
  name: string;
}

/** cryptsetup, as far as unlock needs it (lib/luks/cryptsetup.ts). */
export interface LuksOpener {
  /** @throws {ZbError} LUKS_FAILED */
  open(device: string, name: string, key: Uint8Array): Promise<void>;
  /**
   * Optional: start the open before the key is unsealed, so that the opener
   * starts up meanwhile. @throws {ZbError} LUKS_FAILED
   */
  prepareOpen?(device: string, name: string): PreparedOpen;
  close(name: string): Promise<void>;
}

export interface UnlockEnv {
  hsm: Hsm;
  luks: LuksOpener;
  /** The block device holding the LUKS header with this UUID, or null (not yet). */
  findDevice(uuid: string): string | null;
  /** True when a LUKS_FAILED error means "this key does not open this header". */
  wrongKey(e: ZbError): boolean;
  /** Epoch ms after which nothing is waited for any more. */
  deadline: number;
  now(): number;
  sleep(ms: number): Promise<void>;
  /** Console lines (never secret). */
  log(line: string): void;
  /**
   * Optional: called whenever the unlock is about to wait a while with this
   * thread idle: a key has been handed to cryptsetup, which then works for
   * 0.23–0.37 s under QEMU, or the HSM is not there yet (at each poll).
   * zbunlock starts unmounting the boot partition here (a process spawn,
   * ~0.03 s of this thread under TCG), so that it is not left mounted
   * through a long wait for the HSM. May be called more than once; must not throw.
   */
  whileWaiting?(): void;
}

export type FailureKind = UnsealFailure["kind"] | "device" | "luks" | "credentials";

export type UnlockOutcome =
  | { ok: true; opened: { name: string; device: string }[] }
  | { ok: false; kind: FailureKind; permanent: boolean; why: string; error: ZbError };

const POLL_MS = 100;

/** Unlock root (and data) of a slot. Never throws for expected failures. */
export async function unlockSlot(creds: SlotCredentials, env: UnlockEnv): Promise<UnlockOutcome> {
  const opened: { name: string; device: string }[] = [];
  const volumes: [Volume, Uint8Array][] = [[creds.meta.root, creds.root]];
  if (creds.meta.data && creds.data) volumes.push([creds.meta.data, creds.data]);
  const locks: SealedData[] = [];
  let done = false;
  try {
    for (const [vol, blob] of volumes) {
      const r = await unlockVolume(creds.meta.backend, vol, blob, env);
      if (!r.ok) return r;
      opened.push({ name: vol.name, device: r.device });
      locks.push(r.data);
    }
    done = true;
  } finally {
    // Whatever ends the unlock early (a failure, or an error thrown by a backend), nothing stays
    // open: the boot stops or reboots, and a shell left by initramfs-tools' panic must not find
    // the root decrypted.
    if (!done) await closeAll(opened, env);
  }
  await lockKeys(locks, env);
  return { ok: true, opened };
}

/** Close the volumes opened so far, newest first; a close that fails is logged, not thrown (the failure in hand is what gets reported). */
async function closeAll(opened: { name: string; device: string }[], env: Pick<UnlockEnv, "luks" | "log">): Promise<void> {
  for (const o of [...opened].reverse()) {
    try {
      await env.luks.close(o.name);
    } catch (e) {
      env.log(`WARNING: cannot close ${o.name} after the failed unlock; it stays open: ${(e as Error).message}`);
    }
  }
}

/**
 * Lock sealed keys (tpm2: extend their lock PCR, once per PCR) so nothing
 * can unseal them again this boot: after every volume is open, and after a
 * boot that did not unlock (keys from {@link lockableKeys}), since the shell
 * initramfs-tools' panic may leave must not unseal them either. Never throws:
 * a failed lock is said on the console and returned, for the caller to
 * weigh (after a good unlock the root is open anyway; before a shell it
 * must not come, docs/boot-flow.md "Failed boots and the shell").
 * @returns the failures that leave a key unsealable: every failed lock but
 *   HSM_ABSENT (without the HSM nothing unseals) and CRED_INVALID (data the
 *   HSM cannot use cannot be unsealed either)
 * @example if ((await lockKeys(keys, { hsm, log })).length > 0) return CODES.HSM_FAILED;
 */
export async function lockKeys(blobs: SealedData[], env: Pick<UnlockEnv, "hsm" | "log">): Promise<unknown[]> {
  const failed: unknown[] = [];
  if (!env.hsm.lock) return failed;
  const seen = new Set<string>();
  for (const data of blobs) {
    const key = JSON.stringify(data.lockPcr ?? null);
    if (seen.has(key)) continue; // one extend per lock PCR
    seen.add(key);
    try {
      if (await env.hsm.lock(data)) env.log(`locked: PCR ${data.lockPcr} extended, the keys cannot be unsealed again until reboot`);
    } catch (e) {
      env.log(lockWarning(e));
      if (!isZbError(e, "HSM_ABSENT", "CRED_INVALID")) failed.push(e);
    }
  }
  return failed;
}

/** The console line for a lock that failed. */
export function lockWarning(e: unknown): string {
  return `WARNING: cannot lock the sealed keys (${(e as Error).message ?? String(e)}); they stay unsealable until reboot`;
}

/**
 * The keys of looseSealedBlobs (lib/luks/credentials.ts) that name a lock PCR, grouped by the
 * backend each blob names (the credentials' own backend is unknown when
 * they cannot be read). Pure.
 */
export function looseLockable(blobs: SealedBlob[]): Map<BackendName, SealedData[]> {
  const by = new Map<BackendName, SealedData[]>();
  for (const b of blobs) if (b.data.lockPcr !== undefined) by.set(b.backend, [...(by.get(b.backend) ?? []), b.data]);
  return by;
}

/**
 * The sealed keys of a slot that name a lock PCR (tpm2 with `lockPcr`), for
 * locking them after a boot that did not unlock. Blobs that do not decode or
 * name another backend than the credentials are skipped. Pure.
 */
export function lockableKeys(creds: SlotCredentials): SealedData[] {
  const keys: SealedData[] = [];
  for (const bytes of [creds.root, creds.data]) {
    if (!bytes) continue;
    try {
      const blob = decodeBlob(bytes, "a sealed key");
      if (blob.backend === creds.meta.backend && blob.data.lockPcr !== undefined) keys.push(blob.data);
    } catch {
      // Malformed: nothing can unseal it either.
    }
  }
  return keys;
}

async function unlockVolume(backend: BackendName, vol: Volume, blobBytes: Uint8Array, env: UnlockEnv): Promise<{ ok: true; device: string; data: SealedData } | Extract<UnlockOutcome, { ok: false }>> {
  let blob;
  try {
    blob = decodeBlob(blobBytes, `the sealed key of ${vol.name}`);
  } catch (e) {
    return fail("credentials", true, (e as Error).message, "CRED_INVALID");
  }
  if (blob.backend !== backend || blob.backend !== env.hsm.name) {
    return fail("credentials", true, `the sealed key of ${vol.name} is for ${blob.backend}, the credentials name ${backend}, the HSM is ${env.hsm.name}`, "CRED_INVALID");
  }
  const found = await waitForDevice(vol, env);
  // Two devices still carried the UUID at the deadline: not this slot's fault, and it may be undone (the copy removed): U3.
  if (found instanceof ZbError) return { ok: false, kind: "device", permanent: false, why: found.message, error: found };
  const device = found;
  if (device === null) return fail("device", false, `no block device has the LUKS UUID ${vol.uuid} of ${vol.name}`, "LUKS_FAILED");
  let secret: Uint8Array | undefined;
  // cryptsetup starts (loads its libraries, reads the header) while the key
  // is unsealed: the boot transition is durable by now, so nothing here runs
  // before the boot is counted. It is cancelled as soon as the unseal does
  // not answer at once (the HSM is not there yet: no point keeping it) or
  // fails. Its timeout counts from the key, not from here: an unseal may wait
  // for a typed PIN for minutes (lib/luks/cryptsetup.ts, prepareOpen).
  let prepared: PreparedOpen | null = null;
  try {
    prepared = env.luks.prepareOpen?.(device, vol.name) ?? null;
    // No probe first: the unseal itself says whether the HSM is there
    // ("absent"), and a probe costs TPM commands on every boot (GetCapability
    // and ReadPublic, ~0.15 s under QEMU; `zb hsm probe` shows the details).
    for (let logged = false; ; ) {
      const r = await unsealOnce(env.hsm, blob.data);
      if (r.kind === "ok") {
        secret = r.secret;
        break;
      }
      await prepared?.cancel();
      prepared = null;
      if (r.kind === "absent") {
        if (env.now() >= env.deadline) return fail("absent", false, `the ${env.hsm.name} HSM did not appear before the deadline: ${r.why}`, "HSM_ABSENT");
        if (!logged) env.log(`waiting for the ${env.hsm.name} HSM: ${r.why}`);
        logged = true;
        env.whileWaiting?.();
        await env.sleep(POLL_MS);
        continue;
      }
      // A backend's own typed error (a PIN file with a loose mode: CONFIG) keeps its code and hint.
      const e = "error" in r ? r.error : unsealError(r, env.hsm.name);
      return { ok: false, kind: r.kind, permanent: r.kind === "no-match" || r.kind === "denied", why: `${vol.name}: ${r.why}`, error: e };
    }
    const given = prepared;
    prepared = null; // given its key: from here on it ends by itself
    // The key is written to cryptsetup's stdin (and the pipe closed) before open() first waits.
    const opening = given ? given.open(secret) : env.luks.open(device, vol.name, secret);
    env.whileWaiting?.();
    await opening;
    env.log(`unlocked ${vol.name} (${device}) with the ${env.hsm.name} HSM`);
    return { ok: true, device, data: blob.data };
  } catch (e) {
    if (!isZbError(e)) throw e;
    return { ok: false, kind: "luks", permanent: e.code === "LUKS_FAILED" && env.wrongKey(e), why: e.message, error: e };
  } finally {
    wipe(secret);
    await prepared?.cancel();
  }
}

/**
 * One unseal; a backend that throws instead of answering (the soft backend
 * when it is not enabled, a pkcs11 PIN file with a loose mode: CONFIG) is a
 * failed unseal, never a LUKS failure, that keeps the thrown error: its code
 * is the exit status (docs/exit-codes.md).
 */
async function unsealOnce(hsm: Hsm, data: SealedData): Promise<UnsealResult | (UnsealFailure & { error: ZbError })> {
  try {
    return await hsm.unseal(data);
  } catch (e) {
    if (!isZbError(e)) throw e;
    return { kind: e.code === "HSM_ABSENT" ? "absent" : "failed", why: e.message, error: e };
  }
}

/**
 * Poll for the volume's device until the deadline. Two devices with its UUID
 * count as not there yet (RAID members seen before their array is assembled
 * have no holders yet); still two at the deadline, that error is returned.
 */
async function waitForDevice(vol: Volume, env: UnlockEnv): Promise<string | null | ZbError> {
  let logged = false;
  for (;;) {
    let dev: string | null | ZbError;
    try {
      dev = env.findDevice(vol.uuid);
    } catch (e) {
      if (!(e instanceof ZbError)) throw e;
      dev = e;
    }
    if (typeof dev === "string" || env.now() >= env.deadline) return dev;
    if (!logged) env.log(`waiting for the device of ${vol.name} (LUKS UUID ${vol.uuid})`);
    logged = true;
    await env.sleep(POLL_MS);
  }
}

/**
 * An unlock that cannot start because of the credentials themselves (missing
 * where the root needs them, unreadable, or another slot's): `permanent`
 * makes it row U2 (this slot cannot unlock, fail over), else U3.
 */
export function credentialsFailure(why: string, permanent: boolean, code: ZbError["code"] = "CRED_INVALID", hint?: string): Extract<UnlockOutcome, { ok: false }> {
  const f = fail("credentials", permanent, why, code);
  return hint === undefined ? f : { ...f, error: new ZbError(code, f.error.message, { hint }) };
}

function fail(kind: FailureKind, permanent: boolean, why: string, code: ZbError["code"]): Extract<UnlockOutcome, { ok: false }> {
  return { ok: false, kind, permanent, why, error: new ZbError(code, `cannot unlock: ${why}`) };
}
