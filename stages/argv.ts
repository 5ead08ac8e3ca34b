/**
 * Arguments as bytes. The runtime hands zb its arguments decoded as UTF-8,
 * with U+FFFD in place of bytes that are not; an env value or a file name
 * made of such bytes would then be stored or looked up changed, silently.
 * So every role refuses an argument that is not valid UTF-8 before it runs
 * (stages/main.ts); the kernel's copy (/proc/self/cmdline) tells.
 */
import { readFileSync } from "node:fs";
import { ZbError } from "../lib/errors.ts";

/**
 * The last `count` arguments as the kernel holds them, or null where that
 * cannot be read (no /proc).
 */
export function rawArguments(count: number, cmdline = "/proc/self/cmdline"): Uint8Array[] | null {
  let all: Uint8Array;
  try {
    all = readFileSync(cmdline);
  } catch {
    return null;
  }
  const parts: Uint8Array[] = [];
  for (let at = 0; at < all.length; ) {
    const end = all.indexOf(0, at);
    parts.push(all.subarray(at, end < 0 ? all.length : end));
    at = end < 0 ? all.length : end + 1;
  }
  return parts.length > count ? parts.slice(parts.length - count) : null;
}

/**
 * Refuse an argument whose bytes are not what the runtime decoded them to.
 * libubootenv's fw_setenv stores such bytes as they are; zb says so instead
 * of storing U+FFFD, and points to a script file (-s / --script), which is
 * read as bytes and keeps any value.
 * Arguments that are all ASCII (the usual case, and zbunlock's at every
 * boot) were decoded losslessly: /proc is not read for them.
 * @param raw {@link rawArguments}, asked for only when needed; null skips the check (nothing to compare with)
 * @throws {ZbError} USAGE
 * @example checkUtf8("fw_setenv", process.argv.slice(2))
 */
export function checkUtf8(tool: string, argv: readonly string[], rawOf: () => Uint8Array[] | null = () => rawArguments(argv.length)): void {
  // U+FFFD, what an invalid byte decodes to, is not ASCII either.
  if (argv.every((a) => /^[\x00-\x7f]*$/.test(a))) return;
  const raw = rawOf();
  if (raw === null || raw.length !== argv.length) return;
  argv.forEach((a, i) => {
    if (Buffer.from(a, "utf8").equals(raw[i]!)) return;
    const script = tool === "fw_setenv" ? "fw_setenv -s FILE" : tool === "zb" && argv[0] === "env" ? "zb env set --script FILE" : null;
    throw new ZbError("USAGE", `cannot run ${tool}: argument ${i + 1} is not valid UTF-8, and its bytes would not be used as given`, script ? { hint: `put the variable in a script file and use ${script}, which keeps any bytes` } : {});
  });
}
