/**
 * Reading a token PIN from a file (`pkcs11.pin-file=` in /etc/zb/hsm.conf),
 * the unattended alternative to a prompt. The PIN never goes through argv
 * or the environment; it is read into a Uint8Array the backend wipes after
 * C_Login.
 */
import { closeSync, fstatSync, openSync } from "node:fs";
import { ioError, ZbError } from "../../errors.ts";
import { wipe } from "../../secret.ts";
import { readFdBounded, tooLarge, type ReadLimit } from "../../sys/bounded.ts";

/** PKCS#11 PINs are short (SoftHSM allows 255 bytes); anything larger is not a PIN file. */
export const MAX_PIN_BYTES = 1024;

/**
 * Read a PIN file: the whole file, minus one trailing `\n` (or `\r\n`) so
 * `echo 1234 > pin` works. The file must be a regular file that group and
 * others have no access to at all (mode bits 0o077 clear, as the soft
 * backend's key file): a PIN readable by any local user is no second factor,
 * and one they can write lets them choose the PIN zb presents to the token
 * (and lock it out with wrong ones). The checks use fstat on the open
 * descriptor, so they apply to the bytes read.
 * @param path the PIN file (a plain host path)
 * @returns a fresh buffer; the caller wipes it
 * @throws {ZbError} IO when the file cannot be opened or read; CONFIG when it
 *   is not a regular file, gives group or others any access, is empty or is too large
 * @example const pin = readPinFile("/etc/zb/token.pin");
 */
export function readPinFile(path: string): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw ioError(`read PIN file ${path}`, e);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new ZbError("CONFIG", `cannot use PIN file ${path}: not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      const how = (st.mode & 0o044) !== 0 ? "readable" : "writable or executable";
      throw new ZbError("CONFIG", `cannot use PIN file ${path}: it is ${how} by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, "0")})`, {
        hint: `run: chmod 600 ${path}`,
      });
    }
    if (st.size > MAX_PIN_BYTES) throw tooLarge(pinLimit(path));
    return readAll(fd, path);
  } finally {
    closeSync(fd);
  }
}

function readAll(fd: number, path: string): Uint8Array {
  // Bounded again: the file may have grown since fstat.
  const bytes = readFdBounded(fd, { ...pinLimit(path), secret: true });
  let n = bytes.length;
  if (n > 0 && bytes[n - 1] === 0x0a) n--;
  if (n > 0 && bytes[n - 1] === 0x0d) n--;
  const pin = bytes.slice(0, n);
  wipe(bytes);
  if (n === 0) throw new ZbError("CONFIG", `cannot use PIN file ${path}: it is empty`);
  return pin;
}

function pinLimit(path: string): ReadLimit {
  return { max: MAX_PIN_BYTES, code: "CONFIG", what: `PIN file ${path}` };
}
