/** The mark-good unit: the contract docs/boot-flow.md describes. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";

const unit = readFileSync(new URL("../../stages/zb/systemd/zb-mark-good.service", import.meta.url), "utf8");

/** [Section] key=value, comments dropped; repeated keys collected. */
function parse(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const sec = /^\[(\w+)\]$/.exec(line);
    if (sec) section = sec[1]!;
    else {
      const eq = line.indexOf("=");
      const key = `${section}.${line.slice(0, eq)}`;
      out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
    }
  }
  return out;
}

test.each([
  ["Unit.Requires", "boot-complete.target"],
  ["Unit.After", "boot-complete.target multi-user.target"],
  ["Unit.ConditionKernelCommandLine", "zb.slot"],
  ["Service.Type", "oneshot"],
  ["Service.ExecStart", "/usr/bin/zb mark-good --health-dir /etc/zb/health.d"],
  ["Install.WantedBy", "multi-user.target"],
])("%s=%s", (key, value) => {
  expect(parse(unit).get(key)).toEqual([value]);
});
