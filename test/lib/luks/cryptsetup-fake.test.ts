/**
 * CryptsetupCli against fake cryptsetup binaries (this host has no
 * device-mapper, so open/close cannot map a device): the argv and the key
 * input of open, close and addKey recorded, the exit-status mapping, the
 * time limit and its kill, prepareOpen (started before the key), the key
 * scrubbed from every message, and isWrongKey. The real binary:
 * cryptsetup.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ZbError } from "../../../lib/errors.ts";
import { CryptsetupCli, exitError, isWrongKey, MAX_KEY_BYTES } from "../../../lib/luks/cryptsetup.ts";
import { LUKS_PROBE_BYTES } from "../../../lib/luks/header.ts";
import { scrub } from "../../../lib/luks/keyio.ts";
import { OUTPUT_GRACE_MS, stillRunning, type ToolProcess } from "../../../lib/luks/tool.ts";
import { tempDirs } from "../../tempdirs.ts";
import { awkwardKey } from "./cryptsetup-fixture.ts";

const tempDir = tempDirs("zb-luks-");

describe("open/close argv (recording fake binary)", () => {
  /** A fake cryptsetup: writes its argv, the byte counts of stdin (read from fd 0 as cryptsetup does: a socket cannot be opened as /dev/stdin) and fd 3, and exits with $FAKE_RC from a file. */
  function fake(dir: string, rc = 0, stderr = ""): { bin: string; record: () => { argv: string[]; stdin: number; fd3: number } } {
    const bin = join(dir, "cryptsetup-fake");
    const out = join(dir, "record");
    writeFileSync(
      bin,
      `#!/bin/sh\nprintf '%s\\n' "$@" > '${out}.argv'\nwc -c > '${out}.stdin' 2>/dev/null || echo -1 > '${out}.stdin'\nif [ -e /dev/fd/3 ]; then wc -c < /dev/fd/3 > '${out}.fd3'; else echo -1 > '${out}.fd3'; fi\nprintf '%s' '${stderr}' >&2\nexit ${rc}\n`,
    );
    chmodSync(bin, 0o755);
    const num = (p: string) => Number(readFileSync(p, "utf8").trim());
    return { bin, record: () => ({ argv: readFileSync(`${out}.argv`, "utf8").trimEnd().split("\n"), stdin: num(`${out}.stdin`), fd3: existsSync(`${out}.fd3`) ? num(`${out}.fd3`) : -1 }) };
  }

  // `dev` is a file of zeros in the test's temp dir, standing for a device without a LUKS header:
  // addKey reads the device's header (the LUKS1 refusal) before cryptsetup runs, and a test must not
  // read (or depend on) a disk of the machine it runs on. Its path reads "<dev>" in `after`.
  const rows: { name: string; before: (cs: CryptsetupCli, dev: string) => Promise<unknown>; after: { argv: string[]; stdin: number; fd3: number } }[] = [
    {
      name: "open",
      before: (cs) => cs.open("/dev/mmcblk0p2", "zb-root", awkwardKey(30)),
      after: { argv: ["open", "--type", "luks", "--key-file=-", "/dev/mmcblk0p2", "zb-root"], stdin: 32, fd3: -1 },
    },
    {
      name: "open read-only with discards",
      before: (cs) => cs.open("/dev/mmcblk0p4", "zb-data", awkwardKey(31, 64), { readOnly: true, allowDiscards: true }),
      after: { argv: ["open", "--type", "luks", "--key-file=-", "--readonly", "--allow-discards", "/dev/mmcblk0p4", "zb-data"], stdin: 64, fd3: -1 },
    },
    { name: "close", before: (cs) => cs.close("zb-root"), after: { argv: ["close", "zb-root"], stdin: 0, fd3: -1 } },
    {
      name: "addKey: two keys, two channels",
      before: (cs, dev) => cs.addKey(dev, awkwardKey(32, 16), awkwardKey(33, 40)),
      after: {
        argv: ["luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha512", "--key-file=-", "<dev>", "/dev/fd/3"],
        stdin: 16,
        fd3: 40,
      },
    },
  ];
  test.each(rows)("$name", async ({ before, after }) => {
    const dir = tempDir();
    const f = fake(dir);
    const dev = join(dir, "sda2");
    writeFileSync(dev, new Uint8Array(LUKS_PROBE_BYTES));
    await before(new CryptsetupCli({ binary: f.bin }), dev);
    const rec = f.record();
    expect({ ...rec, argv: rec.argv.map((a) => (a === dev ? "<dev>" : a)) }).toEqual(after);
  });

  const exits: { name: string; before: { rc: number; stderr: string }; after: RegExp }[] = [
    { name: "exit 1", before: { rc: 1, stderr: "Device zb-root is not active." }, after: /cannot close zb-root: cryptsetup refused \(wrong parameters, not a LUKS device, or no device-mapper\) \(cryptsetup exit 1: Device zb-root is not active\.\)/ },
    { name: "exit 3", before: { rc: 3, stderr: "" }, after: /cannot close zb-root: out of memory \(cryptsetup exit 3\)$/ },
    { name: "exit 4", before: { rc: 4, stderr: "Device zb-root not found" }, after: /wrong device/ },
    { name: "exit 5", before: { rc: 5, stderr: "Device zb-root is still in use." }, after: /the device already exists or is busy .*still in use/ },
    { name: "exit 9", before: { rc: 9, stderr: "" }, after: /unexpected exit status 9/ },
  ];
  test.each(exits)("close, $name", async ({ before, after }) => {
    const f = fake(tempDir(), before.rc, before.stderr);
    const err = await new CryptsetupCli({ binary: f.bin }).close("zb-root").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ZbError);
    expect([(err as ZbError).code, (err as ZbError).message]).toEqual(["LUKS_FAILED", expect.stringMatching(after)]);
  });

  test("a hanging cryptsetup is killed at the timeout", async () => {
    const dir = tempDir();
    const bin = join(dir, "hang");
    writeFileSync(bin, "#!/bin/sh\nexec sleep 30\n");
    chmodSync(bin, 0o755);
    const err = await new CryptsetupCli({ binary: bin, timeoutMs: 300 }).close("zb-root").catch((e: unknown) => e);
    // Without the kill, the 30 s sleep would outlast the test's own timeout.
    expect((err as ZbError).message).toMatch(/cannot close zb-root: cryptsetup was killed by SIGKILL \(timeout 0.3 s\)/);
  });

  test("a cryptsetup that does not end after its kill: close returns after the kill bound, saying it may still be working", async () => {
    // A process stuck in a device-mapper ioctl cannot be made here; a kill that does nothing leaves
    // the fake running just as well.
    const dir = tempDir();
    const bin = join(dir, "stuck");
    writeFileSync(bin, `#!/bin/sh\necho $$ >${dir}/pid\nexec sleep 30\n`, { mode: 0o755 });
    try {
      const err = await new CryptsetupCli({ binary: bin, timeoutMs: 200, killWaitMs: 200, killer: () => undefined }).close("zb-root").catch((e: unknown) => e);
      expect((err as ZbError).message).toBe("cannot close zb-root: cryptsetup did not end within 0.2 s of SIGKILL (timeout 0.2 s); it may still be changing the device");
      expect(stillRunning(err)).toBe(true);
    } finally {
      process.kill(Number(readFileSync(join(dir, "pid"), "utf8")), "SIGKILL");
    }
  }, 15_000);

  test.each([
    { name: "it exits 0 → closed", body: "exit 0", after: null },
    { name: "it fails → its own status", body: "echo 'Device zb-root is still in use.' >&2\nexit 5", after: "cannot close zb-root: the device already exists or is busy (cryptsetup exit 5: Device zb-root is still in use.)" },
  ])("a child holds the output of a cryptsetup that ended: $name", async ({ body, after }) => {
    const dir = tempDir();
    const bin = join(dir, "held");
    writeFileSync(bin, `#!/bin/sh\nsleep 30 &\necho $! >${dir}/holder\n${body}\n`, { mode: 0o755 });
    // The kill bound is long: an answer that waited for the held output would come only after the
    // time limit and the bound (and say "still running").
    const cs = new CryptsetupCli({ binary: bin, timeoutMs: 300, killWaitMs: 10_000 });
    try {
      const err = await cs.close("zb-root").then(() => null, (e: unknown) => e);
      if (after === null) expect(err).toBeNull();
      else {
        expect((err as ZbError).message).toBe(after);
        expect(stillRunning(err)).toBe(false);
      }
    } finally {
      process.kill(Number(readFileSync(join(dir, "holder"), "utf8")), "SIGKILL");
    }
  }, 15_000);

  // The output is taken as far as it came within OUTPUT_GRACE_MS of the exit. A reader of stdout
  // (keyslots, uuid) whose output a left-behind process still held was told "printed no JSON
  // metadata" (or, for a cut that still parsed, nothing at all); now it hears why.
  test.each([
    { name: "keyslots", call: (cs: CryptsetupCli) => cs.keyslots("/dev/vdz"), what: "read the keyslots of /dev/vdz", first: `{"keyslots":{"0":`, rest: `{"type":"luks2","kdf":{"type":"pbkdf2"}}}}` },
    { name: "uuid", call: (cs: CryptsetupCli) => cs.uuid("/dev/vdz"), what: "read the LUKS UUID of /dev/vdz", first: "0b3c8a1e-5d7f-4c2a", rest: "-9e61-2f4b8d0a7c13" },
  ])("$name: output a left-behind child still holds (and completes late) is reported as cut, not parsed", async ({ call, what, first, rest }) => {
    const dir = tempDir();
    const bin = join(dir, "late");
    writeFileSync(bin, `#!/bin/sh\nprintf '%s' '${first}'\n{ sleep 1; printf '%s\\n' '${rest}'; } &\necho $! >${dir}/holder\nexit 0\n`, { mode: 0o755 });
    const cs = new CryptsetupCli({ binary: bin, timeoutMs: 10_000 });
    try {
      const err = await call(cs).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(ZbError);
      expect({ code: (err as ZbError).code, message: (err as ZbError).message }).toEqual({
        code: "LUKS_FAILED",
        message: `cannot ${what}: cryptsetup's output did not end within ${OUTPUT_GRACE_MS / 1000} s of its exit (a process it started still holds it), so what it printed may be incomplete`,
      });
    } finally {
      try {
        process.kill(Number(readFileSync(join(dir, "holder"), "utf8")), "SIGKILL");
      } catch {
        // already done
      }
    }
  }, 15_000);

  test("a cryptsetup that exits without reading its key: its exit status is the error, never EPIPE (largest key, 50 runs)", async () => {
    // /bin/false exits at once: the key write races the close of the child's
    // end of the socket (EPIPE/ECONNRESET, sometimes from a pending write).
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) {
      const e = await new CryptsetupCli({ binary: "/bin/false" }).open("/dev/x", "zb-root", new Uint8Array(MAX_KEY_BYTES).fill(0x5a)).catch((x: unknown) => x);
      seen.add(`${(e as ZbError).code}: ${(e as ZbError).message}`);
    }
    expect([...seen]).toEqual([expect.stringMatching(/^LUKS_FAILED: cannot open \/dev\/x as zb-root: .*\(cryptsetup exit 1\)$/)]);
  });

  test("a missing binary is LUKS_FAILED with an install hint", async () => {
    const err = await new CryptsetupCli({ binary: "zb-no-such-cryptsetup" }).close("zb-root").catch((e: unknown) => e);
    expect([(err as ZbError).code, (err as ZbError).hint]).toEqual(["LUKS_FAILED", expect.stringMatching(/cryptsetup-bin/)]);
  });
});

describe("prepareOpen: cryptsetup started before the key (recording fake binary)", () => {
  /** A fake that records its argv at once, then (once stdin reaches EOF) the byte count it read; exits RC. */
  function fake(dir: string, rc = 0): { bin: string; started: () => string[] | null; read: () => number | null } {
    const bin = join(dir, "cryptsetup-fake");
    const out = join(dir, "record");
    writeFileSync(bin, `#!/bin/sh\nprintf '%s\\n' "$@" > '${out}.argv.tmp' && mv '${out}.argv.tmp' '${out}.argv'\nn=$(wc -c)\necho "$n" > '${out}.stdin'\nexit ${rc}\n`);
    chmodSync(bin, 0o755);
    return {
      bin,
      started: () => (existsSync(`${out}.argv`) ? readFileSync(`${out}.argv`, "utf8").trimEnd().split("\n") : null),
      read: () => (existsSync(`${out}.stdin`) ? Number(readFileSync(`${out}.stdin`, "utf8").trim()) : null),
    };
  }
  /** Wait (bounded) until the fake has started: it runs before any key exists. */
  async function startedArgv(f: ReturnType<typeof fake>): Promise<string[] | null> {
    for (let i = 0; i < 500 && f.started() === null; i++) await Bun.sleep(10);
    return f.started();
  }

  test("it runs before the key is handed over, then reads exactly the key", async () => {
    const f = fake(tempDir());
    const p = new CryptsetupCli({ binary: f.bin }).prepareOpen("/dev/mmcblk0p2", "zb-root");
    expect(await startedArgv(f)).toEqual(["open", "--type", "luks", "--key-file=-", "/dev/mmcblk0p2", "zb-root"]);
    expect(f.read()).toBeNull(); // still waiting for its key
    const key = awkwardKey(40);
    await p.open(key);
    expect(f.read()).toBe(32);
    expect(key).toEqual(awkwardKey(40)); // not wiped: the caller owns the key and wipes it
  });

  test("cancel kills it before it read anything, and the prepared open cannot be used afterwards", async () => {
    const f = fake(tempDir());
    const p = new CryptsetupCli({ binary: f.bin }).prepareOpen("/dev/mmcblk0p2", "zb-root");
    expect(await startedArgv(f)).not.toBeNull();
    await p.cancel();
    await p.cancel(); // twice is harmless
    expect(f.read()).toBeNull();
    const e = await p.open(awkwardKey(41)).catch((x: unknown) => x);
    expect((e as ZbError).code).toBe("INTERNAL");
  });

  // What a cancel guarantees, with a cryptsetup that forked a process sharing its stdin (the real one
  // forks none): the kill goes through the runner's killer (ToolRun.kill, as at a timeout) and is
  // waited for, bounded; a cryptsetup that ended is reaped (no zombie: /proc keeps a zombie's entry);
  // and no key reaches any process: none is ever written, and once cryptsetup ended the forked one
  // reads the end of stdin. A kill that does nothing stands in for a process stuck in the kernel.
  test.each([
    { name: "the kill ends it: reaped, and its forked process reads the end, no key", before: { kills: true, killWaitMs: 10_000 }, after: { killerCalls: 1, inProc: false, forkedRead: 0 } },
    { name: "the kill does not end it: cancel returns after the kill bound, its stdin still waiting", before: { kills: false, killWaitMs: 300 }, after: { killerCalls: 1, inProc: true, forkedRead: null } },
  ])("cancel, $name", async ({ before, after }) => {
    const dir = tempDir();
    const bin = join(dir, "cryptsetup-fake");
    // fd 4: sh gives a background job /dev/null as its stdin, so the forked one reads a copy of it.
    writeFileSync(bin, `#!/bin/sh\nexec 4<&0\n( n=$(wc -c <&4); echo "$n" >'${dir}/forked.tmp'; mv '${dir}/forked.tmp' '${dir}/forked' ) &\nexec 4<&-\necho $$ >'${dir}/pid.tmp'; mv '${dir}/pid.tmp' '${dir}/pid'\nexec sleep 30\n`, { mode: 0o755 });
    const calls: number[] = [];
    const killer = (proc: ToolProcess) => {
      calls.push(proc.pid);
      if (before.kills) proc.kill("SIGKILL");
    };
    const p = new CryptsetupCli({ binary: bin, killWaitMs: before.killWaitMs, killer }).prepareOpen("/dev/mmcblk0p2", "zb-root");
    const pidFile = join(dir, "pid");
    for (let i = 0; i < 500 && !existsSync(pidFile); i++) await Bun.sleep(10);
    const pid = Number(readFileSync(pidFile, "utf8"));
    const forked = join(dir, "forked");
    let inProc = true;
    try {
      await p.cancel();
      inProc = existsSync(`/proc/${pid}`);
      if (!inProc) for (let i = 0; i < 500 && !existsSync(forked); i++) await Bun.sleep(10);
      const forkedRead = existsSync(forked) ? Number(readFileSync(forked, "utf8").trim()) : null;
      expect({ killerCalls: calls.length, inProc, forkedRead }).toEqual(after);
      expect(calls).toEqual([pid]);
    } finally {
      // The row whose kill does nothing: its cryptsetup still runs; once it ends, the forked one reads the end too.
      if (inProc) process.kill(pid, "SIGKILL");
    }
  }, 15_000);

  const refused: { name: string; before: { key: Uint8Array; rc: number }; after: { code: string; message: RegExp; read: number | null } }[] = [
    { name: "an empty key: refused, cryptsetup killed unread", before: { key: new Uint8Array(0), rc: 0 }, after: { code: "LUKS_FAILED", message: /the key is 0 bytes/, read: null } },
    { name: "an oversize key: refused, cryptsetup killed unread", before: { key: new Uint8Array(MAX_KEY_BYTES + 1), rc: 0 }, after: { code: "LUKS_FAILED", message: /the key is 4097 bytes/, read: null } },
    { name: "cryptsetup fails after reading the key: its exit status", before: { key: awkwardKey(42), rc: 2 }, after: { code: "LUKS_FAILED", message: /the key does not open any keyslot \(cryptsetup exit 2\)/, read: 32 } },
  ];
  test.each(refused)("$name", async ({ before, after }) => {
    const f = fake(tempDir(), before.rc);
    const p = new CryptsetupCli({ binary: f.bin }).prepareOpen("/dev/mmcblk0p2", "zb-root");
    const e = await p.open(before.key).catch((x: unknown) => x);
    expect([(e as ZbError).code, (e as ZbError).message]).toEqual([after.code, expect.stringMatching(after.message)]);
    expect(f.read()).toBe(after.read);
  });

  /** A fake cryptsetup from a shell body (an open: reads stdin or not, as the body says). */
  function script(dir: string, body: string): string {
    const bin = join(dir, "cryptsetup-fake");
    writeFileSync(bin, `#!/bin/sh\n${body}\n`);
    chmodSync(bin, 0o755);
    return bin;
  }

  // The timeout counts from the key, not from the spawn: zbunlock prepares the
  // open before an unseal that may wait minutes for a typed PIN.
  const timing: { name: string; before: { body: string; waitMs: number }; after: { ok: true; read: number } | { message: RegExp } }[] = [
    { name: "the key comes after the timeout (a slow PIN): cryptsetup still takes it and opens", before: { body: "", waitMs: 700 }, after: { ok: true, read: 32 } },
    { name: "cryptsetup hangs after it read the key: killed at the timeout, counted from the key", before: { body: "cat > /dev/null; exec sleep 30", waitMs: 0 }, after: { message: /cryptsetup was killed by SIGKILL \(timeout 0.3 s\)$/ } },
    { name: "cryptsetup ended before the key came: its exit status, not a failed write", before: { body: "exit 4", waitMs: 400 }, after: { message: /^cannot open \/dev\/mmcblk0p2 as zb-root: wrong device \(missing or unreadable\) \(cryptsetup exit 4\)$/ } },
  ];
  test.each(timing)("$name", async ({ before, after }) => {
    const dir = tempDir();
    const f = fake(dir);
    const bin = before.body === "" ? f.bin : script(dir, before.body);
    const p = new CryptsetupCli({ binary: bin, timeoutMs: 300 }).prepareOpen("/dev/mmcblk0p2", "zb-root");
    await Bun.sleep(before.waitMs);
    const e = await p.open(awkwardKey(43)).then(() => null, (x: unknown) => x as ZbError);
    if ("ok" in after) {
      expect(e?.message ?? null).toBeNull();
      expect(f.read()).toBe(after.read);
    } else {
      expect([e?.code, e?.message]).toEqual(["LUKS_FAILED", expect.stringMatching(after.message)]);
    }
  });

  test("a bad mapping name or device is refused before anything starts", () => {
    const cs = new CryptsetupCli({ binary: "/bin/false" });
    expect(() => cs.prepareOpen("/dev/x", "zb/root")).toThrow(/cannot use "zb\/root" as a mapping name/);
    expect(() => cs.prepareOpen("-x", "zb-root")).toThrow(/not a device path/);
  });
});

describe("messages never carry a key", () => {
  const key = Uint8Array.from({ length: 32 }, (_, i) => 0x41 + (i % 26));
  const b = Buffer.from(key);
  // Not UTF-8 (0xff never is; 0xc3 starts a sequence 0x28 does not continue), with '+' and '/' in its base64.
  const binKey = Uint8Array.from({ length: 32 }, (_, i) => [0xff, 0xc3, 0x28, 0xfb, 0xef, 0xbe][i % 6]! ^ (i & 0x10));
  const bb = Buffer.from(binKey);
  const bytes = (...parts: (string | Uint8Array)[]) => Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p) : p)));
  const rows: { name: string; before: { stderr: Buffer; key: Uint8Array }; after: string }[] = [
    { name: "raw", before: { stderr: bytes("bad key ", b, " here"), key }, after: "bad key [key] here" },
    { name: "raw, not UTF-8", before: { stderr: bytes("bad key ", bb, " here"), key: binKey }, after: "bad key [key] here" },
    { name: "hex", before: { stderr: bytes(`x=${b.toString("hex")}`), key }, after: "x=[key]" },
    { name: "HEX", before: { stderr: bytes(`x=${b.toString("hex").toUpperCase()}`), key }, after: "x=[key]" },
    { name: "base64", before: { stderr: bytes(`x=${b.toString("base64")};`), key }, after: "x=[key];" },
    { name: "base64 without padding", before: { stderr: bytes(`x=${b.toString("base64").replace(/=+$/, "")};`), key }, after: "x=[key];" },
    { name: "base64url", before: { stderr: bytes(`x=${bb.toString("base64url")};`), key: binKey }, after: "x=[key];" },
    { name: "base64url with padding", before: { stderr: bytes(`x=${bb.toString("base64").replace(/\+/g, "-").replace(/\//g, "_")};`), key: binKey }, after: "x=[key];" },
    { name: "unrelated text", before: { stderr: bytes("No key available with this passphrase."), key }, after: "No key available with this passphrase." },
  ];
  test.each(rows)("$name", ({ before, after }) => {
    expect(scrub(before.stderr, [before.key])).toBe(after);
  });

  // Every base64 padding and every byte value: the forms are built by hand (no strings of the key), so they must match Buffer's.
  test.each([31, 32, 33])("a %i-byte key of bytes 0x00–0xff: hex, HEX and base64 forms all found", (n) => {
    const k = Uint8Array.from({ length: n }, (_, i) => (i * 73 + 200) & 0xff);
    const kb = Buffer.from(k);
    const text = `a ${kb.toString("hex")} b ${kb.toString("hex").toUpperCase()} c ${kb.toString("base64")} d ${kb.toString("base64url")} e`;
    expect(scrub(Buffer.from(text), [k])).toBe("a [key] b [key] c [key] d [key] e");
  });

  test("an empty message stays empty", () => {
    expect(scrub(new Uint8Array(0), [key])).toBe("");
  });

  test("a cryptsetup that prints the key it read (raw, hex, base64) on stderr: the error has none of it", async () => {
    const dir = tempDir();
    const bin = join(dir, "echo-key");
    writeFileSync(bin, "#!/bin/sh\nk=$(cat)\nprintf 'raw %s\\n' \"$k\" >&2\nprintf '%s' \"$k\" | od -An -tx1 | tr -d ' \\n' >&2\necho >&2\nprintf '%s' \"$k\" | base64 -w0 >&2\nexit 2\n");
    chmodSync(bin, 0o755);
    const err = await new CryptsetupCli({ binary: bin }).open("/dev/sdz1", "zb-x", key).catch((e: unknown) => e);
    expect((err as ZbError).message).toMatch(/cannot open \/dev\/sdz1 as zb-x: the key does not open any keyslot \(cryptsetup exit 2: raw \[key\]; \[key\]\)/);
    for (const form of [b.toString("latin1"), b.toString("hex"), b.toString("base64")]) expect((err as ZbError).message).not.toContain(form);
  });

  test("a key that is not UTF-8, printed raw on stderr: found in the bytes, before they are decoded", async () => {
    const dir = tempDir();
    const bin = join(dir, "echo-key");
    writeFileSync(bin, "#!/bin/sh\nk=$(cat)\nprintf 'raw %s end\\n' \"$k\" >&2\nexit 2\n");
    chmodSync(bin, 0o755);
    const given = new Uint8Array(binKey);
    const err = await new CryptsetupCli({ binary: bin }).open("/dev/sdz1", "zb-x", given).catch((e: unknown) => e);
    expect((err as ZbError).message).toBe("cannot open /dev/sdz1 as zb-x: the key does not open any keyslot (cryptsetup exit 2: raw [key] end)");
    expect(Buffer.from(given).equals(bb)).toBe(true); // open leaves the key to its caller
  });
});

test.each([
  { before: "exit 2 (no keyslot opens)", err: () => exitError("open /dev/sdz1 as zb-x", 2, "No key available with this passphrase."), wrongKey: true },
  { before: "exit 1 (bad parameters)", err: () => exitError("open /dev/sdz1 as zb-x", 1, "Device /dev/sdz1 does not exist."), wrongKey: false },
  { before: "another error whose text merely mentions exit 2", err: () => new ZbError("LUKS_FAILED", "cannot open: (cryptsetup exit 2)"), wrongKey: false },
])("isWrongKey: $before → $wrongKey", ({ err, wrongKey }) => {
  expect(isWrongKey(err())).toBe(wrongKey);
});
