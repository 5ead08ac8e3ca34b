/**
 * Kill the real process: `dist/zb-x64 image install … --progress=json` of a
 * 128 MiB rootfs in 257 chunks of 512 KiB (the journal advances every 32 MiB,
 * i.e. every 64 chunks) is SIGKILLed after N progress events for a spread of
 * N, repeatedly across resumes, as the journal reaches a step, and at chunks
 * drawn by a seeded PRNG (the seed is in the test's name: the same seed, the
 * same kill points); then `--resume` (killed again in the chains) until it
 * finishes. Every kill is triggered by an event of the run (a progress line
 * on its stdout, the journal's rename into place) or comes right after the
 * spawn, never by a timer, so a failing kill point can be replayed; it lands
 * as soon as the test has read the event, usually a chunk or two later.
 * After every kill the journal never claims a chunk the target does not hold
 * and never says "complete" early; at the end the target is byte-identical
 * to a clean install and the journal says complete. One kill lands before the
 * journal exists: `--resume` then says so and installs from the start.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, watch } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
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

/** When to SIGKILL a run (if it is still running then); without one it runs to its end. */
interface KillAt {
  /** On its Nth progress event. */
  afterEvents?: number;
  /** On its first start or progress event that reports this many chunks or more on the target (0: on "start"). */
  atChunk?: number;
  /** When its journal, renamed into place, says this many chunks or more. */
  afterJournal?: number;
  /** Right after it was spawned, long before it can write anything. */
  atOnce?: boolean;
}

/** Run one install, SIGKILLed as `o` says. */
async function run(target: string, o: KillAt & { resume?: boolean } = {}): Promise<Run> {
  const args = [bin, "image", "install", image, "--payload", "rootfs", "--to", target, "--trust", trust, "--progress=json"];
  const p = Bun.spawn(o.resume ? [...args, "--resume"] : args, { stdout: "pipe", stderr: "pipe", env: { ...process.env, ZB_NO_REBOOT: "1" } });
  const kill = () => {
    if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  };
  if (o.atOnce) kill();
  // The journal advances when a background sync ends, between progress
  // events: watch its folder for the rename that puts a new journal in place.
  const journalName = basename(`${target}.zb-journal`);
  const watcher = o.afterJournal === undefined ? null : watch(dirname(target), (_, name) => {
    if (name !== journalName) return;
    const j = journalOf(target);
    if (j && j.state === "writing" && j.chunksDone >= o.afterJournal!) kill();
  });
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
      if (e.type === "progress" && ++progress === o.afterEvents) kill();
      const chunks = e.type === "start" ? e.resumeFrom : e.type === "progress" ? e.chunk : undefined;
      if (o.atChunk !== undefined && typeof chunks === "number" && chunks >= o.atChunk) kill();
    }
  }
  const exit = await p.exited;
  watcher?.close();
  const stderr = await new Response(p.stderr).text();
  return { exit, killed: p.signalCode === "SIGKILL", events, stderr };
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
 * Kill the fresh install and each resume as `plan` says, then resume until
 * done; the result must equal the clean install.
 */
async function chain(name: string, plan: KillAt[]): Promise<void> {
  const target = join(root, `${name}.img`);
  for (const killAt of plan) {
    const before = journalOf(target);
    const r = await run(target, { resume: before !== null, ...killAt });
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
  const r = await run(target);
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

/** The seed of the random kill points: change it to draw others, give a failing one to replay it. */
const SEED = 0x2545f491;
test(`SIGKILL at chunks drawn by xorshift32 from seed 0x${SEED.toString(16)} (fresh install and resumes), then --resume`, async () => {
  let x = SEED;
  const rand = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) / 2 ** 32);
  // 14 chains of 1 to 3 kills, each at a chunk count from 0 ("start": the journal exists, nothing
  // written yet) to N - 1, rising along a chain; a resume that starts past a point is killed at its start.
  const plans = Array.from({ length: 14 }, () => Array.from({ length: 1 + Math.floor(rand() * 3) }, () => Math.floor(rand() * N)).sort((a, b) => a - b));
  console.log(`random kill points (chunks, per chain): ${JSON.stringify(plans)}`);
  const killsBefore = stats.kills;
  for (const [i, plan] of plans.entries()) await chain(`random-${i}`, plan.map((atChunk) => ({ atChunk })));
  // A kill near the end can come after the run finished; most land.
  expect(stats.kills - killsBefore).toBeGreaterThanOrEqual(Math.ceil(plans.flat().length * 0.6));
}, 90_000);

test("a kill before the journal exists: --resume starts from chunk 0 (a script may always pass it) and completes", async () => {
  const target = join(root, "early.img");
  const r = await run(target, { atOnce: true });
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
