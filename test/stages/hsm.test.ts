/**
 * `zb hsm` and `zb cred` through dist/zb-x64 with the soft backend (the
 * other backends' CLI round trips are in the backend tests' CLI rows).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, closeSync, existsSync, lstatSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { startFullBacklog } from "../peers/full-backlog.ts";
import { startSoftHsm, USER_PIN } from "../peers/softhsm.ts";
import { startSwtpm } from "../peers/swtpm.ts";

const BIN = resolve(import.meta.dir, "../../dist/zb-x64");
let dir = "";
const SECRET = new Uint8Array([0, 1, 2, 10, 13, 255, 0x3d, 0x0a, 7, 0]);

function zb(argv: string[], stdin?: Uint8Array) {
  const p = Bun.spawnSync([BIN, ...argv], { env: { ...process.env, ZB_NO_REBOOT: "1" }, ...(stdin ? { stdin } : {}) });
  return { code: p.exitCode, out: p.stdout.toString(), raw: new Uint8Array(p.stdout), err: p.stderr.toString() };
}
const soft = () => ["--config", join(dir, "none.conf"), "--soft-enable", "--soft-key-file", join(dir, "soft.key")];

beforeAll(() => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: run \`bun build.ts\` first`);
  dir = mkdtempSync(join(tmpdir(), "zb-hsmcli-"));
  writeFileSync(join(dir, "none.conf"), "# no settings: the rows give theirs as flags\n");
  symlinkSync(join(dir, "nowhere"), join(dir, "dangling"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("zb hsm", () => {
  test("seal reads stdin, unseal gives back every byte (NUL, newline included) in a new 0600 file", () => {
    const s = zb(["hsm", "seal", "--backend", "soft", ...soft(), "-o", join(dir, "a.sealed")], SECRET);
    expect(s.err).toContain("WARNING: the soft HSM backend is for development only");
    expect(s.code).toBe(0);
    const blob = JSON.parse(readFileSync(join(dir, "a.sealed"), "utf8"));
    expect([blob.format, blob.backend]).toEqual(["zb-sealed/1", "soft"]);
    const u = zb(["hsm", "unseal", join(dir, "a.sealed"), "-o", join(dir, "a.out"), ...soft()]);
    expect(u.code).toBe(0);
    expect(new Uint8Array(readFileSync(join(dir, "a.out")))).toEqual(SECRET);
    expect(statSync(join(dir, "a.out")).mode & 0o777).toBe(0o600);
    expect(zb(["hsm", "unseal", join(dir, "a.sealed"), "-o", "-", ...soft()]).raw).toEqual(SECRET);
  });

  test("a secret for a closed stdout (the runtime reopens it on /dev/null) is refused, not lost with exit 0", () => {
    const p = Bun.spawnSync(["sh", "-c", `"$0" hsm unseal "$1" -o - --soft-enable --soft-key-file "$2" >&-`, BIN, join(dir, "a.sealed"), join(dir, "soft.key")], { env: { ...process.env, ZB_NO_REBOOT: "1" }, stderr: "pipe" });
    expect(p.exitCode).toBe(5);
    expect(p.stderr.toString()).toContain("cannot write to stdout: it is /dev/null");
  });

  const REFUSALS: { name: string; argv: () => string[]; stdin?: Uint8Array; code: number; err: RegExp; keeps?: string; leaves?: string }[] = [
    { name: "unseal never replaces a file", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", join(dir, "a.out"), ...soft()], code: 2, err: /the file exists/ },
    { name: "soft backend not enabled", argv: () => ["hsm", "seal", "--backend", "soft", "--config", join(dir, "none.conf"), "-o", join(dir, "b.sealed")], stdin: SECRET, code: 8, err: /soft/, leaves: "b.sealed" },
    // A failed seal leaves no (empty) blob file behind: the output is claimed first, and removed again.
    { name: "empty secret", argv: () => ["hsm", "seal", "--backend", "soft", ...soft(), "-o", join(dir, "b.sealed")], stdin: new Uint8Array(0), code: 2, err: /it is empty/, leaves: "b.sealed" },
    { name: "a secret over 4096 bytes", argv: () => ["hsm", "seal", "--backend", "soft", ...soft(), "-o", join(dir, "b.sealed")], stdin: new Uint8Array(4097), code: 2, err: /cannot read the secret on stdin: larger than 4096 bytes/, leaves: "b.sealed" },
    { name: "a TPM that refuses (a regular file as --tpm), no blob left", argv: () => ["hsm", "seal", "--backend", "tpm2", "--tpm", join(dir, "none.conf"), "--config", join(dir, "none.conf"), "-o", join(dir, "b.sealed")], stdin: SECRET, code: 8, err: /cannot use .*none.conf as a TPM: it is not a character device \(a regular file\)/, leaves: "b.sealed", keeps: "none.conf" },
    { name: "unseal --json (the output is the secret; no summary)", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", "-", "--json", ...soft()], code: 2, err: /cannot unseal: --json applies to probe and seal/ },
    { name: "an unknown subcommand, before the config is read", argv: () => ["hsm", "bogus", "--config", join(dir, "missing.conf")], code: 2, err: /cannot run zb hsm: unknown subcommand "bogus"/ },
    { name: "an unknown subcommand with --help (still USAGE, not the usage text)", argv: () => ["hsm", "bogus", "--help"], code: 2, err: /cannot run zb hsm: unknown subcommand "bogus"/ },
    { name: "no subcommand", argv: () => ["hsm"], code: 2, err: /cannot run zb hsm: no subcommand given \(probe, seal or unseal\)/ },
    { name: "cred with no subcommand", argv: () => ["cred"], code: 2, err: /cannot run zb cred: no subcommand given \(create or show\)/ },
    { name: "cred with an unknown subcommand and --help", argv: () => ["cred", "bogus", "--help"], code: 2, err: /cannot run zb cred: unknown subcommand "bogus"/ },
    { name: "no backend", argv: () => ["hsm", "seal", "--config", join(dir, "none.conf"), "-o", join(dir, "b.sealed")], stdin: SECRET, code: 2, err: /no backend given/ },
    { name: "--pcrs for a backend without PCRs", argv: () => ["hsm", "seal", "--backend", "soft", ...soft(), "--pcrs", "7", "-o", join(dir, "b.sealed")], stdin: SECRET, code: 2, err: /--pcrs and --lock-pcr apply to tpm2 only/ },
    { name: "unknown backend", argv: () => ["hsm", "probe", "--backend", "tpm3"], code: 2, err: /unknown backend "tpm3"/ },
    { name: "not a sealed blob", argv: () => ["hsm", "unseal", join(dir, "none.conf"), "-o", "-"], code: 23, err: /cannot read .*none.conf: not JSON/ },
    { name: "sealed with another key file → no-match (19)", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", "-", "--soft-enable", "--soft-key-file", join(dir, "other.key")], code: 19, err: /cannot unseal with soft/ },
    { name: "key file missing → absent (4)", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", "-", "--soft-enable", "--soft-key-file", join(dir, "missing.key")], code: 4, err: /cannot unseal with soft/ },
    { name: "bad config file", argv: () => ["hsm", "probe", "--config", join(dir, "bad.conf")], code: 8, err: /bad.conf:1: unknown key "colour"/ },
    { name: "unseal with a token flag (the blob names its token: it would be ignored)", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", "-", "--pkcs11-token", "other", ...soft()], code: 2, err: /cannot unseal: --pkcs11-token applies to seal; the blob names its backend, token, key and PCRs/ },
    { name: "unseal with --backend and --pcrs", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", "-", "--backend", "tpm2", "--pcrs", "7", ...soft()], code: 2, err: /cannot unseal: --backend, --pcrs apply to seal/ },
    { name: "unseal of two blobs", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), join(dir, "o.sealed"), "-o", "-", ...soft()], code: 2, err: /unexpected argument ".*o.sealed" \(it takes one\)/ },
    { name: "cred show of two files", argv: () => ["cred", "show", join(dir, "a.sealed"), join(dir, "o.sealed")], code: 2, err: /cannot run zb cred show: unexpected argument/ },
    { name: "--config names a file that is not there", argv: () => ["hsm", "probe", "--config", join(dir, "missing.conf")], code: 8, err: /cannot read the HSM config .*missing.conf: no such file/ },
    { name: "seal never replaces a file (here the soft key itself)", argv: () => ["hsm", "seal", "--backend", "soft", ...soft(), "-o", join(dir, "soft.key")], stdin: SECRET, code: 2, err: /cannot write the sealed blob to .*soft.key: the file exists/, keeps: "soft.key" },
    { name: "unseal to a dangling link", argv: () => ["hsm", "unseal", join(dir, "a.sealed"), "-o", join(dir, "dangling"), ...soft()], code: 2, err: /the file exists/ },
    { name: "the lock PCR among the bound PCRs (never unsealable)", argv: () => ["hsm", "seal", "--backend", "tpm2", "--tpm", "swtpm:host=127.0.0.1,port=1", "--pcrs", "0,7", "--lock-pcr", "7", "--config", join(dir, "none.conf"), "-o", join(dir, "l.sealed")], stdin: SECRET, code: 2, err: /PCR 7 is both a bound PCR and the lock PCR/ },
  ];
  test.each(REFUSALS)("$name → exit $code", (c) => {
    writeFileSync(join(dir, "none.conf"), "# nothing\n");
    writeFileSync(join(dir, "bad.conf"), "colour = blue\n");
    if (c.name.startsWith("sealed with another")) zb(["hsm", "seal", "--backend", "soft", "--soft-enable", "--soft-key-file", join(dir, "other.key"), "-o", join(dir, "o.sealed")], SECRET);
    const kept = c.keeps ? readFileSync(join(dir, c.keeps)) : null;
    const r = zb(c.argv(), c.stdin);
    expect(r.err).toMatch(c.err);
    expect(r.code).toBe(c.code);
    if (kept) expect(readFileSync(join(dir, c.keeps!))).toEqual(kept);
    if (c.leaves) expect(existsSync(join(dir, c.leaves))).toBe(false);
    expect(existsSync(join(dir, "nowhere"))).toBe(false);
  });

  test("seal --json: the summary on stdout; on stderr when the blob itself goes to stdout (-o -)", () => {
    const f = zb(["hsm", "seal", "--backend", "soft", ...soft(), "--json", "-o", join(dir, "j.sealed")], SECRET);
    expect(f.code).toBe(0);
    expect(JSON.parse(f.out)).toMatchObject({ backend: "soft", output: join(dir, "j.sealed"), bytes: readFileSync(join(dir, "j.sealed")).length });
    expect(f.err).not.toContain("{");
    const o = zb(["hsm", "seal", "--backend", "soft", ...soft(), "--json", "-o", "-"], SECRET);
    expect(o.code).toBe(0);
    expect(JSON.parse(o.out)).toMatchObject({ format: "zb-sealed/1", backend: "soft" });
    expect(JSON.parse(o.err.split("\n").find((l) => l.startsWith("{"))!)).toMatchObject({ backend: "soft", output: "-", bytes: o.raw.length });
  });

  test.each([
    { stdout: "/dev/full", err: /cannot write to stdout: no space left on device/ },
    { stdout: "a pipe its reader closed", err: /cannot write to stdout: the reader went away \(broken pipe\)/ },
  ])("a secret on stdout must arrive: $stdout → exit 5, no stack trace", ({ stdout, err }) => {
    const argv = [BIN, "hsm", "unseal", join(dir, "a.sealed"), "-o", "-", ...soft()];
    let r: { code: number; err: string };
    if (stdout === "/dev/full") {
      const fd = openSync("/dev/full", "w");
      const p = Bun.spawnSync(argv, { stdout: fd });
      closeSync(fd);
      r = { code: p.exitCode, err: p.stderr.toString() };
    } else {
      // The reader closes its end at once; PIPESTATUS keeps zb's own status.
      const q = argv.map((a) => `'${a}'`).join(" ");
      const p = Bun.spawnSync(["bash", "-c", `${q} | { exec 0<&-; sleep 0.5; }; echo "zb=\${PIPESTATUS[0]}" >&2`]);
      const text = p.stderr.toString();
      r = { code: Number(/zb=(\d+)/.exec(text)?.[1]), err: text };
    }
    expect(r.err).toMatch(err);
    expect(r.code).toBe(5);
    expect(r.err).not.toContain("    at ");
  });

  test("probe --json lists every backend; --backend B absent exits 4", () => {
    const r = zb(["hsm", "probe", "--json", "--config", join(dir, "none.conf"), "--tpm", join(dir, "no-tpm")]);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.backends.map((b: { backend: string }) => b.backend)).toEqual(["tpm2", "pkcs11", "zymkey", "soft"]);
    expect(j.backends.every((b: { present: boolean }) => b.present === false)).toBe(true);
    expect(zb(["hsm", "probe", "--backend", "tpm2", "--tpm", join(dir, "no-tpm")]).code).toBe(4);
    expect(zb(["hsm", "probe", "--backend", "soft", ...soft()]).code).toBe(0);
  });

  test("probe against a TPM address whose listener never completes the handshake: absent (4) after the connect limit, not ~130 s", async () => {
    const l = await startFullBacklog();
    try {
      const addr = `swtpm:host=127.0.0.1,port=${l.port}`;
      const p = Bun.spawn([BIN, "hsm", "probe", "--backend", "tpm2", "--tpm", addr, "--config", join(dir, "none.conf")], { env: { ...process.env, ZB_NO_REBOOT: "1" }, stdout: "pipe", stderr: "pipe" });
      const guard = setTimeout(() => p.kill(9), 15_000);
      await p.exited;
      clearTimeout(guard);
      expect(p.signalCode).toBeNull(); // the old code was still connecting when the guard killed it
      expect(p.exitCode).toBe(4);
      expect(await new Response(p.stdout).text()).toContain(`cannot open TPM ${addr}: no answer within 5 s`);
    } finally {
      l.stop();
    }
  }, 30_000);

  test("--help shows real usage", () => {
    const r = zb(["hsm", "--help"]);
    expect(r.code).toBe(0);
    expect(r.out).toContain("zb hsm seal [--backend B] [--pcrs LIST] [--json] -o BLOB|-");
    expect(r.out).toContain("--json      a JSON summary");
    expect(r.out).toContain("--tpm ADDR");
  });
});

describe("zb hsm with tpm2 (swtpm on 127.0.0.1)", () => {
  test("probe, seal bound to PCR 7, unseal; a PCR extend then refuses (20)", async () => {
    const tpm = await startSwtpm();
    try {
      const addr = tpm.address;
      const p = zb(["hsm", "probe", "--backend", "tpm2", "--tpm", addr, "--json", "--config", join(dir, "none.conf")]);
      expect(p.code).toBe(0);
      expect(JSON.parse(p.out).backends[0]).toMatchObject({ backend: "tpm2", present: true });
      const s = zb(["hsm", "seal", "--backend", "tpm2", "--tpm", addr, "--pcrs", "7", "-o", join(dir, "t.sealed"), "--config", join(dir, "none.conf")], SECRET);
      expect(s.err).toBe("");
      expect(s.code).toBe(0);
      expect(JSON.parse(readFileSync(join(dir, "t.sealed"), "utf8")).data.pcrs).toEqual([7]);
      const u = zb(["hsm", "unseal", join(dir, "t.sealed"), "-o", "-", "--tpm", addr, "--config", join(dir, "none.conf")]);
      expect(u.code).toBe(0);
      expect(u.raw).toEqual(SECRET);
      const ext = Bun.spawnSync(["tpm2_pcrextend", "7:sha256=" + "01".repeat(32)], { env: { ...process.env, TPM2TOOLS_TCTI: `swtpm:host=127.0.0.1,port=${tpm.port}` } });
      expect(ext.exitCode).toBe(0);
      const d = zb(["hsm", "unseal", join(dir, "t.sealed"), "-o", "-", "--tpm", addr, "--config", join(dir, "none.conf")]);
      expect(d.code).toBe(20);
      expect(d.raw.length).toBe(0);
    } finally {
      await tpm.stop();
    }
  });
});

describe("zb hsm with pkcs11 (SoftHSM2): the PIN from a file or the terminal, never argv", () => {
  /** Run `cmd` on a pty (util-linux script), type each of `inputs` once `prompt` shows (again). */
  async function typeAtPrompt(cmd: string, env: Record<string, string>, prompt: string, ...inputs: string[]) {
    const p = Bun.spawn(["script", "-qec", cmd, "/dev/null"], { env: { ...process.env, ...env }, stdin: "pipe", stdout: "pipe" });
    let transcript = "";
    const reader = p.stdout.getReader();
    const deadline = Date.now() + 10_000;
    const prompts = () => transcript.split(prompt).length - 1;
    for (const [i, input] of inputs.entries()) {
      while (prompts() <= i && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        transcript += new TextDecoder().decode(value);
      }
      p.stdin.write(input);
      p.stdin.flush();
    }
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      transcript += new TextDecoder().decode(value);
    }
    p.stdin.end();
    return { code: await p.exited, transcript };
  }

  test("seal needs no PIN; unseal reads a 0600 PIN file, refuses a 0644 one, or asks on the terminal without echo", async () => {
    const hsm = startSoftHsm();
    try {
      const token = hsm.initToken("zb");
      hsm.keypair("zb", { id: "01", label: "zb-luks" });
      const env = { SOFTHSM2_CONF: hsm.conf };
      const conf = join(dir, "p11.conf");
      writeFileSync(conf, `backend = pkcs11\npkcs11.module = ${hsm.module}\npkcs11.token = zb\npkcs11.key-label = zb-luks\npkcs11.oaep = sha1\n`);
      const run = (argv: string[], stdin?: Uint8Array) => {
        const p = Bun.spawnSync([BIN, ...argv], { env: { ...process.env, ...env }, ...(stdin ? { stdin } : {}) });
        return { code: p.exitCode, raw: new Uint8Array(p.stdout), err: p.stderr.toString() };
      };
      const s = run(["hsm", "seal", "--config", conf, "-o", join(dir, "p.sealed")], SECRET);
      expect(s.err).toBe("");
      expect(s.code).toBe(0);
      const pin = join(dir, "pin");
      writeFileSync(pin, `${USER_PIN}\n`, { mode: 0o600 });
      const u = run(["hsm", "unseal", join(dir, "p.sealed"), "-o", "-", "--config", conf, "--pin-file", pin]);
      expect(u.code).toBe(0);
      expect(u.raw).toEqual(SECRET);
      // --pkcs11-token-serial at unseal: only that token is looked at (the PIN goes to no other).
      const serial = (flag: string) => run(["hsm", "unseal", join(dir, "p.sealed"), "-o", "-", "--config", conf, "--pin-file", pin, "--pkcs11-token-serial", flag]);
      const elsewhere = serial("0000000000000000");
      expect([elsewhere.code, elsewhere.raw.length]).toEqual([4, 0]);
      expect(elsewhere.err).toContain('no token labelled "zb" with serial "0000000000000000"');
      const there = serial(token.serial);
      expect([there.code, there.raw]).toEqual([0, SECRET]);
      writeFileSync(join(dir, "pin.open"), `${USER_PIN}\n`, { mode: 0o644 });
      const loose = run(["hsm", "unseal", join(dir, "p.sealed"), "-o", "-", "--config", conf, "--pin-file", join(dir, "pin.open")]);
      expect(loose.code).toBe(8); // CONFIG, as docs/hsm/pkcs11.md says (it was 21 while the PIN callback's error was wrapped)
      expect(loose.err).toMatch(/readable by group or others/);
      // No PIN file: zb asks on the terminal. `script` gives it a pty; the PIN is typed after the prompt.
      const out = join(dir, "p.out");
      const t = await typeAtPrompt(`${BIN} hsm unseal ${join(dir, "p.sealed")} -o ${out} --config ${conf}`, env, "PIN for zb: ", `${USER_PIN}\n`);
      expect(t.transcript).toContain("PIN for zb: ");
      expect(t.transcript).not.toContain(USER_PIN); // echo was off while it was typed
      expect(t.code).toBe(0);
      expect(new Uint8Array(readFileSync(out))).toEqual(SECRET);
      // A mistyped PIN is asked for again; three wrong ones → denied (20).
      const again = await typeAtPrompt(`${BIN} hsm unseal ${join(dir, "p.sealed")} -o ${join(dir, "p2.out")} --config ${conf}`, env, "PIN for zb: ", "9999\n", `${USER_PIN}\n`);
      expect(again.transcript).toContain("zb: the token refused the PIN; 2 more tries");
      expect(again.code).toBe(0);
      expect(new Uint8Array(readFileSync(join(dir, "p2.out")))).toEqual(SECRET);
      const w = await typeAtPrompt(`${BIN} hsm unseal ${join(dir, "p.sealed")} -o - --config ${conf}`, env, "PIN for zb: ", "9999\n", "9998\n", "9997\n");
      expect(w.transcript.split("PIN for zb: ").length - 1).toBe(3);
      expect(w.code).toBe(20);
      // A wrong PIN from a file is not tried again (tokens lock after a few).
      writeFileSync(join(dir, "pin.wrong"), "9999\n", { mode: 0o600 });
      const f = run(["hsm", "unseal", join(dir, "p.sealed"), "-o", "-", "--config", conf, "--pin-file", join(dir, "pin.wrong")]);
      expect(f.code).toBe(20);
      expect(f.err).not.toContain("more tries");
    } finally {
      hsm.close();
    }
  });
});

describe("zb cred", () => {
  test("create formats the root, seals its fresh key, packs the archive; show reads it back; the key opens the volume", () => {
    const img = join(dir, "root.img");
    writeFileSync(img, new Uint8Array(16 << 20));
    expect(zb(["cred", "create", "--slot", "b", "--root", img, "--backend", "soft", ...soft(), "-o", join(dir, "c.cpio")]).err).toMatch(/pass --format to confirm/);
    const c = zb(["cred", "create", "--slot", "b", "--root", img, "--format", "--backend", "soft", ...soft(), "-o", join(dir, "c.cpio")]);
    expect(c.code).toBe(0);
    expect(c.out).toMatch(/^slot b, sealed by soft, created .*\nroot  zb-root  LUKS UUID [0-9a-f-]{36}\n$/);
    const s = zb(["cred", "show", join(dir, "c.cpio"), "--json"]);
    expect(s.code).toBe(0);
    const j = JSON.parse(s.out);
    expect([j.meta.slot, j.meta.backend, j.root.backend]).toEqual(["b", "soft", "soft"]);
    const uuid = Bun.spawnSync(["cryptsetup", "luksUUID", img]).stdout.toString().trim();
    expect(j.meta.root.uuid).toBe(uuid);
    // The sealed key, unsealed, opens the header (the real cryptsetup).
    const x = Bun.spawnSync(["cpio", "-i", "--quiet", "--to-stdout", "zb/credentials/root.sealed"], { stdin: readFileSync(join(dir, "c.cpio")) });
    writeFileSync(join(dir, "root.sealed"), x.stdout);
    const key = zb(["hsm", "unseal", join(dir, "root.sealed"), "-o", "-", ...soft()]).raw;
    expect(key.length).toBe(32);
    expect(Bun.spawnSync(["cryptsetup", "open", "--test-passphrase", "--key-file=-", img], { stdin: key }).exitCode).toBe(0);
    expect(Bun.spawnSync(["cryptsetup", "open", "--test-passphrase", "--key-file=-", img], { stdin: new Uint8Array(32) }).exitCode).toBe(2);
  });

  test("a data volume: first provisioning, then re-sealed for the next slot from the running slot's credentials", () => {
    const [ra, rb, data] = ["ra.img", "rb.img", "data.img"].map((n) => join(dir, n)) as [string, string, string];
    for (const f of [ra, rb, data]) writeFileSync(f, new Uint8Array(16 << 20));
    const a = zb(["cred", "create", "--slot", "a", "--root", ra, "--format", "--data", data, "--format-data", "--backend", "soft", ...soft(), "-o", join(dir, "a.cpio"), "--json"]);
    expect(a.code).toBe(0);
    const dataUuid = JSON.parse(a.out).data.uuid;
    const b = zb(["cred", "create", "--slot", "b", "--root", rb, "--format", "--data", data, "--data-key-from", join(dir, "a.cpio"), "--backend", "soft", ...soft(), "-o", join(dir, "b.cpio"), "--json"]);
    expect(b.err).not.toContain("cannot");
    expect(b.code).toBe(0);
    expect(JSON.parse(b.out).data.uuid).toBe(dataUuid); // the volume was kept
    const bad = zb(["cred", "create", "--slot", "b", "--root", rb, "--format", "--data", data, "--format-data", "--data-key-from", join(dir, "a.cpio"), "--backend", "soft", ...soft(), "-o", join(dir, "x.cpio")]);
    expect([bad.code, /exactly one of/.test(bad.err)]).toEqual([2, true]);
  });

  // Each fails before any disk is formatted: a formatted volume whose fresh key was never saved would be lost.
  test.each([
    { where: "-o in a folder that does not exist", to: () => ["-o", join(dir, "nodir/c.cpio")], code: 5, err: /cannot create .*nodir\/c.cpio: no such file or directory/ },
    { where: "-o naming the root device itself", to: () => ["-o", join(dir, "fresh-root.img")], code: 2, err: /cannot write the credentials archive to .*fresh-root.img: the file exists/ },
    { where: "-o naming an existing file", to: () => ["-o", join(dir, "none.conf")], code: 2, err: /the file exists/ },
    { where: "--initramfs that does not exist", to: () => ["--initramfs", join(dir, "nope/initrd.img")], code: 5, err: /cannot append credentials to .*nope\/initrd.img: no such file or directory/ },
    { where: "--initramfs naming the data device", to: () => ["--initramfs", join(dir, "fresh-data.img")], code: 2, err: /--initramfs .*fresh-data.img is the device/ },
    { where: "--pcrs with the soft backend", to: () => ["--pcrs", "7", "-o", join(dir, "p.cpio")], code: 2, err: /--pcrs and --lock-pcr apply to tpm2 only, not soft/ },
  ])("$where → exit $code, root and data not formatted, no archive left", ({ to, code, err }) => {
    const [root, data] = ["fresh-root.img", "fresh-data.img"].map((n) => join(dir, n)) as [string, string];
    for (const f of [root, data]) writeFileSync(f, new Uint8Array(16 << 20));
    const conf = readFileSync(join(dir, "none.conf"));
    const r = zb(["cred", "create", "--slot", "a", "--root", root, "--format", "--data", data, "--format-data", "--backend", "soft", ...soft(), ...to()]);
    expect(r.err).toMatch(err);
    expect(r.code).toBe(code);
    for (const f of [root, data]) expect(Bun.spawnSync(["cryptsetup", "isLuks", f]).exitCode).not.toBe(0);
    expect([existsSync(join(dir, "p.cpio")), readFileSync(join(dir, "none.conf"))]).toEqual([false, conf]);
  });

  test("--initramfs through a symbolic link: the file it points to gets the credentials and keeps its mode and owner", () => {
    const root = join(dir, "link-root.img");
    writeFileSync(root, new Uint8Array(16 << 20));
    const real = join(dir, "initrd-real.img");
    writeFileSync(real, Bun.gzipSync(new Uint8Array(5000).fill(7)));
    chmodSync(real, 0o600);
    chownSync(real, 1, 1);
    symlinkSync(real, join(dir, "initrd-link.img"));
    const r = zb(["cred", "create", "--slot", "a", "--root", root, "--format", "--backend", "soft", ...soft(), "--initramfs", join(dir, "initrd-link.img")]);
    expect(r.code).toBe(0);
    expect(lstatSync(join(dir, "initrd-link.img")).isSymbolicLink()).toBe(true);
    const st = statSync(real);
    expect({ mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }).toEqual({ mode: 0o600, uid: 1, gid: 1 });
    // The offset `cred show` gives is where `cpio` finds the archive (docs/credentials.md).
    const shown = JSON.parse(zb(["cred", "show", real, "--json"]).out) as { offset: number };
    expect(shown.offset % 4).toBe(0);
    const list = Bun.spawnSync(["cpio", "-t", "--quiet"], { stdin: readFileSync(real).subarray(shown.offset) }).stdout.toString();
    expect(list).toContain("zb/credentials/root.sealed");
    expect(zb(["cred", "show", real]).out).toContain(`archive at byte ${shown.offset} of ${real}\n`);
  });
});
