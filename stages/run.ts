/**
 * The one place where errors become exit statuses. Only stages call
 * process.exit; lib/ throws ZbError.
 */
import { ZbError } from "../lib/errors.ts";
import { err, out } from "./output.ts";

/**
 * Run a stage body; print `zb: <message>` for errors and exit with their
 * status. A command run with `--json` or `--progress=json` also ends stdout
 * with the failure as one JSON line, so a program that reads stdout learns
 * what went wrong without parsing stderr:
 * `{"type":"result","ok":false,"code":…,"exit":…,"message":…,"hint":…}`.
 */
export async function runStage(body: () => Promise<number> | number, argv: readonly string[] = process.argv.slice(2)): Promise<never> {
  let status: number;
  try {
    status = await body();
  } catch (e) {
    status = report(e, wantsJson(argv));
  }
  process.exit(status);
}

/**
 * `--json`, `--progress=json` or `--progress json` among the arguments (before a `--`).
 * `--json=VALUE` counts too: the option takes no value, so its parse fails
 * (USAGE), and the caller asked for JSON all the same.
 */
export function wantsJson(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  const args = end < 0 ? argv : argv.slice(0, end);
  return args.some((a, i) => a === "--json" || a.startsWith("--json=") || a === "--progress=json" || (a === "--progress" && args[i + 1] === "json"));
}

/** A failure's fields in the failure line (and zbunlock's document): `hint` only when there is one. */
export interface FailureJson {
  code: string;
  exit: number;
  message: string;
  hint?: string;
}

export function failureJson(z: ZbError): FailureJson {
  return { code: z.code, exit: z.exit, message: z.message, ...(z.hint ? { hint: z.hint } : {}) };
}

/**
 * The failure line of docs/json.md, newline included:
 * `{"type":"result","ok":false,"code":…,"exit":…,"message":…,"hint":…}` (`hint` only when there is one).
 */
export function failureLine(z: ZbError): string {
  return JSON.stringify({ type: "result", ok: false, ...failureJson(z) }) + "\n";
}

/** Print an error for the user (and, with `json`, as a JSON line on stdout) and return its exit status. */
export function report(e: unknown, json = false): number {
  const z = e instanceof ZbError ? e : new ZbError("INTERNAL", `internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  err(`zb: ${z.message}\n`);
  if (z.hint) err(`zb: hint: ${z.hint}\n`);
  if (json) {
    try {
      out(failureLine(z));
    } catch {
      // stdout is gone (a full disk, a closed pipe): stderr and the status still say it.
    }
  }
  return z.exit;
}
