/**
 * The one place where errors become exit statuses. Only stages call
 * process.exit; lib/ throws ZbError.
 */
import { ZbError } from "../lib/errors.ts";

/** Run a stage body; print `zb: <message>` for errors and exit with their status. */
export async function runStage(body: () => Promise<number> | number): Promise<never> {
  let status: number;
  try {
    status = await body();
  } catch (e) {
    status = report(e);
  }
  // Let stdout drain before exiting (large `zb env print` output into a pipe).
  await flush();
  process.exit(status);
}

/** Print an error for the user and return its exit status. */
export function report(e: unknown): number {
  if (e instanceof ZbError) {
    process.stderr.write(`zb: ${e.message}\n`);
    if (e.hint) process.stderr.write(`zb: hint: ${e.hint}\n`);
    return e.exit;
  }
  const internal = new ZbError("INTERNAL", `internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.stderr.write(`zb: ${internal.message}\n`);
  return internal.exit;
}

function flush(): Promise<void> {
  return new Promise((resolve) => {
    if (process.stdout.writableLength === 0) resolve();
    else process.stdout.once("drain", () => resolve());
  });
}
