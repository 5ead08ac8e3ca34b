/**
 * enrollSlot with the real cryptsetup on files and a tiny in-test HSM
 * (AES-256-GCM under a key held in memory) that implements the Hsm
 * interface and records what it was asked to seal. Checked: a first install
 * makes two fresh keys that open their volumes once unsealed; installing the
 * other slot re-seals the data key and leaves the data volume byte for byte
 * as it was; failures (wrong data key, absent HSM, a format that fails) leave
 * the disks as they were; every key made by enrollSlot is zero afterwards,
 * the caller's keys are untouched. Root and data that share storage (one
 * device under two names: a symbolic link, a hard link, two nodes of one
 * block device; a disk and its partition; a loop device and its image file,
 * on a fake sysfs and on real loop devices) are refused before anything is
 * sealed or formatted, and so is a kept volume that is LUKS1 (a real LUKS1
 * header from cryptsetup, left byte for byte as it was).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { linkSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { ZbError, type ErrorCode } from "../../../lib/errors.ts";
import { b64, b64field, decodeBlob } from "../../../lib/hsm/blob.ts";
import type { Hsm, ProbeResult, SealedData, SealOptions, UnsealResult } from "../../../lib/hsm/types.ts";
import { packCredentials, unpackCredentials } from "../../../lib/luks/credentials.ts";
import type { Credentials } from "../../../lib/luks/credmeta.ts";
import { CryptsetupCli } from "../../../lib/luks/cryptsetup.ts";
import { enrollSlot, KEY_BYTES, type EnrollOptions } from "../../../lib/luks/enroll.ts";
import { parseLuksHeader } from "../../../lib/luks/header.ts";
import { blockNode, fakeSysfs, makedev, type FakeBlock } from "../../fakes/sysfs.ts";
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

/** Reformat `path` as LUKS1 with `key`, as a volume made by another tool would be. */
function formatLuks1(path: string, key: Uint8Array): void {
  const f = Bun.spawnSync(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", path], { stdin: key, stderr: "pipe" });
  if (f.exitCode !== 0) throw new Error(`luksFormat --type luks1 failed: ${f.stderr}`);
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
    /** Which disk a LUKS1 tool made (same key) instead of the previous install's LUKS2. */
    luks1?: "rootB" | "data";
    before: (d: ReturnType<typeof disks>, old: Uint8Array, oldRoot: Uint8Array) => Omit<EnrollOptions, "hsm" | "crypt">;
    after: { code: ErrorCode; message: RegExp; hint?: RegExp; seals: number };
  }
  /** Devices of a fake sysfs next to the disk images; the data image is the file loop devices read. */
  const onFakeSysfs = (d: ReturnType<typeof disks>, blocks: (data: string) => FakeBlock[]) => {
    const { sysfs, stat, dev } = fakeSysfs(dirname(d.data), blocks(d.data));
    return { dev, opts: { sysfs, statDevice: stat } };
  };
  const GiB = 2 << 20; // sectors
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
        statDevice: (p) => ({ "/dev/zb-test-dm-0": blockNode(11, makedev(253, 0)), "/dev/mapper/zb-test-data": blockNode(12, makedev(253, 0)) })[p] ?? null,
      }),
      after: { code: "USAGE", message: /root and data are the same device \(\/dev\/zb-test-dm-0 and \/dev\/mapper\/zb-test-data name one device\)/, seals: 0 },
    },
    {
      name: "root is the whole disk holding the data partition (the root's format would destroy it)",
      hsm: () => new BoxHsm(),
      before: (d, old) => {
        const f = onFakeSysfs(d, () => [{ name: "sda", major: 8, minor: 0, size: GiB }, { name: "sda4", major: 8, minor: 4, size: GiB / 2, partOf: "sda", start: GiB / 4 }]);
        return { slot: "b", root: { device: f.dev("sda"), format: true }, data: { device: f.dev("sda4"), key: old }, ...f.opts };
      },
      after: { code: "USAGE", message: /root and data are the same device \(.*\/sda and .*\/sda4 overlap: sda4 is a partition of sda\)/, seals: 0 },
    },
    {
      name: "root is a partition of the disk given as the data volume",
      hsm: () => new BoxHsm(),
      before: (d) => {
        const f = onFakeSysfs(d, () => [{ name: "mmcblk0", major: 179, minor: 0, size: GiB }, { name: "mmcblk0p3", major: 179, minor: 3, size: GiB / 4, partOf: "mmcblk0", start: 2048 }]);
        return { slot: "b", root: { device: f.dev("mmcblk0p3"), format: true }, data: { device: f.dev("mmcblk0"), format: true }, ...f.opts };
      },
      after: { code: "USAGE", message: /root and data are the same device \(.*overlap: mmcblk0p3 is a partition of mmcblk0\)/, seals: 0 },
    },
    {
      name: "root is a loop device on the data volume's image file",
      hsm: () => new BoxHsm(),
      before: (d, old) => {
        const f = onFakeSysfs(d, (data) => [{ name: "loop3", major: 7, minor: 3, size: GiB / 16, loop: { file: data } }]);
        return { slot: "b", root: { device: f.dev("loop3"), format: true }, data: { device: d.data, key: old }, ...f.opts };
      },
      after: { code: "USAGE", message: /root and data are the same device \(.*loop3 and .*p4\.img overlap: loop3 is a loop device on .*p4\.img\)/, seals: 0 },
    },
    {
      name: "root and data are two loop devices on one image file",
      hsm: () => new BoxHsm(),
      before: (d, old) => {
        const f = onFakeSysfs(d, (data) => [3, 5].map((n) => ({ name: `loop${n}`, major: 7, minor: n, size: GiB / 16, loop: { file: data } })));
        return { slot: "b", root: { device: f.dev("loop3"), format: true }, data: { device: f.dev("loop5"), key: old }, ...f.opts };
      },
      after: { code: "USAGE", message: /root and data are the same device \(.*overlap: loop3 is a loop device on .*p4\.img; loop5 is a loop device on .*p4\.img\)/, seals: 0 },
    },
    {
      name: "root is a device-mapper device (an open LUKS volume, an LV) on the data partition",
      hsm: () => new BoxHsm(),
      before: (d, old) => {
        const f = onFakeSysfs(d, () => [
          { name: "sdb", major: 8, minor: 16, size: GiB },
          { name: "sdb2", major: 8, minor: 18, size: GiB / 2, partOf: "sdb", start: GiB / 4 },
          { name: "dm-0", major: 253, minor: 0, size: GiB / 2, dm: "zb-data", slaves: ["sdb2"] },
        ]);
        return { slot: "b", root: { device: f.dev("dm-0"), format: true }, data: { device: f.dev("sdb2"), key: old }, ...f.opts };
      },
      after: { code: "USAGE", message: /root and data are the same device \(.*dm-0 and .*sdb2 overlap: zb-data is a device-mapper device on sdb2; sdb2 is a partition of sdb\)/, seals: 0 },
    },
    {
      name: "root is an md array with a member on the data disk",
      hsm: () => new BoxHsm(),
      before: (d, old) => {
        const f = onFakeSysfs(d, () => [
          { name: "sdb", major: 8, minor: 16, size: GiB },
          { name: "sdb1", major: 8, minor: 17, size: GiB / 4, partOf: "sdb", start: 2048 },
          { name: "sdc", major: 8, minor: 32, size: GiB },
          { name: "sdc1", major: 8, minor: 33, size: GiB / 4, partOf: "sdc", start: 2048 },
          { name: "md0", major: 9, minor: 0, size: GiB / 4, md: true, slaves: ["sdb1", "sdc1"] },
        ]);
        return { slot: "b", root: { device: f.dev("md0"), format: true }, data: { device: f.dev("sdc"), key: old }, ...f.opts };
      },
      after: { code: "USAGE", message: /root and data are the same device \(.*overlap: md0 is an md array on sdc1; sdc1 is a partition of sdc\)/, seals: 0 },
    },
    {
      name: "the kept data volume is LUKS1: refused before anything is sealed or formatted",
      hsm: () => new BoxHsm(),
      luks1: "data",
      before: (d, old) => ({ slot: "b", root: { device: d.rootB, format: true }, data: { device: d.data, key: old } }),
      after: { code: "LUKS_FAILED", message: /^cannot enrol the data volume .*p4\.img: it is a LUKS1 volume; zb needs LUKS2$/, hint: /cryptsetup convert --type luks2 .*p4\.img/, seals: 0 },
    },
    {
      name: "the root formatted by the caller is LUKS1",
      hsm: () => new BoxHsm(),
      luks1: "rootB",
      before: (d, _old, oldRoot) => ({ slot: "b", root: { device: d.rootB, format: false, key: oldRoot } }),
      after: { code: "LUKS_FAILED", message: /^cannot enrol the root volume .*p3\.img: it is a LUKS1 volume; zb needs LUKS2$/, hint: /^back up its header \(cryptsetup luksHeaderBackup .*p3\.img --header-backup-file FILE\), then convert it in place: cryptsetup convert --type luks2 .*p3\.img$/, seals: 0 },
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
  test.each(rows)("$name", async ({ hsm: mkHsm, luks1, before, after }) => {
    const d = disks();
    // The disks as a previous install left them: slot B's root and the data volume formatted with known keys.
    const [oldRoot, oldData] = [new Uint8Array(randomBytes(32)), new Uint8Array(randomBytes(32))];
    await crypt.format(d.rootB, oldRoot);
    await crypt.format(d.data, oldData);
    if (luks1) formatLuks1(d[luks1], luks1 === "data" ? oldData : oldRoot);
    const [rootSum, dataSum] = [sha(d.rootB), sha(d.data)];
    const hsm = mkHsm();
    let err: unknown;
    try {
      await enrollSlot({ hsm, crypt, ...before(d, oldData, oldRoot) });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ZbError);
    expect({ code: (err as ZbError).code, seals: hsm.sealed.length }).toEqual({ code: after.code, seals: after.seals });
    expect((err as ZbError).message).toMatch(after.message);
    if (after.hint) expect((err as ZbError).hint).toMatch(after.hint);
    if (luks1) expect(parseLuksHeader(new Uint8Array(readFileSync(d[luks1]).subarray(0, 4096)))?.version).toBe(1); // really LUKS1, still
    expect([sha(d.rootB), sha(d.data)]).toEqual([rootSum, dataSum]);
    expect(hsm.sealed.every(isZero)).toBe(true);
    expect(hsm.offered.every(isZero)).toBe(true); // a key refused by an absent HSM is wiped too
    expect(isZero(oldData)).toBe(false);
  });
});

describe("real loop devices before (root and data as given) / after (refused, the data image as it was)", () => {
  const loops: string[] = [];
  afterAll(() => loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l])));
  const attach = (file: string) => {
    const r = Bun.spawnSync(["losetup", "--find", "--show", file], { stderr: "pipe" });
    const dev = r.stdout.toString().trim();
    if (r.exitCode !== 0 || !dev.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
    loops.push(dev);
    return dev;
  };
  const rows: { name: string; before: (data: string) => [root: string, data: string]; after: RegExp }[] = [
    { name: "root is a loop device on the data image", before: (data) => [attach(data), data], after: /root and data are the same device \(\/dev\/loop\d+ and .*p4\.img overlap: loop\d+ is a loop device on .*p4\.img\)/ },
    { name: "root and data are two loop devices on the data image", before: (data) => [attach(data), attach(data)], after: /root and data are the same device \(.*overlap: (loop\d+ is a loop device on .*p4\.img(; )?){2}\)/ },
    {
      name: "root is a loop device on the data image by a name since unlinked (backing_file says deleted, the kernel knows the inode)",
      before: (data) => {
        const other = join(dirname(data), "gone.img");
        linkSync(data, other);
        const dev = attach(other);
        rmSync(other);
        return [dev, data];
      },
      after: /root and data are the same device \(\/dev\/loop\d+ and .*p4\.img overlap: loop\d+ is a loop device on .*gone\.img \(deleted\)\)/,
    },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const d = disks();
    const old = new Uint8Array(randomBytes(32));
    await crypt.format(d.data, old);
    const dataSum = sha(d.data);
    const [root, data] = before(d.data);
    const hsm = new BoxHsm();
    const err = await enrollSlot({ hsm, crypt, slot: "b", root: { device: root, format: true }, data: { device: data, key: old } }).catch((e: unknown) => e);
    expect([(err as ZbError).code, (err as ZbError).message]).toEqual(["USAGE", expect.stringMatching(after)]);
    expect([hsm.offered.length, sha(d.data)]).toEqual([0, dataSum]);
  });
});

/** Another name for `target` in its folder: a symbolic link or a hard link. */
function alias(target: string, kind: "link" | "hard"): string {
  const p = join(dirname(target), `alias-${kind}`);
  (kind === "link" ? symlinkSync : linkSync)(target, p);
  return p;
}

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
