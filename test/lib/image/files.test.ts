/**
 * The files an install and a create touch stay apart, and a target in use is
 * not written: an install whose target or journal is the image (or each
 * other, by any path or link) is USAGE and leaves every file as it was; a
 * journal path that is not a regular file is refused before it is read; a
 * block device that is mounted or claimed by another opener is TARGET_BUSY
 * with its bytes unchanged, and so is a file another install is writing; an
 * image from a FIFO is read as a stream; after the last payload at most
 * 64 KiB of zeros are read (an endless stream of them is refused); `createImage` refuses an output that is its
 * rootfs input or lies inside its boot folder.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, constants, existsSync, linkSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createImage } from "../../../lib/image/create.ts";
import { install } from "../../../lib/image/install.ts";
import { openImage } from "../../../lib/image/reader.ts";
import { verifyImage } from "../../../lib/image/verify.ts";
import type { Policy } from "../../../lib/image/reader.ts";
import { keySigner, loadTrustDir } from "../../../lib/image/sign.ts";
import { fileSource, type ImageSource } from "../../../lib/image/source.ts";
import { HostSys, type WriteOptions } from "../../../lib/sys/sys.ts";
import { ioError } from "../../../lib/errors.ts";
import { buildImage, KEYS, listTar, MIN_CHUNK, sentinel, sha256, trustDir, variedBytes } from "./fixture.ts";

const root = mkdtempSync(join(tmpdir(), "zb-files-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const host = new HostSys();
const policy: Policy = { trust: loadTrustDir(host, trustDir(root, "trust", [KEYS.k1])) };
const img = await buildImage(join(root, "img"), { rootfs: variedBytes(300 * 1024 + 17, 41) });
const raw = img.raw.rootfs!;
const read = (p: string) => sha256(new Uint8Array(readFileSync(p)));
let seq = 0;

/** A copy of the image, a sentinel-filled target and a journal path, each in a folder of its own. */
function place() {
  const dir = join(root, `case${seq++}`);
  mkdirSync(dir);
  const image = join(dir, "update.zbi");
  writeFileSync(image, img.bytes);
  const target = join(dir, "slot.img");
  writeFileSync(target, sentinel(raw.length));
  return { dir, image, target, journal: join(dir, "install.journal") };
}

describe("install: image, target and journal must be three files", () => {
  test.each([
    { files: "target = the image", to: (c: ReturnType<typeof place>) => ({ target: c.image, journal: c.journal }), says: /the target \(.*update\.zbi\) and the image \(.*update\.zbi\) are the same file/ },
    { files: "target = a hard link of the image", to: (c: ReturnType<typeof place>) => (linkSync(c.image, join(c.dir, "link.img")), { target: join(c.dir, "link.img"), journal: c.journal }), says: /the target .* and the image .* are the same file/ },
    { files: "target = a symlink to the image", to: (c: ReturnType<typeof place>) => (symlinkSync(c.image, join(c.dir, "sym.img")), { target: join(c.dir, "sym.img"), journal: c.journal }), says: /the target .* and the image .* are the same file/ },
    { files: "journal = the target", to: (c: ReturnType<typeof place>) => ({ target: c.target, journal: c.target }), says: /the target .* and the journal .* are the same file/ },
    { files: "journal = the target by another spelling", to: (c: ReturnType<typeof place>) => ({ target: c.target, journal: join(c.dir, ".", "slot.img") }), says: /the target .* and the journal .* are the same file/ },
    { files: "journal = the image", to: (c: ReturnType<typeof place>) => ({ target: c.target, journal: c.image }), says: /the journal .* and the image .* are the same file/ },
    { files: "target and journal both new, same path", to: (c: ReturnType<typeof place>) => ({ target: join(c.dir, "new.img"), journal: join(c.dir, "new.img") }), says: /the target .* and the journal .* are the same file/ },
    { files: "journal = a folder", to: (c: ReturnType<typeof place>) => ({ target: c.target, journal: c.dir }), says: /cannot use .* as the install journal: it is not a regular file/ },
    { files: "journal = /dev/null", to: (c: ReturnType<typeof place>) => ({ target: c.target, journal: "/dev/null" }), says: /cannot use \/dev\/null as the install journal: it is not a regular file/ },
  ])("$files: USAGE, and the image, the target and the folder are as before", async ({ to, says }) => {
    const c = place();
    const { target, journal } = to(c);
    const before = { image: read(c.image), target: read(c.target), names: readdirSync(c.dir).sort() };
    const e = (await install(host, fileSource(c.image), policy, { payload: "rootfs", target, journal }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect({ code: e.code, says: says.test(e.message ?? "") }).toEqual({ code: "USAGE", says: true });
    expect({ image: read(c.image), target: read(c.target), names: readdirSync(c.dir).sort() }).toEqual(before);
  });

  test("a journal in a folder that does not exist: IO naming the folder, and no target is created", async () => {
    const c = place();
    const target = join(c.dir, "new-slot.img");
    const e = (await install(host, fileSource(c.image), policy, { payload: "rootfs", target, journal: join(c.dir, "nodir/j") }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect({ code: e.code, message: e.message }).toEqual({ code: "IO", message: `cannot write the install journal ${join(c.dir, "nodir/j")}: the folder ${join(c.dir, "nodir")} does not exist` });
    expect(existsSync(target)).toBe(false);
  });

  test("a journal of this image that claims more chunks than the payload has: --resume is IO, the target untouched", async () => {
    const c = place();
    await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal });
    const j = JSON.parse(readFileSync(c.journal, "utf8")) as { chunksDone: number; state: string };
    writeFileSync(c.journal, JSON.stringify({ ...j, state: "failed", chunksDone: 999 }));
    const before = read(c.target);
    const e = (await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal, resume: true }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect(e.code).toBe("IO");
    expect(e.message).toMatch(/it says 999 chunks are done, the payload has \d+$/);
    expect(read(c.target)).toBe(before);
  });

  test("three separate files: the install goes ahead (the check refuses only what it should)", async () => {
    const c = place();
    await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal });
    expect(read(c.target)).toBe(sha256(raw));
  });
});

describe("install: a file another install is writing is TARGET_BUSY", () => {
  /** The image as a stream that stops after `first` bytes until go() (an install in progress). */
  function paused(bytes: Uint8Array, first: number) {
    let go = () => {};
    const gate = new Promise<void>((resolve) => (go = resolve));
    const source: ImageSource = { name: "stdin", seekable: false, open: async () => (async function* () {
      yield bytes.subarray(0, first);
      await gate;
      yield bytes.subarray(first);
    })() };
    return { source, go };
  }

  test("a second install into the same file, same journal, while the first writes: refused, touching neither; the first completes", async () => {
    const c = place();
    const first = paused(img.bytes, listTar(img.bytes).find((e) => e.name === "rootfs")!.dataAt + 100_000);
    const running = install(host, first.source, policy, { payload: "rootfs", target: c.target, journal: c.journal }).then(() => "ok", (e: { code?: string }) => e.code);
    // The first install holds the target from before its journal's first write; it is under way once the journal names the payload's offset.
    const started = () => existsSync(c.journal) && JSON.parse(readFileSync(c.journal, "utf8")).dataOffset !== null;
    for (let i = 0; i < 500 && !started(); i++) await Bun.sleep(10);
    const journalThen = readFileSync(c.journal, "utf8");
    const e = (await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal }).catch((x: unknown) => x)) as { code?: string; message?: string; hint?: string };
    const second = { code: e.code, message: e.message, journalUntouched: readFileSync(c.journal, "utf8") === journalThen };
    first.go();
    expect({ second, first: await running, target: read(c.target), journal: JSON.parse(readFileSync(c.journal, "utf8")).state }).toEqual({
      second: { code: "TARGET_BUSY", message: `cannot install into ${c.target}: another install is writing it`, journalUntouched: true },
      first: "ok", target: sha256(raw), journal: "complete",
    });
    // Released with the first install's descriptor: the next install goes ahead.
    await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal });
    expect(read(c.target)).toBe(sha256(raw));
  });
});

describe("an image from a FIFO (`<(cat img)`, a pipe as /dev/stdin): read as a stream, like stdin", () => {
  test.each(["install", "verify --deep", "info"] as const)("%s: as from a file", async (use) => {
    const c = place();
    const fifo = join(c.dir, "pipe.zbi");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    const writer = Bun.spawn(["sh", "-c", `cat "$0" > "$1"`, c.image, fifo]);
    const source = fileSource(fifo);
    const run = use === "install" ? install(host, source, policy, { payload: "rootfs", target: c.target, journal: c.journal })
      : use === "verify --deep" ? verifyImage(source, policy, { deep: true })
      : openImage(await source.open(0), { unverified: true }).then((i) => i.close());
    const r = await run.then(() => "ok", (e: Error) => `${(e as { code?: string }).code ?? e.name}: ${e.message}`);
    writer.kill(); // a reader that stopped early (info) leaves cat blocked on the pipe
    await writer.exited;
    expect({ r, seekable: source.seekable, direct: source.direct !== undefined, target: use === "install" ? read(c.target) === sha256(raw) : null }).toEqual({
      r: "ok", seekable: false, direct: false, target: use === "install" ? true : null,
    });
  });
});

describe("install: a block device in use is TARGET_BUSY and keeps its bytes", () => {
  const loops: string[] = [];
  const mounts: string[] = [];
  afterAll(() => {
    mounts.forEach((m) => Bun.spawnSync(["umount", m]));
    loops.forEach((l) => Bun.spawnSync(["losetup", "-d", l]));
  });
  /** A loop device over an ext4 file system image of 8 MiB (what a slot holds), a sentinel in its boot block. */
  function loopWithFs() {
    const file = join(root, `fs${seq++}.img`);
    writeFileSync(file, new Uint8Array(8 << 20));
    expect(Bun.spawnSync(["mke2fs", "-q", "-F", "-t", "ext4", file]).exitCode).toBe(0);
    // ext4 never writes its first KiB (the boot block), where a payload would start: a sentinel there shows any write.
    const fd = openSync(file, "r+");
    writeSync(fd, sentinel(1024), 0, 1024, 0);
    closeSync(fd);
    const r = Bun.spawnSync(["losetup", "--find", "--show", file], { stderr: "pipe" });
    expect({ exit: r.exitCode, err: r.stderr.toString() }).toEqual({ exit: 0, err: "" });
    const dev = r.stdout.toString().trim();
    loops.push(dev);
    return { file, dev };
  }
  /** The first KiB: mount and umount write the superblock after it, an install would start here. */
  const devBytes = (dev: string) => sha256(new Uint8Array(readFileSync(dev)).subarray(0, 1024));

  test.each([
    { holder: "its file system is mounted (the running slot)" },
    { holder: "another program holds it open exclusively (a second install)" },
  ])("$holder", async ({ holder }) => {
    const { dev } = loopWithFs();
    let release = () => {};
    if (holder.startsWith("its file system")) {
      const at = join(root, `mnt${seq++}`);
      mkdirSync(at);
      expect(Bun.spawnSync(["mount", dev, at]).exitCode).toBe(0);
      mounts.push(at);
      release = () => void (Bun.spawnSync(["umount", at]), mounts.splice(mounts.indexOf(at), 1));
    } else {
      const fd = openSync(dev, constants.O_RDONLY | constants.O_EXCL);
      release = () => closeSync(fd);
    }
    const before = devBytes(dev);
    const journal = join(root, `busy${seq++}.journal`);
    const e = (await install(host, fileSource(img.path), policy, { payload: "rootfs", target: dev, journal }).catch((x: unknown) => x)) as { code?: string; message?: string };
    release();
    expect(e.code).toBe("TARGET_BUSY");
    expect(e.message).toBe(`cannot install into ${dev}: it is in use (mounted, an open LUKS or device-mapper volume, or opened by another install)`);
    expect(devBytes(dev)).toBe(before);
    expect(before).toBe(sha256(sentinel(1024)));
    expect(existsSync(journal)).toBe(false); // refused before the journal's first write
  });
});

describe("create: the output is not an input", () => {
  const signers = [keySigner(KEYS.k1)];
  const base = { compatible: "pi4", version: "1", serial: 1, chunkSize: MIN_CHUNK, signers };

  test("output = the rootfs input (by another spelling): USAGE, the rootfs is untouched and no temp file stays", async () => {
    const dir = join(root, `create${seq++}`);
    mkdirSync(dir);
    const rootfs = join(dir, "rootfs.img");
    writeFileSync(rootfs, raw);
    const e = (await createImage({ ...base, output: join(dir, ".", "rootfs.img"), payloads: [{ name: "rootfs", kind: "rootfs", encoding: "zstd", from: { file: rootfs } }] }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect({ code: e.code, message: e.message }).toEqual({ code: "USAGE", message: `cannot create ${join(dir, ".", "rootfs.img")}: it is the rootfs input itself` });
    expect(read(rootfs)).toBe(sha256(raw));
    expect(readdirSync(dir)).toEqual(["rootfs.img"]);
  });

  test.each([
    { where: "in the boot folder", out: "boot/update.zbi" },
    { where: "in a sub-folder of it", out: "boot/overlays/update.zbi" },
  ])("output $where: USAGE, nothing is written into the folder", async ({ out }) => {
    const dir = join(root, `create${seq++}`);
    mkdirSync(join(dir, "boot/overlays"), { recursive: true });
    writeFileSync(join(dir, "boot/vmlinuz"), "kernel");
    const e = (await createImage({ ...base, output: join(dir, out), payloads: [{ name: "boot", kind: "boot", encoding: "zstd", from: { dir: join(dir, "boot") } }] }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect(e.code).toBe("USAGE");
    expect(e.message).toMatch(/it lies inside the boot folder .*boot, which would pack it into itself$/);
    expect([readdirSync(join(dir, "boot")).sort(), readdirSync(join(dir, "boot/overlays"))]).toEqual([["overlays", "vmlinuz"], []]);
  });

  test("output beside the boot folder (a name that starts like it): created", async () => {
    const dir = join(root, `create${seq++}`);
    mkdirSync(join(dir, "boot"), { recursive: true });
    writeFileSync(join(dir, "boot/vmlinuz"), "kernel");
    await createImage({ ...base, output: join(dir, "boot-update.zbi"), payloads: [{ name: "boot", kind: "boot", encoding: "zstd", from: { dir: join(dir, "boot") } }] });
    expect(existsSync(join(dir, "boot-update.zbi"))).toBe(true);
  });
});

describe("install: the journal's own failures", () => {
  test("a journal folder on a read-only mount: IO naming why, before the target is created", async () => {
    const c = place();
    const ro = join(c.dir, "ro");
    mkdirSync(ro);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro]).exitCode).toBe(0);
    try {
      const target = join(c.dir, "new-slot.img");
      const e = (await install(host, fileSource(c.image), policy, { payload: "rootfs", target, journal: join(ro, "j") }).catch((x: unknown) => x)) as { code?: string; message?: string };
      expect({ code: e.code, message: e.message }).toEqual({ code: "IO", message: `cannot write in ${ro}: read-only file system` });
      expect(existsSync(target)).toBe(false);
    } finally {
      Bun.spawnSync(["umount", ro]);
    }
  });

  test("the journal's first write fails (its disk is full): IO, no empty target file and no temp journal are left", async () => {
    const c = place();
    const target = join(c.dir, "new-slot.img");
    // ext4 allocates at writeback: a full disk shows up at fsync, after the temp file was written.
    class FullFromStart extends HostSys {
      override fsync(path: string): void {
        if (path.includes("install.journal")) throw ioError(`sync ${path}`, Object.assign(new Error("ENOSPC"), { code: "ENOSPC" }));
        super.fsync(path);
      }
    }
    const before = readdirSync(c.dir).sort();
    const e = (await install(new FullFromStart(), fileSource(c.image), policy, { payload: "rootfs", target, journal: c.journal }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect(e.code).toBe("IO");
    expect(e.message).toContain("no space left on device");
    expect(readdirSync(c.dir).sort()).toEqual(before);
  });

  test("the journal cannot record the failure (its disk is full too): the install's own error is reported, the journal still says writing", async () => {
    // A corrupt chunk fails the install; then writing "failed" into the journal fails as well.
    const c = place();
    const bytes = new Uint8Array(readFileSync(c.image));
    bytes[bytes.length - 2048]! ^= 1; // inside the last payload chunk
    writeFileSync(c.image, bytes);
    class FullAfterStart extends HostSys {
      override writeAt(path: string, offset: number, data: Uint8Array, opts?: WriteOptions): void {
        if (path.includes("install.journal") && Buffer.from(data).toString().includes('"failed"')) {
          throw ioError(`write ${path}`, Object.assign(new Error("ENOSPC"), { code: "ENOSPC" }));
        }
        super.writeAt(path, offset, data, opts);
      }
    }
    const e = (await install(new FullAfterStart(), fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal }).catch((x: unknown) => x)) as { code?: string; message?: string };
    expect(e.code).toBe("PAYLOAD_CORRUPT");
    expect(JSON.parse(readFileSync(c.journal, "utf8"))).toMatchObject({ state: "writing" });
  });
});

describe("bytes after the archive, from a file and from a stream", () => {
  const streamOf = (bytes: Uint8Array): ImageSource => ({ name: "stdin", seekable: false, open: async () => (async function* () { yield bytes; })() });
  const FOLLOWS = "cannot read the image: data follows the last payload";
  // One rule for both: after the last payload only zero bytes, 64 KiB at most (below; a stream's
  // raw bytes are looked at, not only what the tar parser makes of them).
  const rows = [
    { after: "nothing: cut inside the last payload's padding", cut: 1024 + 1, tail: new Uint8Array(0), file: "cannot read the image: the archive ends early", stream: "cannot read the image: the archive ends early" },
    { after: "7 bytes of text", tail: new Uint8Array(Buffer.from("garbage")), file: FOLLOWS, stream: FOLLOWS },
    { after: "a block of zeros but for its checksum field (a null block to tar-stream)", tail: (() => {
      const b = new Uint8Array(1536);
      b.set(Buffer.from("DEADBEEF", "latin1"), 148);
      return b;
    })(), file: FOLLOWS, stream: FOLLOWS },
    { after: "a 512-byte block of text", tail: new Uint8Array(512).fill(0x41), file: FOLLOWS, stream: FOLLOWS },
    { after: "two zero blocks, then a block of text", tail: new Uint8Array(Buffer.concat([new Uint8Array(1024), new Uint8Array(512).fill(0x41)])), file: FOLLOWS, stream: FOLLOWS },
  ];
  for (const row of rows) {
    for (const via of ["file", "stream"] as const) {
      test(`${row.after}, read as a ${via}: IMG_FORMAT "${row[via].replace("cannot read the image: ", "")}", nothing complete`, async () => {
        const c = place();
        const bytes = new Uint8Array(Buffer.concat([img.bytes.subarray(0, img.bytes.length - ((row as { cut?: number }).cut ?? 0)), row.tail]));
        writeFileSync(c.image, bytes);
        const source = via === "file" ? fileSource(c.image) : streamOf(bytes);
        const e = (await install(host, source, policy, { payload: "rootfs", target: c.target, journal: c.journal }).catch((x: unknown) => x)) as { code?: string; message?: string };
        expect({ code: e.code, message: e.message }).toEqual({ code: "IMG_FORMAT", message: row[via] });
        expect(JSON.parse(readFileSync(c.journal, "utf8"))).toMatchObject({ state: "failed" });
      });
    }
  }

  // At most 64 KiB of zeros after the last payload's padding (two end blocks and tar's record padding), from a
  // file and from a stream alike; more is refused without reading it to its end.
  const TOO_LONG = "cannot read the image: more than 65536 bytes of zeros follow the last payload (an archive's end blocks and padding are fewer)";
  /** `bytes` in odd-sized pieces, then `zeros` zero bytes (Infinity: for ever, as from /dev/zero). */
  const streamWithZeros = (bytes: Uint8Array, zeros: number): ImageSource => ({ name: "stdin", seekable: false, open: async () => (async function* () {
    for (let at = 0; at < bytes.length; at += 65543) yield bytes.subarray(at, at + 65543);
    const piece = new Uint8Array(1 << 20);
    for (let left = zeros, sent = 0; left > 0; left -= piece.length, sent += piece.length) {
      // A reader that would go on for ever (the defect) fails the row instead of hanging the suite.
      if (sent >= 256 << 20) throw new Error("the reader went on past 256 MiB of zeros");
      yield piece.subarray(0, Math.min(piece.length, left));
    }
  })() });
  test.each([
    { after: "the two end blocks (what zb writes)", zeros: 1024, file: "complete", stream: "complete" },
    { after: "end blocks and padding to tar's default 10 KiB record, at most", zeros: 10240 + 512, file: "complete", stream: "complete" },
    { after: "64 KiB of zeros", zeros: 65536, file: "complete", stream: "complete" },
    { after: "64 KiB and 1 byte of zeros", zeros: 65537, file: TOO_LONG, stream: TOO_LONG },
    { after: "8 MiB of zeros", zeros: 8 << 20, file: TOO_LONG, stream: TOO_LONG },
    { after: "zeros without end (a stream only: `(cat img; cat /dev/zero) |`)", zeros: Infinity, file: null, stream: TOO_LONG },
  ])("$after after the last payload", async (row) => {
    const body = img.bytes.subarray(0, img.bytes.length - 1024);
    const got: Record<string, string | null> = { file: null, stream: null };
    for (const via of ["file", "stream"] as const) {
      if (row[via] === null) continue;
      const c = place();
      if (via === "file") writeFileSync(c.image, Buffer.concat([body, new Uint8Array(row.zeros)]));
      const source = via === "file" ? fileSource(c.image) : streamWithZeros(body, row.zeros);
      const r = await install(host, source, policy, { payload: "rootfs", target: c.target, journal: c.journal }).then(() => "ok", (e: Error) => e.message);
      const state = JSON.parse(readFileSync(c.journal, "utf8")).state;
      got[via] = r === "ok" ? state : `${r} (${state})`;
    }
    const want = (m: string | null) => (m === null || m === "complete" ? m : `${m} (failed)`);
    expect(got).toEqual({ file: want(row.file), stream: want(row.stream) });
  });

  test("cut 100 or 1024 bytes short, inside the end-of-archive zeros or all of them: installs from a file and from a stream alike (only zeros were missing)", async () => {
    const got = [];
    for (const n of [100, 1024]) {
      const bytes = img.bytes.subarray(0, img.bytes.length - n);
      for (const via of ["file", "stream"] as const) {
        const c = place();
        writeFileSync(c.image, bytes);
        const r = await install(host, via === "file" ? fileSource(c.image) : streamOf(bytes), policy, { payload: "rootfs", target: c.target, journal: c.journal }).then(() => "ok", (e: Error) => e.message);
        got.push([n, via, r, existsSync(c.journal) && JSON.parse(readFileSync(c.journal, "utf8")).state]);
      }
    }
    expect(got).toEqual([[100, "file", "ok", "complete"], [100, "stream", "ok", "complete"], [1024, "file", "ok", "complete"], [1024, "stream", "ok", "complete"]]);
  });
});

describe("a seeking --resume checks what follows the last payload as a fresh install does", () => {
  /**
   * The clean image installed, its journal set back to "failed" after chunk 1
   * (so the resume seeks to chunk 1 of rootfs, the last payload), then the
   * image file replaced by `bytes` and the install resumed.
   */
  async function resumedFrom(bytes: Uint8Array): Promise<string> {
    const c = place();
    await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal });
    const j = JSON.parse(readFileSync(c.journal, "utf8")) as Record<string, unknown>;
    writeFileSync(c.journal, JSON.stringify({ ...j, state: "failed", chunksDone: 1 }));
    writeFileSync(c.image, bytes);
    const r = await install(host, fileSource(c.image), policy, { payload: "rootfs", target: c.target, journal: c.journal, resume: true }).then(
      (x) => `resumed from ${x.resumedFrom}`,
      (e: { code?: string; message?: string }) => `${e.code}: ${e.message}`,
    );
    return `${r} (${JSON.parse(readFileSync(c.journal, "utf8")).state})`;
  }
  const FOLLOWS = "IMG_FORMAT: cannot read the image: data follows the last payload (failed)";
  const body = img.bytes.subarray(0, img.bytes.length - 1024); // without its end blocks
  // Before: every row "resumed from 1 (complete)", though a fresh install refuses the same file.
  test.each([
    { after: "the two end blocks (what zb writes)", bytes: () => img.bytes, want: "resumed from 1 (complete)" },
    { after: "nothing but the padding (end blocks cut)", bytes: () => body, want: "resumed from 1 (complete)" },
    { after: "64 KiB of zeros", bytes: () => Buffer.concat([body, new Uint8Array(65536)]), want: "resumed from 1 (complete)" },
    { after: "7 bytes of text", bytes: () => Buffer.concat([img.bytes, Buffer.from("garbage")]), want: FOLLOWS },
    { after: "two zero blocks, then a block of text", bytes: () => Buffer.concat([img.bytes, new Uint8Array(512).fill(0x41)]), want: FOLLOWS },
    { after: "64 KiB and 1 byte of zeros", bytes: () => Buffer.concat([body, new Uint8Array(65537)]), want: "IMG_FORMAT: cannot read the image: more than 65536 bytes of zeros follow the last payload (an archive's end blocks and padding are fewer) (failed)" },
    { after: "a cut inside the last payload's padding", bytes: () => img.bytes.subarray(0, img.bytes.length - 1025), want: "IMG_FORMAT: cannot read the image: the archive ends early (failed)" },
  ])("$after", async ({ bytes, want }) => {
    expect(await resumedFrom(new Uint8Array(bytes()))).toBe(want);
  });
});
