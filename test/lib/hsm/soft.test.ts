/**
 * lib/hsm/soft.ts with real key files in a temp dir: refusal unless enabled
 * (nothing created, nothing sealed), a warning on every use, round trip,
 * the failure classes (missing key → absent, other key → no-match, altered
 * data → failed) and the key-file checks (mode, size, kind).
 */
import { afterAll, beforeEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { decodeBlob, encodeBlob } from "../../../lib/hsm/blob.ts";
import { SOFT_KEY_BYTES, SoftHsm, softKeyId, softWarning } from "../../../lib/hsm/soft.ts";
import type { SealedData, UnsealResult } from "../../../lib/hsm/types.ts";
import { randomSecret } from "../../../lib/secret.ts";

const root = mkdtempSync(join(tmpdir(), "zb-soft-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let dir = "";
let n = 0;
beforeEach(() => {
  dir = join(root, `case-${n++}`);
  mkdirSync(dir);
});

function soft(keyFile = join(dir, "soft.key"), enabled = true) {
  const warnings: string[] = [];
  return { hsm: new SoftHsm({ enabled, keyFile, warn: (l) => warnings.push(l) }), warnings, keyFile };
}

async function thrown(p: Promise<unknown>): Promise<ZbError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ZbError);
    return e as ZbError;
  }
  throw new Error("did not throw");
}

describe("disabled", () => {
  test("probe, seal and unseal refuse; no key file is created, nothing is sealed", async () => {
    const { hsm, warnings, keyFile } = soft(undefined, false);
    const p = await hsm.probe();
    expect(p.present).toBe(false);
    expect(p.detail).toBe("cannot probe with the soft HSM backend: it is disabled (development only)");
    const s = await thrown(hsm.seal(randomSecret(32)));
    expect([s.code, s.exit, s.message]).toEqual(["CONFIG", 8, "cannot seal with the soft HSM backend: it is disabled (development only)"]);
    expect(s.hint).toContain("soft.enable=yes");
    const u = await thrown(hsm.unseal({ version: 1 }));
    expect(u.code).toBe("CONFIG");
    expect(existsSync(keyFile)).toBe(false);
    expect(warnings).toEqual([]);
  });

  test("a truthy non-boolean does not enable it", async () => {
    const hsm = new SoftHsm({ enabled: "yes" as unknown as boolean, keyFile: join(dir, "k") });
    expect((await thrown(hsm.seal(randomSecret(32)))).code).toBe("CONFIG");
  });
});

describe("enabled", () => {
  test("round trip; the key file is created 0600 with 32 bytes; a warning on every call", async () => {
    const { hsm, warnings, keyFile } = soft();
    expect((await hsm.probe()).present).toBe(false); // no key yet
    const secret = randomSecret(32);
    const data = await hsm.seal(secret);
    const st = statSync(keyFile);
    expect([st.mode & 0o777, st.size]).toEqual([0o600, SOFT_KEY_BYTES]);
    expect(Object.keys(data).sort()).toEqual(["ciphertext", "keyId", "nonce", "tag", "version"]);
    expect(data.keyId).toBe(Buffer.from(softKeyId(readFileSync(keyFile))).toString("base64"));
    expect(Buffer.from(data.ciphertext as string, "base64")).not.toEqual(Buffer.from(secret));
    const blob = decodeBlob(encodeBlob({ backend: "soft", data })); // survives the envelope
    expect(await hsm.unseal(blob.data)).toEqual({ kind: "ok", secret });
    const p = await hsm.probe();
    expect(p.present).toBe(true);
    expect(p.info?.keyId).toBe(Buffer.from(softKeyId(readFileSync(keyFile))).toString("hex"));
    expect(warnings).toEqual(Array(4).fill(softWarning(keyFile)));
    expect(warnings[0]).toStartWith("zb: WARNING: the soft HSM backend is for development only; ");
  });

  test("the second seal reuses the key file; nonces differ", async () => {
    const { hsm, keyFile } = soft();
    const secret = randomSecret(32);
    const a = await hsm.seal(secret);
    const key = readFileSync(keyFile);
    const b = await hsm.seal(secret);
    expect(readFileSync(keyFile)).toEqual(key);
    expect(a.keyId).toBe(b.keyId);
    expect(a.nonce).not.toBe(b.nonce);
    expect(a.ciphertext).not.toBe(b.ciphertext);
  });

  test("the key file's parent directory is created 0700", async () => {
    const keyFile = join(dir, "etc/zb/soft.key");
    await soft(keyFile).hsm.seal(randomSecret(32));
    expect(statSync(join(dir, "etc/zb")).mode & 0o777).toBe(0o700);
  });

  test("an empty secret is refused", async () => {
    expect((await thrown(soft().hsm.seal(new Uint8Array(0)))).code).toBe("USAGE");
  });

  test("missing key file → absent; another key file → no-match", async () => {
    const a = soft(join(dir, "a.key"));
    const data = await a.hsm.seal(randomSecret(32));
    const missing = await soft(join(dir, "none.key")).hsm.unseal(data);
    expect(missing.kind).toBe("absent");
    const b = soft(join(dir, "b.key"));
    await b.hsm.seal(randomSecret(32)); // creates b.key
    const other = await b.hsm.unseal(data);
    expect(other.kind).toBe("no-match");
  });
});

describe("unseal of altered sealed data", () => {
  const flip = (s: string) => {
    const b = Buffer.from(s, "base64");
    b[0]! ^= 0x01;
    return b.toString("base64");
  };
  const rows: { name: string; edit: (d: SealedData) => SealedData; after: UnsealResult["kind"] }[] = [
    { name: "unchanged", edit: (d) => d, after: "ok" },
    { name: "ciphertext bit flipped", edit: (d) => ({ ...d, ciphertext: flip(d.ciphertext as string) }), after: "failed" },
    { name: "tag bit flipped", edit: (d) => ({ ...d, tag: flip(d.tag as string) }), after: "failed" },
    { name: "nonce bit flipped", edit: (d) => ({ ...d, nonce: flip(d.nonce as string) }), after: "failed" },
    { name: "keyId bit flipped", edit: (d) => ({ ...d, keyId: flip(d.keyId as string) }), after: "no-match" },
    { name: "tag truncated", edit: (d) => ({ ...d, tag: Buffer.from(d.tag as string, "base64").subarray(0, 12).toString("base64") }), after: "failed" },
    { name: "ciphertext empty", edit: (d) => ({ ...d, ciphertext: "" }), after: "failed" },
    { name: "nonce not base64", edit: (d) => ({ ...d, nonce: "???" }), after: "failed" },
    { name: "version 2", edit: (d) => ({ ...d, version: 2 }), after: "failed" },
    { name: "tag missing", edit: ({ tag: _t, ...rest }) => rest, after: "failed" },
    { name: "an extra field", edit: (d) => ({ ...d, pcrs: [0, 7] }), after: "failed" },
  ];
  test.each(rows)("$name → $after", async ({ edit, after }) => {
    const { hsm } = soft();
    const secret = randomSecret(32);
    const r = await hsm.unseal(edit(await hsm.seal(secret)));
    expect(r.kind).toBe(after);
    if (r.kind === "ok") expect(r.secret).toEqual(secret);
  });
});

describe("key file checks", () => {
  const rows: { name: string; mode: number; bytes: number; seal: string; unseal: UnsealResult["kind"] }[] = [
    { name: "0600, 32 bytes", mode: 0o600, bytes: 32, seal: "ok", unseal: "ok" },
    { name: "0400, 32 bytes", mode: 0o400, bytes: 32, seal: "ok", unseal: "ok" },
    { name: "0640 (group-readable)", mode: 0o640, bytes: 32, seal: "CONFIG", unseal: "failed" },
    { name: "0604 (world-readable)", mode: 0o604, bytes: 32, seal: "CONFIG", unseal: "failed" },
    { name: "0620 (group-writable)", mode: 0o620, bytes: 32, seal: "CONFIG", unseal: "failed" },
    { name: "0600, 31 bytes", mode: 0o600, bytes: 31, seal: "KEY_INVALID", unseal: "failed" },
    { name: "0600, 64 bytes", mode: 0o600, bytes: 64, seal: "KEY_INVALID", unseal: "failed" },
  ];
  test.each(rows)("$name → seal $seal, unseal $unseal", async ({ mode, bytes, seal, unseal }) => {
    const keyFile = join(dir, "k");
    const good = soft(join(dir, "good.key"));
    const data = await good.hsm.seal(randomSecret(32));
    writeFileSync(keyFile, bytes === 32 ? readFileSync(good.keyFile) : randomSecret(bytes));
    chmodSync(keyFile, mode);
    const { hsm } = soft(keyFile);
    const s = await hsm.seal(randomSecret(32)).then(() => "ok", (e: ZbError) => e.code);
    expect(s).toBe(seal);
    const u = await hsm.unseal(data);
    expect(u.kind).toBe(unseal);
    if (u.kind !== "ok") expect(u.why).toStartWith(`cannot use soft key file ${keyFile}: `);
    expect(statSync(keyFile).mode & 0o777).toBe(mode); // never "fixed" silently
  });

  test("a directory as key file is refused", async () => {
    const keyFile = join(dir, "d");
    mkdirSync(keyFile, { mode: 0o700 });
    const e = await thrown(soft(keyFile).hsm.seal(randomSecret(32)));
    expect(e.code).toBe("CONFIG");
    expect(e.message).toBe(`cannot use soft key file ${keyFile}: not a regular file`);
  });

  test("probe reports a group-readable key file as not present, with the reason", async () => {
    const { hsm, keyFile } = soft();
    await hsm.seal(randomSecret(32));
    chmodSync(keyFile, 0o644);
    const p = await hsm.probe();
    expect(p).toEqual({ backend: "soft", present: false, detail: `cannot use soft key file ${keyFile}: mode 0644 gives group or other access` });
  });
});
