/**
 * Secrets in and out of the stages: read from stdin into a Uint8Array,
 * written to a new 0600 file or stdout, PINs asked on the terminal without
 * echo (PIN files: lib/hsm/pkcs11/pin.ts). Never through argv or the environment
 * (DEVELOPERS.md "Secrets"); every buffer returned is the caller's to wipe.
 */
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { ZbError } from "../lib/errors.ts";
import { wipe } from "../lib/secret.ts";
import { readFdBounded } from "../lib/sys/bounded.ts";
import { waitReadable } from "../lib/sys/fdwait.ts";
import { createNew, out } from "./output.ts";

/** Largest secret zb reads (LUKS keys are 32 bytes; PINs are short). */
export const MAX_SECRET_BYTES = 4096;

/**
 * All bytes of fd (stdin by default) up to EOF, at most MAX_SECRET_BYTES.
 * A non-blocking fd (O_NONBLOCK is shared with whoever handed it over) is
 * waited on in poll(2) while its writer has not written yet, not spun on.
 * @param wait what to do on EAGAIN before reading again (tests); default: poll(2) for POLLIN
 * @throws {ZbError} USAGE when empty or too large; IO on read errors
 */
export function readSecretFd(fd = 0, what = "the secret on stdin", wait: (fd: number) => void = waitReadable): Uint8Array {
  const secret = readFdBounded(fd, { max: MAX_SECRET_BYTES, code: "USAGE", what, secret: true, wait });
  if (secret.length === 0) {
    throw new ZbError("USAGE", `cannot read ${what}: it is empty`, { hint: "pipe the secret into stdin, e.g. from another zb command" });
  }
  return secret;
}

/**
 * Write a secret to a new file created 0600 (never replacing one), or to stdout for "-".
 * @throws {ZbError} USAGE when the file exists; IO otherwise (stdout included: a secret must arrive)
 */
export function writeSecretOutput(path: string, secret: Uint8Array): void {
  if (path === "-") out(secret, { mustArrive: true });
  else createNew(path, 0o600, "the secret").finish(secret);
}

/**
 * Ask for a PIN on the first of `tty` that opens (the controlling terminal,
 * then the console in an initramfs), echo off. @throws {ZbError} USAGE when none opens
 */
export function promptPin(prompt: string, tty: string | readonly string[] = "/dev/tty"): Uint8Array {
  const ttys = typeof tty === "string" ? [tty] : tty;
  // The first that opens: an initramfs has a /dev/tty node but no controlling terminal (ENXIO), the console still works.
  let fd: number | null = null;
  for (const path of ttys) {
    try {
      fd = openSync(path, "r+");
      break;
    } catch {
      // the next one
    }
  }
  if (fd === null) {
    throw new ZbError("USAGE", `cannot ask for the PIN: no terminal (${ttys.join(", ")})`, { hint: "give a PIN file (pkcs11.pin-file or --pin-file)" });
  }
  const stty = (arg: string) => Bun.spawnSync(["stty", arg], { stdin: fd, stdout: "ignore", stderr: "ignore" });
  try {
    stty("-echo"); // before the prompt: whatever is typed after it must not echo
    writeSync(fd, prompt);
    const buf = new Uint8Array(256);
    let n = 0;
    while (n < buf.length) {
      const got = readSync(fd, buf, n, 1, null);
      if (got === 0 || buf[n] === 0x0a || buf[n] === 0x0d) break;
      n += got;
    }
    const pin = buf.slice(0, n);
    wipe(buf);
    return pin;
  } finally {
    stty("echo");
    try {
      writeSync(fd, "\n");
    } catch {
      /* terminal gone */
    }
    closeSync(fd);
  }
}
