/**
 * EnvStore against real files in a temp dir: which copy a save writes, the
 * dirty check, degraded pairs, creation, layouts inside one file.
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, chownSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { decode, encode, type Vars } from "../../../lib/env/codec.ts";
import { defaultConfig, MAX_CONFIG_FILE_BYTES, type StoreConfig } from "../../../lib/env/config.ts";
import { EnvStore, openStore } from "../../../lib/env/store.ts";
import { ioError } from "../../../lib/errors.ts";
import type { HostSys, WriteOptions } from "../../../lib/sys/sys.ts";
import { TempLockSys } from "../../fakes/envlock.ts";
import { CuttingSys } from "../../fakes/powercut.ts";
import { tempDirs } from "../../tempdirs.ts";

const sys = new TempLockSys(); // the env lock in a temp folder, not the host's /var/lock
const tmp = tempDirs("zb-store-");
const L = { size: 0x4000, redundant: true };
const vars = (o: Record<string, string>): Vars => new Map(Object.entries(o));

/** A default pair with given contents and flags; returns the config. */
function pair(first: [Record<string, string>, number] | "bad", second: [Record<string, string>, number] | "bad"): StoreConfig {
  const d = tmp();
  const config = defaultConfig(d);
  sys.mkdirp(join(d, "zb"));
  [first, second].forEach((c, i) => {
    const bytes = c === "bad" ? new Uint8Array(L.size).fill(0x42) : encode(vars(c[0]), L, { flag: c[1] });
    writeFileSync(config.copies[i]!.path, bytes);
  });
  return config;
}
const copyOf = (config: StoreConfig, i: 0 | 1) => decode(new Uint8Array(readFileSync(config.copies[i]!.path)), L);

describe("update on a redundant pair", () => {
  test.each([
    { name: "equal flags: first is active, second is written", first: [{ a: "1" }, 1], second: [{ a: "1" }, 1], written: 1, flag: 2 },
    { name: "second newer: first is written", first: [{ a: "0" }, 4], second: [{ a: "1" }, 5], written: 0, flag: 6 },
    { name: "255 then 0: the 0 copy is active, 255 copy written with 1", first: [{ a: "0" }, 255], second: [{ a: "1" }, 0], written: 0, flag: 1 },
    { name: "active at 255: the other gets 0", first: [{ a: "1" }, 255], second: [{ a: "0" }, 254], written: 1, flag: 0 },
    { name: "first bad: it is the one written", first: "bad", second: [{ a: "1" }, 9], written: 0, flag: 10 },
  ] as const)("$name", ({ first, second, written, flag }) => {
    const config = pair(first as never, second as never);
    const untouched = readFileSync(config.copies[written === 0 ? 1 : 0]!.path);
    const r = new EnvStore(sys, config).update([{ name: "b", value: "2" }]);
    expect(r).toMatchObject({ written: true, copy: written, flag });
    expect(copyOf(config, written)).toEqual({ vars: vars({ a: "1", b: "2" }), flag });
    expect(readFileSync(config.copies[written === 0 ? 1 : 0]!.path).equals(untouched)).toBe(true);
  });

  test("nothing changed: nothing written, mtime kept", async () => {
    const config = pair([{ a: "1" }, 1], [{ a: "1" }, 1]);
    const before = config.copies.map((c) => statSync(c.path).mtimeMs);
    await Bun.sleep(15);
    const r = new EnvStore(sys, config).update([{ name: "a", value: "1" }, { name: "gone", value: null }]);
    expect(r.written).toBe(false);
    expect(config.copies.map((c) => statSync(c.path).mtimeMs)).toEqual(before);
  });

  test("read reports a degraded pair", () => {
    const s = new EnvStore(sys, pair([{ a: "1" }, 3], "bad")).read();
    expect(s).toMatchObject({ active: 0, flag: 3 });
    expect(s.degraded?.code).toBe("ENV_CRC");
  });

  test("both copies bad: ENV_CRC, nothing written", () => {
    const config = pair("bad", "bad");
    const before = readFileSync(config.copies[0].path);
    expect(() => new EnvStore(sys, config).update([{ name: "a", value: "1" }])).toThrow(expect.objectContaining({ code: "ENV_CRC" }));
    expect(readFileSync(config.copies[0].path).equals(before)).toBe(true);
  });

  test("a deleted twin file is recreated by the next write", () => {
    const config = pair([{ a: "1" }, 1], [{ a: "1" }, 1]);
    rmSync(config.copies[1]!.path);
    const store = new EnvStore(sys, config);
    expect(store.read().degraded?.code).toBe("IO");
    store.update([{ name: "a", value: "2" }]);
    expect(copyOf(config, 1)).toEqual({ vars: vars({ a: "2" }), flag: 2 });
  });

  // What reaches the disk, in order: an overwrite in place needs only the
  // file's fsync (it covers the file's own metadata, on FAT its directory
  // entry); a recreated file needs its directory's too.
  test.each([
    { name: "twin in place: write, fsync the file, no directory fsync", remove: false, ops: ["write zb.env.redund", "fsync zb.env.redund"] },
    { name: "recreated twin: write, fsync the file, then its directory", remove: true, ops: ["mkdir zb", "write zb.env.redund", "fsync zb.env.redund", "fsync zb"] },
  ])("$name", ({ remove, ops }) => {
    const config = pair([{ a: "1" }, 1], [{ a: "1" }, 1]);
    if (remove) rmSync(config.copies[1]!.path);
    const recording = new CuttingSys(sys, { never: true });
    new EnvStore(recording, config).update([{ name: "a", value: "2" }]);
    expect(recording.ops.map((o) => `${o.kind} ${basename(o.path)}`)).toEqual([...ops]);
    expect(copyOf(config, 1)).toEqual({ vars: vars({ a: "2" }), flag: 2 });
  });

  test("an env that does not fit: ENV_NOSPACE, nothing written", () => {
    const config = pair([{ a: "1" }, 1], [{ a: "1" }, 1]);
    const before = readFileSync(config.copies[1]!.path);
    expect(() => new EnvStore(sys, config).update([{ name: "big", value: "x".repeat(0x4000) }])).toThrow(
      expect.objectContaining({ code: "ENV_NOSPACE" }),
    );
    expect(readFileSync(config.copies[1]!.path).equals(before)).toBe(true);
  });
});

describe("create", () => {
  test("makes both copies (second flag 1, first flag 2) and the zb folder", () => {
    const d = tmp();
    const config = defaultConfig(join(d, "boot"));
    new EnvStore(sys, config).create(vars({ zb_slot: "a" }));
    expect(copyOf(config, 0)).toEqual({ vars: vars({ zb_slot: "a" }), flag: 2 });
    expect(copyOf(config, 1)).toEqual({ vars: vars({ zb_slot: "a" }), flag: 1 });
  });

  test("refuses to replace a valid env without force; with force writes the inactive copy", () => {
    const config = pair([{ a: "1" }, 1], [{ a: "1" }, 1]);
    const store = new EnvStore(sys, config);
    expect(() => store.create(vars({ b: "2" }))).toThrow(expect.objectContaining({ code: "USAGE" }));
    expect(store.create(vars({ b: "2" }), { force: true })).toMatchObject({ copy: 1, flag: 2 });
    expect(Object.fromEntries(store.read().vars)).toEqual({ b: "2" });
  });
});

describe("other layouts", () => {
  test("two copies inside one file at two offsets; bytes outside untouched", () => {
    const d = tmp();
    const path = join(d, "disk.img");
    writeFileSync(path, new Uint8Array(0x3000).fill(0xaa));
    const config: StoreConfig = { copies: [{ path, offset: 0x1000, size: 0x800 }, { path, offset: 0x1800, size: 0x800 }], source: "t" };
    const store = new EnvStore(sys, config);
    store.create(vars({ a: "1" }));
    store.update([{ name: "a", value: "2" }]);
    const img = readFileSync(path);
    expect(img.subarray(0, 0x1000).every((b) => b === 0xaa)).toBe(true);
    expect(img.subarray(0x2000).every((b) => b === 0xaa)).toBe(true);
    expect(Object.fromEntries(store.read().vars)).toEqual({ a: "2" });
  });

  test("negative offset counts from the end of the file", () => {
    const d = tmp();
    const path = join(d, "dev.img");
    writeFileSync(path, new Uint8Array(0x2000));
    const store = new EnvStore(sys, { copies: [{ path, offset: -0x400, size: 0x400 }], source: "t" });
    store.create(vars({ x: "y" }), { force: true });
    expect(decode(new Uint8Array(readFileSync(path).subarray(0x1c00)), { size: 0x400, redundant: false }).vars).toEqual(vars({ x: "y" }));
  });

  test("single whole-file env is replaced by rename (no temp file left)", () => {
    const d = tmp();
    const path = join(d, "uboot.env");
    const store = new EnvStore(sys, { copies: [{ path, offset: 0, size: 0x100 }], source: "t" });
    store.create(vars({ a: "1" }));
    const inode = statSync(path).ino;
    store.update([{ name: "a", value: "2" }]);
    expect(statSync(path).ino).not.toBe(inode);
    expect(Object.fromEntries(store.read().vars)).toEqual({ a: "2" });
    expect(() => statSync(join(d, ".uboot.env.zb-new"))).toThrow();
  });

  test("missing files: IO error naming the path", () => {
    const store = new EnvStore(sys, defaultConfig(join(tmp(), "nothing")));
    expect(() => store.read()).toThrow(expect.objectContaining({ code: "IO", message: expect.stringContaining("zb.env") }));
  });
});

/**
 * A single whole-file env is replaced by rename for power safety; what the
 * bootloader reads must still be the new env, as with fw_setenv (libubootenv
 * 0.3.2 writes in place: measured, same inode, symlink and mode kept).
 */
describe("single whole-file env: links, mode, owner, full disk", () => {
  const S = { size: 0x100, redundant: false };
  /** dir/S.env holding a=1 (or a symlink to real/S.env); returns the paths. */
  function single(how: "file" | "symlink" | "hardlink"): { dir: string; path: string; real: string; store: EnvStore } {
    const dir = tmp();
    const real = how === "symlink" ? join(dir, "real", "S.env") : join(dir, "S.env");
    mkdirSync(join(dir, "real"));
    writeFileSync(real, encode(vars({ a: "1" }), S));
    const path = join(dir, "S.env");
    if (how === "symlink") symlinkSync("real/S.env", path);
    if (how === "hardlink") linkSync(path, join(dir, "real", "uboot.env"));
    return { dir, path, real, store: new EnvStore(sys, { copies: [{ path, offset: 0, size: S.size }], source: "t" }) };
  }
  const varsAt = (p: string) => Object.fromEntries(decode(new Uint8Array(readFileSync(p)), S).vars);

  test("symlink: before S.env -> real/S.env {a=1}; after the link is kept and real/S.env holds a=2", () => {
    const { dir, path, real, store } = single("symlink");
    store.update([{ name: "a", value: "2" }]);
    expect(lstatSync(path).isSymbolicLink()).toBe(true);
    expect(varsAt(real)).toEqual({ a: "2" });
    expect([readdirSync(dir).sort(), readdirSync(join(dir, "real"))]).toEqual([["S.env", "real"], ["S.env"]]);
  });

  test("symlink: the temp file and the rename are in the target's folder", () => {
    const { dir, real, path } = single("symlink");
    const recording = new CuttingSys(sys, { never: true });
    new EnvStore(recording, { copies: [{ path, offset: 0, size: S.size }], source: "t" }).update([{ name: "a", value: "2" }]);
    const tmpFile = join(dir, "real", ".S.env.zb-new");
    expect(recording.ops.filter((o) => o.kind !== "unlink").map((o) => `${o.kind} ${o.path}`)).toEqual([
      `write ${tmpFile}`, `fsync ${tmpFile}`, `rename ${real}`, `fsync ${real}`, `fsync ${join(dir, "real")}`,
    ]);
  });

  test("hard link: before S.env = real/uboot.env {a=1}; after both names hold a=2 (written in place, no rename)", () => {
    const { dir, path, store } = single("hardlink");
    const inode = statSync(path).ino;
    const recording = new CuttingSys(sys, { never: true });
    new EnvStore(recording, store.config).update([{ name: "a", value: "2" }]);
    expect(recording.ops.map((o) => `${o.kind} ${basename(o.path)}`)).toEqual(["write S.env", "fsync S.env"]);
    expect(statSync(path).ino).toBe(inode);
    expect([varsAt(path), varsAt(join(dir, "real", "uboot.env"))]).toEqual([{ a: "2" }, { a: "2" }]);
  });

  test.each([
    { name: "0600 stays 0600", before: 0o600, after: 0o600 },
    { name: "0640 stays 0640", before: 0o640, after: 0o640 },
    { name: "0444 stays 0444", before: 0o444, after: 0o444 },
    { name: "0644 stays 0644", before: 0o644, after: 0o644 },
  ])("mode: $name", ({ before, after }) => {
    const { path, store } = single("file");
    chmodSync(path, before);
    store.update([{ name: "a", value: "2" }]);
    expect(statSync(path).mode & 0o7777).toBe(after);
    expect(varsAt(path)).toEqual({ a: "2" });
  });

  test("owner: kept (as root, any owner: 1234:4321; otherwise this process's own, the only one it can give)", () => {
    const { path, store } = single("file");
    const owner = process.getuid?.() === 0 ? [1234, 4321] : [process.getuid!(), process.getgid!()];
    chownSync(path, owner[0]!, owner[1]!);
    store.update([{ name: "a", value: "2" }]);
    expect([statSync(path).uid, statSync(path).gid]).toEqual(owner);
  });

  test("full disk: the temp file does not fit; IO saying so, env and folder unchanged", () => {
    const { dir, path, store } = single("file");
    const before = readFileSync(path);
    const full = new NoSpaceForTemp(sys);
    expect(() => new EnvStore(full, store.config).update([{ name: "a", value: "2" }])).toThrow(
      expect.objectContaining({ code: "IO", message: expect.stringMatching(/^cannot write env .*S\.env: no space left in .* for the 256-byte temporary copy .*; the env is unchanged$/) }),
    );
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(["S.env", "real"]);
  });

  test("a write error other than a full disk is reported as it is", () => {
    const { store } = single("file");
    const failing = new NoSpaceForTemp(sys, "EIO");
    expect(() => new EnvStore(failing, store.config).update([{ name: "a", value: "2" }])).toThrow(
      expect.objectContaining({ code: "IO", message: expect.stringMatching(/^cannot write .*\.S\.env\.zb-new: input\/output error$/) }),
    );
  });
});

/** Fails writes of temp files (`.NAME.zb-new`) as a full file system would. */
class NoSpaceForTemp extends CuttingSys {
  constructor(inner: HostSys, private readonly errno = "ENOSPC") {
    super(inner, { never: true });
  }
  override writeAt(path: string, offset: number, data: Uint8Array, opts?: WriteOptions): void {
    if (path.endsWith(".zb-new")) {
      super.writeAt(path, offset, data.subarray(0, 0), opts); // the create succeeds, the data does not fit
      throw ioError(`write ${path}`, Object.assign(new Error("write failed"), { code: this.errno }));
    }
    super.writeAt(path, offset, data, opts);
  }
}

/**
 * Two copies over the same bytes of one file: the save of the inactive copy
 * would overwrite the active one (libubootenv 0.3.2 does: measured).
 */
describe("openStore refuses copies that overlap", () => {
  /** A 0x8000-byte disk.img in a fresh folder, plus links to it. */
  function disk(): string {
    const dir = tmp();
    writeFileSync(join(dir, "disk.img"), new Uint8Array(0x8000));
    symlinkSync("disk.img", join(dir, "sym.img"));
    linkSync(join(dir, "disk.img"), join(dir, "hard.img"));
    writeFileSync(join(dir, "other.img"), new Uint8Array(0x8000));
    return dir;
  }
  test.each([
    { name: "same file through a symlink, same offset", cfg: "disk.img 0 4000\nsym.img 0 4000", refused: /copies overlap in .*disk\.img and .*sym\.img \(one file\): \[0x0, 0x4000\) and \[0x0, 0x4000\)/ },
    { name: "same file through a hard link, overlapping", cfg: "disk.img 0 4000\nhard.img 0x2000 4000", refused: /\[0x0, 0x4000\) and \[0x2000, 0x6000\)/ },
    { name: "from the start and from the end, meeting", cfg: "disk.img 0x1000 4000\ndisk.img -0x4000 4000", refused: /\[0x1000, 0x5000\) and \[0x4000, 0x8000\)/ },
    { name: "from the start and from the end, apart", cfg: "disk.img 0 4000\ndisk.img -0x4000 4000", refused: null },
    { name: "through a symlink, back to back", cfg: "disk.img 0 4000\nsym.img 0x4000 4000", refused: null },
    { name: "two files", cfg: "disk.img 0 4000\nother.img 0 4000", refused: null },
    { name: "second copy missing (recreated on write)", cfg: "disk.img 0 4000\nmissing.img 0 4000", refused: null },
  ])("$name", ({ cfg, refused }) => {
    const dir = disk();
    const file = join(dir, "fw_env.config");
    writeFileSync(file, cfg.split("\n").map((l) => join(dir, l)).join("\n") + "\n");
    const open = () => openStore(sys, { configFile: file });
    if (refused) expect(open).toThrow(expect.objectContaining({ code: "CONFIG", message: expect.stringMatching(refused) }));
    else expect(open().config.copies.length).toBe(2);
  });
});

/**
 * The config file is read up to MAX_CONFIG_FILE_BYTES: a path that is no
 * fw_env.config (`-c /dev/zero`, a partition) is refused (CONFIG), not read
 * until memory runs out; the env copies it names are read by their size
 * only, whatever they are (stages/ tests /dev/zero and FIFOs end to end).
 */
describe("openStore reads a bounded config", () => {
  /** A valid single-copy config padded with comment lines to `size` bytes. */
  function paddedConfig(size: number): { file: string; env: string } {
    const dir = tmp();
    const env = join(dir, "uboot.env");
    writeFileSync(env, encode(vars({ a: "1" }), { size: 0x1000, redundant: false }));
    const line = `${env} 0x0 0x1000\n`;
    const file = join(dir, "fw_env.config");
    writeFileSync(file, line + "#".repeat(size - line.length - 1) + "\n");
    return { file, env };
  }
  test.each([
    { name: "exactly MAX_CONFIG_FILE_BYTES: read", size: MAX_CONFIG_FILE_BYTES, refused: false },
    { name: "one byte more: CONFIG, naming the limit", size: MAX_CONFIG_FILE_BYTES + 1, refused: true },
  ])("$name", ({ size, refused }) => {
    const { file } = paddedConfig(size);
    const open = () => openStore(sys, { configFile: file });
    if (!refused) expect(Object.fromEntries(open().read().vars)).toEqual({ a: "1" });
    else expect(open).toThrow(expect.objectContaining({ code: "CONFIG", message: `cannot read env config ${file}: larger than 65536 bytes (is it the right file?)` }));
  });

  test.each([
    { name: "a single copy on /dev/zero: its 0x4000 bytes, ENV_CRC", cfg: "/dev/zero 0x0 0x4000\n", code: "ENV_CRC" },
    { name: "a pair on /dev/zero at two offsets: 16 MiB each at most, ENV_CRC", cfg: "/dev/zero 0x0 0x1000000\n/dev/zero 0x1000000 0x1000000\n", code: "ENV_CRC" },
  ])("the env copies are read by their configured size: $name", ({ cfg, code }) => {
    const file = join(tmp(), "fw_env.config");
    writeFileSync(file, cfg);
    expect(() => openStore(sys, { configFile: file }).read()).toThrow(expect.objectContaining({ code }));
  });
});
