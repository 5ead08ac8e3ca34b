/**
 * The progress bar's line (stages/progress.ts barLine): sizes in the unit
 * that fits the total, a rate in kB/s, MB/s or GB/s once there is one to
 * measure, in a field of fixed width (the line is redrawn over itself).
 */
import { expect, test } from "bun:test";
import { bar, barLine } from "../../stages/progress.ts";

// Before: every size in GiB with two decimals ("0.00/0.00 GiB") and the rate in whole MB/s ("0 MB/s").
test.each([
  { name: "a 100 kB payload, done in 50 ms: KiB, no rate yet", done: 100_000, total: 100_000, secs: 0.05, tail: "100% 97.7/97.7 KiB           " },
  { name: "the same after 0.5 s: kB/s", done: 100_000, total: 100_000, secs: 0.5, tail: "100% 97.7/97.7 KiB  200 kB/s " },
  { name: "50 MiB: MiB", done: 3 << 20, total: 50 << 20, secs: 1, tail: "  6% 3.0/50.0 MiB    3 MB/s " },
  { name: "1 GiB: GiB", done: 1 << 29, total: 1 << 30, secs: 2, tail: " 50% 0.50/1.00 GiB  268 MB/s " },
  { name: "6 GB at 2.5 GB/s", done: 5e9, total: 6e9, secs: 2, tail: " 83% 4.66/5.59 GiB  2.5 GB/s " },
  { name: "under 1 KiB: bytes", done: 500, total: 1000, secs: 1, tail: " 50% 500/1000 B    1 kB/s " },
  { name: "999 600 B/s rounds up to 1 MB/s, not 1000 kB/s", done: 999_600, total: 1 << 30, secs: 1, tail: "  0% 0.00/1.00 GiB    1 MB/s " },
  { name: "an empty payload", done: 0, total: 0, secs: 0, tail: "100% 0/0 B           " },
])("$name", ({ done, total, secs, tail }) => {
  const line = barLine("install rootfs", done, total, secs);
  expect({ head: line.slice(0, 17), tail: line.slice(line.indexOf("]") + 2) }).toEqual({ head: "\rinstall rootfs [", tail });
});

// Before: the throttle started from 0 ms of process time, so updates in the process's first
// 100 ms drew nothing, and a stream that stalled by then (8 MiB piped, then idle) showed no bar.
test.each([
  { name: "the first update, 5 ms into the process, draws", at: [5], draws: 1 },
  { name: "a second one 50 ms later does not (10 a second at most)", at: [5, 55], draws: 1 },
  { name: "one 100 ms after the last draw does", at: [5, 55, 105], draws: 2 },
])("bar: $name", ({ at, draws }) => {
  const lines: string[] = [];
  let t = 0;
  const b = bar("install rootfs", { write: (text) => void lines.push(text), now: () => t });
  for (const ms of at) {
    t = ms;
    b.update(1, 10);
  }
  expect(lines.length).toBe(draws);
});
