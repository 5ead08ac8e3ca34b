/**
 * Property tests of the codec (fast-check): random and mutated inputs give a
 * typed failure, never a crash; valid envs round-trip. Mutations re-seal the
 * CRC so they reach the parser instead of stopping at the checksum.
 */
import { expect, test } from "bun:test";
import fc from "fast-check";
import { crc32, decode, encode, tryDecode, type Layout } from "../../../lib/env/codec.ts";
import { ZbError } from "../../../lib/errors.ts";

const RUNS = 2000;
const layouts: Layout[] = [
  { size: 64, redundant: false },
  { size: 64, redundant: true },
  { size: 512, redundant: true },
];

/** Recompute the CRC so the mutation reaches the parser. */
function reseal(bytes: Uint8Array, l: Layout): Uint8Array {
  const hdr = l.redundant ? 5 : 4;
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(0, crc32(bytes.subarray(hdr)), true);
  return bytes;
}

/** decode must either succeed or throw a ZbError of an env code. */
function onlyTyped(bytes: Uint8Array, l: Layout): "ok" | string {
  const r = tryDecode(bytes, l);
  try {
    decode(bytes, l);
  } catch (e) {
    if (!(e instanceof ZbError)) throw e;
    expect(["ENV_CRC", "ENV_FORMAT"]).toContain(e.code);
    expect(r.ok).toBe(false);
    return e.code;
  }
  expect(r.ok).toBe(true);
  return "ok";
}

const name = fc.stringMatching(/^[A-Za-z0-9_.:-]{1,12}$/);
const value = fc.string({ unit: fc.integer({ min: 1, max: 255 }).map((c) => String.fromCharCode(c)), maxLength: 20 });
const varsArb = fc.dictionary(name, value, { maxKeys: 6 }).map((o) => new Map(Object.entries(o)));

test("random bytes of any length: only typed errors", () => {
  for (const l of layouts) {
    fc.assert(fc.property(fc.uint8Array({ minLength: 0, maxLength: l.size + 8 }), (b) => void onlyTyped(b, l)), { numRuns: RUNS });
  }
});

test("random data area with a valid CRC: parser gives only typed errors", () => {
  const seen = new Set<string>();
  for (const l of layouts) {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: l.size, maxLength: l.size }), (b) => void seen.add(onlyTyped(reseal(b, l), l))),
      { numRuns: RUNS },
    );
  }
  // The parser was reached: format errors were found, not just CRC failures.
  expect(seen.has("ENV_FORMAT")).toBe(true);
});

test("mutated valid envs (byte edits, NULs, '=' removal), resealed: only typed errors", () => {
  const seen = new Set<string>();
  const mutation = fc.record({ at: fc.nat(), byte: fc.constantFrom(0, 0x3d, 0xff, 0x41, 0x0a), count: fc.integer({ min: 1, max: 4 }) });
  for (const l of layouts.filter((x) => x.size >= 512)) {
    fc.assert(
      fc.property(varsArb, fc.array(mutation, { maxLength: 6 }), (vars, muts) => {
        const bytes = encode(vars, l, { flag: 3 });
        const hdr = l.redundant ? 5 : 4;
        for (const m of muts) bytes.fill(m.byte, hdr + (m.at % (l.size - hdr)), hdr + (m.at % (l.size - hdr)) + m.count);
        seen.add(onlyTyped(reseal(bytes, l), l));
      }),
      { numRuns: RUNS },
    );
  }
  expect(seen.has("ok")).toBe(true);
  expect(seen.has("ENV_FORMAT")).toBe(true);
});

test("bit flips without resealing are caught by the CRC", () => {
  const l = layouts[2]!;
  fc.assert(
    fc.property(varsArb, fc.integer({ min: 0, max: l.size * 8 - 1 }), (vars, bit) => {
      const bytes = encode(vars, l, { flag: 1 });
      const byte = bit >> 3;
      if (byte === 4) return; // the flag byte is outside the CRC by design
      bytes[byte]! ^= 1 << (bit & 7);
      expect(tryDecode(bytes, l)).toMatchObject({ ok: false, code: "ENV_CRC" });
    }),
    { numRuns: RUNS },
  );
});

test("encode then decode is the identity on valid envs", () => {
  const l = layouts[2]!;
  fc.assert(
    fc.property(varsArb, fc.integer({ min: 0, max: 255 }), (vars, flag) => {
      expect(decode(encode(vars, l, { flag }), l)).toEqual({ vars, flag });
    }),
    { numRuns: RUNS },
  );
});
