/**
 * The Zymkey stub library (test/lib/hsm/zymkey-stub/zk_stub.cpp: the C
 * signatures of libzk_app_utils.so), built with g++ for the tests that load it.
 */
import { join } from "node:path";

export const ZYMKEY_STUB_SRC = join(import.meta.dir, "../lib/hsm/zymkey-stub/zk_stub.cpp");

/**
 * Build the stub as the shared library `out`.
 * @throws {Error} with the compiler's output when g++ fails (or is missing: .ci/setup installs it)
 */
export function buildZymkeyStub(out: string): string {
  const cc = Bun.spawnSync(["g++", "-shared", "-fPIC", "-O2", "-Wall", "-o", out, ZYMKEY_STUB_SRC], { stderr: "pipe" });
  if (cc.exitCode !== 0) throw new Error(`cannot build the Zymkey stub: ${cc.stderr.toString()}`);
  return out;
}
