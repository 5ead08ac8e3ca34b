#!/usr/bin/env bash
# Build tpm_tis.ko for the QEMU guest's kernel and cache it.
#
# Debian's arm64 kernel has `# CONFIG_TCG_TIS is not set`: it ships
# tpm_tis_core.ko (for tpm_tis_spi, the Pi's SPI TPM HATs) but not the
# memory-mapped TIS driver that QEMU's `-device tpm-tis-device` needs (DT node
# "tcg,tpm-tis-mmio", matched by drivers/char/tpm/tpm_tis.c). This script
# builds that one module out of tree, against the exact kernel fetch.sh
# resolved (KVER and KPKG_VERSION in qemu/.cache/parts.env):
#   - linux-headers-KVER (arm64) + linux-headers-…-common (all): the kbuild
#     tree of that kernel (.config, Module.symvers for modversions)
#   - linux-kbuild-6.1 (amd64) at the same Debian version: the host tools the
#     headers' `scripts` link points at (fixdep, modpost), kept in the cache so
#     the build never depends on the host's copy or writes to /usr/src
#   - linux-source-6.1 at the same version: only tpm_tis.c, tpm.h and
#     tpm_tis_core.h are taken out of its 138 MB tarball; the .deb is deleted
# All are fetched with `apt-get download` and unpacked with `dpkg-deb -x`
# under qemu/.cache/tpm/ (nothing is installed on the host). The result is
# qemu/.cache/tpm/tpm_tis.ko; its vermagic must equal the guest kernel's
# (checked with modinfo against the kernel's own tpm_tis_core.ko).
#
# Idempotent: once qemu/.cache/tpm/tpm.env names the current KVER, this does
# nothing and uses no network. `--refresh` rebuilds from scratch.
#
# Usage: bash qemu/tpm-module.sh [--refresh]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE=qemu/.cache
TC=$CACHE/tpm
OUT=$TC/tpm_tis.ko
STAMP=$TC/tpm.env

die() { echo "cannot build tpm_tis.ko: $*" >&2; exit 1; }

case "${1:-}" in
  --refresh) rm -rf "$TC" ;;
  "") ;;
  *) die "unknown argument '$1' (usage: qemu/tpm-module.sh [--refresh])" ;;
esac

bash qemu/fetch.sh >/dev/null
# shellcheck source=/dev/null
. "$CACHE/parts.env"
KMOD_DIR=$CACHE/kernel/lib/modules/$KVER
CORE=$(find "$KMOD_DIR" -name 'tpm_tis_core.ko*' | head -n1)
[[ -n "$CORE" ]] || die "the guest kernel $KVER has no tpm_tis_core module"

# modinfo reads compressed modules itself; the field we compare is vermagic.
vermagic() { modinfo -F vermagic "$1" 2>/dev/null | sed 's/ *$//'; }
WANT_MAGIC=$(vermagic "$CORE")
[[ -n "$WANT_MAGIC" ]] || die "modinfo cannot read the vermagic of $CORE"

# The fast path: built before for this very kernel.
if [[ -f "$STAMP" && -f "$OUT" ]]; then
  # shellcheck source=/dev/null
  . "$STAMP"
  if [[ "${TPM_KVER:-}" == "$KVER" && "$(vermagic "$OUT")" == "$WANT_MAGIC" ]]; then
    echo "tpm-module: cached $OUT (vermagic $WANT_MAGIC)"
    exit 0
  fi
  echo "tpm-module: cached module is for ${TPM_KVER:-?}, not $KVER; rebuilding"
fi

for tool in apt-get dpkg-deb make tar xz modinfo aarch64-linux-gnu-gcc; do
  command -v "$tool" >/dev/null \
    || die "'$tool' not found (install: apt-get install apt dpkg make tar xz-utils kmod gcc-aarch64-linux-gnu)"
done

# linux-image-6.1.0-56-arm64 → headers 6.1.0-56-{arm64,common}, source and kbuild 6.1.
ABI=${KVER%-arm64}
SERIES=$(cut -d. -f1,2 <<<"$KVER")
PKGS=("linux-headers-$KVER:arm64=$KPKG_VERSION" "linux-headers-$ABI-common=$KPKG_VERSION"
  "linux-kbuild-$SERIES:amd64=$KPKG_VERSION" "linux-source-$SERIES=$KPKG_VERSION")

rm -rf "$TC"
mkdir -p "$TC/debs" "$TC/tree" "$TC/src"
echo "tpm-module: apt-get download ${PKGS[*]}"
(cd "$TC/debs" && apt-get download -q -o APT::Sandbox::User=root "${PKGS[@]}") >/dev/null \
  || die "apt-get download ${PKGS[*]} failed (are the arm64 lists current? try: apt-get update)"

deb() { find "$TC/debs" -maxdepth 1 -name "$1_*.deb" | head -n1; }
for p in "linux-headers-$KVER" "linux-headers-$ABI-common" "linux-kbuild-$SERIES"; do
  f=$(deb "$p")
  [[ -n "$f" ]] || die "apt-get download did not produce $p"
  dpkg-deb -x "$f" "$TC/tree" || die "cannot unpack $f"
done

# Stream the source tarball out of the .deb and keep only the three files the
# driver needs; the 138 MB tarball itself is never written to disk.
SRC_DEB=$(deb "linux-source-$SERIES")
[[ -n "$SRC_DEB" ]] || die "apt-get download did not produce linux-source-$SERIES"
FILES=(tpm_tis.c tpm.h tpm_tis_core.h)
dpkg-deb --fsys-tarfile "$SRC_DEB" | tar -xO "./usr/src/linux-source-$SERIES.tar.xz" \
  | tar -xJ -C "$TC/src" --strip-components=4 "${FILES[@]/#/linux-source-$SERIES/drivers/char/tpm/}" \
  || die "cannot extract drivers/char/tpm/{${FILES[*]}} from $SRC_DEB"
rm -f "$SRC_DEB"
for f in "${FILES[@]}"; do [[ -s "$TC/src/$f" ]] || die "$f is missing from linux-source-$SERIES"; done
echo 'obj-m := tpm_tis.o' >"$TC/src/Kbuild"

# The arm64 headers' Makefile includes the common one by its absolute /usr/src
# path; point it at our copy. The `scripts`/`tools` links are relative
# (../../lib/linux-kbuild-6.1/…) and already land on the cached kbuild.
HDR=$PWD/$TC/tree/usr/src/linux-headers-$KVER
COMMON=$PWD/$TC/tree/usr/src/linux-headers-$ABI-common
[[ -f "$HDR/Module.symvers" && -f "$COMMON/Makefile" ]] || die "the headers packages lack Module.symvers or the common Makefile"
sed -i "s|^include .*|include $COMMON/Makefile|" "$HDR/Makefile"
[[ -x "$HDR/scripts/mod/modpost" ]] || die "the headers' scripts link does not reach linux-kbuild-$SERIES/scripts"

echo "tpm-module: make -C linux-headers-$KVER M=src ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- modules"
make -s -C "$HDR" M="$PWD/$TC/src" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- modules >"$TC/build.log" 2>&1 \
  || { tail -n 30 "$TC/build.log" >&2; die "make failed (log: $TC/build.log)"; }
GOT_MAGIC=$(vermagic "$TC/src/tpm_tis.ko")
[[ "$GOT_MAGIC" == "$WANT_MAGIC" ]] || die "vermagic '$GOT_MAGIC' differs from the guest kernel's '$WANT_MAGIC'"
[[ "$(modinfo -F depends "$TC/src/tpm_tis.ko")" == "tpm_tis_core" ]] || die "the module does not depend on tpm_tis_core as expected"

cp "$TC/src/tpm_tis.ko" "$OUT"
# The headers, kbuild and .debs (about 100 MB) are not needed again: a
# rebuild starts from an empty cache anyway.
rm -rf "$TC/tree" "$TC/debs"
# Written last: the stamp only exists after a complete build (as parts.env).
printf 'TPM_KVER=%s\nTPM_KPKG_VERSION=%s\nTPM_VERMAGIC="%s"\n' "$KVER" "$KPKG_VERSION" "$GOT_MAGIC" >"$STAMP"
echo "tpm-module: built $OUT for $KVER (vermagic $GOT_MAGIC)"
