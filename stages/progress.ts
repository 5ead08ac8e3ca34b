/**
 * Progress for long work: a bar on stderr when it is a terminal,
 * newline-delimited JSON events on stdout with --progress=json, or nothing.
 */
import { ZbError } from "../lib/errors.ts";
import { isatty } from "node:tty";
import { err, out } from "./output.ts";

export type ProgressMode = "bar" | "json" | "none";

/** --progress=bar|json|none; default: a bar when stderr is a terminal. */
export function progressMode(value: string | undefined): ProgressMode {
  if (value === "bar" || value === "json" || value === "none") return value;
  if (value !== undefined) throw new ZbError("USAGE", `cannot use --progress=${value}: it is bar, json or none`);
  return isatty(2) ? "bar" : "none";
}

/** A bar `label [#####.....] 42% 1.2/2.9 GiB 480 MB/s`, redrawn at most 10 times a second. */
export function bar(label: string): { update(done: number, total: number): void; finish(): void } {
  const started = performance.now();
  let last = 0;
  let drawn = false;
  const draw = (done: number, total: number) => {
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    const width = 30;
    const fill = Math.round(frac * width);
    const secs = (performance.now() - started) / 1000;
    // The first draw comes right after the start: a rate over a few ms would be noise.
    const rate = secs >= 0.2 ? done / secs / 1e6 : 0;
    err(`\r${label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${Math.floor(frac * 100).toString().padStart(3)}% ${gib(done)}/${gib(total)} GiB ${rate.toFixed(0)} MB/s `);
    drawn = true;
  };
  let lastArgs: [number, number] = [0, 0];
  return {
    update(done, total) {
      lastArgs = [done, total];
      const now = performance.now();
      if (now - last < 100 && done < total) return;
      last = now;
      draw(done, total);
    },
    finish() {
      if (drawn) {
        draw(...lastArgs);
        err("\n");
      }
    },
  };
}

export function jsonEvent(event: object): void {
  out(JSON.stringify(event) + "\n");
}

function gib(n: number): string {
  return (n / 2 ** 30).toFixed(2);
}
