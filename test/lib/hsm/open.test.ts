/**
 * loadBackend: what a zbunlock started early (--go-file) does before the go.
 * It evaluates the backend's code and runs its warm-up, which must exercise
 * every primitive the unseal uses, so their first use is paid before the go
 * (it opens no HSM: lib/hsm/tpm2/crypto.ts is pure).
 */
import { afterEach, describe, expect, spyOn, test } from "bun:test";
import { loadBackend } from "../../../lib/hsm/open.ts";
import type { BackendName } from "../../../lib/hsm/types.ts";

/** The object lib/sys/lazy.ts hands out (an ESM namespace import is a different object). */
const nodeCrypto = require("node:crypto") as typeof import("node:crypto");

const PRIMITIVES = ["createECDH", "createHash", "createHmac", "createCipheriv", "createDecipheriv"] as const;
type Primitive = (typeof PRIMITIVES)[number];

const spies: { mockRestore(): void }[] = [];
afterEach(() => spies.splice(0).forEach((s) => s.mockRestore()));

describe("loadBackend", () => {
  test.each([
    { backend: "tpm2", used: ["createECDH", "createHash", "createHmac", "createCipheriv", "createDecipheriv"] },
    { backend: "soft", used: [] },
    { backend: "pkcs11", used: [] },
    { backend: "zymkey", used: [] },
  ] as { backend: BackendName; used: Primitive[] }[])("$backend warms up $used", ({ backend, used }) => {
    const calls = new Map(PRIMITIVES.map((p) => [p, spyOn(nodeCrypto, p)]));
    spies.push(...calls.values());
    expect(() => loadBackend(backend)).not.toThrow();
    expect(PRIMITIVES.filter((p) => calls.get(p)!.mock.calls.length > 0)).toEqual(used);
  });
});
