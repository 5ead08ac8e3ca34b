/**
 * A Sys that loses power on purpose. It forwards to a real Sys (files in a
 * temp dir) and stops at a planned point: before the N-th operation, or in
 * the middle of a write after some of its bytes (or some of its 512-byte
 * sectors) reached the file. Everything after the cut is never applied, as
 * when the board loses power. The file system is the real one, so the state
 * after a cut is read back by the ordinary, uninstrumented code.
 */
import type { ReadLimit } from "../../lib/sys/bounded.ts";
import type { FileInfo, Sys, WriteOptions } from "../../lib/sys/sys.ts";

/** Thrown at the cut; no code after it runs. */
export class PowerCut extends Error {
  constructor(at: string) {
    super(`power cut ${at}`);
    this.name = "PowerCut";
  }
}

/** One mutating operation, as recorded by a dry run. */
export interface Op {
  kind: "write" | "fsync" | "rename" | "unlink" | "mkdir";
  path: string;
  length?: number;
}

/** Where to cut. */
export type CutPlan =
  | { beforeOp: number }
  /** Inside write op `op`: only the first `bytes` bytes land. */
  | { op: number; bytes: number }
  /** Inside write op `op`: only these 512-byte sectors land (disks reorder). */
  | { op: number; sectors: number[] }
  | { never: true };

export const SECTOR = 512;

export class CuttingSys implements Sys {
  /** Mutating operations seen so far (reads are not cut points). */
  readonly ops: Op[] = [];

  constructor(
    private readonly inner: Sys,
    private readonly plan: CutPlan,
  ) {}

  readAt(path: string, offset: number, length: number): Uint8Array {
    return this.inner.readAt(path, offset, length);
  }

  writeAt(path: string, offset: number, data: Uint8Array, opts?: WriteOptions): void {
    const index = this.begin({ kind: "write", path, length: data.length });
    const p = this.plan;
    if ("op" in p && p.op === index) {
      if ("bytes" in p) this.inner.writeAt(path, offset, data.subarray(0, p.bytes), opts);
      else for (const s of p.sectors) this.inner.writeAt(path, offset + s * SECTOR, data.subarray(s * SECTOR, (s + 1) * SECTOR), opts);
      throw new PowerCut(`in write #${index} of ${path}`);
    }
    this.inner.writeAt(path, offset, data, opts);
  }

  fsync(path: string): void {
    this.begin({ kind: "fsync", path });
    this.inner.fsync(path);
  }

  rename(from: string, to: string): void {
    this.begin({ kind: "rename", path: to });
    this.inner.rename(from, to);
  }

  unlink(path: string): void {
    this.begin({ kind: "unlink", path });
    this.inner.unlink(path);
  }

  mkdirp(path: string): void {
    this.begin({ kind: "mkdir", path });
    this.inner.mkdirp(path);
  }

  stat(path: string): FileInfo | null {
    return this.inner.stat(path);
  }

  realpath(path: string): string | null {
    return this.inner.realpath(path);
  }

  readText(path: string, limit?: ReadLimit): string {
    return this.inner.readText(path, limit);
  }

  checkWritableDir(dir: string): void {
    this.inner.checkWritableDir(dir);
  }

  listDir(path: string): string[] {
    return this.inner.listDir(path);
  }

  private begin(op: Op): number {
    const index = this.ops.length;
    if ("beforeOp" in this.plan && this.plan.beforeOp === index) throw new PowerCut(`before op #${index} (${op.kind} ${op.path})`);
    this.ops.push(op);
    return index;
  }
}

/**
 * Every cut point of an operation list: before each op and after the last,
 * and inside each write at every 512-byte offset.
 */
export function cutPoints(ops: readonly Op[]): CutPlan[] {
  const plans: CutPlan[] = [];
  ops.forEach((op, i) => {
    plans.push({ beforeOp: i });
    if (op.kind === "write") for (let b = SECTOR; b < op.length!; b += SECTOR) plans.push({ op: i, bytes: b });
  });
  plans.push({ beforeOp: ops.length }); // completed, then the power goes
  return plans;
}
