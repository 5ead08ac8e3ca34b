/**
 * createNew (stages/output.ts), behind `zb hsm unseal -o FILE`, `zb hsm seal
 * -o BLOB` and `zb cred create -o`: a failure after the file is created
 * (fchmod refused, as vfat does for 0600 unless mounted `quiet`) leaves no
 * file and no open fd, so the next run is not refused with "the file exists".
 */
import { describe, expect, test } from "bun:test";
import { existsSync, fstatSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { createNew } from "../../stages/output.ts";
import { tempDirs } from "../tempdirs.ts";

const tempDir = tempDirs("zb-createnew-");

function eperm(): Error {
  return Object.assign(new Error("EPERM: operation not permitted, fchmod"), { code: "EPERM" });
}

describe("createNew: fchmod fails after the file was created", () => {
  test("IO 'cannot create PATH: operation not permitted', the file removed, its fd closed; the next run creates it", () => {
    const path = join(tempDir(), "secret.out");
    let fd = -1;
    const refuse = (f: number) => {
      fd = f;
      throw eperm();
    };
    expect(() => createNew(path, 0o600, "the secret", refuse)).toThrow(
      expect.objectContaining({ code: "IO", message: `cannot create ${path}: operation not permitted` }) as never,
    );
    expect(fd).toBeGreaterThanOrEqual(0);
    expect(existsSync(path)).toBe(false);
    expect(() => fstatSync(fd)).toThrow(expect.objectContaining({ code: "EBADF" }) as never);
    // Before the fix: "cannot write the secret to PATH: the file exists".
    createNew(path, 0o600, "the secret").finish(new Uint8Array([1, 2, 3]));
    expect(new Uint8Array(readFileSync(path))).toEqual(new Uint8Array([1, 2, 3]));
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });
});
