/**
 * Cryptoki.slots() against a scripted C_GetSlotList (the function table is
 * plain JS functions here, so the race a real module shows only when a token
 * is plugged in at the wrong moment is reproducible): the size query, then
 * the fill, asked again while the fill answers CKR_BUFFER_TOO_SMALL.
 */
import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CkError, Cryptoki, loadModule, SLOT_LIST_ATTEMPTS } from "../../../../lib/hsm/pkcs11/ffi.ts";
import { SOFTHSM_MODULE } from "../../../peers/softhsm.ts";
import { CKR } from "../../../../lib/hsm/pkcs11/layout.ts";

/**
 * A module whose slot count is `counts[i]` at the i-th size query and
 * `counts[i] + grow[i]` by the fill that follows it (a token arriving in between).
 */
function module(counts: number[], grow: number[]): { ck: Cryptoki; calls: () => number } {
  let calls = 0;
  let round = 0;
  const C_GetSlotList = (_present: number, list: BigUint64Array | null, count: BigUint64Array): bigint => {
    calls++;
    const i = Math.min(round, counts.length - 1);
    if (list === null) {
      count[0] = BigInt(counts[i]!);
      return 0n;
    }
    round++;
    const now = counts[i]! + (grow[i] ?? 0);
    if (list.length < now) {
      count[0] = BigInt(now);
      return BigInt(CKR.BUFFER_TOO_SMALL!);
    }
    for (let s = 0; s < now; s++) list[s] = BigInt(10 + s);
    count[0] = BigInt(now);
    return 0n;
  };
  const ck = new Cryptoki("scripted", { C_GetSlotList } as unknown as ConstructorParameters<typeof Cryptoki>[1]);
  return { ck, calls: () => calls };
}

describe("slots(): the two-call pattern, again while tokens appear", () => {
  const rows: { name: string; before: { counts: number[]; grow: number[] }; after: { slots: number[] | string; calls: number } }[] = [
    { name: "steady", before: { counts: [2], grow: [0] }, after: { slots: [10, 11], calls: 2 } },
    { name: "no token", before: { counts: [0], grow: [0] }, after: { slots: [], calls: 1 } },
    { name: "a token arrives between size and fill, once", before: { counts: [1, 2], grow: [1, 0] }, after: { slots: [10, 11], calls: 4 } },
    { name: "tokens keep arriving: given up after the last attempt", before: { counts: [1, 2, 3, 4, 5], grow: [1, 1, 1, 1, 1] }, after: { slots: "C_GetSlotList returned CKR_BUFFER_TOO_SMALL", calls: 2 * SLOT_LIST_ATTEMPTS } },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    const m = module(before.counts, before.grow);
    let got: number[] | string;
    try {
      got = m.ck.slots().map(Number);
    } catch (e) {
      expect(e).toBeInstanceOf(CkError);
      got = (e as Error).message.replace(/^cannot list PKCS#11 slots: /, "").replace(/ \(0x[0-9a-f]+\)$/, "");
    }
    expect({ slots: got, calls: m.calls() }).toEqual(after);
  });
});

describe("loadModule: a module named without a folder comes from the system library folders, never the working directory", () => {
  const planted = "libzb-planted-pkcs11.so";
  const rows: { name: string; resolveTo: string | null; expectError: RegExp | null }[] = [
    // Before: existsSync(name) found the planted file in the working directory and Bun's dlopen was handed it.
    { name: "planted in the working directory only → refused, naming the folders searched", resolveTo: null, expectError: /cannot load PKCS#11 module libzb-planted-pkcs11\.so: it is in none of the system library folders \(\/lib/ },
    { name: "found in a system folder → that file is loaded", resolveTo: SOFTHSM_MODULE, expectError: null },
  ];
  test.each(rows)("$name", ({ resolveTo, expectError }) => {
    const dir = mkdtempSync(join(tmpdir(), "zb-pkcs11-cwd-"));
    const cwd = process.cwd();
    try {
      writeFileSync(join(dir, planted), "not a library\n");
      process.chdir(dir);
      const load = () => loadModule(planted, (name) => (name === planted ? resolveTo : null));
      if (expectError === null) {
        expect(load().path).toBe(SOFTHSM_MODULE);
      } else {
        expect(load).toThrow(expectError);
        // The real resolver too: the planted name is in no system folder.
        expect(() => loadModule(planted)).toThrow(expectError);
      }
    } finally {
      process.chdir(cwd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
