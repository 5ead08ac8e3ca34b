/**
 * What an install checks before it writes anything (lib/image/install.ts):
 * the files it reads and writes are separate, the payload exists, the
 * journal is this install's, the device is large enough.
 */
import { dirname, resolve } from "node:path";
import { ZbError } from "../errors.ts";
import { atomicTemp } from "../sys/atomic.ts";
import type { Sys } from "../sys/sys.ts";
import type { Target } from "../sys/target.ts";
import type { InstallOptions } from "./install.ts";
import type { Journal } from "./journal.ts";
import type { Payload } from "./manifest.ts";
import type { VerifiedImage } from "./reader.ts";
import type { ImageSource } from "./source.ts";

/**
 * The image, the target and the journal must be three files. Writing the
 * target over the image being read destroys the image half-way; a journal
 * written over the target replaces the installed payload once it is complete
 * (and renaming it over a block device's node would replace the node); a
 * journal over the image destroys the image. Compared by device and inode, so
 * links and other spellings of a path count, or by absolute path where a
 * file does not exist yet. A journal that exists must be a regular file: it
 * is read whole and replaced by rename. A target that does not exist must
 * not be under /dev (checkNotUnderDev).
 * @throws {ZbError} USAGE; IO for a missing target under /dev or a missing folder
 */
export function checkSeparateFiles(sys: Sys, source: ImageSource, opts: InstallOptions): void {
  const files = [
    { role: "the target", path: opts.target },
    { role: "the journal", path: opts.journal },
    ...(source.file !== undefined ? [{ role: "the image", path: source.file }] : []),
    // Deleted and rewritten at each journal write: a target or an image by that name would be lost.
    { role: "the journal's temp file", path: atomicTemp(opts.journal) },
  ].map((f) => ({ ...f, info: sys.stat(f.path) }));
  if (files[0]!.info === null) checkNotUnderDev(sys, opts.target);
  // The target's folder first: the journal's (by default beside the target) would take the blame.
  if (files[0]!.info === null && sys.stat(dirname(opts.target))?.kind !== "dir") {
    throw new ZbError("IO", `cannot create the target ${opts.target}: the folder ${dirname(opts.target)} does not exist`);
  }
  const journal = files[1]!.info;
  if (journal && journal.kind !== "file") {
    throw new ZbError("USAGE", `cannot use ${opts.journal} as the install journal: it is not a regular file`, { hint: "give --journal a file path of its own" });
  }
  if (sys.stat(dirname(opts.journal))?.kind !== "dir") {
    throw new ZbError("IO", `cannot write the install journal ${opts.journal}: the folder ${dirname(opts.journal)} does not exist`);
  }
  sys.checkWritableDir(dirname(opts.journal)); // a read-only mount or folder: said before the target is touched
  // As a path too: a temp file that does not exist now may be created, and then hold the same inode.
  const keys = (f: (typeof files)[number]) => [`path:${resolve(f.path)}`, ...(f.info ? [f.info.id] : [])];
  for (const [i, a] of files.entries()) {
    for (const b of files.slice(i + 1)) {
      if (a.role === "the journal" && b.role === "the journal's temp file") continue; // one replaces the other by design
      if (!keys(a).some((k) => keys(b).includes(k))) continue;
      const temp = b.role === "the journal's temp file" ? { hint: `zb writes the journal through ${b.path}, deleting what has that name first: give --journal another name` } : {};
      throw new ZbError("USAGE", `cannot install ${opts.payload} into ${opts.target}: ${a.role} (${a.path}) and ${b.role} (${b.path}) are the same file`, temp);
    }
  }
}

/**
 * A target that does not exist is created as a file, but never under /dev:
 * there a missing name is a device that is not there (a typo, a card not
 * inserted, a partition not yet made), and a file created in its place (in
 * devtmpfs, in RAM) would take the device's name, receive the payload and
 * be called installed. Checked for the path as given and for its folder
 * with every link followed (a link to /dev elsewhere). /dev/shm is the one
 * exception: a tmpfs for files (POSIX shared memory, scratch images), not
 * device nodes.
 * @throws {ZbError} IO "cannot install into PATH: no such device"
 */
function checkNotUnderDev(sys: Sys, target: string): void {
  const folder = dirname(resolve(target));
  const real = sys.realpath(folder);
  const within = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);
  const underDev = (p: string) => within(p, "/dev") && !within(p, "/dev/shm");
  if (!underDev(folder) && !(real !== null && underDev(real))) return;
  throw new ZbError("IO", `cannot install into ${target}: no such device (zb creates only file targets, never under /dev)`, {
    hint: "check the device's name (lsblk lists the block devices); a file target belongs outside /dev",
  });
}

/** @throws {ZbError} USAGE when the image has no payload by that name */
export function findPayload(h: VerifiedImage, name: string): Payload {
  const p = h.manifest.payloads.find((x) => x.name === name);
  if (!p) throw new ZbError("USAGE", `cannot install payload ${JSON.stringify(name)}: the image has ${h.manifest.payloads.map((x) => x.name).join(", ")}`);
  return p;
}

/**
 * The chunk an install starts at: 0 without `resume` or without a journal,
 * else the journal's chunks done.
 * (install() sets a journal of another image for the same payload and target aside before: it starts at 0.)
 * @throws {ZbError} USAGE for a journal of another image, payload or target; IO for one that claims too much
 */
export function resumePoint(j: Journal | null, opts: InstallOptions, imageId: string, p: Payload): number {
  if (!opts.resume) return 0;
  // No journal: the run before ended before it wrote one (a power cut at its start), or there
  // was none; nothing of the target is vouched for, so the install starts at chunk 0. A script
  // can then always pass --resume.
  if (!j) return 0;
  const other = j.image !== imageId ? "another image" : j.payload !== opts.payload ? `payload ${j.payload}` : j.target !== opts.target ? `target ${j.target}` : null;
  if (other) throw new ZbError("USAGE", `cannot resume: the journal ${opts.journal} belongs to ${other}`, { hint: "install without --resume" });
  // A journal of this image that claims more chunks than the payload has was not written by zb.
  if (j.chunksDone > p.chunks.length) throw new ZbError("IO", `cannot read install journal ${opts.journal}: it says ${j.chunksDone} chunks are done, the payload has ${p.chunks.length}`, { hint: "install without --resume" });
  return j.chunksDone;
}

/** @throws {ZbError} IO when a block device is smaller than the payload */
export function checkTargetSize(t: Target, p: Payload): void {
  if (t.blockDevice && t.size() < p.raw.size) {
    throw new ZbError("IO", `cannot install ${p.name} into ${t.path}: it holds ${t.size()} bytes, the payload needs ${p.raw.size}`);
  }
}
