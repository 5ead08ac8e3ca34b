/**
 * The TPM 2.0 wire codec, table-driven: bytes before → values after, and
 * values before → bytes after. Rows marked "swtpm" read a command and the
 * response a real swtpm gave to it from test/vectors/tpm2/, written by the
 * gen.ts there (re-run it to re-capture).
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  decodeRc, describeRc, equalBytes, frameCommand, hex, marshal, parseResponse, Reader, RS_PW, sized, unhex,
} from "../../../../lib/hsm/tpm2/wire.ts";

const h = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));

/** TPM2_GetRandom(8) and swtpm's answer, as hex. The 8 random bytes differ per capture. */
const swtpmGetRandom = JSON.parse(readFileSync(join(import.meta.dir, "../../../vectors/tpm2/getrandom-swtpm.json"), "utf8")) as {
  command: string;
  response: string;
};

describe("Reader: bytes before → values after", () => {
  const rows: { name: string; before: string; read: (r: Reader) => unknown; after: unknown }[] = [
    { name: "u8", before: "ff", read: (r) => r.u8(), after: 0xff },
    { name: "u16 big-endian", before: "0102", read: (r) => r.u16(), after: 0x0102 },
    { name: "u32 big-endian, high bit set", before: "81000001", read: (r) => r.u32(), after: 0x81000001 },
    { name: "TPM2B content", before: "0003 aabbcc", read: (r) => hex(r.tpm2b()), after: "aabbcc" },
    { name: "empty TPM2B", before: "0000", read: (r) => hex(r.tpm2b()), after: "" },
    { name: "TPM2B raw keeps the size", before: "0002 abcd ee", read: (r) => hex(r.tpm2bRaw()), after: "0002abcd" },
  ];
  test.each(rows)("$name", ({ before, read, after }) => {
    expect(read(new Reader(h(before)))).toEqual(after);
  });

  const bad: { name: string; before: string; read: (r: Reader) => unknown; why: RegExp }[] = [
    { name: "u32 past the end", before: "010203", read: (r) => r.u32("x"), why: /x runs past the end/ },
    { name: "TPM2B longer than the data", before: "0005 aabb", read: (r) => r.tpm2b("outData"), why: /outData runs past/ },
    { name: "trailing bytes", before: "0001 aa bb", read: (r) => (r.tpm2b(), r.end("the thing")), why: /1 trailing bytes after the thing/ },
  ];
  test.each(bad)("rejects $name with HSM_FAILED", ({ before, read, why }) => {
    expect(() => read(new Reader(h(before)))).toThrow(why);
    try {
      read(new Reader(h(before)));
    } catch (e) {
      expect((e as { code: string }).code).toBe("HSM_FAILED");
    }
  });
});

describe("Writer: values before → bytes after", () => {
  const rows: { name: string; write: () => Uint8Array; after: string }[] = [
    { name: "u8 u16 u32", write: () => marshal((w) => w.u8(1).u16(0x203).u32(0x40000009)), after: "01 0203 40000009" },
    { name: "TPM2B", write: () => marshal((w) => w.tpm2b(h("abcd"))), after: "0002 abcd" },
    { name: "sized structure (TPM2B_PUBLIC style)", write: () => sized((w) => w.u16(8).u16(0xb)), after: "0004 0008 000b" },
    { name: "growth past the initial buffer", write: () => marshal((w) => w.bytes(new Uint8Array(300).fill(1)).u8(2)), after: "01".repeat(300) + "02" },
  ];
  test.each(rows)("$name", ({ write, after }) => {
    expect(hex(write())).toBe(after.replace(/\s+/g, ""));
  });
});

describe("frameCommand: command before → bytes after (Part 1 §18.2)", () => {
  const rows: { name: string; frame: () => Uint8Array; after: string }[] = [
    {
      name: "GetRandom(8), no sessions: the bytes swtpm answered",
      frame: () => frameCommand(0x17b, [], [], h("0008")),
      after: swtpmGetRandom.command,
    },
    {
      name: "Unseal of 0x80000000 with an empty password",
      frame: () => frameCommand(0x15e, [0x80000000], [{ handle: RS_PW, nonce: new Uint8Array(0), attrs: 0, hmac: new Uint8Array(0) }], new Uint8Array(0)),
      after: "8002 0000001b 0000015e 80000000 00000009 40000009 0000 00 0000",
    },
    {
      name: "FlushContext: the handle is a parameter",
      frame: () => frameCommand(0x165, [], [], h("03000000")),
      after: "8001 0000000e 00000165 03000000",
    },
  ];
  test.each(rows)("$name", ({ frame, after }) => {
    expect(hex(frame())).toBe(after.replace(/\s+/g, ""));
  });
});

describe("parseResponse: bytes before → fields after (Part 1 §18.8)", () => {
  const rows: { name: string; before: string; handles: number; sessions: number; after: unknown }[] = [
    {
      // The parameters are what follows the 10-byte header (tag, size, rc): a
      // TPM2B_DIGEST of the 8 random bytes, whatever they were in this capture.
      name: "GetRandom from swtpm",
      before: swtpmGetRandom.response,
      handles: 0, sessions: 0,
      after: { rc: 0, handles: [], params: `0008${swtpmGetRandom.response.slice(24)}`, auths: [] },
    },
    {
      name: "an error response is a bare header",
      before: "8001 0000000a 0000099d",
      handles: 0, sessions: 1,
      after: { rc: 0x99d, handles: [], params: "", auths: [] },
    },
    {
      name: "Load: handle, parameterSize, name, password auth",
      before: "8002 0000001b 00000000 80000001 00000004 0002 aabb 0000 01 0000",
      handles: 1, sessions: 1,
      after: { rc: 0, handles: [0x80000001], params: "0002aabb", auths: [{ nonce: "", attrs: 1, hmac: "" }] },
    },
  ];
  test.each(rows)("$name", ({ before, handles, sessions, after }) => {
    const r = parseResponse(h(before), handles, sessions);
    expect({
      rc: r.rc,
      handles: r.handles,
      params: hex(r.params),
      auths: r.auths.map((a) => ({ nonce: hex(a.nonce), attrs: a.attrs, hmac: hex(a.hmac) })),
    }).toEqual(after as never);
  });

  const bad: { name: string; before: string; why: RegExp }[] = [
    { name: "size field disagrees", before: "8001 00000020 00000000 0000", why: /size field 32 but 12 bytes/ },
    { name: "shorter than a header", before: "8001 0000", why: /runs past the end/ },
    { name: "success with the wrong tag", before: "8002 0000000c 00000000 0000", why: /unexpected response tag 0x8002/ },
    // An error response has tag TPM_ST_NO_SESSIONS; anything else is a garbled frame, not a refusal.
    { name: "an error code under a garbled tag", before: "1234 0000000a 0000099d", why: /unexpected response tag 0x1234 \(response code 0x99d\)/ },
    { name: "an error code under TPM_ST_SESSIONS", before: "8002 0000000a 00000921", why: /unexpected response tag 0x8002 \(response code 0x921\)/ },
    { name: "a TPM 1.2 header (TPM_ST_RSP_COMMAND, TPM_RC_BAD_TAG)", before: "00c4 0000000a 0000001e", why: /unexpected response tag 0xc4/ },
  ];
  test.each(bad)("rejects $name (HSM_FAILED)", ({ before, why }) => {
    expect(() => parseResponse(h(before), 0, 0)).toThrow(why);
    expect(() => parseResponse(h(before), 0, 0)).toThrow(expect.objectContaining({ code: "HSM_FAILED" }) as never);
  });
});

describe("decodeRc: response code before → meaning after (Part 2 §6.6)", () => {
  const rows: { rc: number; name: string; base: number; where?: object; text: string }[] = [
    { rc: 0x99d, name: "TPM_RC_POLICY_FAIL", base: 0x9d, where: { kind: "session", index: 1 }, text: "0x99d (TPM_RC_POLICY_FAIL, session 1: a policy check failed)" },
    { rc: 0x18b, name: "TPM_RC_HANDLE", base: 0x8b, where: { kind: "handle", index: 1 }, text: "0x18b (TPM_RC_HANDLE, handle 1: handle not found or not usable)" },
    { rc: 0x1df, name: "TPM_RC_INTEGRITY", base: 0x9f, where: { kind: "parameter", index: 1 }, text: "0x1df (TPM_RC_INTEGRITY, parameter 1: integrity check failed)" },
    { rc: 0x2c4, name: "TPM_RC_VALUE", base: 0x84, where: { kind: "parameter", index: 2 }, text: "0x2c4 (TPM_RC_VALUE, parameter 2: value out of range)" },
    { rc: 0x9a2, name: "TPM_RC_BAD_AUTH", base: 0xa2, where: { kind: "session", index: 1 }, text: "0x9a2 (TPM_RC_BAD_AUTH, session 1: authorization HMAC check failed (no DA increment))" },
    { rc: 0x128, name: "TPM_RC_PCR_CHANGED", base: 0x128, text: "0x128 (TPM_RC_PCR_CHANGED: PCR changed since the policy was built)" },
    { rc: 0x921, name: "TPM_RC_LOCKOUT", base: 0x921, text: "0x921 (TPM_RC_LOCKOUT: dictionary-attack lockout)" },
    { rc: 0x902, name: "TPM_RC_OBJECT_MEMORY", base: 0x902, text: "0x902 (TPM_RC_OBJECT_MEMORY: out of object memory (transient objects not flushed))" },
    { rc: 0x100, name: "TPM_RC_INITIALIZE", base: 0x100, text: "0x100 (TPM_RC_INITIALIZE: TPM not initialized (TPM2_Startup not run))" },
    { rc: 0x150, name: "0x150", base: 0x150, text: "0x150 (0x150: TPM 2.0 error)" },
  ];
  test.each(rows)("$text", ({ rc, name, base, where, text }) => {
    const d = decodeRc(rc);
    expect(d.name).toBe(name);
    expect(d.base).toBe(base);
    expect(d.where).toEqual(where as never);
    expect(describeRc(rc)).toBe(text);
  });
});

describe("hex helpers", () => {
  test.each([
    { before: "00ff10", after: [0, 255, 16] },
    { before: "", after: [] },
  ])("unhex($before)", ({ before, after }) => {
    expect([...unhex(before)!]).toEqual([...after]);
  });
  test.each(["0", "zz", "0g"])("unhex(%p) is undefined", (s) => {
    expect(unhex(s)).toBeUndefined();
  });
  test("equalBytes compares length and content", () => {
    expect(equalBytes(h("0102"), h("0102"))).toBe(true);
    expect(equalBytes(h("0102"), h("0103"))).toBe(false);
    expect(equalBytes(h("0102"), h("010200"))).toBe(false);
  });
});
