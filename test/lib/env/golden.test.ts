/**
 * Golden vectors: lib/env/codec.ts and lib/env/redundant.ts against images
 * made by the real tools (test/vectors/env/gen.sh: Debian's mkenvimage and
 * libubootenv's fw_setenv; versions in test/vectors/env/VERSIONS).
 *
 * Table-driven from manifest.json. For every copy of every vector:
 *   - a valid copy decodes (tryDecode and decode) to exactly the expected vars
 *     and flag; a copy the generator spoiled fails with ENV_CRC;
 *   - encoding the expected vars reproduces the tool's bytes, as far as the
 *     vector's `compare` field says (see below);
 * and for every redundant pair, pickActive chooses the copy that fw_setenv
 * and fw_printenv were observed to treat as current (envspec.md §1.2).
 *
 * Which bytes are compared (`compare`):
 *   "full"    every byte, CRC included. Our encoder is given the padding byte
 *             the tool left: `pad` for mkenvimage (0xFF, or its -p byte), and
 *             for libubootenv the byte observed in the file when its padding
 *             is uniform. libubootenv's padding is an uninitialised malloc
 *             buffer (envspec.md §1.1, libubootenv src/uboot_env.c
 *             libuboot_env_store), so there is no "right" byte; passing the
 *             observed one lets us still demand full identity.
 *   "entries" libubootenv copies whose padding is *not* uniform (the heap
 *             still held an older, longer env). Bytes 4 .. entriesEnd-1 must
 *             be equal: the flag byte (redundant) and every entry up to and
 *             including the terminating NUL. Excluded: bytes 0-3, because the
 *             CRC covers the padding (envspec.md §1.1) and so differs, and
 *             everything from entriesEnd on (the padding itself). The copy's
 *             own CRC is still checked, by decode.
 *   "none"    mkenvimage kept an unsorted input order or a duplicate name;
 *             our encoder sorts (as U-Boot hexport_r and libubootenv do), so
 *             only the decoded vars are compared.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { decode, encode, tryDecode, type Layout, type Vars } from "../../../lib/env/codec.ts";
import { pickActive } from "../../../lib/env/redundant.ts";

const DIR = join(import.meta.dir, "../../vectors/env");

interface ManifestCopy {
  file: string;
  offset: number;
  valid: boolean;
  writer: "mkenvimage" | "libubootenv";
  vars?: Record<string, string>;
  flag?: number | null;
  entriesEnd?: number;
  pad?: number | "undefined";
  observedPad?: number | null;
  compare?: "full" | "entries" | "none";
}

interface ManifestVector {
  name: string;
  tool: string;
  command: string;
  size: number;
  redundant: boolean;
  active: 0 | 1 | null;
  copies: ManifestCopy[];
}

interface Manifest {
  versions: Record<string, string>;
  vectors: ManifestVector[];
}

const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as Manifest;
const files = new Map<string, Uint8Array>();

/** One copy's bytes: `size` bytes at `offset` of its file (pairs may share one file). */
function bytesOf(c: ManifestCopy, size: number): Uint8Array {
  let whole = files.get(c.file);
  if (!whole) {
    whole = new Uint8Array(readFileSync(join(DIR, c.file)));
    files.set(c.file, whole);
  }
  expect(whole.length).toBeGreaterThanOrEqual(c.offset + size);
  return whole.subarray(c.offset, c.offset + size);
}

/**
 * JSON values are UTF-16 strings; the codec works on latin1 byte strings.
 * The vectors hold only ASCII, but check it so a future non-ASCII vector
 * fails loudly here instead of comparing the wrong thing.
 */
function expectedVars(c: ManifestCopy): Vars {
  const m: Vars = new Map();
  for (const [k, v] of Object.entries(c.vars ?? {})) {
    expect(/^[\x00-\x7f]*$/.test(k + v)).toBe(true);
    m.set(k, v);
  }
  return m;
}

/** Sorted entries, so Map insertion order and JSON key order never matter. */
function sorted(vars: ReadonlyMap<string, string>): [string, string][] {
  return [...vars.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function hexDiff(actual: Uint8Array, expected: Uint8Array): string {
  const n = Math.min(actual.length, expected.length);
  for (let i = 0; i < n; i++) {
    if (actual[i] !== expected[i]) {
      const show = (b: Uint8Array) => Buffer.from(b.subarray(Math.max(0, i - 8), i + 8)).toString("hex");
      return `first difference at byte ${i}: ours ${show(actual)} vs tool ${show(expected)}`;
    }
  }
  return actual.length === expected.length ? "identical" : `lengths ${actual.length} vs ${expected.length}`;
}

describe("golden env vectors (mkenvimage, libubootenv fw_setenv)", () => {
  test("the manifest holds vectors of every kind", () => {
    const vs = manifest.vectors;
    // Guard against a vacuous pass: an empty or truncated manifest must fail.
    expect(vs.length).toBeGreaterThan(0);
    expect(vs.filter((v) => v.copies.length === 2).length).toBeGreaterThan(0);
    const compares = new Set(vs.flatMap((v) => v.copies.map((c) => c.compare)));
    for (const kind of ["full", "entries", "none"] as const) expect(compares.has(kind)).toBe(true);
    expect(vs.some((v) => v.copies.some((c) => !c.valid))).toBe(true);
    expect(Object.keys(manifest.versions).sort()).toEqual(["libubootenv-tool", "u-boot-tools"]);
  });

  for (const v of manifest.vectors) {
    const layout: Layout = { size: v.size, redundant: v.redundant };

    describe(`${v.name}: ${v.command.slice(0, 80)}`, () => {
      v.copies.forEach((c, i) => {
        const label = v.copies.length === 2 ? `copy ${i} (${c.writer})` : `${c.writer} image`;

        if (!c.valid) {
          test(`${label} was spoiled and fails its CRC`, () => {
            const r = tryDecode(bytesOf(c, v.size), layout);
            expect(r.ok).toBe(false);
            if (!r.ok) expect(r.code).toBe("ENV_CRC");
            expect(() => decode(bytesOf(c, v.size), layout)).toThrow();
          });
          return;
        }

        test(`${label} decodes to the expected vars and flag`, () => {
          const bytes = bytesOf(c, v.size);
          const want = expectedVars(c);
          const r = tryDecode(bytes, layout);
          if (!r.ok) throw new Error(`tryDecode failed: ${r.code}: ${r.why}`);
          expect(sorted(r.vars)).toEqual(sorted(want));
          const d = decode(bytes, layout);
          expect(sorted(d.vars)).toEqual(sorted(want));
          if (v.redundant) {
            expect(typeof c.flag).toBe("number");
            expect(r.flag).toBe(c.flag!);
            expect(d.flag).toBe(c.flag!);
          } else {
            expect(r.flag).toBeUndefined();
            expect(d.flag).toBeUndefined();
          }
        });

        if (c.compare === "full" || c.compare === "entries") {
          test(`${label} is reproduced by encode (${c.compare})`, () => {
            const tool = bytesOf(c, v.size);
            // The pad byte the tool actually left; mkenvimage's nominal one
            // when there is no padding at all (an exactly full env).
            const pad = c.observedPad ?? (typeof c.pad === "number" ? c.pad : 0xff);
            const flag = v.redundant ? { flag: c.flag! } : {};
            const ours = encode(expectedVars(c), layout, { ...flag, pad });
            if (c.compare === "full") {
              expect(hexDiff(ours, tool)).toBe("identical");
            } else {
              // Bytes 4 .. entriesEnd-1: flag (redundant) + entries + the
              // terminating NUL. CRC (0-3) and padding excluded, see above.
              const end = c.entriesEnd!;
              expect(end).toBeGreaterThan(4);
              expect(end).toBeLessThanOrEqual(v.size);
              expect(hexDiff(ours.subarray(4, end), tool.subarray(4, end))).toBe("identical");
              // After the terminator our encoder writes only padding.
              expect(ours.subarray(end).every((b) => b === pad)).toBe(true);
            }
          });
        }
      });

      if (v.copies.length === 2) {
        test(`pickActive chooses copy ${v.active}, as fw_printenv/fw_setenv did`, () => {
          const [a, b] = v.copies.map((c) => tryDecode(bytesOf(c, v.size), layout));
          const state = pickActive(a!, b!);
          expect(state.active).toBe(v.active!);
          const chosen = v.copies[v.active!]!;
          expect(sorted(state.copy.vars)).toEqual(sorted(expectedVars(chosen)));
          expect(state.copy.flag).toBe(chosen.flag!);
          // A degraded pair reports why the other copy was rejected.
          const other = v.copies[1 - v.active!]!;
          if (!other.valid) expect(state.otherFailure?.code).toBe("ENV_CRC");
          else expect(state.otherFailure).toBeUndefined();
        });
      }
    });
  }
});
