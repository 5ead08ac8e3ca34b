/**
 * loadBackend: what a zbunlock started early (--go-file) does before the go.
 * It evaluates the backend's code and runs its warm-up, which must exercise
 * every primitive the unseal uses, so their first use is paid before the go
 * (it opens no HSM: lib/hsm/tpm2/crypto.ts is pure). The tpm2 session
 * cryptography is native WebCrypto (plus Bun.CryptoHasher): node:crypto,
 * whose module costs a boot 0.08–0.19 s under QEMU, must stay untouched.
 */
import { afterEach, describe, expect, spyOn, test } from "bun:test";
import { loadBackend } from "../../../lib/hsm/open.ts";
import type { BackendName } from "../../../lib/hsm/types.ts";

const nodeCrypto = require("node:crypto") as typeof import("node:crypto");

const SUBTLE = ["generateKey", "exportKey", "importKey", "deriveBits", "encrypt"] as const;
const NODE = ["createECDH", "createHash", "createHmac", "createCipheriv", "createDecipheriv"] as const;
type Primitive = (typeof SUBTLE)[number] | (typeof NODE)[number];

const spies: { mockRestore(): void }[] = [];
afterEach(() => spies.splice(0).forEach((s) => s.mockRestore()));

describe("loadBackend", () => {
  test.each([
    { backend: "tpm2", used: ["generateKey", "exportKey", "importKey", "deriveBits", "encrypt"] },
    { backend: "soft", used: [] },
    { backend: "pkcs11", used: [] },
    { backend: "zymkey", used: [] },
  ] as { backend: BackendName; used: Primitive[] }[])("$backend warms up $used", async ({ backend, used }) => {
    const calls = new Map<Primitive, { mock: { calls: unknown[] } }>();
    for (const p of SUBTLE) calls.set(p, spyOn(crypto.subtle, p));
    for (const p of NODE) calls.set(p, spyOn(nodeCrypto, p));
    spies.push(...(calls.values() as Iterable<{ mockRestore(): void } & { mock: { calls: unknown[] } }>));
    await loadBackend(backend);
    expect([...SUBTLE, ...NODE].filter((p) => calls.get(p)!.mock.calls.length > 0)).toEqual(used);
  });
});
