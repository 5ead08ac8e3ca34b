/**
 * Live cross-check of the zb binary against the real libubootenv tools
 * (Debian libubootenv-tool 0.3.2: fw_printenv, fw_setenv) and mkenvimage.
 *
 * 1. Random rounds: a seeded PRNG builds envs on a redundant pair with a
 *    file-backed fw_env.config (envspec.md §1.6), alternating writes between
 *    real `fw_setenv` and `zb env set`. After every write both readers must
 *    print exactly the same text, which must also equal a model of the env,
 *    and exactly one copy must have changed, with flag = other copy's flag + 1
 *    (the counter save rule, envspec.md §1.2), whoever wrote it.
 * 2. The fw_printenv/fw_setenv personalities (symlinks to dist/zb-x64): same
 *    stdout and exit status as the real tools, same resulting env and flags.
 * 3. `zb env set --script`: one write for a whole script.
 *
 * Every tool that takes the env lock (the real fw_printenv and fw_setenv,
 * zb's writers) runs with a temp folder on /var/lock (fakes/envlock.ts): the
 * fw_printenv.lock it takes is not the host's.
 *
 * Nothing is skipped: a missing tool or binary fails every test with a
 * message saying how to get it. Rebuild the binary with
 * `node_modules/.bin/bun build.ts --target x64`.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { withTempVarLock } from "../fakes/envlock.ts";

const ROOT = join(import.meta.dir, "../..");
const ZB = join(ROOT, "dist/zb-x64");
const TIMEOUT = 120_000;

type Env = Map<string, string>;
interface Run { status: number; stdout: string; stderr: string }
interface Pair { cfg: string; files: [string, string]; offsets: [number, number]; size: number }

/** Fails (never skips) when something the test needs is not installed. */
function need(): { fwPrintenv: string; fwSetenv: string; mkenvimage: string } {
  const fwPrintenv = Bun.which("fw_printenv");
  const fwSetenv = Bun.which("fw_setenv");
  const mkenvimage = Bun.which("mkenvimage");
  if (!fwSetenv || !fwPrintenv) throw new Error("fw_setenv/fw_printenv not found: run .ci/setup (installs libubootenv-tool)");
  if (!mkenvimage) throw new Error("mkenvimage not found: run .ci/setup (installs u-boot-tools)");
  if (!existsSync(ZB)) throw new Error(`${ZB} not found: run node_modules/.bin/bun build.ts --target x64`);
  return { fwPrintenv, fwSetenv, mkenvimage };
}

/** `zb env print` and mkenvimage take no env lock: they run as they are, the other tools (and zb's writers) with a temp /var/lock. */
const lockless = (cmd: string[]) => (cmd[0] === ZB && cmd[1] === "env" && cmd[2] === "print") || cmd[0]?.endsWith("/mkenvimage");

/** Output as latin1 so every byte maps to one char, like the codec's byte strings. */
function run(cmd: string[], stdin?: string): Run {
  const p = Bun.spawnSync(lockless(cmd) ? cmd : withTempVarLock(cmd), { stdin: stdin === undefined ? "ignore" : Buffer.from(stdin, "latin1"), stdout: "pipe", stderr: "pipe" });
  return { status: p.exitCode ?? -1, stdout: p.stdout.toString("latin1"), stderr: p.stderr.toString("latin1") };
}

function ok(r: Run, what: string): Run {
  if (r.status !== 0) throw new Error(`${what} exited ${r.status}: ${r.stderr.trim()}`);
  return r;
}

/** mulberry32: small, seeded, good enough to pick names and values. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_";
function randomName(rnd: () => number): string {
  let s = "";
  for (let n = 1 + Math.floor(rnd() * 12); n > 0; n--) s += NAME_CHARS[Math.floor(rnd() * NAME_CHARS.length)];
  return s;
}

/**
 * Printable ASCII (0x20-0x7e), so spaces, '=', quotes and backslashes occur.
 * Never empty (an empty argv value is its own case below) and never starting
 * with '-': both fw_setenv (GNU getopt permutes argv) and zb would read it as
 * an option.
 */
function randomValue(rnd: () => number): string {
  const len = rnd() < 0.1 ? 100 + Math.floor(rnd() * 200) : 1 + Math.floor(rnd() * 40);
  let s = "";
  for (let i = 0; i < len; i++) s += String.fromCharCode(0x20 + Math.floor(rnd() * 95));
  return s.startsWith("-") ? "x" + s.slice(1) : s;
}

/** fw_printenv's rendering: `name=value` lines in byte order (libubootenv keeps a sorted list). */
function render(env: Env): string {
  return [...env.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)).map((k) => `${k}=${env.get(k)}\n`).join("");
}

let tmp = "";
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), "zb-fwcross-"));
});
afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/**
 * A redundant pair made by mkenvimage -r (flag 1 in both copies): two files,
 * or one file with the copies at offsets 0 and size (envspec.md §1.6).
 */
function makePair(dir: string, env: Env, size: number, oneFile: boolean): Pair {
  const { mkenvimage } = need();
  const input = join(dir, "init.txt");
  writeFileSync(input, Buffer.from([...env].map(([k, v]) => `${k}=${v}\n`).join(""), "latin1"));
  const img = join(dir, "init.bin");
  ok(run([mkenvimage, "-r", "-s", String(size), "-o", img, input]), "mkenvimage");
  const one = readFileSync(img);
  let pair: Pair;
  if (oneFile) {
    const f = join(dir, "pair.bin");
    writeFileSync(f, Buffer.concat([one, one]));
    pair = { cfg: join(dir, "fw_env.config"), files: [f, f], offsets: [0, size], size };
  } else {
    const [a, b] = [join(dir, "envA.bin"), join(dir, "envB.bin")];
    copyFileSync(img, a);
    copyFileSync(img, b);
    pair = { cfg: join(dir, "fw_env.config"), files: [a, b], offsets: [0, 0], size };
  }
  const hex = (n: number) => "0x" + n.toString(16);
  writeFileSync(pair.cfg, pair.files.map((f, i) => `${f} ${hex(pair.offsets[i]!)} ${hex(size)}\n`).join(""));
  return pair;
}

function copies(p: Pair): [Buffer, Buffer] {
  const read = (i: 0 | 1) => readFileSync(p.files[i]).subarray(p.offsets[i], p.offsets[i] + p.size);
  return [read(0), read(1)];
}

/** One write happened: exactly one copy changed and its flag is the other's + 1 (mod 256). */
function expectOneWrite(before: [Buffer, Buffer], after: [Buffer, Buffer], what: string): number {
  const changed = [0, 1].filter((i) => !before[i]!.equals(after[i]!));
  expect({ what, changed: changed.length }).toEqual({ what, changed: 1 });
  const w = changed[0]!;
  expect({ what, flag: after[w]![4] }).toEqual({ what, flag: (after[1 - w]![4]! + 1) & 0xff });
  return w;
}

function newDir(name: string): string {
  const d = join(tmp, name);
  rmSync(d, { recursive: true, force: true });
  mkdirSync(d, { recursive: true });
  return d;
}

describe("random rounds: real fw_setenv and zb env set on one pair", () => {
  // 4 rounds x 16 operations = 64 writes; sizes and layouts vary per round.
  const rounds = [
    { seed: 0x5eed0001, size: 0x1000, oneFile: false },
    { seed: 0x5eed0002, size: 0x2000, oneFile: true },
    { seed: 0x5eed0003, size: 0x4000, oneFile: false },
    { seed: 0x5eed0004, size: 0x2000, oneFile: true },
  ];
  const OPS = 16;

  for (const r of rounds) {
    test(`seed ${r.seed.toString(16)}, ${r.size} bytes, ${r.oneFile ? "one file" : "two files"}`, () => {
      const { fwPrintenv, fwSetenv } = need();
      const rnd = prng(r.seed);
      const model: Env = new Map();
      // mkenvimage reads a trailing '\' as a line continuation (envspec.md §1.7).
      for (let i = 0; i < 5; i++) model.set(randomName(rnd), randomValue(rnd).replace(/\\$/, "."));
      const pair = makePair(newDir(`round-${r.seed}`), model, r.size, r.oneFile);
      let lastWritten = 0; // mkenvimage pair: equal flags, copy 0 active, so copy 1 is written first
      let writes = 0;

      for (let op = 0; op < OPS; op++) {
        const names = [...model.keys()];
        const roll = rnd();
        let name: string;
        let value: string | undefined;
        if (names.length === 0 || roll < 0.5) {
          do name = randomName(rnd); while (model.has(name));
          value = randomValue(rnd);
        } else if (roll < 0.8) {
          name = names[Math.floor(rnd() * names.length)]!;
          do value = randomValue(rnd); while (value === model.get(name)); // an unchanged value writes nothing
        } else {
          name = names[Math.floor(rnd() * names.length)]!;
          value = undefined;
        }
        const tail = value === undefined ? [name] : [name, value];
        const useReal = op % 2 === 0;
        const cmd = useReal ? [fwSetenv, "-c", pair.cfg, ...tail] : [ZB, "env", "set", "-c", pair.cfg, ...tail];
        const what = `op ${op} (${useReal ? "fw_setenv" : "zb env set"} ${value === undefined ? "delete" : "set"} ${name})`;

        const before = copies(pair);
        ok(run(cmd), what);
        if (value === undefined) model.delete(name);
        else model.set(name, value);
        const w = expectOneWrite(before, copies(pair), what);
        expect({ what, written: w }).toEqual({ what, written: 1 - lastWritten });
        lastWritten = w;
        writes++;

        // Full listing: both readers, identical text, equal to the model.
        const real = ok(run([fwPrintenv, "-c", pair.cfg]), `${what}: fw_printenv`);
        const zb = run([ZB, "env", "print", "-c", pair.cfg]);
        expect({ what, status: zb.status, stderr: zb.stderr }).toEqual({ what, status: 0, stderr: "" });
        expect(real.stdout).toBe(render(model));
        expect(zb.stdout).toBe(real.stdout);

        // Single variables: the one just touched (if it exists) and a random other.
        const probe = new Set<string>();
        if (model.has(name)) probe.add(name);
        const left = [...model.keys()];
        if (left.length > 0) probe.add(left[Math.floor(rnd() * left.length)]!);
        for (const n of probe) {
          for (const flags of [["-n"], []]) {
            const a = ok(run([fwPrintenv, "-c", pair.cfg, ...flags, n]), `${what}: fw_printenv ${flags.join(" ")} ${n}`);
            const b = run([ZB, "env", "print", "-c", pair.cfg, ...flags, n]);
            expect({ what, n, flags, status: b.status, out: b.stdout }).toEqual({ what, n, flags, status: 0, out: a.stdout });
            expect(a.stdout).toBe(flags.length ? `${model.get(n)}\n` : `${n}=${model.get(n)}\n`);
          }
        }
      }
      expect(writes).toBe(OPS);
    }, TIMEOUT);
  }

  test("zb env print NAME of a missing name exits 1 with an error (unlike fw_printenv)", () => {
    const { fwPrintenv } = need();
    const pair = makePair(newDir("missing"), new Map([["present", "1"]]), 0x1000, false);
    const real = run([fwPrintenv, "-c", pair.cfg, "absent"]);
    expect({ status: real.status, stdout: real.stdout }).toEqual({ status: 0, stdout: "absent=\n" });
    const zb = run([ZB, "env", "print", "-c", pair.cfg, "absent"]);
    expect(zb.status).toBe(1);
    expect(zb.stdout).toBe("");
    expect(zb.stderr.trim().length).toBeGreaterThan(0);
  });
});

describe("fw_printenv/fw_setenv personalities of dist/zb-x64", () => {
  const initial: Env = new Map([
    ["bootcount", "0"],
    ["kernel_status", "try"],
    ["note", "a b=c  d"],
    ["snap_kernel", "pi-kernel_1.snap"],
  ]);
  let shared: Pair, zbPrintenv: string, zbSetenv: string;

  beforeAll(() => {
    if (!existsSync(ZB)) return; // every test then fails in need()
    const d = newDir("personality");
    shared = makePair(newDir("personality/read"), initial, 0x1000, false);
    zbPrintenv = join(d, "fw_printenv");
    zbSetenv = join(d, "fw_setenv");
    symlinkSync(ZB, zbPrintenv);
    symlinkSync(ZB, zbSetenv);
  });

  const prints: [string, string[]][] = [
    ["print all", []],
    ["print one", ["kernel_status"]],
    ["print a missing name (NAME= and exit 0)", ["absent"]],
    ["-n NAME", ["-n", "note"]],
    ["-n with a missing name (empty line)", ["-n", "absent"]],
    ["-n without a name (the whole env, names kept)", ["-n"]],
    ["several names in argv order, one missing", ["snap_kernel", "absent", "bootcount"]],
    // Options as glibc's getopt_long reads them: libubootenv has no default branch, so an unknown one is warned about and skipped.
    ["an unknown option (warned, skipped)", ["-x", "kernel_status"]],
    ["an unknown long option with a value", ["--foo=3", "note"]],
    ["an unknown option grouped with -n", ["-xn", "note"]],
    ["-n given a value (warned, not taken)", ["--no-header=1", "note"]],
    ["an abbreviated long option", ["--no", "note"]],
    ["-c at the end, missing its value (warned; the first -c stays)", ["note", "-c"]],
  ];
  for (const [label, args] of prints) {
    test(`fw_printenv: ${label}`, () => {
      const { fwPrintenv } = need();
      const a = run([fwPrintenv, "-c", shared.cfg, ...args]);
      const b = run([zbPrintenv, "-c", shared.cfg, ...args]);
      expect({ status: b.status, stdout: b.stdout }).toEqual({ status: a.status, stdout: a.stdout });
      expect(a.status).toBe(0);
    });
  }

  test("the warnings of getopt_long are the real tool's, word for word (argv[0] first)", () => {
    const { fwPrintenv } = need();
    const args = ["-x", "--foo=3", "--no-header=1", "kernel_status", "-c"];
    const a = run([fwPrintenv, "-c", shared.cfg, ...args]);
    const b = run([zbPrintenv, "-c", shared.cfg, ...args]);
    expect(b.stderr.replaceAll(zbPrintenv, "PROG")).toBe(a.stderr.replaceAll(fwPrintenv, "PROG"));
    expect(a.stderr).toContain("invalid option -- 'x'");
  });

  // Each case starts from two fresh, identical pairs (so one failure does not
  // cascade); the real tool writes one, the personality the other. Then both
  // must read the same and carry the same flags (so a no-op writes nothing on
  // either side, and a write advances exactly one copy).
  const writes: [string, string[]][] = [
    ["set pairs a 1 b 2", ["a", "1", "b", "2"]],
    ["delete (trailing lone name)", ["kernel_status"]],
    ["set a value with spaces and '='", ["note", "x = y  z"]],
    ["empty argv value is stored as an empty value (measured on 0.3.2)", ["e", ""]],
    ["unchanged value writes nothing", ["bootcount", "0"]],
    ["set then delete in one call", ["c", "3", "kernel_status"]],
  ];
  writes.forEach(([label, args], i) => {
    test(`fw_setenv: ${label}`, () => {
      const { fwPrintenv, fwSetenv } = need();
      const real = makePair(newDir(`personality/w${i}-real`), initial, 0x1000, false);
      const mine = makePair(newDir(`personality/w${i}-mine`), initial, 0x1000, false);
      const a = run([fwSetenv, "-c", real.cfg, ...args]);
      const b = run([zbSetenv, "-c", mine.cfg, ...args]);
      expect({ status: b.status, stdout: b.stdout }).toEqual({ status: a.status, stdout: a.stdout });
      const ra = ok(run([fwPrintenv, "-c", real.cfg]), "fw_printenv (real pair)");
      const rb = ok(run([fwPrintenv, "-c", mine.cfg]), "fw_printenv (zb pair)");
      expect(rb.stdout).toBe(ra.stdout);
      expect(copies(mine).map((c) => c[4])).toEqual(copies(real).map((c) => c[4]));
    });
  });

  /**
   * A NAME with '=': libubootenv 0.3.2 refuses the whole call (exit 1, its
   * message, nothing written), checking every pair before it stores any.
   */
  test.each([
    ["a NAME with '='", ["a=b", "c"]],
    ["a later NAME with '=' (an earlier good pair is not written either)", ["x", "1", "a=b", "c"]],
    ["a trailing NAME with '=' (a delete)", ["a=b"]],
  ])("fw_setenv: %s → exit 1, its message, nothing written", (_label, args) => {
    const { fwSetenv } = need();
    const real = makePair(newDir(`personality/eq-real`), initial, 0x1000, false);
    const mine = makePair(newDir(`personality/eq-mine`), initial, 0x1000, false);
    const [beforeReal, beforeMine] = [copies(real), copies(mine)];
    const a = run([fwSetenv, "-c", real.cfg, ...args]);
    const b = run([zbSetenv, "-c", mine.cfg, ...args]);
    expect({ status: b.status, stdout: b.stdout }).toEqual({ status: a.status, stdout: a.stdout });
    expect(a.status).toBe(1);
    expect(b.stderr).toBe(a.stderr);
    expect(a.stderr).toBe(`Error: illegal character '=' in variable name "a=b"\n`);
    expect(copies(real)).toEqual(beforeReal);
    expect(copies(mine)).toEqual(beforeMine);
  });

  test("fw_setenv '' VALUE: libubootenv stores `=VALUE`, an entry U-Boot cannot read back; zb refuses it as an illegal name (exit 1), nothing written", () => {
    const { fwPrintenv, fwSetenv } = need();
    const real = makePair(newDir(`personality/empty-real`), initial, 0x1000, false);
    const mine = makePair(newDir(`personality/empty-mine`), initial, 0x1000, false);
    const before = copies(mine);
    expect(ok(run([fwSetenv, "-c", real.cfg, "", "x"]), "fw_setenv (real)").status).toBe(0);
    expect(ok(run([fwPrintenv, "-c", real.cfg]), "fw_printenv (real)").stdout).toStartWith("=x\n");
    const b = run([zbSetenv, "-c", mine.cfg, "", "x"]);
    expect({ status: b.status, stderr: b.stderr }).toEqual({ status: 1, stderr: "Error: empty variable name\n" });
    expect(copies(mine)).toEqual(before);
  });

  test("a full env from the real fw_setenv (the last entry's NUL is the last byte, no empty entry after it) reads as the real fw_printenv reads it", () => {
    const { fwPrintenv, fwSetenv } = need();
    const pair = makePair(newDir("personality/full"), new Map([["foo", "bar"]]), 0x40, false);
    // 0x40 bytes: 5 of header, 59 of data; foo=bar\0 takes 8, so x=… with 48 v's and its NUL fills the other 51.
    ok(run([fwSetenv, "-c", pair.cfg, "x", "v".repeat(48)]), "fw_setenv (real)");
    const written = copies(pair).find((c) => c[4] === 2)!;
    expect(written.subarray(-2).toString("latin1")).toBe("v\0");
    const a = ok(run([fwPrintenv, "-c", pair.cfg]), "fw_printenv (real)");
    const b = run([zbPrintenv, "-c", pair.cfg]);
    expect({ status: b.status, stdout: b.stdout }).toEqual({ status: 0, stdout: a.stdout });
    expect(a.stdout).toContain(`x=${"v".repeat(48)}\n`);
  });

  test("an argument that is not UTF-8: refused (exit 2, env untouched) where the runtime would have stored U+FFFD; valid UTF-8 is stored byte for byte", () => {
    const { fwPrintenv } = need();
    const mine = makePair(newDir("personality/utf8"), initial, 0x1000, false);
    const before = copies(mine);
    // Bun.spawn passes strings as UTF-8: the invalid byte goes through a shell's printf.
    const q = Bun.spawnSync(withTempVarLock(["sh", "-c", `"$0" -c "$1" bin "$(printf 'a\\377b')"`, zbSetenv, mine.cfg]), { stdout: "pipe", stderr: "pipe" });
    expect(q.exitCode).toBe(2);
    expect(q.stderr.toString()).toContain("cannot run fw_setenv: argument 4 is not valid UTF-8");
    expect(copies(mine)).toEqual(before);
    // "a\u00ffb" from a JS string is valid UTF-8 (c3 bf): stored as those bytes.
    const p = Bun.spawnSync(withTempVarLock([zbSetenv, "-c", mine.cfg, "bin", "a\u00ffb"]), { stdout: "pipe", stderr: "pipe" });
    expect(p.exitCode).toBe(0);
    const shown = run([fwPrintenv, "-c", mine.cfg, "bin"]);
    expect(shown.stdout).toBe("bin=a\xc3\xbfb\n");
  });

  test("no valid copy and no default env: both exit 243", () => {
    const { fwPrintenv, fwSetenv } = need();
    const d = newDir("personality/bad");
    const pair = makePair(d, initial, 0x1000, false);
    for (const f of pair.files) {
      const b = readFileSync(f);
      b[b.length - 1] = b[b.length - 1]! ^ 0x5a; // padding is CRC-covered (envspec.md §1.1)
      writeFileSync(f, b);
    }
    const nodef = join(d, "no-such-default-env"); // keep /etc/u-boot-initial-env out of it
    // A bad script line too: libubootenv reads the env (and the default) before the script's lines.
    const badScript = join(d, "bad-script");
    writeFileSync(badScript, "=bad\n");
    for (const [realTool, mineTool, args] of [
      [fwPrintenv, zbPrintenv, []],
      [fwSetenv, zbSetenv, ["x", "1"]],
      [fwSetenv, zbSetenv, ["-s", badScript]],
    ] as const) {
      const a = run([realTool, "-c", pair.cfg, "-f", nodef, ...args]);
      const b = run([mineTool, "-c", pair.cfg, "-f", nodef, ...args]);
      expect(a.status).toBe(243);
      expect({ status: b.status, stdout: b.stdout }).toEqual({ status: a.status, stdout: a.stdout });
    }
  });
});

describe("zb env set --script", () => {
  // U-Boot fw_env.c script lines (`name value`, bare `name` deletes, `#`
  // comments, blank lines) plus libubootenv's `name=value`.
  const script = ["# a comment", "", "alpha=1", "beta two words", "gamma", "delta=x=y", "", "# done"].join("\n") + "\n";
  const start: Env = new Map([["gamma", "old"], ["keep", "me"]]);
  const expected: Env = new Map([["alpha", "1"], ["beta", "two words"], ["delta", "x=y"], ["keep", "me"]]);

  for (const source of ["file", "stdin"] as const) {
    test(`from ${source}: the whole script is one write`, () => {
      const { fwPrintenv } = need();
      const d = newDir(`script-${source}`);
      const pair = makePair(d, start, 0x1000, source === "stdin");
      const file = join(d, "changes.txt");
      writeFileSync(file, script);
      const before = copies(pair);
      const r = source === "file"
        ? run([ZB, "env", "set", "-c", pair.cfg, "--script", file])
        : run([ZB, "env", "set", "-c", pair.cfg, "--script", "-"], script);
      ok(r, `zb env set --script ${source}`);
      const after = copies(pair);
      const w = expectOneWrite(before, after, "script");
      expect(after[w]![4]).toBe(before[1 - w]![4]! + 1); // exactly +1: one write, not one per line
      expect(ok(run([fwPrintenv, "-c", pair.cfg]), "fw_printenv").stdout).toBe(render(expected));
    });
  }
});
