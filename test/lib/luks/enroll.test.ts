/**
 * enrollSlot with the real cryptsetup on files and a tiny in-test HSM
 * (AES-256-GCM under a key held in memory) that implements the Hsm
 * interface and records what it was asked to seal. Checked: a first install
 * makes two fresh keys that open their volumes once unsealed; installing the
 * other slot re-seals the data key and leaves the data volume byte for byte
 * as it was; failures (wrong data key, absent HSM, a format that fails) leave
 * the disks as they were; every key made by enrollSlot is zero afterwards,
 * the caller's keys are untouched. Root and data that are one device under
 * two names (a symbolic link, a hard link, two nodes of one block device)
 * are refused before anything is sealed or formatted.
 */
import { describe, expect, test } from "bun:test";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { linkSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { ZbError, type ErrorCode } from "../../../lib/errors.ts";
import { b64, b64field, decodeBlob } from "../../../lib/hsm/blob.ts";
import type { Hsm, ProbeResult, SealedData, SealOptions, UnsealResult } from "../../../lib/hsm/types.ts";
import { packCredentials, unpackCredentials, type Credentials } from "../../../lib/luks/credentials.ts";
import { CryptsetupCli } from "../../../lib/luks/cryptsetup.ts";
import { deviceIdentity, enrollSlot, KEY_BYTES, type DeviceStat, type EnrollOptions } from "../../../lib/luks/enroll.ts";
import { parseLuksHeader } from "../../../lib/luks/header.ts";
import { tempDirs } from "../../tempdirs.ts";

/** Seals with AES-256-GCM under a key only this object knows; `absent` makes seal fail like a missing TPM. */
class BoxHsm implements Hsm {
  readonly name = "soft" as const;
  readonly sealed: Uint8Array[] = [];
  /** Every secret handed to seal, also those an absent box refused: each must be wiped afterwards. */
  readonly offered: Uint8Array[] = [];
  readonly sealOptions: (SealOptions | undefined)[] = [];
  private readonly key = randomBytes(32);
  constructor(private readonly absent = false) {}
  async probe(): Promise<ProbeResult> {
    return { backend: this.name, present: !this.absent, detail: "in-test box" };
  }
  async seal(secret: Uint8Array, opts?: SealOptions): Promise<SealedData> {
    this.offered.push(secret);
    if (this.absent) throw new ZbError("HSM_ABSENT", "cannot seal: the in-test HSM is absent");
    this.sealed.push(secret); // the reference, to check it is wiped afterwards
    this.sealOptions.push(opts);
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", this.key, iv);
    const ct = Buffer.concat([c.update(secret), c.final()]);
    return { iv: b64(iv), ct: b64(ct), tag: b64(c.getAuthTag()) };
  }
  async unseal(data: SealedData): Promise<UnsealResult> {
    try {
      const d = createDecipheriv("aes-256-gcm", this.key, b64field(data, "iv"));
      d.setAuthTag(b64field(data, "tag"));
      return { kind: "ok", secret: new Uint8Array(Buffer.concat([d.update(b64field(data, "ct")), d.final()])) };
    } catch {
      return { kind: "no-match", why: "not sealed by this box" };
    }
  }
  async close(): Promise<void> {}
}

const crypt = new CryptsetupCli();
const tempDir = tempDirs("zb-enroll-");

function disks(): { root: string; rootB: string; data: string } {
  const d = tempDir();
  const mk = (n: string) => {
    const p = join(d, n);
    writeFileSync(p, "");
    Bun.spawnSync(["truncate", "-s", "32M", p]);
    return p;
  };
  return { root: mk("p2.img"), rootB: mk("p3.img"), data: mk("p4.img") };
}

async function unsealBlob(hsm: Hsm, bytes: Uint8Array): Promise<Uint8Array> {
  const r = await hsm.unseal(decodeBlob(bytes).data);
  if (r.kind !== "ok") throw new Error(`unseal failed: ${r.why}`);
  return r.secret;
}

const sha = (path: string) => new Bun.CryptoHasher("sha256").update(readFileSync(path)).digest("hex");
const isZero = (b: Uint8Array) => b.every((x) => x === 0);
const NOW = () => new Date("2024-05-01T12:00:00Z");

describe("enrollSlot", () => {
  test("first install: fresh root and data keys, both formatted PBKDF2-1000, sealed, opening only their own volume", async () => {
    const d = disks();
    const hsm = new BoxHsm();
    const creds = await enrollSlot({ hsm, crypt, slot: "a", root: { device: d.root, format: true }, data: { device: d.data, format: true }, sealOptions: { pcrs: [7] }, now: NOW });
    expect(creds.meta).toEqual({
      format: "zb-credentials/1", slot: "a", backend: "soft", created: "2024-05-01T12:00:00.000Z",
      root: { uuid: await crypt.uuid(d.root), name: "zb-root" },
      data: { uuid: await crypt.uuid(d.data), name: "zb-data" },
    });
    const rootKey = await unsealBlob(hsm, creds.root);
    const dataKey = await unsealBlob(hsm, creds.data!);
    expect([rootKey.length, dataKey.length, Buffer.from(rootKey).equals(Buffer.from(dataKey))]).toEqual([KEY_BYTES, KEY_BYTES, false]);
    expect([await crypt.testKey(d.root, rootKey), await crypt.testKey(d.data, dataKey)]).toEqual([true, true]);
    expect([await crypt.testKey(d.root, dataKey), await crypt.testKey(d.data, rootKey)]).toEqual([false, false]);
    for (const dev of [d.root, d.data]) expect(await crypt.keyslots(dev)).toEqual([{ slot: 0, kdf: "pbkdf2", hash: "sha512", iterations: 1000 }]);
    expect(hsm.sealOptions).toEqual([{ pcrs: [7] }, { pcrs: [7] }]);
    expect(hsm.sealed.map(isZero)).toEqual([true, true]); // the keys enrollSlot made were wiped
    expect(unpackCredentials(packCredentials(creds)).meta).toEqual(creds.meta);
  });

  test("installing the other slot: new root key, the data key re-sealed, the data volume untouched", async () => {
    const d = disks();
    const hsm = new BoxHsm();
    const a = await enrollSlot({ hsm, crypt, slot: "a", root: { device: d.root, format: true }, data: { device: d.data, format: true } });
    const dataBefore = sha(d.data);
    const dataKey = await unsealBlob(hsm, a.data!);
    const callerCopy = new Uint8Array(dataKey);
    const b = await enrollSlot({ hsm, crypt, slot: "b", root: { device: d.rootB, format: true }, data: { device: d.data, key: dataKey } });
    expect(sha(d.data)).toBe(dataBefore);
    expect(Buffer.from(dataKey).equals(Buffer.from(callerCopy))).toBe(true); // the caller's key is the caller's to wipe
    expect([b.meta.slot, b.meta.data?.uuid, b.meta.root.uuid === a.meta.root.uuid]).toEqual(["b", a.meta.data!.uuid, false]);
    const [rootA, rootB, dataB] = [await unsealBlob(hsm, a.root), await unsealBlob(hsm, b.root), await unsealBlob(hsm, b.data!)];
    expect(Buffer.from(dataB).equals(Buffer.from(dataKey))).toBe(true);
    expect(Buffer.from(rootA).equals(Buffer.from(rootB))).toBe(false);
    expect([await crypt.testKey(d.rootB, rootB), await crypt.testKey(d.rootB, rootA), await crypt.testKey(d.root, rootB)]).toEqual([true, false, false]);
    expect(Buffer.from(b.data!).equals(Buffer.from(a.data!))).toBe(false); // sealed again, not copied
  });

  test("root formatted by the caller: its key is checked and sealed as is; format options reach the header", async () => {
    const d = disks();
    const hsm = new BoxHsm();
    const key = new Uint8Array(randomBytes(32));
    await crypt.format(d.root, key, { label: "zb-root-a" });
    const creds = await enrollSlot({ hsm, crypt, slot: "a", root: { device: d.root, format: false, key } });
    expect(Buffer.from(await unsealBlob(hsm, creds.root)).equals(Buffer.from(key))).toBe(true);
    expect(creds.data).toBeUndefined();
    expect(isZero(key)).toBe(false);

    const fresh = await enrollSlot({ hsm, crypt, slot: "b", root: { device: d.rootB, format: true }, formatOptions: { label: "zb-root-b" } });
    expect(parseLuksHeader(new Uint8Array(readFileSync(d.rootB).subarray(0, 4096)))).toMatchObject({ label: "zb-root-b", uuid: fresh.meta.root.uuid });
  });
});

describe("enrollSlot failures before (the situation) / after (error, disks unchanged, keys wiped)", () => {
  interface Row {
    name: string;
    hsm: () => BoxHsm;
    before: (d: ReturnType<typeof disks>, old: Uint8Array) => Omit<EnrollOptions, "hsm" | "crypt">;
    after: { code: ErrorCode; message: RegExp; seals: number };
  }
  const rows: Row[] = [
    {
      name: "wrong data key: nothing sealed, nothing formatted",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "b", root: { device: d.rootB, format: true }, data: { device: d.data, key: new Uint8Array(32).fill(9) } }),
      after: { code: "LUKS_FAILED", message: /cannot enrol the data volume .*: the given key does not open it/, seals: 0 },
    },
    {
      name: "HSM absent: nothing formatted",
      hsm: () => new BoxHsm(true),
      before: (d, old) => ({ slot: "b", root: { device: d.rootB, format: true }, data: { device: d.data, key: old } }),
      after: { code: "HSM_ABSENT", message: /in-test HSM is absent/, seals: 0 },
    },
    {
      name: "caller's root key does not open the root",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "b", root: { device: d.rootB, format: false, key: new Uint8Array(32).fill(1) } }),
      after: { code: "LUKS_FAILED", message: /cannot enrol the root volume .*: the given key does not open it/, seals: 0 },
    },
    {
      name: "root device missing: sealed, then the format fails",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "b", root: { device: `${d.rootB}.missing`, format: true } }),
      after: { code: "LUKS_FAILED", message: /cannot format .*missing as LUKS2/, seals: 1 },
    },
    {
      name: "root and data on one device",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "b", root: { device: d.data, format: true }, data: { device: d.data, format: true } }),
      after: { code: "USAGE", message: /root and data are the same device/, seals: 0 },
    },
    {
      name: "root is a symbolic link to the data volume, both formatted now",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "b", root: { device: alias(d.data, "link"), format: true }, data: { device: d.data, format: true } }),
      after: { code: "USAGE", message: /root and data are the same device \(.*link and .*p4\.img name one device\)/, seals: 0 },
    },
    {
      name: "root is a symbolic link to the existing data volume (its key from the running slot): the data volume is not formatted",
      hsm: () => new BoxHsm(),
      before: (d, old) => ({ slot: "b", root: { device: alias(d.data, "link"), format: true }, data: { device: d.data, key: old } }),
      after: { code: "USAGE", message: /root and data are the same device/, seals: 0 },
    },
    {
      name: "root is a hard link to the existing data volume",
      hsm: () => new BoxHsm(),
      before: (d, old) => ({ slot: "b", root: { device: alias(d.data, "hard"), format: true }, data: { device: d.data, key: old } }),
      after: { code: "USAGE", message: /root and data are the same device/, seals: 0 },
    },
    {
      name: "root formatted by the caller is the existing data volume under another name",
      hsm: () => new BoxHsm(),
      before: (d, old) => ({ slot: "b", root: { device: alias(d.data, "link"), format: false, key: old }, data: { device: d.data, key: old } }),
      after: { code: "USAGE", message: /root and data are the same device/, seals: 0 },
    },
    {
      name: "root and data are two nodes of one block device (/dev/dm-0 and a /dev/mapper node made without udev)",
      hsm: () => new BoxHsm(),
      before: (_d, old) => ({
        slot: "b", root: { device: "/dev/zb-test-dm-0", format: true }, data: { device: "/dev/mapper/zb-test-data", key: old },
        statDevice: (p) => ({ "/dev/zb-test-dm-0": blockNode(11, 253 * 256), "/dev/mapper/zb-test-data": blockNode(12, 253 * 256) })[p] ?? null,
      }),
      after: { code: "USAGE", message: /root and data are the same device \(\/dev\/zb-test-dm-0 and \/dev\/mapper\/zb-test-data name one device\)/, seals: 0 },
    },
    {
      name: "--open with a name device-mapper refuses: nothing sealed, nothing formatted",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "b", root: { device: d.rootB, format: true }, openRootAs: "zb root/b" }),
      after: { code: "USAGE", message: /cannot use "zb root\/b" as a mapping name/, seals: 0 },
    },
    {
      name: "slot c",
      hsm: () => new BoxHsm(),
      before: (d) => ({ slot: "c" as "a", root: { device: d.rootB, format: true } }),
      after: { code: "USAGE", message: /cannot enrol slot "c"/, seals: 0 },
    },
  ];
  test.each(rows)("$name", async ({ hsm: mkHsm, before, after }) => {
    const d = disks();
    // The disks as a previous install left them: slot B's root and the data volume formatted with known keys.
    const [oldRoot, oldData] = [new Uint8Array(randomBytes(32)), new Uint8Array(randomBytes(32))];
    await crypt.format(d.rootB, oldRoot);
    await crypt.format(d.data, oldData);
    const [rootSum, dataSum] = [sha(d.rootB), sha(d.data)];
    const hsm = mkHsm();
    let err: unknown;
    try {
      await enrollSlot({ hsm, crypt, ...before(d, oldData) });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ZbError);
    expect({ code: (err as ZbError).code, seals: hsm.sealed.length }).toEqual({ code: after.code, seals: after.seals });
    expect((err as ZbError).message).toMatch(after.message);
    expect([sha(d.rootB), sha(d.data)]).toEqual([rootSum, dataSum]);
    expect(hsm.sealed.every(isZero)).toBe(true);
    expect(hsm.offered.every(isZero)).toBe(true); // a key refused by an absent HSM is wiped too
    expect(isZero(oldData)).toBe(false);
  });
});

/** Another name for `target` in its folder: a symbolic link or a hard link. */
function alias(target: string, kind: "link" | "hard"): string {
  const p = join(dirname(target), `alias-${kind}`);
  (kind === "link" ? symlinkSync : linkSync)(target, p);
  return p;
}

/** stat(2) of a block device node: inode `ino` on devtmpfs (dev 5), device number `rdev`. */
function blockNode(ino: number, rdev: number): DeviceStat {
  return { dev: 5, ino, rdev, isBlockDevice: () => true };
}
const fileNode = (dev: number, ino: number): DeviceStat => ({ dev, ino, rdev: 0, isBlockDevice: () => false });

describe("deviceIdentity before (two paths and their stat) / after (one device or two)", () => {
  const rows: { name: string; before: [string, DeviceStat | null, string, DeviceStat | null]; after: "same" | "different" }[] = [
    { name: "two nodes of one block device", before: ["/dev/dm-0", blockNode(11, 64768), "/dev/mapper/data", blockNode(12, 64768)], after: "same" },
    { name: "two block devices", before: ["/dev/mmcblk0p3", blockNode(11, 45827), "/dev/mmcblk0p4", blockNode(12, 45828)], after: "different" },
    { name: "two names of one image file (links)", before: ["p4.img", fileNode(2049, 77), "alias", fileNode(2049, 77)], after: "same" },
    { name: "one inode number on two file systems", before: ["/a/p4.img", fileNode(2049, 77), "/b/p4.img", fileNode(2050, 77)], after: "different" },
    { name: "a file and a block device whose numbers happen to match", before: ["p4.img", fileNode(0, 45828), "/dev/mmcblk0p4", { ...blockNode(45828, 45828), dev: 0 }], after: "different" },
    { name: "one missing path, spelled two ways", before: ["/dev/../dev/zb-none", null, "/dev/zb-none", null], after: "same" },
    { name: "two missing paths", before: ["/dev/zb-none-1", null, "/dev/zb-none-2", null], after: "different" },
  ];
  test.each(rows)("$name → $after", ({ before: [a, sa, b, sb], after }) => {
    expect(deviceIdentity(a, sa) === deviceIdentity(b, sb) ? "same" : "different").toBe(after);
  });
});

test("credentials from enrollSlot pack to the documented archive", async () => {
  const d = disks();
  const creds: Credentials = await enrollSlot({ hsm: new BoxHsm(), crypt, slot: "a", root: { device: d.root, format: true }, data: { device: d.data, format: true } });
  const names = Bun.spawnSync(["cpio", "-t", "--quiet"], { stdin: packCredentials(creds) }).stdout.toString().trim().split("\n");
  expect(names).toEqual(["zb", "zb/credentials", "zb/credentials/meta.json", "zb/credentials/root.sealed", "zb/credentials/data.sealed"]);
});

/**
 * The real cryptsetup for everything but `open`, which needs device-mapper
 * (absent on the test machine): that call is recorded with a copy of its key
 * and the key it was given, left as it is (like CryptsetupCli.open), so the
 * test sees whether enrollSlot wiped it. `fail` makes it fail as a missing
 * dm_crypt module would.
 */
class RecordingOpen extends CryptsetupCli {
  readonly opened: { device: string; name: string; key: Uint8Array; given: Uint8Array }[] = [];
  constructor(private readonly fail = false) {
    super();
  }
  override async open(device: string, name: string, key: Uint8Array): Promise<void> {
    this.opened.push({ device, name, key: new Uint8Array(key), given: key });
    if (this.fail) throw new ZbError("LUKS_FAILED", `cannot open ${device} as ${name}: the device-mapper is not there`);
  }
}

test("openRootAs: the new root is mapped with its new key after everything is sealed; the caller's key is not wiped", async () => {
  const d = disks();
  const hsm = new BoxHsm();
  const rec = new RecordingOpen();
  const creds = await enrollSlot({ hsm, crypt: rec, slot: "b", root: { device: d.rootB, format: true }, openRootAs: "zb-root-b" });
  expect(rec.opened.map(({ device, name }) => ({ device, name }))).toEqual([{ device: d.rootB, name: "zb-root-b" }]);
  const key = rec.opened[0]!.key;
  expect(Buffer.from(key).equals(Buffer.from(await unsealBlob(hsm, creds.root)))).toBe(true); // the key that was sealed
  expect(await crypt.testKey(d.rootB, key)).toBe(true);
  expect(hsm.sealed.every(isZero)).toBe(true);
  expect(isZero(rec.opened[0]!.given)).toBe(true); // what open was given is wiped once it returned

  const own = new Uint8Array(randomBytes(32));
  await crypt.format(d.root, own);
  await enrollSlot({ hsm, crypt: rec, slot: "a", root: { device: d.root, format: false, key: own }, openRootAs: "zb-root-a" });
  expect(rec.opened[1]!.name).toBe("zb-root-a");
  expect(isZero(own)).toBe(false);
});

test("openRootAs fails: the error is the open's, no credentials, and the key open was given is wiped", async () => {
  const d = disks();
  const rec = new RecordingOpen(true);
  const err = await enrollSlot({ hsm: new BoxHsm(), crypt: rec, slot: "b", root: { device: d.rootB, format: true }, openRootAs: "zb-root-b" }).catch((e: unknown) => e);
  expect([(err as ZbError).code, (err as ZbError).message]).toEqual(["LUKS_FAILED", expect.stringMatching(/device-mapper is not there/)]);
  expect(rec.opened.length).toBe(1);
  expect([isZero(rec.opened[0]!.key), isZero(rec.opened[0]!.given)]).toEqual([false, true]); // a real key was handed over, then wiped
});
