/**
 * What an install must not destroy or claim, beyond the three-files rule of
 * files.test.ts: the journal's temp file (`.NAME.zb-new` beside it, deleted
 * and rewritten at every journal write) is neither the target nor the image;
 * the "already installed" check of a `--resume` opens the target read-only
 * (a file locked as for a write, a device not claimed, so a mounted slot or
 * a read-only target that holds the payload is installed); a read-back that failed (TARGET_MISMATCH) is not
 * turned into "complete" by a `--resume` without `--read-back`; a seeking
 * resume reads no more of the source than the payload (the last one: and
 * what follows it, to the image's end), and ends every stream it opens; a target that does not exist under /dev (or through a
 * link to it) is IO "no such device", never created.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { install } from "../../../lib/image/install.ts";
import type { Policy } from "../../../lib/image/reader.ts";
import { loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource, type ImageSource } from "../../../lib/image/source.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { openTarget } from "../../../lib/sys/target.ts";
import { buildImage, KEYS, MIN_CHUNK, sentinel, sha256, trustDir, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-guards-"));
const loops: string[] = [];
afterAll(() => {
  loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l]));
  rmSync(root, { recursive: true, force: true });
});
const host = new HostSys();
const policy: Policy = { trust: loadTrustDir(host, trustDir(root, "trust", [KEYS.k1])) };
const img = await buildImage(join(root, "img"), { rootfs: variedBytes(12 * MIN_CHUNK + 3, 61), chunkSize: MIN_CHUNK });
const raw = img.raw.rootfs!;
const read = (p: string) => sha256(new Uint8Array(readFileSync(p)));
let seq = 0;
const folder = () => {
  const dir = join(root, `case${seq++}`);
  mkdirSync(dir);
  return dir;
};
const failure = (p: Promise<unknown>) => p.then(() => ({ code: "ok", message: "", hint: undefined as string | undefined }), (e: { code?: string; message?: string; hint?: string }) => ({ code: e.code, message: e.message, hint: e.hint }));

describe("the journal's temp file (.NAME.zb-new) is neither the target nor the image", () => {
  test.each([
    { name: "--to names it", image: "update.zbi", target: ".j.zb-new", link: null, says: "the target (DIR/.j.zb-new) and the journal's temp file (DIR/.j.zb-new) are the same file" },
    { name: "--to is a symlink to it", image: "update.zbi", target: "slot.img", link: ".j.zb-new", says: "the target (DIR/slot.img) and the journal's temp file (DIR/.j.zb-new) are the same file" },
    { name: "the image has its name", image: ".j.zb-new", target: "slot.img", link: null, says: "the image (DIR/.j.zb-new) and the journal's temp file (DIR/.j.zb-new) are the same file" },
  ])("$name: USAGE, every file as it was", async ({ image, target, link, says }) => {
    const dir = folder();
    writeFileSync(join(dir, image), img.bytes);
    if (link) {
      writeFileSync(join(dir, link), sentinel(raw.length));
      symlinkSync(join(dir, link), join(dir, target));
    } else if (!existsSync(join(dir, target))) writeFileSync(join(dir, target), sentinel(raw.length));
    const before = readdirSync(dir).sort().map((f) => `${f} ${lstatSync(join(dir, f)).isSymbolicLink() ? "link" : read(join(dir, f))}`);
    const e = await failure(install(host, fileSource(join(dir, image)), policy, { payload: "rootfs", target: join(dir, target), journal: join(dir, "j") }));
    const after = readdirSync(dir).sort().map((f) => `${f} ${lstatSync(join(dir, f)).isSymbolicLink() ? "link" : read(join(dir, f))}`);
    expect({ ...e, message: e.message?.replaceAll(dir, "DIR"), same: after.join() === before.join() }).toEqual({
      code: "USAGE",
      message: `cannot install rootfs into DIR/${target}: ${says}`,
      hint: `zb writes the journal through ${join(dir, ".j.zb-new")}, deleting what has that name first: give --journal another name`,
      same: true,
    });
  });

  test("a stale temp file of the journal's own (a killed run's) is no obstacle", async () => {
    const dir = folder();
    writeFileSync(join(dir, ".j.zb-new"), "{}");
    await install(host, fileSource(img.path), policy, { payload: "rootfs", target: join(dir, "slot.img"), journal: join(dir, "j") });
    expect({ target: read(join(dir, "slot.img")), temp: existsSync(join(dir, ".j.zb-new")) }).toEqual({ target: sha256(raw), temp: false });
  });
});

describe("--resume of a complete journal reads the target back read-only, a file locked as for a write", () => {
  test("another install holds the target: TARGET_BUSY, not \"already installed\"; once it lets go, already installed", async () => {
    const dir = folder();
    const target = join(dir, "slot.img");
    const journal = join(dir, "j");
    await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal });
    const other = openTarget(target, { create: false }); // its flock(2), as a second install holds it
    const busy = await failure(install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal, resume: true }));
    other.close();
    const r = await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal, resume: true });
    expect({ busy: busy.code, then: r.alreadyInstalled, target: read(target) }).toEqual({ busy: "TARGET_BUSY", then: true, target: sha256(raw) });
  });

  test("a target that cannot be opened for writing (immutable, chattr +i): already installed", async () => {
    const dir = folder();
    const target = join(dir, "slot.img");
    const journal = join(dir, "j");
    await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal });
    const ro = Bun.spawnSync(["chattr", "+i", target], { stderr: "pipe" });
    if (ro.exitCode !== 0) throw new Error(`chattr +i failed: ${ro.stderr}`);
    try {
      const r = await failure(install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal, resume: true }).then((x) => (x.alreadyInstalled ? "already installed" : "installed")));
      expect(r.code === "ok" ? "already installed" : `${r.code}: ${r.message}`).toBe("already installed");
    } finally {
      Bun.spawnSync(["chattr", "-i", target]);
    }
  });

  /** A read-write loop device over a file of `size` bytes (a multiple of 512). */
  function loopDevice(size: number): string {
    const file = join(folder(), "disk.img");
    writeFileSync(file, new Uint8Array(size));
    const r = Bun.spawnSync(["losetup", "--find", "--show", file], { stderr: "pipe" });
    const dev = r.stdout.toString().trim();
    if (r.exitCode !== 0 || !dev.startsWith("/dev/loop")) throw new Error(`losetup failed: ${r.stderr}`);
    loops.push(dev);
    return dev;
  }

  test.each([
    { name: "that holds the payload: already installed", changed: false, outcome: "already installed" },
    { name: "that no longer holds it: TARGET_BUSY (the install claims it to write)", changed: true, outcome: "TARGET_BUSY" },
  ])("a block device in use (claimed with O_EXCL, as a mount claims it) $name", async ({ changed, outcome }) => {
    const dev = loopDevice(Math.ceil(raw.length / 512) * 512);
    const journal = join(folder(), "j");
    await install(host, fileSource(img.path), policy, { payload: "rootfs", target: dev, journal });
    if (changed) {
      const t = openTarget(dev, { create: false });
      t.write(0, new Uint8Array(512).fill(1));
      t.sync();
      t.close();
    }
    const mounted = openTarget(dev, { create: false }); // O_EXCL: the claim a mounted file system holds
    try {
      const r = await failure(install(host, fileSource(img.path), policy, { payload: "rootfs", target: dev, journal, resume: true }).then((x) => (x.alreadyInstalled ? "already installed" : "installed")));
      expect(r.code === "ok" ? "already installed" : r.code).toBe(outcome);
    } finally {
      mounted.close();
    }
  });

  test("the target removed since: installed again from chunk 0", async () => {
    const dir = folder();
    const target = join(dir, "slot.img");
    const journal = join(dir, "j");
    await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal });
    rmSync(target);
    const r = await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal, resume: true });
    expect({ already: r.alreadyInstalled, from: r.resumedFrom, target: read(target) }).toEqual({ already: false, from: 0, target: sha256(raw) });
  });
});

describe("a seeking resume reads no more of the source than it checks", () => {
  // A payload that is not the last: its bytes, nothing after them (a server holding the rest back would
  // make the resume wait on bytes nobody needs). The last one: what follows it too, to the image's end,
  // as a fresh install reads it ("data follows the last payload" is checked on both paths).
  test.each([
    { payload: "boot", readTo: "the payload's end", then: "throw", want: "ok" },
    { payload: "rootfs", readTo: "the image's end", then: "end", want: "ok" },
    { payload: "rootfs", readTo: "the payload's end", then: "throw", want: "cannot read the image: read past the payload" },
  ] as const)("$payload: a source that gives up to $readTo, then its stream ends ($then): $want", async ({ payload, readTo, then, want }) => {
    const dir = folder();
    const target = join(dir, "slot.img");
    const journal = join(dir, "j");
    await install(host, fileSource(img.path), policy, { payload, target, journal });
    const j = JSON.parse(readFileSync(journal, "utf8")) as { dataOffset: number };
    const p = img.manifest.payloads.find((x) => x.name === payload)!;
    const end = readTo === "the image's end" ? img.bytes.length : j.dataOffset + p.stored.size;
    // The bytes in 64 KiB parts, then the end of the stream or a failure.
    const strict: ImageSource = {
      name: "strict",
      seekable: true,
      open: async (offset) => (async function* () {
        for (let at = offset; at < end; at += 64 << 10) yield img.bytes.slice(at, Math.min(end, at + (64 << 10)));
        if (then === "throw") throw new Error("read past the payload");
      })(),
    };
    const t = new Uint8Array(readFileSync(target));
    t.fill(0, MIN_CHUNK);
    writeFileSync(target, t);
    writeFileSync(journal, JSON.stringify({ ...j, state: "failed", chunksDone: 1, error: "cut" }));
    const r = await failure(install(host, strict, policy, { payload, target, journal, resume: true }));
    expect({ r: r.code === "ok" ? "ok" : r.message, target: read(target) }).toEqual({ r: want, target: want === "ok" ? sha256(img.raw[payload]!) : read(target) });
  });

  test("every chunk already done (a run stopped during its read-back): each stream the resume opens is ended", async () => {
    const dir = folder();
    const target = join(dir, "slot.img");
    const journal = join(dir, "j");
    await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal });
    const j = JSON.parse(readFileSync(journal, "utf8")) as { chunksDone: number };
    writeFileSync(journal, JSON.stringify({ ...j, state: "failed", error: "interrupted during the read-back" }));
    // Over HTTP a stream left open is a request never aborted: here, one not iterated to its end, returned or cancelled.
    const opened: { offset: number; ended: boolean }[] = [];
    const tracked: ImageSource = {
      name: "tracked",
      seekable: true,
      open: async (offset) => {
        const rec = { offset, ended: false };
        opened.push(rec);
        const parts = (async function* () {
          try {
            for (let at = offset; at < img.bytes.length; at += 64 << 10) yield img.bytes.slice(at, at + (64 << 10));
          } finally {
            rec.ended = true;
          }
        })();
        return Object.assign(parts, { cancel: () => void (rec.ended = true) });
      },
    };
    const r = await install(host, tracked, policy, { payload: "rootfs", target, journal, resume: true });
    expect({ from: r.resumedFrom, chunks: j.chunksDone, left: opened.filter((o) => !o.ended).map((o) => o.offset), target: read(target) }).toEqual({ from: j.chunksDone, chunks: img.manifest.payloads.find((p) => p.name === "rootfs")!.chunks.length, left: [], target: sha256(raw) });
  });
});

describe("a target that does not exist under /dev is a device that is not there, never a file to create", () => {
  /** A name no device has, in /dev itself (devtmpfs): a typo for /dev/sdb3, a card not inserted. */
  const missing = () => `/dev/zb-test-${process.pid}-${seq++}-${Math.random().toString(36).slice(2, 8)}`;
  afterAll(() => {
    // Only if the check failed: what an old zb would have left in /dev.
    for (const f of readdirSync("/dev").filter((n) => n.startsWith(`zb-test-${process.pid}-`))) rmSync(join("/dev", f), { recursive: true, force: true });
  });

  test.each([
    { name: "directly in /dev", target: () => missing() },
    { name: "in a folder of /dev that is not there either", target: () => join(missing(), "p3") },
    { name: "through a link to /dev elsewhere", target: () => {
      const link = join(folder(), "devices");
      symlinkSync("/dev", link);
      return join(link, `zb-test-${process.pid}-${seq++}`);
    } },
  ])("$name: IO 'no such device' before the image is read; nothing created, no journal", async ({ target: make }) => {
    const target = make();
    const journal = join(folder(), "j");
    let opened = 0;
    const source: ImageSource = { name: img.path, seekable: true, open: (o) => (opened++, fileSource(img.path).open(o)) };
    const e = (await install(host, source, policy, { payload: "rootfs", target, journal }).catch((x: unknown) => x)) as { code?: string; message?: string; hint?: string };
    expect({ code: e.code, message: e.message, hint: e.hint, opened, target: existsSync(target), journal: existsSync(journal), dev: readdirSync("/dev").filter((n) => n.startsWith(`zb-test-${process.pid}-`)) }).toEqual({
      code: "IO", message: `cannot install into ${target}: no such device (zb creates only file targets, never under /dev)`,
      hint: "check the device's name (lsblk lists the block devices); a file target belongs outside /dev",
      opened: 0, target: false, journal: false, dev: [],
    });
  });

  test("/dev/shm is a tmpfs for files, not devices: a new file target there is created and installed", async () => {
    const dir = mkdtempSync("/dev/shm/zb-test-");
    try {
      const target = join(dir, "slot.img");
      const r = await install(host, fileSource(img.path), policy, { payload: "rootfs", target, journal: join(dir, "j") });
      expect({ sha: r.rawSha256, target: read(target) }).toEqual({ sha: sha256(raw), target: sha256(raw) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an existing device there is still a target: /dev/null is refused as not a regular file or block device, not as missing", async () => {
    const e = (await install(host, fileSource(img.path), policy, { payload: "rootfs", target: "/dev/null", journal: join(folder(), "j") }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect({ code: e.code, missing: /no such device/.test(e.message ?? "") }).toEqual({ code: "IO", missing: false });
  });
});
