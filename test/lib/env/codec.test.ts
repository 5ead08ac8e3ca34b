/**
 * The pure codec, table-driven: rows read as bytes before / vars after, and
 * vars before / bytes after. Byte identity with the real tools is in
 * golden.test.ts; these rows pin the edge cases of envspec.md §1.
 */
import { describe, expect, test } from "bun:test";
import { crc32, decode, encode, encodedLength, tryDecode, type Layout } from "../../../lib/env/codec.ts";
import { ZbError } from "../../../lib/errors.ts";

const SINGLE: Layout = { size: 0x40, redundant: false };
const REDUND: Layout = { size: 0x40, redundant: true };

/** Build a copy by hand: header + data + padding, CRC over the data area. */
function raw(data: string, layout: Layout, opts: { pad?: number; flag?: number; badCrc?: boolean } = {}): Uint8Array {
  const hdr = layout.redundant ? 5 : 4;
  const out = new Uint8Array(layout.size).fill(opts.pad ?? 0xff);
  out.set(Buffer.from(data, "latin1"), hdr);
  if (layout.redundant) out[4] = opts.flag ?? 1;
  const crc = (crc32(out.subarray(hdr)) ^ (opts.badCrc ? 1 : 0)) >>> 0;
  new DataView(out.buffer).setUint32(0, crc, true);
  return out;
}

describe("crc32", () => {
  test("is CRC-32/IEEE (check value of '123456789')", () => {
    expect(crc32(Buffer.from("123456789"))).toBe(0xcbf43926);
  });
});

describe("decode accepts", () => {
  const rows: { name: string; data: string; layout?: Layout; pad?: number; vars: Record<string, string> }[] = [
    { name: "two entries and \\0\\0", data: "a=1\0b=2\0\0", vars: { a: "1", b: "2" } },
    { name: "mkenvimage's empty env (00 ff…)", data: "\0", vars: {} },
    { name: "empty env as \\0\\0", data: "\0\0", vars: {} },
    { name: "zero padding (U-Boot saveenv)", data: "a=1\0\0", pad: 0x00, vars: { a: "1" } },
    { name: "any padding byte", data: "a=1\0\0", pad: 0x5a, vars: { a: "1" } },
    { name: "empty value", data: "a=\0\0", vars: { a: "" } },
    { name: "'=' inside a value", data: "a=b=c\0\0", vars: { a: "b=c" } },
    { name: "unsorted input order (mkenvimage keeps it)", data: "z=1\0a=2\0\0", vars: { z: "1", a: "2" } },
    { name: "duplicate name: the last wins (U-Boot himport_r)", data: "a=1\0a=2\0\0", vars: { a: "2" } },
    { name: "bytes that are not UTF-8 survive", data: "v=\xff\xfe\x80\0\0", vars: { v: "\xff\xfe\x80" } },
    { name: "redundant header", data: "k=v\0\0", layout: REDUND, vars: { k: "v" } },
    {
      name: "last entry ends at the last byte, no empty entry after it (libubootenv's fw_setenv writes a full env so; U-Boot's himport_r reads it)",
      data: "a=" + "x".repeat(SINGLE.size - 7) + "\0",
      vars: { a: "x".repeat(SINGLE.size - 7) },
    },
  ];
  test.each(rows)("$name", ({ data, layout, pad, vars }) => {
    const l = layout ?? SINGLE;
    const copy = decode(raw(data, l, pad === undefined ? {} : { pad }), l);
    expect(Object.fromEntries(copy.vars)).toEqual(vars);
  });

  test("the flag byte is outside the CRC", () => {
    const bytes = raw("k=v\0\0", REDUND, { flag: 7 });
    bytes[4] = 200;
    expect(decode(bytes, REDUND).flag).toBe(200);
  });
});

describe("decode rejects with a typed error", () => {
  const rows: { name: string; bytes: () => Uint8Array; layout?: Layout; code: string; why: RegExp }[] = [
    { name: "bad CRC", bytes: () => raw("a=1\0\0", SINGLE, { badCrc: true }), code: "ENV_CRC", why: /bad CRC/ },
    { name: "single data read as redundant", bytes: () => raw("a=1\0\0", SINGLE), layout: REDUND, code: "ENV_CRC", why: /bad CRC/ },
    { name: "entry without '='", bytes: () => raw("a=1\0junk\0\0", SINGLE), code: "ENV_FORMAT", why: /no '='/ },
    { name: "empty name", bytes: () => raw("=1\0\0", SINGLE), code: "ENV_FORMAT", why: /empty name/ },
    {
      name: "no NUL before the end",
      bytes: () => raw("a=" + "x".repeat(SINGLE.size - 6), SINGLE),
      code: "ENV_FORMAT",
      why: /no NUL terminator/,
    },
    { name: "wrong length", bytes: () => new Uint8Array(10), code: "ENV_FORMAT", why: /expected 64 bytes/ },
  ];
  test.each(rows)("$name", ({ bytes, layout, code, why }) => {
    const l = layout ?? SINGLE;
    const r = tryDecode(bytes(), l);
    expect(r.ok).toBe(false);
    expect(r.ok ? "" : r.code).toBe(code);
    expect(r.ok ? "" : r.why).toMatch(why);
    expect(() => decode(bytes(), l)).toThrow(ZbError);
  });
});

describe("encode", () => {
  test("sorts by byte order, ends with \\0\\0, pads 0xFF, CRC little-endian", () => {
    const out = encode(new Map([["b", "2"], ["B", "3"], ["a", "1"]]), SINGLE);
    expect(Buffer.from(out.subarray(4, 17)).toString("latin1")).toBe("B=3\0a=1\0b=2\0\0");
    expect([...out.subarray(17)].every((b) => b === 0xff)).toBe(true);
    expect(new DataView(out.buffer).getUint32(0, true)).toBe(crc32(out.subarray(4)));
  });

  test("an empty env is one NUL then padding, as mkenvimage writes it", () => {
    const out = encode(new Map(), SINGLE);
    expect(out[4]).toBe(0);
    expect(out[5]).toBe(0xff);
  });

  test.each([
    { flag: 1, stored: 1 },
    { flag: 255, stored: 255 },
    { flag: 256, stored: 0 },
  ])("redundant flag $flag is stored as $stored", ({ flag, stored }) => {
    expect(encode(new Map([["a", "1"]]), REDUND, { flag })[4]).toBe(stored);
  });

  test("pad option sets the padding byte", () => {
    const out = encode(new Map([["a", "1"]]), SINGLE, { pad: 0 });
    expect(out[SINGLE.size - 1]).toBe(0);
  });

  test("round-trips through decode", () => {
    const vars = new Map([["x", "1 2 3"], ["kernel_status", "trying"], ["bin", "\x01\xff"]]);
    expect(decode(encode(vars, REDUND, { flag: 9 }), REDUND)).toEqual({ vars, flag: 9 });
  });

  const invalid: { name: string; vars: [string, string][]; code: string }[] = [
    { name: "empty name", vars: [["", "v"]], code: "ENV_FORMAT" },
    { name: "'=' in a name", vars: [["a=b", "v"]], code: "ENV_FORMAT" },
    { name: "NUL in a name", vars: [["a\0", "v"]], code: "ENV_FORMAT" },
    { name: "NUL in a value", vars: [["a", "v\0w"]], code: "ENV_FORMAT" },
    { name: "data larger than the env", vars: [["a", "x".repeat(100)]], code: "ENV_NOSPACE" },
  ];
  test.each(invalid)("rejects $name with $code", ({ vars, code }) => {
    expect(() => encode(new Map(vars), SINGLE)).toThrow(expect.objectContaining({ code }));
  });

  test("fills the data area exactly", () => {
    // 60 data bytes: "a=" + 56 chars + NUL + terminator NUL.
    const fits = new Map([["a", "x".repeat(56)]]);
    expect(encodedLength(fits)).toBe(60);
    expect(decode(encode(fits, SINGLE), SINGLE).vars).toEqual(fits);
    expect(() => encode(new Map([["a", "x".repeat(57)]]), SINGLE)).toThrow(expect.objectContaining({ code: "ENV_NOSPACE" }));
  });
});
