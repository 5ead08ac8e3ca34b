/**
 * The newc codec against GNU cpio 2.13, both directions:
 *   - writeCpio(tree) is byte-identical to `cpio -o -H newc --reproducible`
 *     run on the same tree laid out on disk (mtime 0, same modes);
 *   - `cpio -i` extracts what writeCpio wrote (names, bytes, modes);
 *   - readCpio reads what `cpio -o -H newc` wrote (real inode numbers and mtimes).
 * Plus concatenated archives with NUL padding (the kernel's buffer format),
 * malformed input rows (before: a mutation, after: the CRED_INVALID reason)
 * and a property test that mutated archives never escape as anything but a ZbError.
 */
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { chmodSync, mkdirSync, readFileSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readCpio, readOneArchive, writeCpio, type CpioInput, type CpioLimits, DEFAULT_LIMITS } from "../../../lib/luks/cpio.ts";
import { ZbError } from "../../../lib/errors.ts";
import { tempDirs } from "../../tempdirs.ts";

const tempDir = tempDirs("zb-cpio-");

const bytes = (s: string) => new TextEncoder().encode(s);

/** Lay `entries` out under `root` with their modes and mtimes (dirs last, so their mtime sticks). */
function layOut(root: string, entries: CpioInput[]): void {
  for (const e of entries) {
    const p = join(root, e.name);
    if (e.kind === "dir") mkdirSync(p, { recursive: true });
    else writeFileSync(p, e.data ?? new Uint8Array(0));
  }
  for (const e of [...entries].reverse()) {
    const p = join(root, e.name);
    chmodSync(p, e.mode);
    utimesSync(p, e.mtime ?? 0, e.mtime ?? 0);
  }
}

function gnuCpioOut(root: string, names: string[], extra: string[] = ["--reproducible"]): Uint8Array {
  const p = Bun.spawnSync(["cpio", "-o", "-H", "newc", "--quiet", ...extra], { cwd: root, stdin: bytes(names.join("\n") + "\n"), stderr: "pipe" });
  expect(p.exitCode).toBe(0);
  return new Uint8Array(p.stdout);
}

function gnuCpioIn(archive: Uint8Array): string {
  const dir = tempDir();
  const p = Bun.spawnSync(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames", "--preserve-modification-time"], { cwd: dir, stdin: archive, stderr: "pipe" });
  expect(p.stderr.toString()).toBe("");
  expect(p.exitCode).toBe(0);
  return dir;
}

const TREES: { name: string; entries: CpioInput[] }[] = [
  {
    name: "credentials layout",
    entries: [
      { name: "zb", kind: "dir", mode: 0o755 },
      { name: "zb/credentials", kind: "dir", mode: 0o700 },
      { name: "zb/credentials/meta.json", kind: "file", mode: 0o400, data: bytes('{"format":"zb-credentials/1"}\n') },
      { name: "zb/credentials/root.sealed", kind: "file", mode: 0o400, data: bytes('{"backend":"soft","data":{}}\n') },
    ],
  },
  {
    name: "every name and data padding (lengths 0..3 mod 4), nested dirs, empty file",
    entries: [
      { name: "d", kind: "dir", mode: 0o755 },
      { name: "d/e", kind: "dir", mode: 0o750 },
      { name: "d/e/f", kind: "dir", mode: 0o700 },
      { name: "d/a", kind: "file", mode: 0o644, data: bytes("1") },
      { name: "d/ab", kind: "file", mode: 0o600, data: bytes("12") },
      { name: "d/abc", kind: "file", mode: 0o444, data: bytes("123") },
      { name: "d/abcd", kind: "file", mode: 0o400, data: bytes("1234") },
      { name: "d/e/empty", kind: "file", mode: 0o644, data: new Uint8Array(0) },
      { name: "d/e/f/bin", kind: "file", mode: 0o755, data: Uint8Array.from({ length: 1001 }, (_, i) => (i * 7) & 0xff) },
    ],
  },
  {
    name: "a file spanning several 512-byte blocks, NUL and newline bytes",
    entries: [{ name: "big", kind: "file", mode: 0o600, data: Uint8Array.from({ length: 5000 }, (_, i) => (i % 3 === 0 ? 0 : i % 3 === 1 ? 10 : i & 0xff)) }],
  },
];

describe("writeCpio before (a tree) / after (GNU cpio's bytes)", () => {
  test.each(TREES)("$name: identical to cpio -o -H newc --reproducible", ({ entries }) => {
    const root = tempDir();
    layOut(root, entries);
    const gnu = gnuCpioOut(root, entries.map((e) => e.name));
    const ours = writeCpio(entries);
    expect(ours.length % 512).toBe(0);
    expect(Buffer.from(ours).equals(Buffer.from(gnu))).toBe(true);
  });

  test.each(TREES)("$name: cpio -i extracts names, bytes, modes", ({ entries }) => {
    const out = gnuCpioIn(writeCpio(entries));
    for (const e of entries) {
      const st = statSync(join(out, e.name));
      expect(st.isDirectory()).toBe(e.kind === "dir");
      expect(st.mode & 0o7777).toBe(e.mode);
      if (e.kind === "file") expect(Buffer.from(readFileSync(join(out, e.name))).equals(Buffer.from(e.data ?? []))).toBe(true);
    }
  });
});

describe("readCpio before (GNU cpio's bytes) / after (entries)", () => {
  test.each(TREES)("$name: reads a non-reproducible GNU archive (real inodes, mtimes)", ({ entries }) => {
    const root = tempDir();
    const stamped = entries.map((e, i) => ({ ...e, mtime: 1_700_000_000 + i }));
    layOut(root, stamped);
    const [archive, ...more] = readCpio(gnuCpioOut(root, entries.map((e) => e.name), []));
    expect(more).toHaveLength(0);
    expect(archive!.entries.map((e) => ({ name: e.name, kind: e.kind, perm: e.mode & 0o7777, mtime: e.mtime, data: Buffer.from(e.data).toString("hex") }))).toEqual(
      stamped.map((e) => ({ name: e.name, kind: e.kind, perm: e.mode, mtime: e.mtime, data: Buffer.from(e.data ?? []).toString("hex") })),
    );
  });

  test("a symlink (GNU cpio) reads as kind symlink with its target as data", () => {
    const root = tempDir();
    Bun.spawnSync(["ln", "-s", "target/path", join(root, "link")]);
    const e = readCpio(gnuCpioOut(root, ["link"]))[0]!.entries[0]!;
    expect([e.kind, new TextDecoder().decode(e.data)]).toEqual(["symlink", "target/path"]);
  });
});

describe("concatenated archives (kernel buffer format)", () => {
  const a = writeCpio([{ name: "one", kind: "file", mode: 0o644, data: bytes("first") }], { block: 4 });
  const b = writeCpio([{ name: "two", kind: "file", mode: 0o644, data: bytes("second") }]);
  const rows: { name: string; before: Uint8Array[]; after: string[][] }[] = [
    { name: "back to back", before: [a, b], after: [["one"], ["two"]] },
    { name: "NUL runs between and after", before: [new Uint8Array(8), a, new Uint8Array(12), b, new Uint8Array(100)], after: [["one"], ["two"]] },
    { name: "three archives", before: [b, a, b], after: [["two"], ["one"], ["two"]] },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const archives = readCpio(Buffer.concat(before));
    expect(archives.map((x) => x.entries.map((e) => e.name))).toEqual(after);
    const offsets = archives.map((x) => x.offset);
    expect(offsets.every((o) => o % 4 === 0)).toBe(true);
  });
});

/** A small valid archive to spoil: "ab" (4 bytes of data) then the trailer. */
const GOOD = writeCpio([{ name: "ab", kind: "file", mode: 0o644, data: bytes("data") }], { block: 4 });
const NAME_AT = 110;
const spoil = (f: (b: Uint8Array) => Uint8Array | void) => () => {
  const b = new Uint8Array(GOOD);
  return f(b) ?? b;
};
const setField = (b: Uint8Array, i: number, text: string) => b.set(bytes(text), 6 + 8 * i);

describe("readCpio before (spoiled bytes) / after (CRED_INVALID reason)", () => {
  const rows: { name: string; before: () => Uint8Array; limits?: Partial<CpioLimits>; after: RegExp }[] = [
    { name: "empty input", before: () => new Uint8Array(0), after: /no cpio archive/ },
    { name: "only zeros", before: () => new Uint8Array(64), after: /no cpio archive/ },
    { name: "zstd magic (compressed)", before: () => Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd, ...new Uint8Array(200)), after: /not a newc cpio header/ },
    { name: "old binary cpio magic", before: spoil((b) => b.set(bytes("070707"), 0)), after: /not a newc cpio header/ },
    { name: "crc format", before: spoil((b) => b.set(bytes("070702"), 0)), after: /070702/ },
    { name: "non-hex field", before: spoil((b) => setField(b, 6, "0000000G")), after: /field 6 is not 8 hex digits/ },
    { name: "name size 0", before: spoil((b) => setField(b, 11, "00000000")), after: /name size 0 out of range/ },
    { name: "name size past the end", before: spoil((b) => setField(b, 11, "00001000")), after: /name size|truncated name/ },
    { name: "name not NUL-terminated", before: spoil((b) => { b[NAME_AT + 2] = 0x41; }), after: /not NUL-terminated/ },
    { name: "NUL inside the name", before: spoil((b) => { b[NAME_AT] = 0; }), after: /NUL inside the name/ },
    { name: "data past the end", before: spoil((b) => setField(b, 6, "00010000")), after: /truncated data/ },
    { name: "directory with data", before: spoil((b) => setField(b, 1, "000041ED")), after: /directory "ab" has data/ },
    { name: "no trailer", before: () => GOOD.subarray(0, 120), after: /truncated archive \(no trailer\)/ },
    { name: "cut inside a header", before: () => GOOD.subarray(0, 60), after: /truncated header/ },
    { name: "second archive misaligned", before: () => Buffer.concat([GOOD, new Uint8Array(2), GOOD]), after: /4-byte boundary/ },
    { name: "garbage after the trailer", before: () => Buffer.concat([GOOD, bytes("junk")]), after: /not a newc cpio header/ },
    { name: "too many entries", before: () => writeCpio([1, 2, 3].map((i) => ({ name: `f${i}`, kind: "file" as const, mode: 0o644 }))), limits: { maxEntries: 2 }, after: /more than 2 entries/ },
    { name: "file too large", before: () => GOOD, limits: { maxFileBytes: 3 }, after: /larger than 3 bytes/ },
    { name: "name too long", before: () => writeCpio([{ name: "x".repeat(65), kind: "dir", mode: 0o755 }]), limits: { maxNameBytes: 64 }, after: /name size 66 out of range/ },
    { name: "too many archives", before: () => Buffer.concat([GOOD, GOOD, GOOD]), limits: { maxArchives: 2 }, after: /more than 2 archives/ },
  ];
  test.each(rows)("$name", ({ before, limits, after }) => {
    let err: unknown;
    try {
      readCpio(before(), { ...DEFAULT_LIMITS, ...limits });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ZbError);
    expect((err as ZbError).code).toBe("CRED_INVALID");
    expect((err as ZbError).message).toMatch(/^cannot read cpio archive at offset \d+: /);
    expect((err as ZbError).message).toMatch(after);
  });

  test("the unspoiled archive reads (the rows fail for their reason only)", () => {
    expect(readCpio(GOOD)[0]!.entries.map((e) => [e.name, new TextDecoder().decode(e.data)])).toEqual([["ab", "data"]]);
  });
});

describe("writeCpio refuses what newc cannot hold", () => {
  const rows: { name: string; before: CpioInput; after: RegExp }[] = [
    { name: "empty name", before: { name: "", kind: "file", mode: 0o644 }, after: /empty name/ },
    { name: "NUL in name", before: { name: "a\0b", kind: "file", mode: 0o644 }, after: /NUL in name/ },
    { name: "data on a directory", before: { name: "d", kind: "dir", mode: 0o755, data: bytes("x") }, after: /directory has no data/ },
    { name: "mtime beyond 32 bits", before: { name: "f", kind: "file", mode: 0o644, mtime: 2 ** 32 }, after: /32-bit/ },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    expect(() => writeCpio([before])).toThrow(after);
  });
});

describe("robustness", () => {
  test("random mutations give entries or CRED_INVALID, nothing else", () => {
    const base = writeCpio(TREES[1]!.entries, { block: 4 });
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(base.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), fc.nat(base.length), (muts, cut) => {
        const b = new Uint8Array(base.subarray(0, Math.max(cut, 1)));
        for (const [i, v] of muts) if (i < b.length) b[i] = v;
        try {
          const archives = readCpio(b);
          for (const a of archives) for (const e of a.entries) expect(e.offset + e.data.length).toBeLessThanOrEqual(b.length);
        } catch (e) {
          expect(e).toBeInstanceOf(ZbError);
          expect((e as ZbError).code).toBe("CRED_INVALID");
        }
      }),
      { numRuns: 2000, seed: 20240501 },
    );
  });

  test("readOneArchive reports the end of the archive before its padding", () => {
    const a = writeCpio([{ name: "x", kind: "file", mode: 0o644, data: bytes("y") }]);
    const r = readOneArchive(a, 0);
    expect(r.end).toBe(writeCpio([{ name: "x", kind: "file", mode: 0o644, data: bytes("y") }], { block: 4 }).length);
    expect(a.subarray(r.end).every((x) => x === 0)).toBe(true);
  });
});
