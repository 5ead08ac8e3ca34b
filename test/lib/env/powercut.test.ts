/**
 * Power-cut injection for env writes: cut at every write/fsync boundary and
 * at every 512-byte offset of the copy being written (plus random subsets of
 * sectors, since a disk may reorder them); afterwards the env must read as the
 * complete old or the complete new env, and the next write must succeed.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { lstatSync, mkdtempSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { encode, type Vars } from "../../../lib/env/codec.ts";
import { defaultConfig, type StoreConfig } from "../../../lib/env/config.ts";
import { EnvStore } from "../../../lib/env/store.ts";
import { TempLockSys } from "../../fakes/envlock.ts";
import { CuttingSys, cutPoints, PowerCut, SECTOR, type CutPlan } from "../../fakes/powercut.ts";

const host = new TempLockSys(); // the env lock in a temp folder, not the host's /var/lock
const roots: string[] = [];
afterAll(() => roots.forEach((r) => rmSync(r, { recursive: true, force: true })));

/** A deterministic env spanning many sectors, so torn writes mix old and new bytes. */
function bigEnv(tag: string, n = 70): Vars {
  const vars: Vars = new Map();
  for (let i = 0; i < n; i++) vars.set(`var_${String(i).padStart(3, "0")}`, `${tag}-${i}-`.padEnd(90, String.fromCharCode(97 + (i % 26))));
  return vars;
}
const OLD = bigEnv("old");
/** What the inactive copy holds: the env before OLD, so writing the wrong copy shows. */
const OLDER = bigEnv("older", 60);
const NEW = new Map(OLD);
NEW.set("var_001", "changed near the start");
NEW.set("var_060", "changed near the end");
NEW.delete("var_030");
NEW.set("zb_slot", "b");

interface Scenario {
  name: string;
  config(dir: string): StoreConfig;
  /** Lay down the old env (bytes exactly as the scenario needs). */
  prepare(dir: string, config: StoreConfig): void;
  /** Also try random sector subsets of each write. */
  reorder: boolean;
  /** The configured path is a symlink, and must still be one after any cut. */
  symlink?: boolean;
}

/** Lay down a pair: copy `active` holds OLD, the other OLDER (or garbage). */
function writePair(config: StoreConfig, flags: [number, number], active: 0 | 1, corruptOther = false): void {
  const layout = { size: config.copies[0].size, redundant: true };
  config.copies.forEach((loc, i) => {
    const bytes = encode(i === active ? OLD : OLDER, layout, { flag: flags[i]! });
    if (i !== active && corruptOther) bytes[100]! ^= 0xff;
    host.mkdirp(join(loc.path, ".."));
    host.writeAt(loc.path, loc.offset, bytes, { create: true });
  });
}

const SCENARIOS: Scenario[] = [
  { name: "default pair, equal flags", config: (d) => defaultConfig(d), prepare: (_, c) => writePair(c, [1, 1], 0), reorder: true },
  { name: "default pair, active is the second copy", config: (d) => defaultConfig(d), prepare: (_, c) => writePair(c, [4, 5], 1), reorder: true },
  { name: "default pair, flag wraps 255→0", config: (d) => defaultConfig(d), prepare: (_, c) => writePair(c, [254, 255], 1), reorder: true },
  { name: "degraded pair (second copy bad)", config: (d) => defaultConfig(d), prepare: (_, c) => writePair(c, [7, 8], 0, true), reorder: true },
  {
    name: "two offsets in one file",
    config: (d) => ({
      copies: [
        { path: join(d, "pair.bin"), offset: 0, size: 0x2000 },
        { path: join(d, "pair.bin"), offset: 0x2000, size: 0x2000 },
      ],
      source: "test",
    }),
    prepare: (_, c) => writePair(c, [3, 2], 0),
    reorder: true,
  },
  {
    name: "single copy, whole file (temp + rename)",
    config: (d) => ({ copies: [{ path: join(d, "uboot.env"), offset: 0, size: 0x4000 }], source: "test" }),
    prepare: (_, c) => host.writeAt(c.copies[0].path, 0, encode(OLD, { size: 0x4000, redundant: false }), { create: true }),
    reorder: false,
  },
  {
    // The temp file and the rename are in the target's folder; the symlink itself is never written.
    name: "single copy, whole file behind a symlink (temp + rename of the target)",
    config: (d) => ({ copies: [{ path: join(d, "uboot.env"), offset: 0, size: 0x4000 }], source: "test" }),
    prepare: (d) => {
      host.mkdirp(join(d, "real"));
      host.writeAt(join(d, "real", "uboot.env"), 0, encode(OLD, { size: 0x4000, redundant: false }), { create: true });
      symlinkSync("real/uboot.env", join(d, "uboot.env"));
    },
    reorder: false,
    symlink: true,
  },
];

/** Fresh temp dir with the old env; returns the store config. */
function fresh(s: Scenario): StoreConfig {
  const dir = mkdtempSync(join(tmpdir(), "zb-cut-"));
  roots.push(dir);
  const config = s.config(dir);
  s.prepare(dir, config);
  return config;
}

/** A seeded PRNG (mulberry32) so failures reproduce. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomSubsets(recorded: CuttingSys["ops"], count: number): CutPlan[] {
  const rnd = prng(42);
  const plans: CutPlan[] = [];
  recorded.forEach((op, i) => {
    if (op.kind !== "write") return;
    const n = Math.ceil(op.length! / SECTOR);
    for (let k = 0; k < count; k++) plans.push({ op: i, sectors: [...Array(n).keys()].filter(() => rnd() < 0.5) });
  });
  return plans;
}

let total = 0;
describe("power cut during an env write", () => {
  for (const s of SCENARIOS) {
    test(s.name, () => {
      // Dry run: learn the operations of one write.
      const dry = new CuttingSys(host, { never: true });
      new EnvStore(dry, fresh(s)).update([...diff(OLD, NEW)]);
      expect(dry.ops.filter((o) => o.kind === "write").length).toBeGreaterThan(0);
      const plans = cutPoints(dry.ops);
      if (s.reorder) plans.push(...randomSubsets(dry.ops, 32));

      let sawOld = 0;
      let sawNew = 0;
      for (const plan of plans) {
        const config = fresh(s);
        try {
          new EnvStore(new CuttingSys(host, plan), config).update([...diff(OLD, NEW)]);
        } catch (e) {
          if (!(e instanceof PowerCut)) throw e;
        }
        const after = new EnvStore(host, config).read().vars;
        for (const c of config.copies) if (lstatSync(c.path).isSymbolicLink() !== (s.symlink ?? false)) throw new Error(`${s.name}: ${c.path} changed kind`);
        const isOld = same(after, OLD);
        const isNew = same(after, NEW);
        if (!isOld && !isNew) throw new Error(`${s.name}: torn env after cut ${JSON.stringify(plan)}`);
        if (isOld) sawOld++;
        else sawNew++;
        // The device comes back: the next write must succeed and stick.
        new EnvStore(host, config).update([...diff(after, NEW)]);
        expect(same(new EnvStore(host, config).read().vars, NEW)).toBe(true);
      }
      // Cuts early in the write keep the old env; the last one sees the new.
      expect(sawOld).toBeGreaterThan(0);
      expect(sawNew).toBeGreaterThan(0);
      total += plans.length;
      console.log(`  ${s.name}: ${plans.length} cut points (${sawOld} old, ${sawNew} new)`);
    });
  }

  test("cut points were counted", () => {
    // 16 KiB copies give 32 sector offsets each; every scenario adds its boundaries.
    expect(total).toBeGreaterThan(5 * 16);
    console.log(`  power-cut points tried in total: ${total}`);
  });
});

function* diff(from: Vars, to: Vars) {
  for (const k of from.keys()) if (!to.has(k)) yield { name: k, value: null };
  for (const [k, v] of to) if (from.get(k) !== v) yield { name: k, value: v };
}

function same(a: Vars, b: Vars): boolean {
  return a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);
}
