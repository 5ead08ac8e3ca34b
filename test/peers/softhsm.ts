/**
 * A throwaway SoftHSM2 for tests: a temp token directory and softhsm2.conf,
 * tokens made with `softhsm2-util --init-token`, keys with `pkcs11-tool`.
 *
 * SoftHSM reads SOFTHSM2_CONF with getenv() at C_Initialize, so
 * {@link startSoftHsm} sets it in the C environment too (native-env.ts) and
 * restores the old value on close; child processes get it through process.env.
 *
 * PINs here are test-only constants in a temp token; pkcs11-tool gets them
 * through `--pin env:VAR`, softhsm2-util (which has no other way) in argv.
 */
import { setNativeEnv } from "./native-env.ts";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const TRIPLET = process.arch === "arm64" ? "aarch64-linux-gnu" : "x86_64-linux-gnu";
/** Debian's SoftHSM2 module (package libsofthsm2). */
export const SOFTHSM_MODULE = `/usr/lib/${TRIPLET}/softhsm/libsofthsm2.so`;
export const USER_PIN = "1234";
export const SO_PIN = "12345678";

export { setNativeEnv };

export interface Run {
  code: number;
  out: Buffer;
  err: string;
}

/**
 * A token by label, or by its slot (tokens may share a label: the slot id is
 * what tells them apart for pkcs11-tool, `--slot`).
 */
export type TokenRef = string | { slot: string };

/** A token made by initToken: its slot id (decimal, as softhsm2-util prints it) and serial number. */
export interface MadeToken {
  slot: string;
  serial: string;
}

export interface SoftHsm {
  dir: string;
  conf: string;
  module: string;
  /** Make an initialized token with the test PINs (another with the same label is allowed). */
  initToken(label: string): MadeToken;
  /** Slot ids (decimal) of the initialized tokens, in the module's slot-list order (pkcs11-tool -L). */
  slotOrder(): string[];
  /** Generate an RSA key pair on a token with pkcs11-tool. */
  keypair(token: TokenRef, key: { id: string; label: string; bits?: number }): void;
  /** Import a DER private + public key (made by openssl) under one id and label. */
  importKey(token: TokenRef, key: { id: string; label: string; privateDer: string; publicDer: string }): void;
  /** The public key of `id` as DER SubjectPublicKeyInfo, exported by pkcs11-tool. */
  publicKeyDer(token: TokenRef, id: string): Uint8Array;
  /** pkcs11-tool against this SoftHSM; `--pin env:ZB_TEST_PIN` works in `args`. */
  tool(args: readonly string[]): Run;
  /** Kill nothing (SoftHSM is a library), restore SOFTHSM2_CONF, remove the temp dir. */
  close(): void;
}

function need(cmd: string): void {
  if (!Bun.which(cmd)) throw new Error(`${cmd} is missing: run .ci/setup (packages softhsm2, opensc)`);
}

function run(argv: readonly string[], env: Record<string, string | undefined>, stdin?: Uint8Array): Run {
  const p = Bun.spawnSync([...argv], { env, stdin: stdin ?? "ignore" });
  return { code: p.exitCode ?? -1, out: p.stdout, err: p.stderr.toString() };
}

function check(r: Run, what: string): Run {
  if (r.code !== 0) throw new Error(`${what} failed (${r.code}): ${r.err}`);
  return r;
}

/**
 * A fresh SoftHSM2 configuration in a temp dir, active for this process and its children.
 * @throws {Error} when softhsm2-util, pkcs11-tool or the module are missing
 */
export function startSoftHsm(): SoftHsm {
  need("softhsm2-util");
  need("pkcs11-tool");
  if (!existsSync(SOFTHSM_MODULE)) throw new Error(`${SOFTHSM_MODULE} is missing: run .ci/setup (package softhsm2)`);
  const dir = mkdtempSync(join(tmpdir(), "zb-softhsm-"));
  const tokens = join(dir, "tokens");
  mkdirSync(tokens);
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const previous = process.env.SOFTHSM2_CONF;
  setNativeEnv("SOFTHSM2_CONF", conf);
  const env = { ...process.env, SOFTHSM2_CONF: conf, ZB_TEST_PIN: USER_PIN };
  const tool = (args: readonly string[]) => run(["pkcs11-tool", "--module", SOFTHSM_MODULE, ...args], env);
  const which = (token: TokenRef) => (typeof token === "string" ? ["--token-label", token] : ["--slot", token.slot]);
  const login = (token: TokenRef) => [...which(token), "--login", "--pin", "env:ZB_TEST_PIN"];
  /** pkcs11-tool -L: each initialized token's slot id (decimal) and serial, in listing order. */
  const listing = () =>
    [...check(tool(["-L"]), "list slots").out.toString().matchAll(/^Slot \d+ \(0x([0-9a-f]+)\):.*\n(?:  .*\n)*?  serial num\s+: (\S+)/gm)]
      .map((m) => ({ slot: String(parseInt(m[1]!, 16)), serial: m[2]! }));

  return {
    dir, conf, module: SOFTHSM_MODULE, tool,
    initToken(label) {
      const r = check(run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", USER_PIN], env), `init token ${label}`);
      const slot = /reassigned to slot (\d+)/.exec(r.out.toString())?.[1];
      const made = listing().find((t) => t.slot === slot);
      if (!made) throw new Error(`init token ${label}: cannot find its slot in pkcs11-tool -L (${r.out.toString().trim()})`);
      return made;
    },
    slotOrder: () => listing().map((t) => t.slot),
    keypair(token, key) {
      check(tool([...login(token), "--keypairgen", "--key-type", `rsa:${key.bits ?? 2048}`, "--id", key.id, "--label", key.label]), `keypairgen on ${JSON.stringify(token)}`);
    },
    importKey(token, key) {
      for (const [file, type] of [[key.privateDer, "privkey"], [key.publicDer, "pubkey"]] as const) {
        check(tool([...login(token), "--write-object", file, "--type", type, "--id", key.id, "--label", key.label]), `import ${type} to ${JSON.stringify(token)}`);
      }
    },
    publicKeyDer(token, id) {
      const out = join(dir, `pub-${typeof token === "string" ? token : token.slot}-${id}.der`);
      check(tool([...which(token), "--read-object", "--type", "pubkey", "--id", id, "-o", out]), `read public key ${id}`);
      return new Uint8Array(readFileSync(out));
    },
    close() {
      setNativeEnv("SOFTHSM2_CONF", previous);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Run a command with `stdin` and extra environment, for openssl and other tools in tests. */
export function runTool(argv: readonly string[], stdin?: Uint8Array, env: Record<string, string> = {}): Run {
  return run(argv, { ...process.env, ...env }, stdin);
}
