/**
 * The TPM 2.0 commands zb sends, over a {@link Transport}: one method per
 * command, marshalled per TCG TPM 2.0 Library Part 3 (section per method).
 * A non-zero response code is thrown as a {@link TpmRcError}.
 */
import { ZbError, type ErrorCode } from "../../errors.ts";
import { randomSecret, wipe } from "../../secret.ts";
import { DIGEST_SIZE, kdfa, makeSalt, type SaltKey } from "./crypto.ts";
import { objectName } from "./objects.ts";
import { pcrSelection, pcrsOfBitmap } from "./policy.ts";
import { finish, prepare, Session, type Auth } from "./session.ts";
import type { Transport } from "./transport.ts";
import { ALG, CC, describeRc, frameCommand, marshal, parseResponse, Reader, RH_NULL } from "./wire.ts";

const CC_NAMES = new Map<number, string>(Object.entries(CC).map(([k, v]) => [v, `TPM2_${k}`]));

/** A TPM answered with a non-zero response code. */
export class TpmRcError extends ZbError {
  constructor(readonly rc: number, readonly command: string, code: ErrorCode = "HSM_FAILED") {
    super(code, `cannot run ${command}: the TPM returned ${describeRc(rc)}`);
  }
}

interface Call {
  cc: number;
  handles?: number[];
  /** Names of `handles`, needed when `auth` is a session. */
  names?: Uint8Array[];
  /** Authorization of the first handle. */
  auth?: Auth;
  params?: Uint8Array;
  /** Handles in a successful response. */
  outHandles?: number;
}

/** Result of {@link Tpm.call}. */
export interface CallResult {
  handles: number[];
  params: Uint8Array;
}

/** A client for one TPM connection. */
export class Tpm {
  constructor(readonly transport: Transport) {}

  /**
   * Send a command and check its response (and session HMAC).
   * @throws {TpmRcError} when the TPM returns a non-zero code; {ZbError} HSM_FAILED on malformed responses
   */
  async call(c: Call): Promise<CallResult> {
    const params = c.params ?? new Uint8Array(0);
    const prepared = c.auth ? await prepare(c.auth, c.cc, c.names ?? [], params) : undefined;
    const cmd = frameCommand(c.cc, c.handles ?? [], prepared ? [prepared.auth] : [], prepared?.params ?? params);
    let bytes: Uint8Array;
    try {
      bytes = await this.transport.send(cmd);
    } finally {
      wipe(cmd);
      if (prepared && prepared.params !== params) wipe(prepared.params);
    }
    let r: ReturnType<typeof parseResponse>;
    let out: Uint8Array;
    try {
      r = parseResponse(bytes, c.outHandles ?? 0, prepared ? 1 : 0);
      if (r.rc !== 0) throw new TpmRcError(r.rc, CC_NAMES.get(c.cc) ?? `command 0x${c.cc.toString(16)}`);
      out = c.auth && prepared ? await finish(c.auth, prepared, c.cc, r.params, r.auths[0]) : r.params;
    } catch (e) {
      if (c.outHandles && !(e instanceof TpmRcError)) await this.flush(createdHandle(bytes));
      throw e;
    }
    if (out !== r.params) wipe(bytes);
    return { handles: r.handles, params: out };
  }

  /**
   * Parse the parameters of a response that created `handle`; when that
   * fails, flush the handle (best effort) before rethrowing. The TPM made
   * the object or session, and without a resource manager (swtpm, /dev/tpm0)
   * it would stay until the TPM runs out of slots (TPM_RC_OBJECT_MEMORY).
   */
  private async parseCreated<T>(handle: number | undefined, parse: () => T): Promise<T> {
    try {
      return parse();
    } catch (e) {
      await this.flush(handle);
      throw e;
    }
  }

  /** TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES) (Part 3 §30.2, Part 2 §10.8.3). */
  async properties(first: number, count: number): Promise<Map<number, number>> {
    const { params } = await this.call({ cc: CC.GetCapability, params: marshal((w) => w.u32(6).u32(first).u32(count)) });
    const r = new Reader(params);
    r.u8("moreData");
    if (r.u32("capability") !== 6) throw new ZbError("HSM_FAILED", "cannot read TPM properties: wrong capability in the response");
    const out = new Map<number, number>();
    for (let n = r.u32("count"); n > 0; n--) out.set(r.u32("property"), r.u32("value"));
    return out;
  }

  /** TPM2_ReadPublic (Part 3 §12.4): the TPMT_PUBLIC and the name. */
  async readPublic(handle: number): Promise<{ area: Uint8Array; name: Uint8Array }> {
    const { params } = await this.call({ cc: CC.ReadPublic, handles: [handle] });
    const r = new Reader(params);
    const area = r.tpm2b("outPublic").slice();
    const name = r.tpm2b("name").slice();
    r.tpm2b("qualifiedName");
    r.end("ReadPublic");
    return { area, name };
  }

  /**
   * TPM2_StartAuthSession (Part 3 §11.1), unbound, AES-128-CFB, SHA-256;
   * salted to `salt` when given (sessionKey = KDFa(salt, "ATH", nonceTPM, nonceCaller), Part 1 §19.6.11).
   */
  async startSession(type: number, salt?: { handle: number; key: SaltKey }): Promise<Session> {
    const nonceCaller = randomSecret(DIGEST_SIZE);
    const s = salt ? await makeSalt(salt.key) : undefined;
    try {
      const params = marshal((w) => {
        w.tpm2b(nonceCaller).tpm2b(s?.encrypted ?? new Uint8Array(0)).u8(type);
        w.u16(ALG.AES).u16(128).u16(ALG.CFB).u16(ALG.SHA256);
      });
      const { handles, params: out } = await this.call({
        cc: CC.StartAuthSession, handles: [salt?.handle ?? RH_NULL, RH_NULL], params, outHandles: 1,
      });
      const nonceTPM = await this.parseCreated(handles[0], () => {
        const r = new Reader(out);
        const nonce = r.tpm2b("nonceTPM").slice();
        r.end("StartAuthSession");
        return nonce;
      });
      const key = s ? kdfa(s.salt, "ATH", nonceTPM, nonceCaller, 256) : new Uint8Array(0);
      return new Session(handles[0]!, key, nonceTPM);
    } finally {
      wipe(s?.salt);
    }
  }

  /** TPM2_PolicyPCR with the current PCR values (empty pcrDigest, Part 3 §23.7). */
  async policyPcr(session: Session, pcrs: readonly number[]): Promise<void> {
    const params = marshal((w) => w.u16(0).bytes(pcrSelection(pcrs)));
    await this.call({ cc: CC.PolicyPCR, handles: [session.handle], params });
  }

  /** TPM2_PolicyCommandCode (Part 3 §23.11). */
  async policyCommandCode(session: Session, code: number): Promise<void> {
    await this.call({ cc: CC.PolicyCommandCode, handles: [session.handle], params: marshal((w) => w.u32(code)) });
  }

  /**
   * TPM2_PCR_Extend of the sha256 bank (Part 3 §22.2) with empty-password
   * authorization (PCRs 0–15 have no authValue by default, Part 1 §17.6).
   */
  async pcrExtend(pcr: number, digest: Uint8Array): Promise<void> {
    const params = marshal((w) => w.u32(1).u16(ALG.SHA256).bytes(digest));
    await this.call({ cc: CC.PCR_Extend, handles: [pcr], auth: { kind: "password" }, params });
  }

  /**
   * TPM2_PCR_Read of the sha256 bank (Part 3 §22.4), repeated until every
   * selected PCR came back (a response carries at most 8 digests).
   * @returns values in the order of the sorted `pcrs`
   * @throws {ZbError} HSM_FAILED when the bank does not report a PCR
   */
  async pcrRead(pcrs: readonly number[]): Promise<Uint8Array[]> {
    const values = new Map<number, Uint8Array>();
    for (let round = 0; values.size < pcrs.length && round < pcrs.length + 1; round++) {
      const want = pcrs.filter((p) => !values.has(p));
      const { params } = await this.call({ cc: CC.PCR_Read, params: pcrSelection(want) });
      const r = new Reader(params);
      r.u32("pcrUpdateCounter");
      const got: number[] = [];
      for (let n = r.u32("selection count"); n > 0; n--) {
        const alg = r.u16("hash");
        const map = r.bytes(r.u8("sizeofSelect"), "pcrSelect");
        if (alg === ALG.SHA256) got.push(...pcrsOfBitmap(map));
      }
      const count = r.u32("digest count");
      if (count !== got.length) throw new ZbError("HSM_FAILED", "cannot read PCRs: selection and digest counts differ");
      for (const p of got) values.set(p, r.tpm2b("digest").slice());
      if (got.length === 0) break;
    }
    const missing = pcrs.filter((p) => !values.has(p));
    if (missing.length) throw new ZbError("HSM_FAILED", `cannot read PCRs: the sha256 bank did not report PCR ${missing.join(",")}`);
    return pcrs.map((p) => values.get(p)!);
  }

  /** TPM2_CreatePrimary (Part 3 §24.1) with empty auth and data; returns the transient handle and the public area. */
  async createPrimary(hierarchy: number, template: Uint8Array): Promise<{ handle: number; area: Uint8Array; name: Uint8Array }> {
    const params = marshal((w) => w.u16(4).u16(0).u16(0).tpm2b(template).u16(0).u32(0));
    const { handles, params: out } = await this.call({
      cc: CC.CreatePrimary, handles: [hierarchy], auth: { kind: "password" }, params, outHandles: 1,
    });
    return await this.parseCreated(handles[0], () => {
      const r = new Reader(out);
      const area = r.tpm2b("outPublic").slice();
      r.tpm2b("creationData");
      r.tpm2b("creationHash");
      r.u16("ticket tag");
      r.u32("ticket hierarchy");
      r.tpm2b("ticket digest");
      const name = r.tpm2b("name").slice();
      r.end("CreatePrimary");
      return { handle: handles[0]!, area, name };
    });
  }

  /** TPM2_EvictControl (Part 3 §28.5) under owner authorization (empty password). */
  async evictControl(auth: number, object: number, persistent: number): Promise<void> {
    await this.call({
      cc: CC.EvictControl, handles: [auth, object], auth: { kind: "password" }, params: marshal((w) => w.u32(persistent)),
    });
  }

  /**
   * TPM2_Create (Part 3 §12.1) of a sealed data object under `parent`,
   * authorized by `auth` (zb passes a salted session with `decrypt`, so the
   * sensitive data, the first parameter, is encrypted on the wire).
   * @returns TPM2B_PRIVATE and TPM2B_PUBLIC, verbatim
   */
  async create(parent: { handle: number; name: Uint8Array }, auth: Auth, data: Uint8Array, template: Uint8Array): Promise<{ priv: Uint8Array; pub: Uint8Array }> {
    // TPM2B_SENSITIVE_CREATE{userAuth: empty, data}, TPM2B_PUBLIC, outsideInfo empty, creationPCR none.
    const params = marshal((w) => w.u16(4 + data.length).u16(0).tpm2b(data).tpm2b(template).u16(0).u32(0));
    try {
      const { params: out } = await this.call({ cc: CC.Create, handles: [parent.handle], names: [parent.name], auth, params });
      const r = new Reader(out);
      return { priv: r.tpm2bRaw("outPrivate").slice(), pub: r.tpm2bRaw("outPublic").slice() };
    } finally {
      wipe(params);
    }
  }

  /**
   * TPM2_Load (Part 3 §12.2) under `parent` with password authorization.
   * @returns the transient handle and the name the TPM computed
   */
  async load(parent: number, priv: Uint8Array, pub: Uint8Array): Promise<{ handle: number; name: Uint8Array }> {
    const params = new Uint8Array(priv.length + pub.length);
    params.set(priv);
    params.set(pub, priv.length);
    const { handles, params: out } = await this.call({ cc: CC.Load, handles: [parent], auth: { kind: "password" }, params, outHandles: 1 });
    return await this.parseCreated(handles[0], () => {
      const r = new Reader(out);
      const name = r.tpm2b("name").slice();
      r.end("Load");
      return { handle: handles[0]!, name };
    });
  }

  /**
   * TPM2_Unseal (Part 3 §12.7) in a policy session with response encryption.
   * @returns the secret; the caller wipes it
   */
  async unseal(item: { handle: number; name: Uint8Array }, auth: Auth): Promise<Uint8Array> {
    const { params } = await this.call({ cc: CC.Unseal, handles: [item.handle], names: [item.name], auth });
    try {
      const r = new Reader(params);
      const out = r.tpm2b("outData").slice();
      r.end("Unseal");
      return out;
    } finally {
      wipe(params);
    }
  }

  /** TPM2_FlushContext (Part 3 §28.4); errors are ignored (the handle may be gone already). */
  async flush(handle: number | undefined): Promise<void> {
    if (handle === undefined) return;
    await this.call({ cc: CC.FlushContext, params: marshal((w) => w.u32(handle)) }).catch(() => undefined);
  }
}

/**
 * The handle a success response carries right after its header (Part 1
 * §18.8), when it can be read and is one a FlushContext may name: a
 * transient object (0x80…) or a session (0x02…, 0x03…, Part 2 §7.2).
 * Anything else is left alone: a garbled frame must not flush a persistent
 * key or a handle zb did not get.
 */
function createdHandle(bytes: Uint8Array): number | undefined {
  if (bytes.length < 14) return undefined;
  const d = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (d.getUint32(6) !== 0) return undefined; // not a success: nothing was created
  const handle = d.getUint32(10);
  const type = handle >>> 24;
  return type === 0x80 || type === 0x02 || type === 0x03 ? handle : undefined;
}

/** The expected name of a loaded sealed object (from its TPM2B_PUBLIC). */
export function nameOfPublic2b(pub: Uint8Array): Uint8Array {
  return objectName(new Reader(pub).tpm2b("TPM2B_PUBLIC"));
}
