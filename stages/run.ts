/**
 * The one place where errors become exit statuses. Only stages call
 * process.exit; lib/ throws ZbError.
 */
import { ZbError } from "../lib/errors.ts";
import { err } from "./output.ts";

/** Run a stage body; print `zb: <message>` for errors and exit with their status. */
export async function runStage(body: () => Promise<number> | number): Promise<never> {
  let status: number;
  try {
    status = await body();
  } catch (e) {
    status = report(e);
  }
  process.exit(status);
}

/** Print an error for the user and return its exit status. */
export function report(e: unknown): number {
  if (e instanceof ZbError) {
    err(`zb: ${e.message}\n`);
    if (e.hint) err(`zb: hint: ${e.hint}\n`);
    return e.exit;
  }
  const internal = new ZbError("INTERNAL", `internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  err(`zb: ${internal.message}\n`);
  return internal.exit;
}
