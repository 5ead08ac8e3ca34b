/**
 * Worker for the what-if pipelines in image-profile.ts (a prototype of
 * moving work off the main thread; zb itself does not do this).
 *
 *   {op: "init", slots: {in: SharedArrayBuffer, out: SharedArrayBuffer}[]}
 *   {op: "decode", id, slot, len, rawLen, sha}  → {id, ok}: SHA-256 of the
 *        stored bytes must equal `sha`, then one zstd frame into slot.out
 *   {op: "hash", id, slot, len, sha}            → {id, ok}: SHA-256 only
 */
import { frameDecoder } from "../lib/image/zstd.ts";

declare const self: Worker;

type Msg =
  | { op: "init"; slots: { in: SharedArrayBuffer; out: SharedArrayBuffer }[] }
  | { op: "decode"; id: number; slot: number; len: number; rawLen: number; sha: string }
  | { op: "hash"; id: number; slot: number; len: number; sha: string }
  | { op: "close" };

let slots: { in: Uint8Array; out: Uint8Array }[] = [];
const decoder = frameDecoder();

self.onmessage = (e: MessageEvent<Msg>) => {
  const m = e.data;
  if (m.op === "init") {
    slots = m.slots.map((s) => ({ in: new Uint8Array(s.in), out: new Uint8Array(s.out) }));
    self.postMessage({ id: -1, ok: true, native: decoder.native });
    return;
  }
  if (m.op === "close") {
    decoder.close();
    process.exit(0);
  }
  const s = slots[m.slot]!;
  const stored = s.in.subarray(0, m.len);
  const ok = new Bun.CryptoHasher("sha256").update(stored).digest("hex") === m.sha;
  if (!ok || m.op === "hash") {
    self.postMessage({ id: m.id, ok });
    return;
  }
  self.postMessage({ id: m.id, ok: decoder.decode(stored, s.out.subarray(0, m.rawLen)) });
};
