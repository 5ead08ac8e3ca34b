/**
 * readPinFile on real files in a temp dir: file bytes and mode before →
 * PIN bytes after, or the error.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isZbError } from "../../../../lib/errors.ts";
import { readPinFile } from "../../../../lib/hsm/pkcs11/pin.ts";

let dir = "";
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "zb-pin-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pinFile(name: string, content: string | Uint8Array, mode: number): string {
  const p = join(dir, name);
  writeFileSync(p, content);
  chmodSync(p, mode);
  return p;
}

describe("readPinFile", () => {
  test.each([
    { name: "plain", before: "1234", mode: 0o600, after: "1234" },
    { name: "one trailing newline stripped", before: "1234\n", mode: 0o600, after: "1234" },
    { name: "CRLF stripped", before: "1234\r\n", mode: 0o400, after: "1234" },
    { name: "only one newline stripped", before: "1234\n\n", mode: 0o600, after: "1234\n" },
    { name: "inner spaces kept", before: "12 34 ", mode: 0o600, after: "12 34 " },
    { name: "1024 bytes", before: "7".repeat(1024), mode: 0o600, after: "7".repeat(1024) },
  ])("$name", ({ name, before, mode, after }) => {
    const pin = readPinFile(pinFile(name, before, mode));
    expect(pin).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(pin).toString()).toBe(after);
  });

  test.each([
    { name: "group-readable", before: "1234", mode: 0o640, code: "CONFIG", why: "it is readable by group or others (mode 0640)" },
    { name: "world-readable", before: "1234", mode: 0o604, code: "CONFIG", why: "it is readable by group or others (mode 0604)" },
    { name: "group-writable (someone else chooses the PIN)", before: "1234", mode: 0o620, code: "CONFIG", why: "it is writable or executable by group or others (mode 0620)" },
    { name: "world-writable", before: "1234", mode: 0o602, code: "CONFIG", why: "it is writable or executable by group or others (mode 0602)" },
    { name: "group-executable", before: "1234", mode: 0o610, code: "CONFIG", why: "it is writable or executable by group or others (mode 0610)" },
    { name: "empty", before: "", mode: 0o600, code: "CONFIG", why: "it is empty" },
    { name: "only a newline", before: "\n", mode: 0o600, code: "CONFIG", why: "it is empty" },
    { name: "too large", before: "7".repeat(1025), mode: 0o600, code: "CONFIG", why: "larger than 1024 bytes" },
  ] as const)("refuses $name", ({ name, before, mode, code, why }) => {
    expectError(() => readPinFile(pinFile(`bad-${name}`, before, mode)), code, why);
  });

  test("refuses a directory and a missing file", () => {
    mkdirSync(join(dir, "d"), { mode: 0o700 });
    expectError(() => readPinFile(join(dir, "d")), "CONFIG", "not a regular file");
    expectError(() => readPinFile(join(dir, "missing")), "IO", "no such file or directory");
  });

  test("follows a symlink and checks the target's mode", () => {
    const target = pinFile("target", "4321\n", 0o644);
    symlinkSync(target, join(dir, "link"));
    expectError(() => readPinFile(join(dir, "link")), "CONFIG", "readable by group or others");
    chmodSync(target, 0o600);
    expect(Buffer.from(readPinFile(join(dir, "link"))).toString()).toBe("4321");
  });

  test("the hint says how to fix the mode", () => {
    const p = pinFile("hint", "1", 0o644);
    try {
      readPinFile(p);
      throw new Error("no error");
    } catch (e) {
      expect((e as { hint?: string }).hint).toBe(`run: chmod 600 ${p}`);
    }
  });
});

function expectError(f: () => unknown, code: "CONFIG" | "IO", why: string): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(isZbError(err, code)).toBe(true);
  expect((err as Error).message).toContain(why);
}
