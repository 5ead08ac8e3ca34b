/**
 * parseLuksHeader / verifyLuks2Checksum against headers written by the real
 * cryptsetup (LUKS2 primary and secondary copy, LUKS1), UUIDs compared with
 * `cryptsetup luksUUID`; spoiled headers and other content read as "not LUKS".
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { LUKS_PROBE_BYTES, parseLuksHeader, secondaryLuksHeader, verifyLuks2Checksum } from "../../../lib/luks/header.ts";

const CRYPTSETUP = Bun.which("cryptsetup", { PATH: `${process.env.PATH}:/usr/sbin:/sbin` })!;
const dir = mkdtempSync(join(tmpdir(), "zb-luks-header-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function format(name: string, extra: string[]): { path: string; bytes: Uint8Array; uuid: string } {
  const path = join(dir, name);
  writeFileSync(path, "");
  Bun.spawnSync(["truncate", "-s", "32M", path]);
  const f = Bun.spawnSync([CRYPTSETUP, "luksFormat", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", ...extra, path], { stdin: new Uint8Array(32).fill(7), stderr: "pipe" });
  expect(f.exitCode).toBe(0);
  const uuid = Bun.spawnSync([CRYPTSETUP, "luksUUID", path]).stdout.toString().trim();
  expect(uuid).toMatch(/^[0-9a-f-]{36}$/);
  return { path, bytes: new Uint8Array(readFileSync(path).subarray(0, 1 << 20)), uuid };
}

const luks2 = format("luks2.img", ["--type", "luks2", "--label", "zb-root", "--subsystem", "zb"]);
const luks2big = format("luks2-64k.img", ["--type", "luks2", "--luks2-metadata-size", "64k"]);
const luks1 = format("luks1.img", ["--type", "luks1"]);

describe("real headers", () => {
  test("LUKS2 primary: version, UUID (= luksUUID), label, subsystem, sizes", () => {
    const h = parseLuksHeader(luks2.bytes.subarray(0, LUKS_PROBE_BYTES));
    expect(h).toEqual({
      version: 2, uuid: luks2.uuid, secondary: false, label: "zb-root", subsystem: "zb",
      hdrSize: 16384, seqid: expect.any(Number), checksumAlg: "sha256", hdrOffset: 0,
    });
  });

  test("LUKS2 secondary copy at hdr_size: same UUID, marked secondary", () => {
    const h = parseLuksHeader(luks2.bytes.subarray(16384));
    expect([h?.uuid, h?.secondary, h?.hdrOffset]).toEqual([luks2.uuid, true, 16384]);
    expect(verifyLuks2Checksum(luks2.bytes.subarray(16384))).toBe(true);
  });

  test("LUKS2 checksum verifies on cryptsetup's bytes", () => {
    expect(verifyLuks2Checksum(luks2.bytes)).toBe(true);
  });

  test("LUKS1: version 1 and the UUID", () => {
    expect(parseLuksHeader(luks1.bytes)).toEqual({ version: 1, uuid: luks1.uuid });
    expect(verifyLuks2Checksum(luks1.bytes)).toBe(false);
  });
});

describe("before (a spoiled LUKS2 header) / after (parse, checksum)", () => {
  const spoil = (at: number, value?: number) => {
    const b = new Uint8Array(luks2.bytes);
    b[at] = value ?? b[at]! ^ 0xff;
    return b;
  };
  const rows: { name: string; before: () => Uint8Array; after: { parses: boolean; checksum: boolean } }[] = [
    { name: "unchanged", before: () => luks2.bytes, after: { parses: true, checksum: true } },
    { name: "a JSON byte changed", before: () => spoil(4096 + 10), after: { parses: true, checksum: false } },
    { name: "a label byte changed", before: () => spoil(24, 0x41), after: { parses: true, checksum: false } },
    { name: "a checksum byte changed", before: () => spoil(448), after: { parses: true, checksum: false } },
    { name: "magic broken", before: () => spoil(0), after: { parses: false, checksum: false } },
    { name: "version 3", before: () => spoil(7, 3), after: { parses: false, checksum: false } },
    { name: "UUID not a UUID", before: () => spoil(168, 0x7a), after: { parses: false, checksum: false } },
    { name: "hdr_size not a power of two", before: () => spoil(14, 0x41), after: { parses: false, checksum: false } },
    { name: "hdr_offset not 0 in a primary (cryptsetup refuses it)", before: () => spoil(256 + 6, 0x40), after: { parses: false, checksum: false } },
    { name: "cut to 4 KiB (checksum needs hdr_size bytes)", before: () => luks2.bytes.subarray(0, 4096), after: { parses: true, checksum: false } },
    { name: "shorter than 512 bytes", before: () => luks2.bytes.subarray(0, 511), after: { parses: false, checksum: false } },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const b = before();
    expect({ parses: parseLuksHeader(b) !== null, checksum: verifyLuks2Checksum(b) }).toEqual(after);
  });
});

describe("other content is not LUKS", () => {
  const rows: { name: string; before: Uint8Array }[] = [
    { name: "zeros", before: new Uint8Array(4096) },
    { name: "random bytes", before: Uint8Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24) },
    { name: "an ext4 superblock area", before: (() => {
      const b = new Uint8Array(4096);
      b.set([0x53, 0xef], 1024 + 56); // ext4 magic 0xEF53 (LE) at superblock offset 56
      return b;
    })() },
  ];
  test.each(rows)("$name", ({ before }) => {
    expect(parseLuksHeader(before)).toBeNull();
  });
});

describe("secondaryLuksHeader: the copy cryptsetup falls back to", () => {
  const edit = (src: Uint8Array, ...changes: [at: number, value: number][]) => {
    const b = new Uint8Array(src);
    for (const [at, value] of changes) b[at] = value;
    return b;
  };
  const rows: { name: string; before: () => Uint8Array; after: { uuid: string; at: number } | null }[] = [
    { name: "intact device", before: () => luks2.bytes, after: { uuid: luks2.uuid, at: 16384 } },
    { name: "primary magic wiped", before: () => edit(luks2.bytes, [0, 0], [1, 0], [2, 0]), after: { uuid: luks2.uuid, at: 16384 } },
    { name: "primary wiped, 64 KiB metadata (secondary at 64 KiB)", before: () => edit(luks2big.bytes, [0, 0]), after: { uuid: luks2big.uuid, at: 65536 } },
    { name: "secondary checksum byte changed", before: () => edit(luks2.bytes, [0, 0], [16384 + 448, luks2.bytes[16384 + 448]! ^ 1]), after: null },
    { name: "secondary JSON byte changed", before: () => edit(luks2.bytes, [0, 0], [16384 + 4096 + 3, 0x7a]), after: null },
    { name: "secondary magic wiped too (wipefs)", before: () => edit(luks2.bytes, [0, 0], [16384, 0]), after: null },
    { name: "LUKS1 (no secondary)", before: () => luks1.bytes, after: null },
    { name: "device shorter than 16 KiB", before: () => luks2.bytes.subarray(0, 8192), after: null },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const b = before();
    const h = secondaryLuksHeader((off, n) => b.subarray(off, off + n));
    expect(h === null ? null : { uuid: h.uuid, at: h.hdrOffset }).toEqual(after);
  });

  test("a copy at an offset other than its hdr_offset is not taken", () => {
    // The 16 KiB secondary moved to 32 KiB: its hdr_offset field says 16 KiB.
    const b = new Uint8Array(1 << 20);
    b.set(luks2.bytes.subarray(16384, 32768), 32768);
    expect(secondaryLuksHeader((off, n) => b.subarray(off, off + n))).toBeNull();
    expect(parseLuksHeader(b.subarray(32768))?.hdrOffset).toBe(16384);
  });
});
