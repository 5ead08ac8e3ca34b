/**
 * Appending a credentials archive to a slot's initramfs on the boot
 * partition, replacing one appended earlier, durably and atomically (a temp
 * copy, fsynced and renamed over the file). Kept apart from credentials.ts,
 * which only reads and locates archives: this is the one place that rewrites
 * a boot file, with its own failure handling (no partial copy left behind on
 * a full partition). All I/O goes through the injected Sys.
 */
import { basename, dirname, join } from "node:path";
import { ZbError } from "../errors.ts";
import type { Sys } from "../sys/sys.ts";
import { NEWC_MAGIC } from "./cpio.ts";
import { invalid } from "./credmeta.ts";
import { credentialTail, locateCredentialArchive, strandedCredentials, unpackCredentials } from "./credentials.ts";

/**
 * Append a credentials archive to an initramfs file, replacing credentials
 * appended earlier. The existing content is padded with NULs to a 4-byte
 * boundary (the kernel looks for a cpio header only at aligned offsets), then
 * the archive follows. Durable and atomic: a copy is written next to the file,
 * fsynced and renamed over it, so a power cut leaves the old or the new file.
 * When a step fails before the rename (a full partition), the copy is removed
 * again, so the failure leaves no partial copy taking up the space. The copy
 * gets the file's mode and owner. `initramfsPath` must be the real
 * file, not a symbolic link (the rename would replace the link).
 * @param cpio an archive from packCredentials (checked before anything is written)
 * @returns the offset of the archive in the new file, and whether older credentials were replaced
 * @throws {ZbError} CRED_INVALID when `cpio` is not a credentials archive, or
 *   when credentials appended earlier are followed by other data (they could
 *   not be replaced, and the kernel would unpack both sets); IO when the file
 *   cannot be read or written
 * @example appendCredentials(sys, "/boot/firmware/slot-b/initramfs", packCredentials(creds))
 */
export function appendCredentials(sys: Sys, initramfsPath: string, cpio: Uint8Array): { offset: number; replaced: boolean } {
  unpackCredentials(cpio);
  if (cpio[0] !== NEWC_MAGIC.charCodeAt(0)) throw invalid("the archive to append starts with padding");
  const { st, keep, old, tmp } = appendPlan(sys, initramfsPath);
  const offset = (keep + 3) & ~3;
  // The new file keeps the old one's permissions and owner (an initramfs made 0600 stays 0600).
  const like = { create: true, ...(st.mode !== undefined ? { mode: st.mode } : {}), ...(st.uid !== undefined && st.gid !== undefined ? { owner: { uid: st.uid, gid: st.gid } } : {}) };
  sys.unlink(tmp);
  try {
    copyPrefix(sys, initramfsPath, tmp, keep, like);
    const added = new Uint8Array(offset - keep + cpio.length);
    added.set(cpio, offset - keep);
    sys.writeAt(tmp, keep, added, like);
    sys.fsync(tmp);
    sys.rename(tmp, initramfsPath);
  } catch (e) {
    // A partial copy on a full boot partition would keep it full (and nothing else reads it).
    removeQuietly(sys, tmp);
    throw e;
  }
  sys.fsync(dirname(initramfsPath));
  return { offset, replaced: old !== null };
}

/**
 * Check, without changing anything, that credentials can be appended to
 * `initramfsPath`: a regular file whose tail reads, in a folder where the
 * temp copy can be created. `zb cred create` calls it before it formats a
 * device, so a wrong path fails while the disks are still as they were.
 * @throws {ZbError} IO; CRED_INVALID when credentials appended earlier are
 *   followed by other data (appendCredentials would refuse)
 */
export function checkAppendable(sys: Sys, initramfsPath: string): void {
  const { tmp } = appendPlan(sys, initramfsPath);
  sys.unlink(tmp);
  try {
    sys.writeAt(tmp, 0, new Uint8Array(0), { create: true, mode: 0o600 });
  } catch (e) {
    removeQuietly(sys, tmp); // created, then its mode could not be set
    throw e;
  }
  sys.unlink(tmp);
}

/** Remove a temp file after a failure; the failure is what gets reported, not this. */
function removeQuietly(sys: Sys, path: string): void {
  try {
    sys.unlink(path);
  } catch {
    // The next append removes it first.
  }
}

/**
 * The file's state, how much of it stays (older credentials cut off) and the temp copy's path.
 * @throws {ZbError} IO; CRED_INVALID when credentials appended earlier are followed by other data
 */
function appendPlan(sys: Sys, initramfsPath: string) {
  const st = sys.stat(initramfsPath);
  if (!st || st.kind !== "file") throw new ZbError("IO", `cannot append credentials to ${initramfsPath}: ${st ? "not a regular file" : "no such file"}`);
  const tail = credentialTail(sys, initramfsPath, st.size);
  const old = locateCredentialArchive(tail.bytes);
  if (!old) {
    const stranded = strandedCredentials(tail.bytes);
    if (stranded) {
      throw new ZbError("CRED_INVALID", `cannot append credentials to ${initramfsPath}: the credentials at byte ${tail.start + stranded.offset} are followed by data zb does not recognise (from byte ${tail.start + stranded.other}); appending more would make the kernel unpack both`, {
        hint: "rebuild the initramfs (update-initramfs -u), then append the credentials again",
      });
    }
  }
  const keep = old ? tail.start + old.offset : st.size;
  return { st, old, keep, tmp: join(dirname(initramfsPath), `.${basename(initramfsPath)}.zb-new`) };
}

const COPY_CHUNK = 1 << 20;

function copyPrefix(sys: Sys, from: string, to: string, length: number, opts: Parameters<Sys["writeAt"]>[3]): void {
  for (let at = 0; at < length; at += COPY_CHUNK) {
    const chunk = sys.readAt(from, at, Math.min(COPY_CHUNK, length - at));
    sys.writeAt(to, at, chunk, opts);
  }
}
