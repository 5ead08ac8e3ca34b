/** docs/boot-flow.md's transition table is the code's TABLE, row for row. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { TABLE } from "../../../lib/bootstate/machine.ts";

test("every row of TABLE is documented with its actor, event and texts, in order", () => {
  const doc = readFileSync(new URL("../../../docs/boot-flow.md", import.meta.url), "utf8");
  const esc = (s: string) => s.replaceAll("|", "\\|");
  const rows = TABLE.map((r) => `| ${r.id}${r.fallthrough ? "↓" : ""} | ${r.actor} | ${r.event} | ${esc(r.when)} | ${esc(r.then)} |`);
  const documented = doc.split("\n").filter((l) => /^\| [A-Z]\d+↓? \|/.test(l));
  expect(documented).toEqual(rows);
});
