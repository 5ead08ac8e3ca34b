/**
 * lib/hsm/zymkey.ts through bun:ffi against a stub libzk_app_utils.so that
 * the test builds with g++ (test/lib/hsm/zymkey-stub/zk_stub.cpp): same C
 * signatures, a per-"device" key from a file, a call log of use_shared_key,
 * and counters for contexts and output buffers. g++ missing makes the tests
 * fail, not skip. The stub reads its settings with getenv at call time; Bun's
 * process.env does not reach the C environment, so the test sets them with
 * libc setenv(3) (Bun's dlopen is per process: one stub, shared globals).
 *
 * Also lib/sys/libc.ts's malloc'd-buffer helpers, whose only user is this backend.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, test } from "bun:test";
import { dlopen, ptr } from "bun:ffi";
import { libraryDirs } from "../../../lib/sys/dlopen.ts";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { b64 } from "../../../lib/hsm/blob.ts";
import { cCopy, cFree, cWipe, takeMalloced } from "../../../lib/sys/libc.ts";
import type { SealedData, UnsealResult } from "../../../lib/hsm/types.ts";
import { UNLOCK_ATTEMPTS, UNLOCK_RETRY_DELAY_MS, ZYMKEY_DATA_VERSION, ZYMKEY_SEARCH, ZymkeyHsm, type ZymkeyOptions } from "../../../lib/hsm/zymkey.ts";
import { randomSecret } from "../../../lib/secret.ts";
import { setNativeEnv } from "../../peers/native-env.ts";
import { buildZymkeyStub } from "../../peers/zymkey-stub.ts";

const HEADER = 4 + 8; // stub blob: magic, nonce
const MAC = 8;

let dir = "";
let stubPath = "";
let keyA = "";
let keyB = "";
let logPath = "";

const LIBC = dlopen("libc.so.6", {
  malloc: { args: ["u64"], returns: "ptr" },
  memcpy: { args: ["ptr", "ptr", "u64"], returns: "ptr" },
}).symbols;
const setCEnv = (name: string, value: string | null) => setNativeEnv(name, value ?? undefined);

/** The stub opened by the test itself: raw calls and counters. */
let stub: {
  zkOpen(cell: BigUint64Array): number;
  zkClose(ctx: bigint): number;
  zkLockDataB2B(ctx: bigint, src: Uint8Array, n: number, dst: BigUint64Array, sz: Int32Array, shared: boolean): number;
  zkStubLiveContexts(): number;
  zkStubOutputs(): number;
  zkStubMmappedChunks(): number | bigint;
  zkStubFailUnlocks(n: number): void;
};
const mmapped = () => Number(stub.zkStubMmappedChunks());

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "zb-zymkey-"));
  stubPath = join(dir, "libzk_app_utils.so");
  buildZymkeyStub(stubPath);
  keyA = join(dir, "device-a.key");
  keyB = join(dir, "device-b.key");
  logPath = join(dir, "calls.log");
  writeFileSync(keyA, randomSecret(32));
  writeFileSync(keyB, randomSecret(32));
  stub = dlopen(stubPath, {
    zkOpen: { args: ["ptr"], returns: "i32" },
    zkClose: { args: ["u64"], returns: "i32" },
    zkLockDataB2B: { args: ["u64", "ptr", "i32", "ptr", "ptr", "bool"], returns: "i32" },
    zkStubLiveContexts: { args: [], returns: "i32" },
    zkStubOutputs: { args: [], returns: "i32" },
    zkStubMmappedChunks: { args: [], returns: "i64" },
    zkStubFailUnlocks: { args: ["i32"], returns: "void" },
  }).symbols as unknown as typeof stub;
});

afterAll(() => {
  for (const k of ["ZK_STUB_DEVICE_KEY", "ZK_STUB_LOG", "ZK_STUB_OPEN_FAIL", "ZK_STUB_LOCK_FAIL"]) setCEnv(k, null);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  setCEnv("ZK_STUB_DEVICE_KEY", keyA);
  setCEnv("ZK_STUB_LOG", logPath);
  setCEnv("ZK_STUB_OPEN_FAIL", null);
  setCEnv("ZK_STUB_LOCK_FAIL", null);
  stub.zkStubFailUnlocks(0);
  writeFileSync(logPath, "");
});

const calls = () => readFileSync(logPath, "utf8").split("\n").filter(Boolean);
const hsm = (opts: ZymkeyOptions = { library: stubPath }) => new ZymkeyHsm(opts);

async function sealed(secret = randomSecret(32)): Promise<{ secret: Uint8Array; data: SealedData }> {
  const h = hsm();
  try {
    return { secret, data: await h.seal(secret) };
  } finally {
    await h.close();
  }
}

async function unsealWith(data: SealedData, opts?: ZymkeyOptions): Promise<UnsealResult> {
  const h = hsm(opts);
  try {
    return await h.unseal(data);
  } finally {
    await h.close();
  }
}

async function sealError(opts: ZymkeyOptions, secret = randomSecret(32)): Promise<ZbError> {
  const h = hsm(opts);
  try {
    await h.seal(secret);
  } catch (e) {
    return e as ZbError;
  } finally {
    await h.close();
  }
  throw new Error("seal did not throw");
}

describe("seal and unseal", () => {
  test("round trip with the one-way key (use_shared_key = false on every call)", async () => {
    const { secret, data } = await sealed();
    const copy = secret.slice();
    expect(Object.keys(data).sort()).toEqual(["locked", "version"]);
    expect(data.version).toBe(ZYMKEY_DATA_VERSION);
    const locked = Buffer.from(data.locked as string, "base64");
    expect(locked.length).toBe(HEADER + 32 + MAC);
    expect(locked.includes(Buffer.from(secret))).toBe(false);
    const r = await unsealWith(data);
    expect(r).toEqual({ kind: "ok", secret: copy });
    expect(secret).toEqual(copy); // seal did not modify its input
    expect(calls()).toEqual(["lock use_shared_key=0 src_sz=32", `unlock use_shared_key=0 src_sz=${locked.length}`]);
  });

  test("two seals of the same secret give different locked data", async () => {
    const secret = randomSecret(32);
    const a = await sealed(secret.slice());
    const b = await sealed(secret.slice());
    expect(a.data.locked).not.toBe(b.data.locked);
    expect(await unsealWith(b.data)).toEqual({ kind: "ok", secret });
  });

  test("data locked by another device is no-match", async () => {
    const { data } = await sealed();
    setCEnv("ZK_STUB_DEVICE_KEY", keyB);
    const r = await unsealWith(data);
    expect(r.kind).toBe("no-match");
    if (r.kind !== "ok") expect(r.why).toContain("another Zymkey");
    setCEnv("ZK_STUB_DEVICE_KEY", keyA);
    expect((await unsealWith(data)).kind).toBe("ok");
  });

  test("data locked with the shared key does not unlock (the backend unlocks with the one-way key)", async () => {
    const ctx = new BigUint64Array(1);
    expect(stub.zkOpen(ctx)).toBe(0);
    const dst = new BigUint64Array(1);
    const sz = new Int32Array(1);
    expect(stub.zkLockDataB2B(ctx[0]!, randomSecret(32), 32, dst, sz, true)).toBe(0);
    stub.zkClose(ctx[0]!);
    const locked = takeMalloced(dst[0]!, sz[0]!, { secret: false, maxBytes: 1024 })!;
    expect((await unsealWith({ version: 1, locked: b64(locked) })).kind).toBe("no-match");
  });

  test("an empty secret is refused before the library is called", async () => {
    const e = await sealError({ library: stubPath }, new Uint8Array(0));
    expect(e).toBeInstanceOf(ZbError);
    expect(e.code).toBe("USAGE");
    expect(calls()).toEqual([]);
  });

  test("zkLockDataB2B failing makes seal throw HSM_FAILED", async () => {
    setCEnv("ZK_STUB_LOCK_FAIL", "1");
    const e = await sealError({ library: stubPath });
    expect(e.code).toBe("HSM_FAILED");
    expect(e.message).toMatch(/^cannot seal with zymkey: zkLockDataB2B failed \(rc -5\)/);
    expect(stub.zkStubLiveContexts()).toBe(0);
  });
});

describe("transient unlock failures (zkifc restarting, an I²C error) are tried again", () => {
  const rows: { name: string; before: { failing: number }; after: { kind: UnsealResult["kind"]; unlocks: number; warned: RegExp | null; why?: RegExp } }[] = [
    { name: "one failed unlock, then it works", before: { failing: 1 }, after: { kind: "ok", unlocks: 2, warned: /^zb: zkUnlockDataB2B succeeded on attempt 2 \(before: rc -9\)$/ } },
    { name: "two failed unlocks, then it works", before: { failing: 2 }, after: { kind: "ok", unlocks: 3, warned: /^zb: zkUnlockDataB2B succeeded on attempt 3 \(before: rc -9, rc -9\)$/ } },
    { name: "three: no-match (a device that keeps failing cannot be told from another device)", before: { failing: 3 }, after: { kind: "no-match", unlocks: 3, warned: null, why: /^zkUnlockDataB2B failed \(rc -9, 3 attempts\)/ } },
    { name: "none: one unlock, no warning", before: { failing: 0 }, after: { kind: "ok", unlocks: 1, warned: null } },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const { secret, data } = await sealed();
    writeFileSync(logPath, "");
    stub.zkStubFailUnlocks(before.failing);
    const warnings: string[] = [];
    const waits: number[] = [];
    const r = await unsealWith(data, { library: stubPath, warn: (l) => void warnings.push(l), sleep: async (ms) => void waits.push(ms) });
    expect(r.kind).toBe(after.kind);
    if (r.kind === "ok") expect(r.secret).toEqual(secret);
    else expect(r.why).toMatch(after.why!);
    expect(calls().length).toBe(after.unlocks);
    expect(warnings).toEqual(after.warned ? [expect.stringMatching(after.warned)] : []);
    // A pause before each retry (the daemon gets time to come back); none without a retry.
    expect(waits).toEqual(Array(after.unlocks - 1).fill(UNLOCK_RETRY_DELAY_MS));
    expect(stub.zkStubLiveContexts()).toBe(0);
  });

  test("data locked by another device: three unlocks, then no-match", async () => {
    const { data } = await sealed();
    setCEnv("ZK_STUB_DEVICE_KEY", keyB);
    writeFileSync(logPath, "");
    const r = await unsealWith(data, { library: stubPath, sleep: async () => {} });
    expect([r.kind, calls().length]).toEqual(["no-match", UNLOCK_ATTEMPTS]);
  });
});

describe("unseal of altered sealed data", () => {
  type Row = { name: string; edit: (d: SealedData) => SealedData; after: UnsealResult["kind"]; reachesLibrary: boolean };
  const flip = (d: SealedData, at: number) => {
    const b = Buffer.from(d.locked as string, "base64");
    b[at]! ^= 0x01;
    return { ...d, locked: b.toString("base64") };
  };
  const rows: Row[] = [
    { name: "unchanged", edit: (d) => d, after: "ok", reachesLibrary: true },
    { name: "one ciphertext bit flipped", edit: (d) => flip(d, HEADER + 3), after: "no-match", reachesLibrary: true },
    { name: "one nonce bit flipped", edit: (d) => flip(d, 5), after: "no-match", reachesLibrary: true },
    { name: "MAC cut off", edit: (d) => ({ ...d, locked: b64(Buffer.from(d.locked as string, "base64").subarray(0, -MAC)) }), after: "no-match", reachesLibrary: true },
    { name: "version 2", edit: (d) => ({ ...d, version: 2 }), after: "failed", reachesLibrary: false },
    { name: "version as a string", edit: (d) => ({ ...d, version: "1" }), after: "failed", reachesLibrary: false },
    { name: "locked not base64", edit: (d) => ({ ...d, locked: "not base64!" }), after: "failed", reachesLibrary: false },
    { name: "locked empty", edit: (d) => ({ ...d, locked: "" }), after: "failed", reachesLibrary: false },
    { name: "locked missing", edit: ({ version }) => ({ version: version! }), after: "failed", reachesLibrary: false },
    { name: "an extra field", edit: (d) => ({ ...d, pcrs: [7] }), after: "failed", reachesLibrary: false },
  ];
  test.each(rows)("$name → $after", async ({ edit, after, reachesLibrary }) => {
    const { secret, data } = await sealed();
    writeFileSync(logPath, "");
    const r = await unsealWith(edit(data));
    expect(r.kind).toBe(after);
    if (r.kind === "ok") expect(r.secret).toEqual(secret);
    expect(calls().length).toBe(!reachesLibrary ? 0 : after === "no-match" ? UNLOCK_ATTEMPTS : 1); // a failed unlock is tried again
    expect(stub.zkStubLiveContexts()).toBe(0);
  });
});

describe("absent", () => {
  type Row = { name: string; opts: () => ZymkeyOptions; env?: Record<string, string | null>; why: RegExp };
  const rows: Row[] = [
    { name: "library file missing", opts: () => ({ library: join(dir, "missing.so") }), why: /^cannot load .*missing\.so/ },
    { name: "library without the zk functions", opts: () => ({ library: "libc.so.6" }), why: /^cannot load \/.*\/libc\.so\.6: .*zkOpen/ },
    { name: "zkOpen fails (no daemon, no device)", opts: () => ({ library: stubPath }), env: { ZK_STUB_OPEN_FAIL: "1" }, why: /^zkOpen failed \(rc -1\)/ },
    { name: "device not bound (no device key)", opts: () => ({ library: stubPath }), env: { ZK_STUB_DEVICE_KEY: null }, why: /^zkOpen failed \(rc -2\)/ },
  ];
  test.each(rows)("$name → probe false, seal HSM_ABSENT, unseal absent", async ({ opts, env, why }) => {
    const { data } = await sealed();
    for (const [k, v] of Object.entries(env ?? {})) setCEnv(k, v);
    const h = hsm(opts());
    try {
      const p = await h.probe();
      expect(p.present).toBe(false);
      expect(p.detail).toMatch(why);
      const u = await h.unseal(data);
      expect(u.kind).toBe("absent");
      if (u.kind !== "ok") expect(u.why).toMatch(why);
    } finally {
      await h.close();
    }
    const e = await sealError(opts());
    expect(e.code).toBe("HSM_ABSENT");
    expect(e.message.startsWith("cannot seal with zymkey: ")).toBe(true);
    expect(stub.zkStubLiveContexts()).toBe(0);
  });

  test("default search on this host (no Zymbit software installed) → absent, in one line naming every folder searched", async () => {
    for (const p of ZYMKEY_SEARCH.slice(1)) expect(existsSync(p)).toBe(false);
    const ldcache = Bun.spawnSync(["/sbin/ldconfig", "-p"]).stdout.toString();
    expect(ldcache).not.toContain("libzk_app_utils");
    const p = await hsm({}).probe();
    expect(p.present).toBe(false);
    expect(p.detail).toStartWith("cannot load libzk_app_utils.so: not in ");
    expect(p.detail).toEndWith("(is Zymbit's software installed?)");
    for (const dir of [...libraryDirs(), ...ZYMKEY_SEARCH.slice(1).map((c) => c.slice(0, c.lastIndexOf("/")))]) expect(p.detail).toContain(dir);
    expect(p.detail).not.toContain("cannot open shared object file"); // the loader's own words, once per path, before
  });

  test.each([
    { given: "the default search", library: undefined },
    { given: "library = the bare name", library: "libzk_app_utils.so" },
  ])("$given, run from a folder holding a libzk_app_utils.so: that file is never loaded (Bun's dlopen would try it)", ({ library }) => {
    // A fresh process whose working directory is the stub's folder; the stub would answer present.
    const script = `const { ZymkeyHsm } = await import(${JSON.stringify(join(import.meta.dir, "../../../lib/hsm/zymkey.ts"))});
      const p = await new ZymkeyHsm(${JSON.stringify(library === undefined ? {} : { library })}).probe();
      console.log(JSON.stringify(p));`;
    const r = Bun.spawnSync([process.execPath, "-e", script], { cwd: join(stubPath, ".."), stderr: "pipe", env: { ...process.env, BUN_BE_BUN: "1" } });
    expect(r.stderr.toString()).toBe("");
    const p = JSON.parse(r.stdout.toString()) as { present: boolean; detail: string };
    expect(p.present).toBe(false);
    expect(p.detail).toContain("libzk_app_utils.so: not in /lib/");
    expect(p.detail).not.toContain(stubPath);
  });
});

describe("resources", () => {
  test("probe opens and closes a context and reports the library", async () => {
    const h = hsm();
    const p = await h.probe();
    expect(p).toEqual({ backend: "zymkey", present: true, detail: `Zymkey reachable through ${stubPath}`, info: { library: stubPath } });
    expect(stub.zkStubLiveContexts()).toBe(0);
    await h.close();
    await h.close(); // idempotent
    expect((await h.probe()).present).toBe(true); // reloads after close
    await h.close();
  });

  test("every output buffer is freed and every context closed", async () => {
    const chunks0 = mmapped();
    const outputs0 = stub.zkStubOutputs();
    for (let i = 0; i < 5; i++) {
      const { secret, data } = await sealed();
      expect(await unsealWith(data)).toEqual({ kind: "ok", secret });
    }
    expect(stub.zkStubOutputs() - outputs0).toBe(10);
    expect(mmapped()).toBe(chunks0);
    expect(stub.zkStubLiveContexts()).toBe(0);
  });

  test("the counter sees an unfreed output buffer (the check above can fail)", () => {
    const chunks0 = mmapped();
    const ctx = new BigUint64Array(1);
    expect(stub.zkOpen(ctx)).toBe(0);
    const dst = new BigUint64Array(1);
    const sz = new Int32Array(1);
    expect(stub.zkLockDataB2B(ctx[0]!, randomSecret(16), 16, dst, sz, false)).toBe(0);
    expect(stub.zkStubLiveContexts()).toBe(1);
    stub.zkClose(ctx[0]!);
    expect(mmapped()).toBe(chunks0 + 1);
    cFree(dst[0]!);
    expect(mmapped()).toBe(chunks0);
  });
});

describe("lib/sys/libc.ts", () => {
  function cBuffer(bytes: Uint8Array): bigint {
    const p = LIBC.malloc(bytes.length);
    if (!p) throw new Error("malloc failed");
    LIBC.memcpy(p, ptr(bytes), bytes.length);
    return BigInt(p);
  }

  test("cCopy copies, cWipe zeroes, cFree(NULL) is a no-op", () => {
    const bytes = Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8);
    const p = cBuffer(bytes);
    expect(cCopy(p, 8)).toEqual(bytes);
    cWipe(p + 2n, 4);
    expect(cCopy(p, 8)).toEqual(Uint8Array.of(1, 2, 0, 0, 0, 0, 7, 8));
    cFree(p);
    expect(() => cFree(null)).not.toThrow();
    expect(cCopy(0n, 4)).toEqual(new Uint8Array(4));
  });

  test.each([
    { name: "size in range", size: 16, after: "copied" },
    { name: "negative size", size: -1, after: "null" },
    { name: "size above the limit", size: 1025, after: "null" },
  ])("takeMalloced, $name → $after, and freed either way", ({ size, after }) => {
    const chunks0 = mmapped();
    const ctx = new BigUint64Array(1);
    expect(stub.zkOpen(ctx)).toBe(0);
    const dst = new BigUint64Array(1);
    const sz = new Int32Array(1);
    expect(stub.zkLockDataB2B(ctx[0]!, randomSecret(4), 4, dst, sz, false)).toBe(0);
    stub.zkClose(ctx[0]!);
    expect(mmapped()).toBe(chunks0 + 1);
    const out = takeMalloced(dst[0]!, size, { secret: true, maxBytes: 1024 });
    expect(out === null ? "null" : "copied").toBe(after);
    if (out) expect(out.length).toBe(size);
    expect(mmapped()).toBe(chunks0);
  });
});
