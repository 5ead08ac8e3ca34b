/**
 * The pkcs11 backend inside a `bun build --compile` binary (same options as
 * build.ts: bytecode, no autoloaded config): bun:ffi, dlopen of the module,
 * CFunction on function-table pointers and node:crypto OAEP must all work
 * there. A tiny program seals a secret read from stdin, unseals it with a
 * PIN from a 0600 PIN file, and prints both; this process then unseals the
 * binary's blob too.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Pkcs11Hsm } from "../../../../lib/hsm/pkcs11/index.ts";
import { randomSecret } from "../../../../lib/secret.ts";
import { startSoftHsm, USER_PIN, type SoftHsm } from "../../../peers/softhsm.ts";

const LIB = resolve(import.meta.dir, "../../../../lib/hsm/pkcs11/index.ts");
let hsm: SoftHsm;
let binary = "";

const PROGRAM = `
import { Pkcs11Hsm, readPinFile } from ${JSON.stringify(LIB)};

async function main(): Promise<void> {
  const [module, pinFile] = process.argv.slice(2);
  const secret = new Uint8Array(await Bun.stdin.arrayBuffer());
  const hsm = new Pkcs11Hsm({ module: module!, token: "zb-bin", keyLabel: "luks", pin: async () => readPinFile(pinFile!) });
  const sealed = await hsm.seal(secret);
  // A PIN file the callback refuses is thrown with its own code (CONFIG), not answered.
  const r = await hsm.unseal(sealed).catch((e) => ({ kind: "threw " + e.code, why: e.message }));
  await hsm.close();
  const unsealed = r.kind === "ok" ? Buffer.from(r.secret).toString("hex") : r.kind + ": " + r.why;
  process.stdout.write(JSON.stringify({ sealed, unsealed }));
}
main().catch((e) => {
  process.stderr.write(String(e?.stack ?? e) + "\\n");
  process.exitCode = 1;
});
`;

beforeAll(async () => {
  hsm = startSoftHsm();
  hsm.initToken("zb-bin");
  hsm.keypair("zb-bin", { id: "07", label: "luks" });
  const src = join(hsm.dir, "roundtrip.ts");
  writeFileSync(src, PROGRAM);
  binary = join(hsm.dir, "roundtrip");
  const result = await Bun.build({
    entrypoints: [src],
    minify: true,
    bytecode: true,
    compile: { outfile: binary, autoloadBunfig: false, autoloadDotenv: false, autoloadTsconfig: false, autoloadPackageJson: false },
  });
  if (!result.success) throw new Error(result.logs.map(String).join("\n"));
});

afterAll(() => hsm?.close());

describe("compiled binary", () => {
  test("seals and unseals on SoftHSM2, PIN from a 0600 file; its blob unseals in this process", async () => {
    const pinFile = join(hsm.dir, "pin");
    writeFileSync(pinFile, `${USER_PIN}\n`);
    chmodSync(pinFile, 0o600);
    const secret = randomSecret(32);
    const p = Bun.spawnSync([binary, hsm.module, pinFile], { stdin: secret, env: { ...process.env } });
    expect(p.stderr.toString()).toBe("");
    expect(p.exitCode).toBe(0);
    const { sealed, unsealed } = JSON.parse(p.stdout.toString());
    const hex = Buffer.from(secret).toString("hex");
    expect(unsealed).toBe(hex);
    expect(sealed.token).toBe("zb-bin");
    const here = await new Pkcs11Hsm({ module: hsm.module, pin: async () => new TextEncoder().encode(USER_PIN) }).unseal(sealed);
    expect(here.kind === "ok" ? Buffer.from(here.secret).toString("hex") : here.why).toBe(hex);
  });

  test("a group-readable PIN file is refused inside the binary too (unseal throws CONFIG)", () => {
    const pinFile = join(hsm.dir, "pin-open");
    writeFileSync(pinFile, USER_PIN);
    chmodSync(pinFile, 0o644);
    const p = Bun.spawnSync([binary, hsm.module, pinFile], { stdin: randomSecret(32), env: { ...process.env } });
    expect(p.exitCode).toBe(0);
    expect(JSON.parse(p.stdout.toString()).unsealed).toBe(
      `threw CONFIG: cannot use PIN file ${pinFile}: it is readable by group or others (mode 0644)`,
    );
  });
});
