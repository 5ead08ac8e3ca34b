/**
 * Benchmark: one TPM2 unseal by zb's tpm2 backend (in-process) against the
 * tpm2-tools sequence that does the same work, on the same swtpm in the
 * same run.
 *
 *   node_modules/.bin/bun bench/hsm-unseal.ts [--runs N] [--pcrs 0,7] [--zb PATH]
 *
 * The secret (32 bytes) is sealed once by zb under a PCR policy. Each run:
 * - zb: `Tpm2Hsm.unseal()` — ReadPublic(SRK, name pinned), Load,
 *   StartAuthSession (ECDH-salted), PolicyPCR, Unseal (response encrypted,
 *   HMAC checked), FlushContext; one TCP connection.
 * - tpm2-tools: `tpm2_readpublic -n`, `tpm2_load`, `tpm2_startauthsession
 *   --policy-session -c SRK -n NAME` (salted), `tpm2_policypcr`,
 *   `tpm2_unseal -p session:…` — five processes, timed together. The
 *   `tpm2_flushcontext` calls that swtpm needs without a resource manager
 *   run after the timed part (on /dev/tpmrm0 they are not needed).
 * - with `--zb PATH` (or dist/zb-x64 when it has `zb hsm unseal`): the binary
 *   as a process, `zb hsm unseal BLOB --tpm ADDR -o FILE`, start-up included.
 * Runs alternate; every output is checked; medians count. No target: the
 * ratio is reported. swtpm runs on 127.0.0.1 with a temp state dir, removed
 * at the end. Exit status 0 unless the benchmark could not run.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { encodeBlob } from "../lib/hsm/blob.ts";
import { Tpm2Hsm } from "../lib/hsm/tpm2/index.ts";
import { toToolsFiles } from "../lib/hsm/tpm2/sealed.ts";
import { ccOf, startSwtpm, wrapped, type Exchange, type Swtpm } from "../test/peers/swtpm.ts";
import { die, machine, setBenchName, tool, countOption } from "./image-fixture.ts";

setBenchName("hsm-unseal bench");
const args = process.argv.slice(2);
const opt = (name: string): string | undefined => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const RUNS = countOption(args, "--runs", 50, 5);
const PCRS = (opt("--pcrs") ?? "0,7").split(",").filter(Boolean).map(Number);
for (const t of ["swtpm", "tpm2_unseal", "tpm2_load", "tpm2_startauthsession", "tpm2_policypcr", "tpm2_readpublic"]) tool(t, t === "swtpm" ? "swtpm" : "tpm2-tools");

interface Stats { runs: number; median: number; min: number; max: number }
function stats(ms: number[]): Stats {
  const s = [...ms].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { runs: s.length, median: s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2, min: s[0]!, max: s[s.length - 1]! };
}
const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

function toolsSequence(tpm: Swtpm, secret: Uint8Array): number {
  const t0 = performance.now();
  tpm.toolsOk(["tpm2_readpublic", "-Q", "-c", "0x81000001", "-n", "srk.name"]);
  tpm.toolsOk(["tpm2_load", "-Q", "-C", "0x81000001", "-u", "seal.pub", "-r", "seal.priv", "-c", "seal.ctx"]);
  tpm.toolsOk(["tpm2_startauthsession", "--policy-session", "-S", "s.ctx", "-c", "0x81000001", "-n", "srk.name"]);
  tpm.toolsOk(["tpm2_policypcr", "-Q", "-S", "s.ctx", "-l", `sha256:${PCRS.join(",")}`]);
  tpm.toolsOk(["tpm2_unseal", "-c", "seal.ctx", "-p", "session:s.ctx", "-o", "out.bin"]);
  const ms = performance.now() - t0;
  tpm.tools(["tpm2_flushcontext", "s.ctx"]);
  tpm.toolsOk(["tpm2_flushcontext", "-t"]);
  if (!same(new Uint8Array(readFileSync(join(tpm.stateDir, "out.bin"))), secret)) die("tpm2_unseal returned the wrong secret");
  return ms;
}

function zbBinary(): string | undefined {
  const p = opt("--zb") ?? "dist/zb-x64";
  return existsSync(p) ? p : undefined;
}

/** The binary as a process; undefined (with the reason printed once) when it cannot unseal yet. */
function binaryRun(zb: string, tpm: Swtpm, blob: string, secret: Uint8Array): number | undefined {
  // -o -: zb never replaces an existing secret file, and stdout needs no cleanup between runs.
  const t0 = performance.now();
  const r = Bun.spawnSync([zb, "hsm", "unseal", blob, "--tpm", tpm.address, "--config", "/dev/null", "-o", "-"], { stdout: "pipe", stderr: "pipe" });
  const ms = performance.now() - t0;
  if (r.exitCode !== 0 || !same(new Uint8Array(r.stdout), secret)) {
    console.log(`  (binary row skipped: ${zb} hsm unseal exited ${r.exitCode}: ${r.stderr.toString().split("\n")[0]})`);
    return undefined;
  }
  return ms;
}

const tpm = await startSwtpm();
try {
  console.log(`machine: ${machine()}`);
  console.log(`swtpm: ${tpm.address} (state ${tpm.stateDir}); ${RUNS} runs; PCRs sha256:${PCRS.join(",")}`);
  const hsm = new Tpm2Hsm({ device: tpm.address });
  const secret = crypto.getRandomValues(new Uint8Array(32));
  const data = await hsm.seal(secret, { pcrs: PCRS });
  const files = toToolsFiles(data);
  writeFileSync(join(tpm.stateDir, "seal.pub"), files.pub);
  writeFileSync(join(tpm.stateDir, "seal.priv"), files.priv);
  const blob = join(tpm.stateDir, "seal.blob");
  writeFileSync(blob, encodeBlob({ backend: "tpm2", data }));

  const log: Exchange[] = [];
  const counted = await new Tpm2Hsm({ device: tpm.address, connect: wrapped({ log }) }).unseal(data);
  if (counted.kind !== "ok") die(`zb unseal failed: ${counted.why}`);
  console.log(`  zb sends ${log.length} commands per unseal: ${log.map((x) => `0x${ccOf(x.cmd).toString(16)}`).join(" ")}`);

  const zbRun = async () => {
    const t0 = performance.now();
    const r = await hsm.unseal(data);
    const ms = performance.now() - t0;
    if (r.kind !== "ok" || !same(r.secret, secret)) die(`zb unseal failed: ${JSON.stringify(r)}`);
    r.secret.fill(0);
    return ms;
  };
  for (let i = 0; i < 3; i++) await zbRun(); // JIT warm-up
  toolsSequence(tpm, secret);
  const zbPath = zbBinary();
  let binOk = zbPath !== undefined && binaryRun(zbPath, tpm, blob, secret) !== undefined;

  const times = { zb: [] as number[], tools: [] as number[], bin: [] as number[] };
  for (let i = 0; i < RUNS; i++) {
    times.zb.push(await zbRun());
    times.tools.push(toolsSequence(tpm, secret));
    if (binOk) {
      const ms = binaryRun(zbPath!, tpm, blob, secret);
      if (ms === undefined) binOk = false;
      else times.bin.push(ms);
    }
  }

  const rows = [
    { label: "zb Tpm2Hsm.unseal (in-process)", s: stats(times.zb) },
    { label: "tpm2-tools: readpublic+load+startauthsession+policypcr+unseal", s: stats(times.tools) },
    ...(times.bin.length ? [{ label: `zb hsm unseal (process, ${zbPath})`, s: stats(times.bin) }] : []),
  ];
  console.log(`\n${"command".padEnd(64)} ${"runs".padStart(4)} ${"median ms".padStart(10)} ${"min ms".padStart(8)} ${"max ms".padStart(8)}`);
  for (const r of rows) {
    console.log(`${r.label.padEnd(64)} ${String(r.s.runs).padStart(4)} ${r.s.median.toFixed(2).padStart(10)} ${r.s.min.toFixed(2).padStart(8)} ${r.s.max.toFixed(2).padStart(8)}`);
  }
  const ratio = rows[1]!.s.median / rows[0]!.s.median;
  console.log(`\ntpm2-tools / zb (median): ${ratio.toFixed(1)}x`);
  console.log(JSON.stringify({
    bench: "hsm-unseal", runs: RUNS, pcrs: PCRS, zbMs: rows[0]!.s.median, toolsMs: rows[1]!.s.median, ratio,
    ...(times.bin.length ? { binaryMs: rows[2]!.s.median } : {}),
  }));
} finally {
  await tpm.stop();
}
