/**
 * The sealed-blob envelope's base64 fields (lib/hsm/blob.ts b64field): only
 * canonical padded standard base64 decodes; everything else is CRED_INVALID.
 */
import { describe, expect, test } from "bun:test";
import { b64, b64field } from "../../../lib/hsm/blob.ts";
import { isZbError } from "../../../lib/errors.ts";

describe("b64field", () => {
  const accepted: { name: string; before: string; after: number[] }[] = [
    { name: "empty", before: "", after: [] },
    { name: "one byte, two pads", before: "AA==", after: [0] },
    { name: "two bytes, one pad", before: "//8=", after: [0xff, 0xff] },
    { name: "three bytes, no pad", before: "+/+/", after: [0xfb, 0xff, 0xbf] },
  ];
  test.each(accepted)("$name: $before", ({ before, after }) => {
    expect([...b64field({ f: before }, "f")]).toEqual(after);
    expect(b64(b64field({ f: before }, "f"))).toBe(before); // one spelling per value
  });

  const refused: { name: string; before: unknown }[] = [
    { name: "non-zero pad bits after one byte (AB== is 0x00 too)", before: "AB==" },
    { name: "non-zero pad bits after two bytes", before: "//9=" },
    { name: "missing padding", before: "AA" },
    { name: "padding in the middle", before: "AA==AA==" },
    { name: "URL-safe alphabet", before: "-_-_" },
    { name: "a space", before: "AA== " },
    { name: "a newline inside", before: "AAAA\nAAAA" },
    { name: "three pads", before: "A===" },
    { name: "a number", before: 5 },
    { name: "absent", before: undefined },
  ];
  test.each(refused)("$name: CRED_INVALID", ({ before }) => {
    let caught: unknown = null;
    try {
      b64field(before === undefined ? {} : { f: before as string }, "f");
    } catch (e) {
      caught = e;
    }
    expect(isZbError(caught, "CRED_INVALID")).toBe(true);
    expect((caught as Error).message).toBe('cannot read sealed data: field "f" is not base64');
  });
});
