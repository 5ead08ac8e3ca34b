#!/usr/bin/env bash
# Build the skeleton guest's initramfs from the parts fetch.sh cached:
#   /bin/busybox            applets are linked at boot (`busybox --install -s`)
#                           because the arm64 busybox cannot run on the host
#   /lib/…                  the glibc pieces dist/zb-arm64 links against
#   /lib/modules/KVER/…     virtio-mmio/pci, virtio-blk, vfat + the NLS tables
#                           FAT mounts need, where Debian builds them as modules
#   /usr/bin/zb             dist/zb-arm64, plus the argv[0] role symlinks
#   /init                   INIT (default qemu/guest/init-skeleton.sh)
#   /lib/zb-guest.sh        qemu/guest/lib.sh, the helpers every guest init sources
#   /scripts/zb-functions   initramfs-hooks/scripts/zb-functions, the boot-script
#                           helpers (zb_prestart, zb_unlock) a real initramfs has
#   /etc/fw_env.config      qemu/guest/fw_env.config
# Output: OUTDIR/initramfs.cpio.{zst,gz} and OUTDIR/guest.env, which names the
# kernel and initramfs for the caller (OUTDIR defaults to qemu/.work; the
# staging root is OUTDIR/initramfs-root). Paths are relative to the repository.
#
# Optional extras (all unset by default; space-separated lists):
#   ZB_QEMU_EXTRA_MODULES  more in-tree modules as NAME:CONFIG_SYMBOL, handled
#                          like the built-in list (=y skipped, =m added with
#                          its modules.dep dependencies)
#   ZB_QEMU_EXTRA_KO       out-of-tree .ko files (host paths), installed under
#                          /lib/modules/KVER/extra/ and loaded after the rest
#   ZB_QEMU_EXTRA_BINS     arm64 executables as SRC:DEST (DEST an absolute
#                          guest path); their NEEDED libraries are looked up in
#                          libc6:arm64 and then in ZB_QEMU_EXTRA_LIBDIRS
#   ZB_QEMU_EXTRA_LIBDIRS  host directories holding arm64 shared libraries
#   ZB_QEMU_EXTRA_TREE     a host directory copied over the root as is
#
# Usage: bash qemu/initramfs.sh [INIT [OUTDIR]]   (env: ZB_QEMU_INITRD_COMP=gzip|zstd)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE=qemu/.cache
INIT=${1:-qemu/guest/init-skeleton.sh}
WORK=${2:-qemu/.work}
ROOT=$WORK/initramfs-root
BIN=dist/zb-arm64

die() { echo "$*" >&2; exit 1; }

[[ -f "$INIT" ]] || die "cannot build initramfs: the init script $INIT does not exist"
[[ -f "$BIN" ]] || die "cannot build initramfs: $BIN is missing (run: node_modules/.bin/bun build.ts --target arm64)"
for tool in readelf cpio gzip find sort; do
  command -v "$tool" >/dev/null || die "cannot build initramfs: '$tool' not found (install: apt-get install binutils cpio gzip)"
done
bash qemu/fetch.sh
# shellcheck source=/dev/null
. "$CACHE/parts.env"
KTREE=$CACHE/kernel
KCONFIG=$KTREE/boot/config-$KVER
MODDIR=$KTREE/lib/modules/$KVER

rm -rf "$ROOT"
mkdir -p "$WORK" "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib,etc,proc,sys,dev,tmp,boot,root,run}
# The kernel hands /dev/console to /init before anything is mounted; without
# the node the guest's early output is lost (init re-opens it after devtmpfs
# anyway, so a non-root build still works).
if [[ $EUID -eq 0 ]]; then mknod -m 600 "$ROOT/dev/console" c 5 1; fi

install -m 755 "$CACHE/busybox/bin/busybox" "$ROOT/bin/busybox"

# --- glibc: everything dist/zb-arm64 needs, transitively, from libc6:arm64 --
# (and what the extra binaries need, from ZB_QEMU_EXTRA_LIBDIRS as well)
LIBSRC=$CACHE/libc6/lib/aarch64-linux-gnu
# words NAME TEXT: split TEXT on any whitespace (newlines too) into array NAME.
words() { read -r -d '' -a "$1" <<<"${2:-}" || true; }
words EXTRA_BINS "${ZB_QEMU_EXTRA_BINS:-}"
words LIBDIRS "$LIBSRC ${ZB_QEMU_EXTRA_LIBDIRS:-}"
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
find_lib() { # $1 = soname → host path, first match in LIBDIRS
  local d
  for d in "${LIBDIRS[@]}"; do [[ -f "$d/$1" ]] && { echo "$d/$1"; return 0; }; done
  return 1
}
declare -A have=()
queue=("$BIN")
for pair in "${EXTRA_BINS[@]}"; do
  [[ "$pair" == *:/* && -f "${pair%%:*}" ]] || die "cannot build initramfs: ZB_QEMU_EXTRA_BINS entry '$pair' is not SRC:/DEST with an existing SRC"
  queue+=("${pair%%:*}")
done
while [[ ${#queue[@]} -gt 0 ]]; do
  elf=${queue[0]}; queue=("${queue[@]:1}")
  for lib in $(needed "$elf"); do
    [[ -n "${have[$lib]:-}" ]] && continue
    src=$(find_lib "$lib") || die "cannot build initramfs: $elf needs $lib, which neither libc6:arm64 nor ZB_QEMU_EXTRA_LIBDIRS ships"
    have[$lib]=1
    mkdir -p "$ROOT/lib/aarch64-linux-gnu"
    install -m 755 "$src" "$ROOT/lib/aarch64-linux-gnu/$lib"
    queue+=("$src")
  done
done
# The program interpreter must sit at the exact path baked into the binary.
INTERP=$(readelf -l "$BIN" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
[[ -n "$INTERP" ]] || die "cannot build initramfs: $BIN has no program interpreter (is it a static or non-ELF file?)"
if [[ ! -e "$ROOT$INTERP" ]]; then
  mkdir -p "$ROOT$(dirname "$INTERP")"
  install -m 755 "$LIBSRC/$(basename "$INTERP")" "$ROOT$INTERP"
fi
echo "initramfs: libs ${!have[*]} (interpreter $INTERP)"

# --- kernel modules ---------------------------------------------------------
# name:CONFIG symbol. Debian's config decides: =y is built in (skip), =m must
# be loaded by /init, in dependency order worked out from modules.dep.
WANT=(virtio:VIRTIO virtio_ring:VIRTIO virtio_mmio:VIRTIO_MMIO
      virtio_pci:VIRTIO_PCI virtio_blk:VIRTIO_BLK fat:FAT_FS vfat:VFAT_FS
      nls_cp437:NLS_CODEPAGE_437 nls_ascii:NLS_ASCII nls_utf8:NLS_UTF8
      nls_iso8859-1:NLS_ISO8859_1)
words EXTRA_WANT "${ZB_QEMU_EXTRA_MODULES:-}"
WANT+=("${EXTRA_WANT[@]}")
[[ -f "$KCONFIG" && -f "$MODDIR/modules.dep" ]] || die "cannot build initramfs: $KCONFIG or modules.dep missing (run: bash qemu/fetch.sh --refresh)"
declare -A loaded=()
ORDER=()
dep_line() { grep -E "(^|/)$1\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" || true; }
add_module() { # $1 = path relative to MODDIR; deps first
  local path=$1 line deps i
  [[ -n "${loaded[$path]:-}" ]] && return 0
  line=$(grep -E "^${path//./\\.}:" "$MODDIR/modules.dep") || die "cannot build initramfs: $path not in modules.dep"
  read -r -a deps <<<"${line#*:}"
  # modules.dep lists dependencies so that the last one loads first.
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_module "${deps[$i]}"; done
  loaded[$path]=1
  ORDER+=("$path")
}
for want in "${WANT[@]}"; do
  name=${want%%:*} sym=CONFIG_${want#*:}
  setting=$(sed -n "s/^$sym=//p" "$KCONFIG")
  case "$setting" in
    y) echo "initramfs: $name ($sym=y) built in" ;;
    m) line=$(dep_line "$name")
       [[ -n "$line" ]] || die "cannot build initramfs: $sym=m but $name.ko is not in modules.dep"
       add_module "${line%%:*}" ;;
    *) die "cannot build initramfs: $KCONFIG has no $sym (=y or =m); this kernel cannot run the skeleton" ;;
  esac
done
: >"$ROOT/etc/modules.order"
for path in "${ORDER[@]}"; do
  plain=${path%.xz}; plain=${plain%.zst}; plain=${plain%.gz}
  mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$plain")"
  # Decompress on the host so busybox insmod only ever sees plain ELF.
  case "$path" in
    *.xz) xz -dc "$MODDIR/$path" ;;
    *.zst) zstd -qdc "$MODDIR/$path" ;;
    *.gz) gzip -dc "$MODDIR/$path" ;;
    *) cat "$MODDIR/$path" ;;
  esac >"$ROOT/lib/modules/$KVER/$plain"
  echo "/lib/modules/$KVER/$plain" >>"$ROOT/etc/modules.order"
done
# Out-of-tree modules (e.g. qemu/tpm-module.sh's tpm_tis.ko) load last, after
# the in-tree modules they depend on.
words EXTRA_KO "${ZB_QEMU_EXTRA_KO:-}"
for ko in "${EXTRA_KO[@]}"; do
  [[ -f "$ko" && "$ko" == *.ko ]] || die "cannot build initramfs: ZB_QEMU_EXTRA_KO entry '$ko' is not an existing .ko file"
  mkdir -p "$ROOT/lib/modules/$KVER/extra"
  install -m 644 "$ko" "$ROOT/lib/modules/$KVER/extra/$(basename "$ko")"
  echo "/lib/modules/$KVER/extra/$(basename "$ko")" >>"$ROOT/etc/modules.order"
done
echo "initramfs: modules $(sed 's|.*/||' "$ROOT/etc/modules.order" | tr '\n' ' ')"

# --- zb and its role names ----------------------------------------------------
install -m 755 "$BIN" "$ROOT/usr/bin/zb"
for role in zbunlock zboot zbcli fw_printenv fw_setenv; do
  ln -s zb "$ROOT/usr/bin/$role"
done
install -m 755 "$INIT" "$ROOT/init"
install -D -m 644 qemu/guest/lib.sh "$ROOT/lib/zb-guest.sh"
install -D -m 644 initramfs-hooks/scripts/zb-functions "$ROOT/scripts/zb-functions"
install -m 644 qemu/guest/fw_env.config "$ROOT/etc/fw_env.config"
for pair in "${EXTRA_BINS[@]}"; do
  mkdir -p "$ROOT$(dirname "${pair#*:}")"
  install -m 755 "${pair%%:*}" "$ROOT${pair#*:}"
done
[[ ${#EXTRA_BINS[@]} -eq 0 ]] || echo "initramfs: extra binaries ${EXTRA_BINS[*]#*:}"
if [[ -n "${ZB_QEMU_EXTRA_TREE:-}" ]]; then
  [[ -d "$ZB_QEMU_EXTRA_TREE" ]] || die "cannot build initramfs: ZB_QEMU_EXTRA_TREE '$ZB_QEMU_EXTRA_TREE' is not a directory"
  cp -a "$ZB_QEMU_EXTRA_TREE/." "$ROOT/"
  echo "initramfs: extra tree $ZB_QEMU_EXTRA_TREE"
fi

# --- pack ---------------------------------------------------------------------
# zstd decompresses several times faster than gzip under TCG; use it when the
# kernel can unpack it (CONFIG_RD_ZSTD=y), gzip otherwise or when asked.
COMP=${ZB_QEMU_INITRD_COMP:-}
if [[ -z "$COMP" ]]; then
  if grep -qx CONFIG_RD_ZSTD=y "$KCONFIG" && command -v zstd >/dev/null; then COMP=zstd; else COMP=gzip; fi
fi
case "$COMP" in
  zstd) EXT=zst; PACK=(zstd -q -T0 -10 -c) ;;
  gzip) EXT=gz; PACK=(gzip -n -6 -c) ;;
  *) die "cannot build initramfs: ZB_QEMU_INITRD_COMP must be gzip or zstd, not '$COMP'" ;;
esac
OUT=$WORK/initramfs.cpio.$EXT
rm -f "$WORK"/initramfs.cpio.*
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
  | "${PACK[@]}" >"$OUT.tmp" || die "cannot build initramfs: cpio | ${PACK[*]} failed"
mv "$OUT.tmp" "$OUT"
cat >"$WORK/guest.env" <<EOF
KERNEL=$KTREE/boot/vmlinuz-$KVER
INITRD=$OUT
KVER=$KVER
EOF
echo "initramfs: $OUT ($(du -m "$OUT" | cut -f1) MiB, $COMP) for kernel $KVER"
