/**
 * Build the configured HSM backend. The only place that knows every
 * backend's class; stages and zbunlock go through it. Each backend's module
 * is loaded with require() when it is opened: a boot with a TPM does not
 * evaluate the PKCS#11 and Zymkey bindings (under QEMU TCG, without the
 * JIT, zbunlock's module evaluation went from 0.11–0.14 s to 0.05–0.09 s).
 */
import { ZbError } from "../errors.ts";
import type { HsmConfig } from "./config.ts";
import type { BackendName, Hsm } from "./types.ts";

/** Default key file of the soft backend (development only). */
export const DEFAULT_SOFT_KEY_FILE = "/var/lib/zb/soft-hsm.key";

/** What a backend may need from the caller's terminal or files. */
export interface HsmIo {
  /** A PIN (PKCS#11 login), freshly read; the backend wipes it. */
  pin: () => Promise<Uint8Array>;
  /** How many PINs may be asked for after wrong ones (a person at a prompt: 3; a PIN file: 1). */
  pinAttempts?: number;
  warn: (line: string) => void;
}

/** Each backend's module, evaluated on first use (see above). */
const modules = {
  tpm2: () => require("./tpm2/index.ts") as typeof import("./tpm2/index.ts"),
  pkcs11: () => require("./pkcs11/index.ts") as typeof import("./pkcs11/index.ts"),
  zymkey: () => require("./zymkey.ts") as typeof import("./zymkey.ts"),
  soft: () => require("./soft.ts") as typeof import("./soft.ts"),
} satisfies Record<BackendName, () => unknown>;

/**
 * Evaluate backend `name`'s code now, and run its `warmUp()` if it has one
 * (tpm2: its session cryptography on throwaway data), without opening
 * anything: a zbunlock started early (--go-file) does this while it waits,
 * so the wait, not the boot, pays for the first use.
 */
export async function loadBackend(name: BackendName): Promise<void> {
  const m = modules[name]();
  if ("warmUp" in m) await m.warmUp();
}

/**
 * The backend `name`, configured from `cfg`.
 * @throws {ZbError} CONFIG when a required setting is missing (pkcs11.module)
 */
export function openHsm(name: BackendName, cfg: HsmConfig, io: HsmIo): Hsm {
  switch (name) {
    case "tpm2":
      return new (modules.tpm2().Tpm2Hsm)({ device: cfg.tpm2.device, warn: io.warn });
    case "pkcs11": {
      const p = cfg.pkcs11;
      if (!p.module) throw new ZbError("CONFIG", "cannot use the pkcs11 backend: no module configured", { hint: "set pkcs11.module in /etc/zb/hsm.conf or pass --pkcs11-module" });
      return new (modules.pkcs11().Pkcs11Hsm)({
        module: p.module,
        pin: io.pin,
        ...(io.pinAttempts !== undefined ? { pinAttempts: io.pinAttempts } : {}),
        oaep: p.oaep,
        warn: io.warn,
        ...(p.token ? { token: p.token } : {}),
        ...(p.tokenSerial ? { tokenSerial: p.tokenSerial } : {}),
        ...(p.keyLabel ? { keyLabel: p.keyLabel } : {}),
        ...(p.keyId ? { keyId: p.keyId } : {}),
      });
    }
    case "zymkey":
      return new (modules.zymkey().ZymkeyHsm)({ warn: io.warn, ...(cfg.zymkey.library ? { library: cfg.zymkey.library } : {}) });
    case "soft":
      return new (modules.soft().SoftHsm)({ enabled: cfg.soft.enabled, keyFile: cfg.soft.keyFile ?? DEFAULT_SOFT_KEY_FILE, warn: io.warn });
  }
}
