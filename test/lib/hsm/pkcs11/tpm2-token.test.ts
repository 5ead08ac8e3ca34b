/**
 * Pkcs11Hsm on a second, independent PKCS#11 module that does implement
 * RSA-OAEP with SHA-256 on the token: tpm2-pkcs11 (Debian libtpm2-pkcs11-1)
 * over a real swtpm. SoftHSM 2.6 does OAEP with SHA-1 only, so this is where
 * zb's default mechanism meets a token, and the openssl / pkcs11-tool
 * interop with SHA-256 and MGF1-SHA-256 is checked.
 *
 * swtpm over TCP has no resource manager and runs out of object slots under
 * tpm2_ptool, so tpm2-abrmd (on a private D-Bus session bus, a unix socket
 * in the temp dir) sits in between, as it would on a device without
 * /dev/tpmrm0. All three daemons are ours and are killed in afterAll; swtpm
 * listens on 127.0.0.1 only.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Pkcs11Hsm } from "../../../../lib/hsm/pkcs11/index.ts";
import type { UnsealResult } from "../../../../lib/hsm/types.ts";
import { randomSecret } from "../../../../lib/secret.ts";
import { runTool, setNativeEnv, USER_PIN } from "../../../peers/softhsm.ts";

const TRIPLET = process.arch === "arm64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
const MODULE = `/usr/lib/${TRIPLET}/pkcs11/libtpm2_pkcs11.so`;
const BUS_NAME = "com.intel.tss2.Tabrmd.zbtest";
/** tpm2_ptool takes --id as text: "zb" becomes CKA_ID 7a62. */
const ID = "7a62";
/** Variables the module reads with getenv() at C_Initialize (and the tools need). */
const VARS = ["TPM2_PKCS11_STORE", "TPM2_PKCS11_TCTI", "TPM2TOOLS_TCTI", "DBUS_SESSION_BUS_ADDRESS", "TPM2_PKCS11_LOG_LEVEL", "TSS2_LOG"];

let dir = "";
const daemons: Subprocess[] = [];
const saved = new Map<string, string | undefined>();

beforeAll(async () => {
  for (const cmd of ["swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_ptool", "pkcs11-tool", "openssl"]) {
    if (!Bun.which(cmd) && !existsSync(`/usr/sbin/${cmd}`)) throw new Error(`${cmd} is missing: run .ci/setup`);
  }
  if (!existsSync(MODULE)) throw new Error(`${MODULE} is missing: run .ci/setup (package libtpm2-pkcs11-1)`);
  dir = mkdtempSync(join(tmpdir(), "zb-tpm2pkcs11-"));
  const port = await freePortPair();
  const tcti = `tabrmd:bus_type=session,bus_name=${BUS_NAME}`;
  const env: Record<string, string> = {
    TPM2_PKCS11_STORE: join(dir, "store"), TPM2_PKCS11_TCTI: tcti, TPM2TOOLS_TCTI: tcti,
    DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(dir, "bus")}`, TPM2_PKCS11_LOG_LEVEL: "0", TSS2_LOG: "all+NONE",
  };
  for (const v of VARS) {
    saved.set(v, process.env[v]);
    setNativeEnv(v, env[v]);
  }
  mkdirSync(join(dir, "tpm"));
  mkdirSync(env.TPM2_PKCS11_STORE!);
  start(["swtpm", "socket", "--tpm2", "--tpmstate", `dir=${join(dir, "tpm")}`, "--flags", "not-need-init,startup-clear",
    "--server", `type=tcp,port=${port},bindaddr=127.0.0.1`, "--ctrl", `type=tcp,port=${port + 1},bindaddr=127.0.0.1`]);
  writeFileSync(join(dir, "bus.conf"), busConfig(join(dir, "bus")));
  start(["dbus-daemon", "--nofork", `--config-file=${join(dir, "bus.conf")}`]);
  await until(() => existsSync(join(dir, "bus")), "dbus-daemon socket");
  start(["tpm2-abrmd", "--session", "--allow-root", `--dbus-name=${BUS_NAME}`, `--tcti=swtpm:host=127.0.0.1,port=${port}`]);
  await until(() => runTool(["tpm2_getcap", "properties-fixed"]).code === 0, "tpm2-abrmd");
  const ptool = (args: string[]) => check(runTool(["tpm2_ptool", ...args, `--path=${env.TPM2_PKCS11_STORE}`]), `tpm2_ptool ${args[0]}`);
  ptool(["init"]);
  ptool(["addtoken", "--pid=1", "--label=zb-tpm", "--sopin=12345678", `--userpin=${USER_PIN}`]);
  ptool(["addkey", "--label=zb-tpm", "--key-label=luks", "--id=zb", `--userpin=${USER_PIN}`, "--algorithm=rsa2048"]);
}, 60_000);

afterAll(async () => {
  for (const d of daemons.reverse()) {
    d.kill();
    await d.exited;
  }
  for (const [v, old] of saved) setNativeEnv(v, old);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function start(argv: string[]): void {
  daemons.push(Bun.spawn(argv, { env: { ...process.env }, stdout: "ignore", stderr: "ignore" }));
}

function check(r: { code: number; err: string }, what: string): void {
  if (r.code !== 0) throw new Error(`${what} failed: ${r.err}`);
}

async function until(ready: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (ready()) return;
    await Bun.sleep(50);
  }
  throw new Error(`${what} did not come up within 5 s`);
}

/** Two consecutive free loopback ports (swtpm's server port and its control port = port + 1). */
async function freePortPair(): Promise<number> {
  const free = (port: number) => new Promise<boolean>((res) => {
    const s = createServer().once("error", () => res(false)).listen(port, "127.0.0.1", () => s.close(() => res(true)));
  });
  for (let i = 0; i < 50; i++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    if ((await free(port)) && (await free(port + 1))) return port;
  }
  throw new Error("no two free consecutive ports on 127.0.0.1");
}

function busConfig(socket: string): string {
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path=${socket}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*"/><allow receive_sender="*"/><allow own="*"/><allow user="*"/></policy></busconfig>\n`;
}

const backend = (pin = USER_PIN) =>
  new Pkcs11Hsm({ module: MODULE, token: "zb-tpm", keyLabel: "luks", keyId: ID, pin: async () => new TextEncoder().encode(pin) });
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const secretOf = (r: UnsealResult) => (r.kind === "ok" ? hex(r.secret) : `${r.kind}: ${r.why}`);
const OAEP256 = ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"];

function tool(args: string[]) {
  return runTool(["pkcs11-tool", "--module", MODULE, "--token-label", "zb-tpm", ...args], undefined, { ZB_TEST_PIN: USER_PIN });
}

describe("tpm2-pkcs11 on swtpm (OAEP with SHA-256 on the token)", () => {
  test("probe sees the module and the token without a PIN", async () => {
    const p = await backend().probe();
    expect(p.present).toBe(true);
    expect(p.info).toMatchObject({ library: "TPM2.0 Cryptoki", token: "zb-tpm", key: true });
  });

  test("round trip: auto picks OAEP-SHA256 (the token accepts it)", async () => {
    const secret = randomSecret(32);
    const data = await backend().seal(secret);
    expect(data.mechanism).toBe("rsa-oaep-sha256");
    expect(secretOf(await backend().unseal(data))).toBe(hex(secret));
  });

  test("openssl pkeyutl OAEP-SHA256/MGF1-SHA256 to pkcs11-tool's exported key → zb unseals", async () => {
    const pub = join(dir, "pub.der");
    check(tool(["--read-object", "--type", "pubkey", "--id", ID, "-o", pub]), "export public key");
    const secret = randomSecret(32);
    const enc = runTool(["openssl", "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", pub, ...OAEP256], secret);
    check(enc, "openssl encrypt");
    const fp = new Bun.CryptoHasher("sha256").update(readFileSync(pub)).digest("base64");
    const r = await backend().unseal({
      mechanism: "rsa-oaep-sha256", token: "zb-tpm", keyId: ID, keyLabel: "luks", pubkeySha256: fp, ciphertext: enc.out.toString("base64"),
    });
    expect(secretOf(r)).toBe(hex(secret));
  });

  test("zb's ciphertext → pkcs11-tool --decrypt -m RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf MGF1-SHA256", async () => {
    const secret = randomSecret(32);
    const data = await backend().seal(secret);
    writeFileSync(join(dir, "zb.ct"), Buffer.from(data.ciphertext as string, "base64"));
    check(tool(["--login", "--pin", "env:ZB_TEST_PIN", "--decrypt", "-m", "RSA-PKCS-OAEP", "--hash-algorithm", "SHA256",
      "--mgf", "MGF1-SHA256", "--id", ID, "-i", join(dir, "zb.ct"), "-o", join(dir, "zb.pt")]), "pkcs11-tool decrypt");
    expect(hex(readFileSync(join(dir, "zb.pt")))).toBe(hex(secret));
  });

  test("20 unseals in a row, each with a new backend: every one returns the secret (no session or login left behind)", async () => {
    const secret = randomSecret(32);
    const data = await backend().seal(secret);
    const got: string[] = [];
    for (let i = 0; i < 20; i++) got.push(secretOf(await backend().unseal(data)));
    expect(got).toEqual(Array(20).fill(hex(secret)));
  });

  // Last: a wrong PIN counts toward the TPM's dictionary-attack lockout.
  test("wrong PIN → denied", async () => {
    const data = await backend().seal(randomSecret(32));
    const r = await backend("0000").unseal(data);
    expect(r.kind).toBe("denied");
    expect(r.kind === "ok" ? "" : r.why).toContain("CKR_PIN_INCORRECT");
  });
});
