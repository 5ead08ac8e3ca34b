/**
 * Bun's process.env is a copy: a change does not reach the C environment of
 * this process, which libraries loaded through bun:ffi read with getenv()
 * (SoftHSM's SOFTHSM2_CONF, the Zymkey stub's settings). This sets both.
 */
import { dlopen, FFIType } from "bun:ffi";

const libc = dlopen("libc.so.6", {
  setenv: { args: [FFIType.ptr, FFIType.ptr, FFIType.i32], returns: FFIType.i32 },
  unsetenv: { args: [FFIType.ptr], returns: FFIType.i32 },
});
const cstr = (s: string) => Buffer.from(`${s}\0`);

/** Set (or with undefined, unset) a variable in both the C environment and process.env. */
export function setNativeEnv(name: string, value: string | undefined): void {
  const rc = value === undefined ? libc.symbols.unsetenv(cstr(name)) : libc.symbols.setenv(cstr(name), cstr(value), 1);
  if (rc !== 0) throw new Error(`cannot ${value === undefined ? "unset" : "set"} ${name} in the C environment`);
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}
