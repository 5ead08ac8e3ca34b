/**
 * EnvStore against real files in a temp dir: which copy a save writes, the
 * dirty check, degraded pairs, creation, layouts inside one file.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { decode, encode, type Vars } from "../../../lib/env/codec.ts";
import { defaultConfig, type StoreConfig } from "../../../lib/env/config.ts";
import { EnvStore } from "../../../lib/env/store.ts";
import { HostSys } from "../../../lib/sys/sys.ts";
import { CuttingSys } from "../../fakes/powercut.ts";
import { tempDirs } from "../../tempdirs.ts";

const sys = new HostSys();
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
