/**
 * Slot enrolment: give a slot's root volume a fresh random key, seal it with
 * the HSM, carry the shared data volume's key over (or create it), and
 * return the credentials to append to the slot's initramfs (BRIEF §4,
 * docs/credentials.md "Lifecycle").
 *
 * Semantics:
 * - root `{ device, format: true }`: a fresh 256-bit key and a fresh LUKS2
 *   format. This is the slot install: the root is rewritten anyway, and a
 *   key never outlives the install it was made for, so one slot's
 *   credentials cannot open the other slot.
 * - root `{ device, format: false, key }`: the caller formatted the device
 *   itself (e.g. zboot formats, writes the image, then enrols once the image
 *   is verified); `key` must open it, and is sealed as is.
 * - data `{ device, format: true }`: first provisioning — a fresh key, format.
 * - data `{ device, key }`: the data volume already exists; `key` is its
 *   current key, which the caller unsealed from the running slot's
 *   credentials. It is sealed again for the new slot; the volume is untouched.
 * - `openRootAs`: once everything is sealed and checked, the new root is
 *   mapped at /dev/mapper/NAME with its key, so the image can be written into
 *   it; the key itself never leaves this function. When that open fails, the
 *   credentials are not returned: the root was freshly formatted, so nothing
 *   is lost, and the enrolment is simply run again.
 *
 * Order: every key that must already work is tested first, then every key is
 * sealed, and only then is anything formatted — so an absent HSM or a wrong
 * data key leaves the disks as they were. Each format is followed by a
 * testKey of the key just used. Keys made here are wiped before returning
 * (also on errors); keys passed in belong to the caller, who wipes them.
 *
 * Root and data must be two devices, whatever the paths say: a symbolic link,
 * a hard link or a second device node for the data volume, given as the root,
 * would have the root's luksFormat destroy the data, and so would the whole
 * disk holding the other's partition, a loop device on the other's image
 * file, or a device-mapper or md device stacked on the other. Paths are
 * compared by the storage they name (lib/luks/overlap.ts) before anything is
 * sealed or formatted.
 *
 * A volume that is kept (format false) must be LUKS2, checked from its header
 * before anything else: zb reads keyslots from cryptsetup's LUKS2 JSON
 * metadata (CryptsetupCli.keyslots, hence removeKey) and zbunlock falls back
 * to the LUKS2 secondary header. A LUKS1 volume would be enrolled, then
 * refused by the first key rotation (CryptsetupCli.addKey refuses LUKS1, same
 * error and hint: lib/luks/checks.ts refuseLuks1).
 */
import { statSync } from "node:fs";
import type { Slot } from "../bootstate/state.ts";
import { ioError, ZbError } from "../errors.ts";
import { encodeBlob } from "../hsm/blob.ts";
import type { Hsm, SealOptions } from "../hsm/types.ts";
import { randomSecret, wipe } from "../secret.ts";
import { HostSys, type Sys } from "../sys/sys.ts";
import { checkCredentials, CRED_FORMAT, DATA_MAPPING, ROOT_MAPPING, type CredentialMeta, type Credentials } from "./credmeta.ts";
import { checkName, refuseLuks1 } from "./checks.ts";
import type { Cryptsetup, FormatOptions } from "./cryptsetup.ts";
import { loopStatus, type LoopStatus } from "../sys/loopdev.ts";
import { deviceExtents, sharedExtents, type DeviceLookup, type DeviceStat } from "./overlap.ts";

/** EnrollOptions.statDevice returns it; it lives with the storage comparison now. */
export type { DeviceStat } from "./overlap.ts";

/** LUKS key length: 256 random bits (BRIEF §4). */
export const KEY_BYTES = 32;

export type RootTarget = { device: string; format: true } | { device: string; format: false; key: Uint8Array };
export type DataTarget = { device: string; format: true } | { device: string; format?: false; key: Uint8Array };

export interface EnrollOptions {
  hsm: Hsm;
  crypt: Cryptsetup;
  slot: Slot;
  root: RootTarget;
  data?: DataTarget;
  sealOptions?: SealOptions;
  /** luksFormat options (label, cipher, sector size); PBKDF2-1000 always. */
  formatOptions?: Omit<FormatOptions, "pbkdf">;
  /** For `created`; default the current time. */
  now?: () => Date;
  /** Map the enrolled root at /dev/mapper/`openRootAs` before returning (the image is written into it). */
  openRootAs?: string;
  /**
   * stat(2) of a device path, following symbolic links; null when it does not
   * exist. Default node:fs statSync: Sys.stat reports no st_rdev, which tells
   * two nodes of one block device apart from two devices.
   */
  statDevice?: (path: string) => DeviceStat | null;
  /** Reads the headers of kept volumes and sysfs; default the host. */
  sys?: Sys;
  /** Where sysfs is mounted (partitions, loop and stacked devices are looked up there); default "/sys". */
  sysfs?: string;
  /**
   * Which file a loop device /dev/NAME is bound to (LOOP_GET_STATUS64); null when it cannot be asked.
   * Default: the host's loop devices, but only with the host's sysfs: they describe no other.
   */
  loopStatus?: (node: string) => LoopStatus | null;
}

/**
 * Enrol a slot: keys, LUKS formats, sealing, metadata.
 * @returns credentials for packCredentials (blobs already checked)
 * @throws {ZbError} USAGE for a bad slot or root and data sharing storage (also through a link, a
 *   second device node, a disk and its partition, a loop device and its file, a device-mapper or md
 *   device and a device under it); IO when a device or sysfs cannot be read or sysfs shows a cycle;
 *   LUKS_FAILED when a kept volume is LUKS1, cryptsetup fails or a given key does not open its
 *   device; HSM_ABSENT / HSM_FAILED from sealing
 * @example const creds = await enrollSlot({ hsm, crypt: new CryptsetupCli(), slot: "b", root: { device: "/dev/mmcblk0p3", format: true }, data: { device: "/dev/mmcblk0p4", key } })
 */
export async function enrollSlot(opts: EnrollOptions): Promise<Credentials> {
  checkTargets(opts);
  const made: Uint8Array[] = [];
  try {
    const rootKey = opts.root.format ? keep(made, randomSecret(KEY_BYTES)) : opts.root.key;
    const dataKey = opts.data ? (opts.data.format ? keep(made, randomSecret(KEY_BYTES)) : opts.data.key) : undefined;

    if (!opts.root.format) await mustOpen(opts.crypt, opts.root.device, rootKey, "root");
    if (opts.data && !opts.data.format) await mustOpen(opts.crypt, opts.data.device, dataKey!, "data");

    const root = await seal(opts, rootKey);
    const data = dataKey ? await seal(opts, dataKey) : undefined;

    if (opts.root.format) await formatAndCheck(opts, opts.root.device, rootKey, "root");
    if (opts.data?.format) await formatAndCheck(opts, opts.data.device, dataKey!, "data");

    const meta: CredentialMeta = {
      format: CRED_FORMAT,
      slot: opts.slot,
      backend: opts.hsm.name,
      created: (opts.now?.() ?? new Date()).toISOString(),
      root: { uuid: await opts.crypt.uuid(opts.root.device), name: ROOT_MAPPING },
    };
    if (opts.data) meta.data = { uuid: await opts.crypt.uuid(opts.data.device), name: DATA_MAPPING };
    const creds: Credentials = { meta, root, ...(data ? { data } : {}) };
    checkCredentials(creds);
    // open() leaves the key to its caller (Cryptsetup.open): a key made here is wiped
    // by the finally below whether open returns or throws, a key passed in is the caller's.
    if (opts.openRootAs !== undefined) await opts.crypt.open(opts.root.device, opts.openRootAs, rootKey);
    return creds;
  } finally {
    wipe(...made);
  }
}

function keep(made: Uint8Array[], key: Uint8Array): Uint8Array {
  made.push(key);
  return key;
}

function checkTargets(opts: EnrollOptions): void {
  if (opts.slot !== "a" && opts.slot !== "b") throw new ZbError("USAGE", `cannot enrol slot ${JSON.stringify(opts.slot)}: expected a or b`);
  if (opts.openRootAs !== undefined) checkName(opts.openRootAs);
  const look: DeviceLookup = {
    stat: opts.statDevice ?? hostStat,
    sys: opts.sys ?? new HostSys(),
    sysfs: opts.sysfs ?? "/sys",
    loopStatus: opts.loopStatus ?? (opts.sysfs === undefined ? loopStatus : undefined),
  };
  if (opts.data) {
    const [root, data] = [opts.root.device, opts.data.device];
    const shared = sharedExtents(deviceExtents(root, look), deviceExtents(data, look));
    if (shared) {
      const via = [...new Set([...shared[0].via, ...shared[1].via])];
      const same =
        root === data ? `the same device ${root}`
        : via.length === 0 ? `the same device (${root} and ${data} name one device)`
        : `the same device (${root} and ${data} overlap: ${via.join("; ")})`;
      throw new ZbError("USAGE", `cannot enrol slot ${opts.slot}: root and data are ${same}`, { hint: "give the slot's own root partition, not the shared data volume" });
    }
  }
  for (const [t, role] of [[opts.root, "root"], [opts.data, "data"]] as const) {
    if (!t || t.format) continue;
    if (t.key.length === 0) throw new ZbError("USAGE", `cannot enrol slot ${opts.slot}: the key given for ${t.device} is empty`);
    mustBeLuks2(look, t.device, role);
  }
}

/**
 * A kept volume must be LUKS2 (module comment): refused from its header,
 * before anything is sealed or formatted, rather than by the first key rotation.
 * A missing device is left to testKey, whose error names it; a header that is
 * not LUKS at all too (the given key cannot open it).
 * @throws {ZbError} LUKS_FAILED for a LUKS1 volume; IO when it cannot be read
 */
function mustBeLuks2(look: DeviceLookup, device: string, role: string): void {
  if (look.stat(device) === null) return;
  refuseLuks1(look.sys, device, `enrol the ${role} volume ${device}`);
}

function hostStat(path: string): DeviceStat | null {
  try {
    return statSync(path);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ENOENT" || code === "ENOTDIR") return null; // cryptsetup says it is missing; two missing paths still compare by name
    throw ioError(`stat ${path}`, e);
  }
}

/** A key the caller vouches for must open its device before anything is sealed or formatted. */
async function mustOpen(crypt: Cryptsetup, device: string, key: Uint8Array, role: string): Promise<void> {
  if (await crypt.testKey(device, key)) return;
  const msg = `cannot enrol the ${role} volume ${device}: the given key does not open it`;
  if (role !== "data") throw new ZbError("LUKS_FAILED", msg);
  throw new ZbError("LUKS_FAILED", msg, { hint: "the data key comes from the running slot's credentials: unseal them on this device" });
}

async function seal(opts: EnrollOptions, key: Uint8Array): Promise<Uint8Array> {
  const data = await opts.hsm.seal(key, opts.sealOptions);
  return encodeBlob({ backend: opts.hsm.name, data });
}

async function formatAndCheck(opts: EnrollOptions, device: string, key: Uint8Array, role: string): Promise<void> {
  await opts.crypt.format(device, key, { ...opts.formatOptions, pbkdf: "pbkdf2-1000" });
  if (!(await opts.crypt.testKey(device, key))) {
    throw new ZbError("LUKS_FAILED", `cannot enrol the ${role} volume ${device}: the new key does not open it after formatting`);
  }
}
