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

/** A bar `label [#####.....] 42% 1.20/2.90 GiB  480 MB/s`, redrawn at most 10 times a second. */
export function bar(label: string, io: { write?: (text: string) => void; now?: () => number } = {}): { update(done: number, total: number): void; finish(): void } {
  const write = io.write ?? err;
  const clock = io.now ?? (() => performance.now());
  const started = clock();
  // The first update always draws: with 0 here, every update before the process's 100th ms
  // was skipped, and a stream that stalled by then never showed a bar at all.
  let last = -Infinity;
  let drawn = false;
  const draw = (done: number, total: number) => {
    write(barLine(label, done, total, (clock() - started) / 1000));
    drawn = true;
  };
  let lastArgs: [number, number] = [0, 0];
  return {
    update(done, total) {
      lastArgs = [done, total];
      const now = clock();
      if (now - last < 100 && done < total) return;
      last = now;
      draw(done, total);
    },
    finish() {
      if (drawn) {
        draw(...lastArgs);
        write("\n");
      }
    },
  };
}

export function jsonEvent(event: object): void {
  out(JSON.stringify(event) + "\n");
}

const BAR_WIDTH = 30;
/** The rate's room: the line is redrawn over itself, so a shorter one would leave the old one's end. */
const RATE_WIDTH = "1000 MB/s".length;

/**
 * One drawing of the bar: `\r`, the label, the bar, the percentage, done and
 * total in the unit that fits the total (B, KiB, MiB, GiB: a 100 KiB image
 * reads `97.7/97.7 KiB`, not `0.00/0.00 GiB`) and the rate in kB/s, MB/s or
 * GB/s — none before 0.2 s, where it would be noise (the first draw comes
 * right after the start).
 * @example barLine("install rootfs", 1 << 29, 1 << 30, 2) // "\rinstall rootfs [###…...]  50% 0.50/1.00 GiB  268 MB/s "
 */
export function barLine(label: string, done: number, total: number, secs: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1;
  const fill = Math.round(frac * BAR_WIDTH);
  const rate = secs >= 0.2 ? perSecond(done / secs) : "";
  return `\r${label} [${"#".repeat(fill)}${".".repeat(BAR_WIDTH - fill)}] ${Math.floor(frac * 100).toString().padStart(3)}% ${sizes(done, total)} ${rate.padStart(RATE_WIDTH)} `;
}

/** "done/total UNIT", the unit chosen by the total so that it reads above 1 (two decimals for GiB, one below). */
function sizes(done: number, total: number): string {
  const units = [["B", 0, 0], ["KiB", 10, 1], ["MiB", 20, 1], ["GiB", 30, 2]] as const;
  const [unit, shift, digits] = [...units].reverse().find(([, sh]) => total >= 2 ** sh) ?? units[0];
  const f = (n: number) => (n / 2 ** shift).toFixed(digits);
  return `${f(done)}/${f(total)} ${unit}`;
}

/** Bytes a second in decimal units, as drives and links are rated. */
function perSecond(bps: number): string {
  // Compared where the rounding would carry over: 999 600 B/s is "1 MB/s", not "1000 kB/s".
  if (bps >= 999.5e6) return `${(bps / 1e9).toFixed(1)} GB/s`;
  if (bps >= 999.5e3) return `${Math.round(bps / 1e6)} MB/s`;
  return `${Math.round(bps / 1e3)} kB/s`;
}
