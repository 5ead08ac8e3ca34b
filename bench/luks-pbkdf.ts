/**
 * Benchmark: what PBKDF2-SHA512 with 1000 iterations saves over cryptsetup's
 * default argon2id keyslot, for a random 256-bit key.
 *
 *   node_modules/.bin/bun bench/luks-pbkdf.ts [--runs N] [--argon-runs N]
 *
 * On a sparse 32 MiB file, through lib/luks/cryptsetup.ts (the same code zb
 * runs): `luksFormat` and `open --test-passphrase` (the keyslot unlock that
 * zbunlock's `open` also does, without device-mapper), once with zb's
 * PBKDF2-1000 and once with `--pbkdf argon2id` and cryptsetup's benchmarked
 * cost. The argon2id cost cryptsetup chose (memory, iterations, threads) is
 * read back from `luksDump --dump-json-metadata`. Medians; the ratios are
 * argon2id / PBKDF2. No target: the figures go to docs/luks.md.
 * Exit status 0 unless the benchmark could not run.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CryptsetupCli, type FormatOptions, type Keyslot } from "../lib/luks/cryptsetup.ts";
import { randomSecret, wipe } from "../lib/secret.ts";
import { countOption, median, setBenchName, die } from "./image-fixture.ts";

setBenchName("luks-pbkdf bench");

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const RUNS = countOption(args, "--runs", 7, 3);
const ARGON_RUNS = countOption(args, "--argon-runs", 3, 1);

function machine(): string {
  const cpuinfo = readFileSync("/proc/cpuinfo", "latin1");
  const cpu = (cpuinfo.match(/model name\s*:\s*(.*)/) ?? [])[1] ?? "?";
  const cores = cpuinfo.split("\n").filter((l) => l.startsWith("processor")).length;
  const memKiB = Number((readFileSync("/proc/meminfo", "latin1").match(/MemTotal:\s*(\d+)/) ?? [])[1] ?? 0);
  return `${cpu}, ${cores} cores, ${(memKiB / 1024 / 1024).toFixed(1)} GiB RAM`;
}

interface Measured {
  label: string;
  format: number[];
  unlock: number[];
  slot: Keyslot;
}

async function measure(label: string, pbkdf: NonNullable<FormatOptions["pbkdf"]>, runs: number, dir: string): Promise<Measured> {
  const cs = new CryptsetupCli({ timeoutMs: 600_000 });
  const dev = join(dir, "vol.img");
  const m: Measured = { label, format: [], unlock: [], slot: { slot: -1, kdf: "?" } };
  for (let i = 0; i < runs; i++) {
    writeFileSync(dev, "");
    Bun.spawnSync(["truncate", "-s", "32M", dev]);
    const key = randomSecret(32);
    try {
      let t = performance.now();
      await cs.format(dev, key, { pbkdf });
      m.format.push((performance.now() - t) / 1000);
      t = performance.now();
      if (!(await cs.testKey(dev, key))) die(`the key did not open the ${label} volume`);
      m.unlock.push((performance.now() - t) / 1000);
      if (await cs.testKey(dev, randomSecret(32))) die(`a wrong key opened the ${label} volume`);
    } finally {
      wipe(key);
    }
    m.slot = (await cs.keyslots(dev))[0] ?? die("no keyslot after format");
  }
  return m;
}

function describeSlot(s: Keyslot): string {
  if (s.kdf === "pbkdf2") return `pbkdf2 ${s.hash} ${s.iterations} iterations`;
  return `${s.kdf} memory ${((s.memoryKiB ?? 0) / 1024).toFixed(0)} MiB, time ${s.time}, threads ${s.cpus}`;
}

if (!Bun.which("cryptsetup", { PATH: `${process.env.PATH}:/usr/sbin:/sbin` })) die("cryptsetup not found: apt-get install -y cryptsetup-bin");
const dir = mkdtempSync(join(tmpdir(), "zb-bench-luks-"));
try {
  console.log(`machine: ${machine()}`);
  console.log(`cryptsetup: ${Bun.spawnSync(["cryptsetup", "--version"], { env: { PATH: `${process.env.PATH}:/usr/sbin:/sbin` } }).stdout.toString().trim()}`);
  console.log(`volume: sparse 32 MiB file; key: 32 random bytes on stdin; runs: ${RUNS} (pbkdf2), ${ARGON_RUNS} (argon2id)`);
  const pb = await measure("PBKDF2-SHA512-1000 (zb)", "pbkdf2-1000", RUNS, dir);
  const ar = await measure("argon2id (cryptsetup default cost)", "argon2id-benchmarked", ARGON_RUNS, dir);
  const w = 38;
  console.log(`\n${"keyslot".padEnd(w)} ${"format s".padStart(9)} ${"unlock s".padStart(9)}  cost`);
  for (const m of [pb, ar]) {
    console.log(`${m.label.padEnd(w)} ${median(m.format).toFixed(3).padStart(9)} ${median(m.unlock).toFixed(3).padStart(9)}  ${describeSlot(m.slot)}`);
  }
  const fr = median(ar.format) / median(pb.format);
  const ur = median(ar.unlock) / median(pb.unlock);
  console.log(`\nargon2id / PBKDF2: format ${fr.toFixed(1)}×, unlock ${ur.toFixed(1)}×, plus ${((ar.slot.memoryKiB ?? 0) / 1024).toFixed(0)} MiB of RAM per unlock`);
  console.log(JSON.stringify({
    bench: "luks-pbkdf",
    pbkdf2: { formatS: median(pb.format), unlockS: median(pb.unlock), iterations: pb.slot.iterations },
    argon2id: { formatS: median(ar.format), unlockS: median(ar.unlock), memoryKiB: ar.slot.memoryKiB, time: ar.slot.time, cpus: ar.slot.cpus },
    ratio: { format: fr, unlock: ur },
  }));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
