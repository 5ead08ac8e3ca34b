#!/usr/bin/env bash
# Fetch the arm64 guest parts for the QEMU walking skeleton from Debian's
# apt repositories and unpack them under qemu/.cache/ (git-ignored):
#   - the kernel that linux-image-arm64 currently points at (vmlinuz + modules)
#   - busybox-static (the guest's shell, mount, insmod, poweroff …)
#   - libc6 (dist/zb-arm64 is a glibc-linked dynamic executable)
#
# Idempotent: once qemu/.cache/parts.env exists (written last, so it only
# exists after a complete fetch) this does nothing and touches no network.
# `--refresh` drops the cache and resolves the current versions again.
#
# Usage: bash qemu/fetch.sh [--refresh]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE=qemu/.cache
PARTS=$CACHE/parts.env

die() { echo "$*" >&2; exit 1; }

if [[ "${1:-}" == "--refresh" ]]; then
  rm -rf "$CACHE"
elif [[ $# -gt 0 ]]; then
  die "cannot fetch: unknown argument '$1' (usage: qemu/fetch.sh [--refresh])"
fi

# The fast path: everything is already here.
if [[ -f "$PARTS" ]]; then
  # shellcheck source=/dev/null
  . "$PARTS"
  if [[ -f "$CACHE/kernel/boot/vmlinuz-$KVER" && -x "$CACHE/busybox/bin/busybox" \
        && -f "$CACHE/libc6/lib/aarch64-linux-gnu/libc.so.6" ]]; then
    echo "fetch: cached $KPKG $KPKG_VERSION, busybox-static $BUSYBOX_VERSION, libc6 $LIBC6_VERSION"
    exit 0
  fi
  echo "fetch: cache in $CACHE is incomplete; fetching again"
fi

for tool in apt-get apt-cache dpkg dpkg-deb depmod; do
  command -v "$tool" >/dev/null || die "cannot fetch guest parts: '$tool' not found (install: apt-get install apt dpkg kmod)"
done

# apt needs root to change its architecture list or refresh its indexes.
as_root() {
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "cannot run '$*': not root and no sudo"
  fi
}

UPDATED=0
apt_update_once() {
  [[ $UPDATED -eq 1 ]] && return 1
  UPDATED=1
  echo "fetch: apt-get update (the arm64 package lists look missing or stale)"
  as_root apt-get update -qq || die "cannot fetch guest parts: apt-get update failed"
}

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "fetch: adding arm64 as a dpkg foreign architecture"
  as_root dpkg --add-architecture arm64 || die "cannot add arm64 architecture: dpkg --add-architecture failed"
  apt_update_once
fi

DEBS=$CACHE/debs
# linux-image-arm64 is a metapackage; the real kernel is the versioned
# package it depends on (e.g. linux-image-6.1.0-56-arm64). Resolve, then download; on failure refresh the lists once and do both
# again, since stale lists can name a kernel the mirror no longer has.
fetch_debs() {
  KPKG=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null \
    | grep -oE 'linux-image-[0-9][^ :]*-arm64' | head -n1 || true)
  if [[ -z "$KPKG" ]]; then
    echo "cannot resolve the arm64 kernel: apt-cache depends linux-image-arm64:arm64 names no linux-image-*-arm64 package" >&2
    return 1
  fi
  echo "fetch: linux-image-arm64 -> $KPKG"
  PKGS=("$KPKG:arm64" busybox-static:arm64 libc6:arm64)
  rm -rf "$DEBS.tmp"
  mkdir -p "$DEBS.tmp"
  # Run as root, apt drops to the _apt user for downloads and warns when that
  # user cannot write the target folder; downloading as root is fine here.
  (cd "$DEBS.tmp" && apt-get download -q -o APT::Sandbox::User=root "${PKGS[@]}") \
    || { echo "cannot download guest parts: apt-get download ${PKGS[*]} failed" >&2; return 1; }
}
if ! fetch_debs; then
  apt_update_once || die "cannot fetch guest parts even after apt-get update (see above)"
  fetch_debs || die "cannot fetch guest parts even after apt-get update (see above)"
fi

deb_of() {
  local f
  f=$(find "$DEBS.tmp" -maxdepth 1 -name "$1_*_arm64.deb" | head -n1)
  [[ -n "$f" ]] || die "cannot find the downloaded $1 .deb in $DEBS.tmp"
  echo "$f"
}
KDEB=$(deb_of "$KPKG")
BDEB=$(deb_of busybox-static)
LDEB=$(deb_of libc6)

# Unpack each into its own tree (no maintainer scripts run: we only need files).
rm -rf "$CACHE/kernel" "$CACHE/busybox" "$CACHE/libc6"
dpkg-deb -x "$KDEB" "$CACHE/kernel" || die "cannot unpack $KDEB"
dpkg-deb -x "$BDEB" "$CACHE/busybox" || die "cannot unpack $BDEB"
dpkg-deb -x "$LDEB" "$CACHE/libc6" || die "cannot unpack $LDEB"

KVER=$(basename "$(find "$CACHE/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)")
[[ -f "$CACHE/kernel/boot/vmlinuz-$KVER" ]] || die "cannot find vmlinuz-$KVER in $KDEB"

# The .deb ships no modules.dep (its postinst runs depmod on the target);
# generate it here so initramfs.sh can work out the module load order.
depmod -b "$CACHE/kernel" "$KVER" || die "cannot generate modules.dep: depmod -b $CACHE/kernel $KVER failed"

cat >"$PARTS.tmp" <<EOF
KVER=$KVER
KPKG=$KPKG
KPKG_VERSION=$(dpkg-deb -f "$KDEB" Version)
BUSYBOX_VERSION=$(dpkg-deb -f "$BDEB" Version)
LIBC6_VERSION=$(dpkg-deb -f "$LDEB" Version)
EOF
rm -rf "$DEBS"
mv "$DEBS.tmp" "$DEBS"
mv "$PARTS.tmp" "$PARTS"
# shellcheck source=/dev/null
. "$PARTS"
echo "fetch: got $KPKG $KPKG_VERSION (kernel $KVER), busybox-static $BUSYBOX_VERSION, libc6 $LIBC6_VERSION"
