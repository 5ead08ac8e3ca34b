/**
 * `zb cred create|show`: a slot's credentials — its root (and data) LUKS
 * keys sealed by the HSM, packed as a newc cpio archive for the slot's
 * initramfs (docs/credentials.md). `create` is the enrolment a slot install
 * performs: a fresh random root key, luksFormat, seal, pack.
 */
import { realpathSync, statSync } from "node:fs";
import { onlyThese, parseArgs, type ParsedArgs } from "../../lib/cli/args.ts";
import { ZbError, ioError } from "../../lib/errors.ts";
import { unsealError } from "../../lib/hsm/blob.ts";
import { parsePcrs, type HsmConfig } from "../../lib/hsm/config.ts";
import type { Hsm } from "../../lib/hsm/types.ts";
import { appendCredentials, checkAppendable } from "../../lib/luks/credappend.ts";
import { credentialTail, findAppendedCredentials, packCredentials, readCredentials } from "../../lib/luks/credentials.ts";
import type { LoadedCredentials } from "../../lib/luks/credmeta.ts";
import { CryptsetupCli } from "../../lib/luks/cryptsetup.ts";
import { enrollSlot, type DataTarget } from "../../lib/luks/enroll.ts";
import { wipe } from "../../lib/secret.ts";
import { HostSys } from "../../lib/sys/sys.ts";
import { createNew, out } from "../output.ts";
import { subcommand } from "../common.ts";
import { HSM_OPTIONS, HSM_OPTIONS_HELP, hsmConfigFrom, hsmFor, sealOptions } from "./hsm.ts";

const USAGE = `usage: zb cred create --slot a|b --root DEVICE --format [--data DEVICE (--format-data | --data-key-from CRED)]
                      [--pcrs LIST] [HSM options] [-o CRED.cpio] [--initramfs FILE] [--open NAME] [--json]
       zb cred show CRED [--json]

create: enrol a slot. Makes a fresh random 256-bit key, luksFormats DEVICE
        with it (PBKDF2-SHA512, 1000 iterations: the key is random), seals it
        with the HSM and writes the credentials archive (newc cpio).
          --format            required: DEVICE is formatted (its data is lost)
          --data DEVICE       the shared data volume, sealed for this slot too:
          --format-data       first provisioning: a fresh key, DEVICE formatted
          --data-key-from CRED  keep the volume: unseal its key from CRED (the
                              running slot's credentials) and seal it again
          --pcrs LIST         tpm2: bind to these PCRs (default tpm2.pcrs);
                              --lock-pcr N and the other HSM options below
          -o CRED.cpio        write the archive
          --initramfs FILE    append it to the slot's initramfs (replacing
                              credentials appended earlier)
          --open NAME         leave the new root open at /dev/mapper/NAME, to
                              write the slot's image into it (zb image install
                              --to /dev/mapper/NAME; then cryptsetup close NAME)
show:   the metadata of credentials: a directory holding zb/credentials/
        (as unpacked at boot), an archive, or an initramfs with one appended.

${HSM_OPTIONS_HELP}`;

export async function credMain(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  const sub = subcommand("cred", first, ["create", "show"], USAGE + "\n");
  if (sub === null) return 0;
  const args = parseArgs(rest, {
    ...HSM_OPTIONS, slot: { value: true }, root: { value: true }, data: { value: true }, format: {}, "format-data": {},
    "data-key-from": { value: true }, pcrs: { value: true }, output: { short: "o", value: true }, initramfs: { value: true }, open: { value: true },
    json: {}, help: { short: "h" },
  }, `zb cred ${sub}`, { repeats: "refuse" });
  if (args.flags.has("help")) {
    out(USAGE + "\n");
    return 0;
  }
  if (sub === "create") {
    onlyThese(args, null, 0, "zb cred create");
    return create(args);
  }
  onlyThese(args, ["json"], 1, "zb cred show");
  return show(args);
}

/**
 * Credentials from a directory (the unpacked initramfs root), an archive or an initramfs.
 * @throws {ZbError} CRED_INVALID when none are found; IO
 */
export function loadCredentials(path: string): LoadedCredentials & { offset: number | null } {
  const sys = new HostSys();
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw ioError(`read credentials ${path}`, e);
  }
  if (st.isDirectory()) return { ...readCredentials(sys, path), offset: null };
  const tail = credentialTail(sys, path, st.size);
  const found = findAppendedCredentials(tail.bytes);
  if (!found) throw new ZbError("CRED_INVALID", `cannot read credentials: ${path} is not a credentials archive and carries none at its end`);
  return { ...found.credentials, offset: tail.start + found.offset };
}

function need(args: ParsedArgs, name: string, why: string): string {
  const v = args.values.get(name);
  if (!v) throw new ZbError("USAGE", `cannot create credentials: --${name} is required (${why})`);
  return v;
}

async function create(args: ParsedArgs): Promise<number> {
  const slot = need(args, "slot", "a or b");
  if (slot !== "a" && slot !== "b") throw new ZbError("USAGE", `cannot create credentials: --slot must be a or b, not ${JSON.stringify(slot)}`);
  const rootDev = need(args, "root", "the slot's LUKS root device");
  if (!args.flags.has("format")) {
    throw new ZbError("USAGE", `cannot create credentials: pass --format to confirm that ${rootDev} is formatted with a fresh key (its data is lost)`);
  }
  const output = args.values.get("output");
  const initramfs = args.values.get("initramfs");
  if (!output && !initramfs) throw new ZbError("USAGE", "cannot create credentials: give -o CRED.cpio and/or --initramfs FILE");
  // Before anything is unsealed (--data-key-from may ask for a PIN) or created.
  checkDataFlags(args);
  const cfg = hsmConfigFrom(args);
  if (!cfg.backend) throw new ZbError("USAGE", "cannot create credentials: no backend given", { hint: "pass --backend or set backend= in the HSM config" });
  const pcrs = args.values.has("pcrs") ? parsePcrs(args.values.get("pcrs")!) : cfg.tpm2.pcrs;
  const options = sealOptions(cfg.backend, cfg, pcrs, args, "create credentials");
  // Everything that can fail without touching a disk fails before the format:
  // a formatted device whose new key was never saved is lost.
  const sys = new HostSys();
  const target = initramfs === undefined ? null : appendTarget(sys, initramfs, [rootDev, args.values.get("data")]);
  const openName = args.values.get("open");
  if (openName !== undefined && sys.stat(`/dev/mapper/${openName}`)) {
    throw new ZbError("USAGE", `cannot create credentials: /dev/mapper/${openName} exists already`, { hint: "name the new root after its slot, e.g. --open zb-root-b (zb-root is the running slot's)" });
  }
  // 0600 like `zb hsm seal -o` blobs: the archive is the sealed keys, which only the HSM opens,
  // but it also says which volumes, backend and slot; nobody else needs to read it.
  const file = output === undefined ? null : createNew(output, 0o600, "the credentials archive");
  let written = false;
  let dataKey: Uint8Array | undefined;
  let hsm: Hsm | undefined;
  try {
    // Inside the try: a backend that cannot be opened (CONFIG) removes the claimed
    // file again and wipes a data key already unsealed.
    dataKey = await dataKeyFrom(args, cfg);
    hsm = hsmFor(cfg.backend, cfg);
    const data = dataTarget(args, dataKey);
    const openAs = openName;
    const creds = await enrollSlot({
      hsm, crypt: new CryptsetupCli(), sys, slot, root: { device: rootDev, format: true },
      ...(data ? { data } : {}), sealOptions: options, ...(openAs !== undefined ? { openRootAs: openAs } : {}),
    });
    const cpio = packCredentials(creds);
    file?.finish(cpio);
    written = true;
    if (target) appendCredentials(sys, target, cpio);
    const opened = openAs === undefined ? null : `/dev/mapper/${openAs}`;
    out(args.flags.has("json") ? JSON.stringify({ ...creds.meta, opened }) + "\n" : describe(creds.meta) + (opened ? `root open at ${opened}\n` : ""));
    return 0;
  } catch (e) {
    // A written archive stays: the root is formatted by then and the archive holds its only sealed key.
    if (!written) file?.abandon();
    throw e;
  } finally {
    wipe(dataKey);
    await hsm?.close();
  }
}

/**
 * The initramfs to append to, checked before any disk is formatted: its real
 * path (the file a symbolic link points to, which is what boots), a regular
 * file that is not one of the devices, in a folder where the copy can be made.
 * @throws {ZbError} IO, USAGE
 */
function appendTarget(sys: HostSys, initramfs: string, devices: (string | undefined)[]): string {
  let real: string;
  try {
    real = realpathSync(initramfs);
  } catch (e) {
    throw ioError(`append credentials to ${initramfs}`, e);
  }
  const id = sys.stat(real)?.id;
  for (const d of devices) {
    if (d !== undefined && id !== undefined && sys.stat(d)?.id === id) throw new ZbError("USAGE", `cannot create credentials: --initramfs ${initramfs} is the device ${d}`);
  }
  checkAppendable(sys, real);
  return real;
}

/** --data with exactly one of --format-data and --data-key-from, or none of the three. @throws {ZbError} USAGE */
function checkDataFlags(args: ParsedArgs): void {
  const fresh = args.flags.has("format-data");
  const from = args.values.has("data-key-from");
  if (!args.values.get("data")) {
    if (fresh || from) throw new ZbError("USAGE", "cannot create credentials: --format-data and --data-key-from need --data DEVICE");
  } else if (fresh === from) throw new ZbError("USAGE", "cannot create credentials: with --data give exactly one of --format-data and --data-key-from");
}

/** The data volume to enrol, once {@link checkDataFlags} passed and the key (if kept) is unsealed. */
function dataTarget(args: ParsedArgs, key: Uint8Array | undefined): DataTarget | undefined {
  const device = args.values.get("data");
  if (!device) return undefined;
  return args.flags.has("format-data") ? { device, format: true } : { device, key: key! };
}

/** The data key, unsealed from the running slot's credentials with the backend they name. */
async function dataKeyFrom(args: ParsedArgs, cfg: HsmConfig): Promise<Uint8Array | undefined> {
  const from = args.values.get("data-key-from");
  if (!from) return undefined;
  const creds = loadCredentials(from);
  if (!creds.dataBlob) throw new ZbError("CRED_INVALID", `cannot read the data key: the credentials in ${from} have no data.sealed`);
  const hsm = hsmFor(creds.dataBlob.backend, cfg);
  try {
    const r = await hsm.unseal(creds.dataBlob.data);
    if (r.kind !== "ok") throw unsealError(r, creds.dataBlob.backend);
    return r.secret;
  } finally {
    await hsm.close();
  }
}

function describe(meta: LoadedCredentials["meta"]): string {
  const lines = [`slot ${meta.slot}, sealed by ${meta.backend}, created ${meta.created}`, `root  ${meta.root.name}  LUKS UUID ${meta.root.uuid}`];
  if (meta.data) lines.push(`data  ${meta.data.name}  LUKS UUID ${meta.data.uuid}`);
  return lines.join("\n") + "\n";
}

function show(args: ParsedArgs): number {
  const path = args.positional[0];
  if (!path) throw new ZbError("USAGE", "cannot show credentials: no CRED given");
  const c = loadCredentials(path);
  if (args.flags.has("json")) out(JSON.stringify({ meta: c.meta, offset: c.offset, root: { backend: c.rootBlob.backend, bytes: c.root.length }, ...(c.data ? { data: { backend: c.dataBlob!.backend, bytes: c.data.length } } : {}) }) + "\n");
  else out(describe(c.meta) + (c.offset === null ? "" : `archive at byte ${c.offset} of ${path}\n`));
  return 0;
}
