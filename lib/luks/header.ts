/**
 * Recognise a LUKS header from the first bytes of a device and read its
 * UUID, without running cryptsetup. zbunlock scans the block devices for the
 * UUID recorded in meta.json (docs/credentials.md); reading 4 KiB of each is
 * cheaper than one cryptsetup process per device. Pure: bytes in, facts out.
 *
 * Offsets from the on-disk specifications shipped with cryptsetup:
 * "LUKS2 On-Disk Format Specification" §2.1 (binary header, 4096 bytes,
 * followed by the JSON area; hdr_size covers both) and "LUKS1 On-Disk
 * Format Specification" §2.4 (phdr). Both versions keep the magic at 0, the
 * version (big-endian u16) at 6 and the 40-byte NUL-padded UUID at 168.
 */

/** How many bytes to read from a device to recognise it. */
export const LUKS_PROBE_BYTES = 4096;

/** "LUKS\xba\xbe": primary header (both versions). */
const MAGIC_PRIMARY = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
/** "SKUL\xba\xbe": LUKS2 secondary header, found at offset hdr_size. */
const MAGIC_SECONDARY = [0x53, 0x4b, 0x55, 0x4c, 0xba, 0xbe];

// LUKS2 binary header fields (spec §2.1, struct luks2_hdr_disk).
const OFF_VERSION = 6;
const OFF_HDR_SIZE = 8;
const OFF_SEQID = 16;
const OFF_LABEL = 24;
const OFF_CSUM_ALG = 72;
const OFF_UUID = 168;
const OFF_SUBSYSTEM = 208;
const OFF_HDR_OFFSET = 256;
const OFF_CSUM = 448;
const CSUM_LEN = 64;
/** Valid hdr_size values: 16 KiB … 4 MiB, powers of two (spec §2.1). */
const HDR_SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096].map((k) => k * 1024);
/**
 * Where a LUKS2 secondary header can be: at the primary's hdr_size (spec
 * §2.1), so one of the valid sizes. When the primary is unreadable its size
 * is unknown and each is tried, as cryptsetup does (hdr2_offsets in
 * lib/luks2/luks2_disk_metadata.c).
 */
export const LUKS2_SECONDARY_OFFSETS: readonly number[] = HDR_SIZES;

export interface LuksHeader {
  version: 1 | 2;
  /** As stored: lower-case 8-4-4-4-12 from cryptsetup. */
  uuid: string;
  /** LUKS2 only: which copy this is. */
  secondary?: boolean;
  /** LUKS2 only. */
  label?: string;
  subsystem?: string;
  /** LUKS2 only: size of binary header + JSON area; the checksum covers it. */
  hdrSize?: number;
  /** LUKS2 only: bumped on every metadata update; the copy with the higher one wins. */
  seqid?: number;
  checksumAlg?: string;
  /** LUKS2 only: offset of this header copy on the device. */
  hdrOffset?: number;
}

const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/**
 * Parse a LUKS1 or LUKS2 header (primary, or a LUKS2 secondary copy).
 * @param bytes at least the first 512 bytes of the header
 * @returns the header facts, or null when the bytes are not a LUKS header
 *   (wrong magic, unknown version, malformed UUID or sizes) — an expected
 *   answer while scanning devices, not an error
 * @example parseLuksHeader(sys.readAt("/dev/mmcblk0p2", 0, LUKS_PROBE_BYTES))?.uuid
 */
export function parseLuksHeader(bytes: Uint8Array): LuksHeader | null {
  if (bytes.length < 512) return null;
  const primary = hasMagic(bytes, MAGIC_PRIMARY);
  if (!primary && !hasMagic(bytes, MAGIC_SECONDARY)) return null;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint16(OFF_VERSION, false);
  const uuid = cString(bytes, OFF_UUID, 40);
  if (uuid === null || !UUID_RE.test(uuid)) return null;
  if (version === 1 && primary) return { version: 1, uuid };
  if (version !== 2) return null;
  const hdrSize = safeU64(dv, OFF_HDR_SIZE);
  const seqid = safeU64(dv, OFF_SEQID);
  const hdrOffset = safeU64(dv, OFF_HDR_OFFSET);
  const label = cString(bytes, OFF_LABEL, 48);
  const subsystem = cString(bytes, OFF_SUBSYSTEM, 48);
  const checksumAlg = cString(bytes, OFF_CSUM_ALG, 32);
  if (hdrSize === null || !HDR_SIZES.includes(hdrSize) || seqid === null || hdrOffset === null) return null;
  // hdr_offset is where this copy sits: 0 for the primary, hdr_size for the
  // secondary; cryptsetup refuses a copy whose field disagrees (hdr_read_disk).
  if (hdrOffset !== (primary ? 0 : hdrSize)) return null;
  if (label === null || subsystem === null || checksumAlg === null) return null;
  return { version: 2, uuid, secondary: !primary, label, subsystem, hdrSize, seqid, checksumAlg, hdrOffset };
}

/**
 * Check a LUKS2 header copy's checksum: SHA-256 over the hdr_size bytes of
 * binary header + JSON area, with the csum field taken as zeros (spec §2.1).
 * @param bytes the header copy from its first byte, at least hdr_size long
 * @returns false when it is not LUKS2, not sha256, too short, or the sum differs
 * @example verifyLuks2Checksum(sys.readAt(dev, 0, 16384))
 */
export function verifyLuks2Checksum(bytes: Uint8Array): boolean {
  const h = parseLuksHeader(bytes);
  if (!h || h.version !== 2 || h.checksumAlg !== "sha256" || bytes.length < h.hdrSize!) return false;
  const area = new Uint8Array(bytes.subarray(0, h.hdrSize!));
  const stored = area.slice(OFF_CSUM, OFF_CSUM + CSUM_LEN);
  area.fill(0, OFF_CSUM, OFF_CSUM + CSUM_LEN);
  const digest = new Bun.CryptoHasher("sha256").update(area).digest();
  // The 64-byte field holds the 32-byte digest followed by zeros.
  return digest.every((b, i) => b === stored[i]) && stored.subarray(digest.length).every((b) => b === 0);
}

function hasMagic(bytes: Uint8Array, magic: number[]): boolean {
  return magic.every((b, i) => bytes[i] === b);
}

/** A NUL-terminated ASCII field; null when it holds non-printable bytes or no NUL. */
function cString(bytes: Uint8Array, off: number, len: number): string | null {
  const field = bytes.subarray(off, off + len);
  const end = field.indexOf(0);
  if (end < 0) return null;
  const s = field.subarray(0, end);
  if (!s.every((b) => b >= 0x20 && b < 0x7f)) return null;
  return new TextDecoder("latin1").decode(s);
}

function safeU64(dv: DataView, off: number): number | null {
  const v = dv.getBigUint64(off, false);
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : null;
}

/**
 * A valid LUKS2 secondary header (the copy cryptsetup falls back to when the
 * primary is damaged): tried at each of {@link LUKS2_SECONDARY_OFFSETS}; the
 * first whose magic, version, hdr_offset (= the offset it was read at) and
 * checksum are right. Pure apart from `read`.
 * @param read `length` bytes at `offset` of the device, or fewer at its end; may throw to skip
 * @returns the header (marked `secondary`), or null when there is none
 * @example secondaryLuksHeader((off, n) => sys.readAt(dev, off, n))?.uuid
 */
export function secondaryLuksHeader(read: (offset: number, length: number) => Uint8Array): LuksHeader | null {
  for (const off of LUKS2_SECONDARY_OFFSETS) {
    let h: LuksHeader | null;
    try {
      h = parseLuksHeader(read(off, LUKS_PROBE_BYTES));
      // A secondary sits at its hdr_size; its checksum covers hdr_size bytes from there.
      if (!h?.secondary || h.hdrOffset !== off || !verifyLuks2Checksum(read(off, off))) continue;
    } catch {
      continue; // shorter than the offset, or unreadable there
    }
    return h;
  }
  return null;
}
