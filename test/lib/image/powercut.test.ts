/**
 * Kill the real process: `dist/zb-x64 image install … --progress=json` of a
 * 128 MiB rootfs in 257 chunks of 512 KiB (the journal advances every 32 MiB,
 * i.e. every 64 chunks) is SIGKILLed after N progress events for a spread of
 * N, repeatedly across resumes, and at seeded random times; then `--resume`
 * (killed again in the chains) until it finishes. After every kill the
 * journal never claims a chunk the target does not hold and never says
 * "complete" early; at the end the target is byte-identical to a clean
 * install and the journal says complete. One kill lands before the journal
 * exists: `--resume` is then refused (USAGE) and a fresh install completes.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Journal } from "../../../lib/image/journal.ts";
import { buildImage, KEYS, requireBinary, sha256, trustDir, variedBytes } from "./fixture.ts";

const CHUNK = 512 << 10;
/** 128 MiB and a partial last chunk. */
const RAW_SIZE = (128 << 20) + 12_345;
const N = Math.ceil(RAW_SIZE / CHUNK);
/** Chunks between journal updates: JOURNAL_BYTES (32 MiB) / CHUNK. */
const PER_JOURNAL = (32 << 20) / CHUNK;

let root = "";
let bin = "";
let image = "";
let trust = "";
let rawSha = "";
let raw: Uint8Array = new Uint8Array(0);
let cleanSha = "";
/** How long a clean install takes here, and how much of it comes before the first write: random kill times scale with them. */
let cleanMs = 0;
let startMs = 0;
const stats = { kills: 0, resumes: 0, resumedPastZero: 0, journalsSeen: new Set<number>(), killedAtChunk: [] as number[] };

beforeAll(async () => {
  bin = requireBinary();
  root = mkdtempSync(join(tmpdir(), "zb-powercut-"));
  raw = variedBytes(RAW_SIZE, 42, 0.3);
  rawSha = sha256(raw);
  const built = await buildImage(root, { rootfs: raw, boot: false, chunkSize: CHUNK, signers: [KEYS.k1] });
  expect(built.manifest.payloads[0]!.chunks.length).toBe(N);
  image = built.path;
  trust = trustDir(root, "trust", [KEYS.k1]);
}, 60_000);
afterAll(() => {
  const at = [...new Set(stats.killedAtChunk)].sort((a, b) => a - b);
  console.log(`powercut: ${stats.kills} kill points (${at.length} distinct last chunks seen: ${at.join(" ")}), ${stats.resumes} resumes (${stats.resumedPastZero} past chunk 0), journal positions seen: ${[...stats.journalsSeen].sort((a, b) => a - b).join(", ")}`);
  if (root) rmSync(root, { recursive: true, force: true });
});

interface Run {
  exit: number | null;
  killed: boolean;
  events: Record<string, unknown>[];
  stderr: string;
}

/**
 * Run one install; SIGKILL it after `afterEvents` progress events, after `afterMs` milliseconds,
 * or at the first progress event that finds the journal at `afterJournal` chunks or more (if it is still running).
 */
async function run(target: string, o: { resume?: boolean; afterEvents?: number; afterMs?: number; afterJournal?: number } = {}): Promise<Run & { startMs: number }> {
  const t0 = performance.now();
  let started = 0;
  const args = [bin, "image", "install", image, "--payload", "rootfs", "--to", target, "--trust", trust, "--progress=json"];
  const p = Bun.spawn(o.resume ? [...args, "--resume"] : args, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ZB_NO_REBOOT: "1" } });
  const kill = () => {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  };
  if (o.afterMs !== undefined) {
    if (o.afterMs === 0) kill();
    else setTimeout(kill, o.afterMs);
  }
  // The journal can reach its last steps after the last progress event (the
  // final syncs): watch the file itself.
  const watch = o.afterJournal === undefined ? null : setInterval(() => {
    const j = journalOf(target);
    if (j && j.state === "writing" && j.chunksDone >= o.afterJournal!) kill();
  }, 1);
  const events: Record<string, unknown>[] = [];
  let progress = 0;
  let buf = "";
  const decoder = new TextDecoder();
  for await (const part of p.stdout) {
    buf += decoder.decode(part, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const e = JSON.parse(buf.slice(0, nl)) as Record<string, unknown>;
      buf = buf.slice(nl + 1);
      events.push(e);
      if (e.type === "start") started = performance.now() - t0;
      if (e.type === "progress" && ++progress === o.afterEvents) kill();
    }
  }
  const exit = await p.exited;
  if (watch) clearInterval(watch);
  const stderr = await new Response(p.stderr).text();
  return { exit, killed: p.signalCode === "SIGKILL", events, stderr, startMs: started };
}

const journalOf = (target: string): Journal | null => (existsSync(`${target}.zb-journal`) ? (JSON.parse(readFileSync(`${target}.zb-journal`, "utf8")) as Journal) : null);

/** After a kill: the journal claims only chunks the target holds, and "complete" only for the whole payload. */
function checkAfterKill(target: string): Journal | null {
  const j = journalOf(target);
  if (!j) return null;
  stats.journalsSeen.add(j.chunksDone);
  expect(j.state === "writing" || j.state === "complete").toBe(true);
  expect(j.chunksDone % PER_JOURNAL === 0 || j.chunksDone === N).toBe(true);
  const bytes = Math.min(j.chunksDone * CHUNK, RAW_SIZE);
  const t = readFileSync(target).subarray(0, bytes);
  expect(t.length).toBe(bytes);
  expect(sha256(t)).toBe(sha256(raw.subarray(0, bytes)));
  if (j.state === "complete") expect(sha256(readFileSync(target))).toBe(rawSha);
  return j;
}

/**
 * Kill the fresh install and each resume as `plan` says — after N progress events, or at a
 * fraction of the time this run should take (the clean install's time, scaled to the chunks
 * still to do) — then resume until done; the result must equal the clean install.
 */
async function chain(name: string, plan: { afterEvents?: number; atFraction?: number; afterJournal?: number }[]): Promise<void> {
  const target = join(root, `${name}.img`);
  for (const { afterEvents, atFraction, afterJournal } of plan) {
    const before = journalOf(target);
    const todo = (N - (before?.chunksDone ?? 0)) / N;
    const afterMs = atFraction === undefined ? undefined : Math.round(atFraction * (startMs + (cleanMs - startMs) * todo));
    const r = await run(target, { resume: before !== null, ...(afterEvents === undefined ? {} : { afterEvents }), ...(afterMs === undefined ? {} : { afterMs }), ...(afterJournal === undefined ? {} : { afterJournal }) });
    if (!r.killed) {
      expect(r.exit).toBe(0); // it finished before the kill landed
      continue;
    }
    stats.kills++;
    stats.killedAtChunk.push(Number(r.events.filter((e) => e.type === "progress").at(-1)?.chunk ?? -1));
    if (before !== null) noteResume(r, before);
    const j = checkAfterKill(target);
    if (r.events.some((e) => e.type === "done")) expect(j?.state).toBe("complete"); // "done" only once "complete" is journaled
  }
  const before = journalOf(target);
  const last = await run(target, { resume: before !== null });
  expect({ exit: last.exit, stderr: last.stderr }).toEqual({ exit: 0, stderr: "" });
  if (before !== null) noteResume(last, before);
  const result = last.events.at(-1)!;
  expect(result).toMatchObject({ type: "result", ok: true, rawSha256: rawSha });
  expect(statSync(target).size).toBe(RAW_SIZE);
  expect(sha256(readFileSync(target))).toBe(cleanSha);
  expect(journalOf(target)).toMatchObject({ state: "complete", chunksDone: N });
  rmSync(target);
}

/** A resume starts where the journal said, or reports an already complete install. */
function noteResume(r: Run, before: Journal | null): void {
  stats.resumes++;
  const start = r.events.find((e) => e.type === "start");
  if (before?.state === "complete") {
    expect(start).toBeUndefined();
    return;
  }
  if (!start) return; // killed before it got there
  expect(start.resumeFrom).toBe(before?.chunksDone ?? 0);
  if ((before?.chunksDone ?? 0) > 0) stats.resumedPastZero++;
}

test("a clean install is the raw rootfs (the reference for every chain)", async () => {
  const target = join(root, "clean.img");
  const t0 = performance.now();
  const r = await run(target);
  cleanMs = performance.now() - t0;
  startMs = r.startMs;
  expect(r.exit).toBe(0);
  expect(r.events.filter((e) => e.type === "progress").length).toBe(N);
  cleanSha = sha256(readFileSync(target));
  expect(cleanSha).toBe(rawSha);
  rmSync(target);
}, 30_000);

const SPREAD = [...new Set([1, 2, 63, 64, 65, 66, 127, 128, 129, 191, 192, 193, 255, 256, 257, ...Array.from({ length: 25 }, (_, i) => 10 + i * 10)])].sort((a, b) => a - b);
test.each(SPREAD)(
  "SIGKILL after %i progress events, then --resume: identical to a clean install",
  async (n) => {
    expect(cleanSha).toBe(rawSha);
    await chain(`after-${n}`, [{ afterEvents: n }]);
  },
  30_000,
);

test.each([
  { name: "every resume killed 40 chunks in", plan: [70, 40, 40, 40, 40, 40] },
  { name: "killed just past each journal update", plan: [65, 65, 65] },
  { name: "killed just before each journal update", plan: [63, 64, 64, 64] },
  { name: "killed after a few chunks, five times", plan: [5, 5, 5, 5, 5] },
])("repeated kills: $name", async ({ name, plan }) => {
  await chain(`repeat-${name.replace(/\W+/g, "-")}`, plan.map((afterEvents) => ({ afterEvents })));
}, 60_000);

// The journal advances once the writes of a step are synced, a few chunks
// after the decoder passed the step; these kills wait for the journal itself.
test.each([1, 2, 3])("SIGKILL as soon as the journal says %i × 32 MiB, then --resume from there", async (k) => {
  await chain(`journal-${k}`, [{ afterJournal: k * PER_JOURNAL }]);
}, 30_000);

test("SIGKILL at seeded random times (fresh install and resumes), then --resume", async () => {
  let x = 0x2545f491;
  const rand = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) / 2 ** 32);
  expect(startMs).toBeGreaterThan(0);
  expect(cleanMs).toBeGreaterThan(startMs);
  const plans = Array.from({ length: 14 }, () => Array.from({ length: 1 + Math.floor(rand() * 3) }, () => Math.round((0.03 + rand() * 0.92) * 100) / 100));
  console.log(`random kill times (fractions of the expected run time of ${Math.round(cleanMs)} ms, ${Math.round(startMs)} ms to the first write): ${JSON.stringify(plans)}`);
  const killsBefore = stats.kills;
  for (const [i, plan] of plans.entries()) await chain(`random-${i}`, plan.map((atFraction) => ({ atFraction })));
  expect(stats.kills - killsBefore).toBeGreaterThanOrEqual(Math.ceil(plans.flat().length * 0.6));
}, 90_000);

test("a kill before the journal exists: --resume starts from chunk 0 (a script may always pass it) and completes", async () => {
  const target = join(root, "early.img");
  const r = await run(target, { afterMs: 0 });
  expect(r.killed).toBe(true);
  stats.kills++;
  expect(journalOf(target)).toBeNull();
  const resume = await run(target, { resume: true });
  expect(resume.exit).toBe(0);
  expect(resume.stderr).toContain(`zb image install: no journal at ${target}.zb-journal: installing from the start`);
  expect(sha256(readFileSync(target))).toBe(cleanSha);
}, 30_000);

test("the kills landed across the whole install and resumes started past chunk 0", () => {
  expect(stats.kills).toBeGreaterThanOrEqual(40);
  expect(stats.resumedPastZero).toBeGreaterThanOrEqual(10);
  for (const at of [PER_JOURNAL, 2 * PER_JOURNAL, 3 * PER_JOURNAL]) expect(stats.journalsSeen.has(at)).toBe(true);
});
