# shellcheck shell=sh
# Helpers every guest /init sources: qemu/initramfs.sh packs this file as
# /lib/zb-guest.sh next to the init script (init-skeleton.sh,
# init-bootflow.sh, init-unlock.sh).

# guest_early DIR…: the first steps of PID 1, with busybox's full path since
# no applet links exist yet: devtmpfs, the console on its node (the
# initramfs may have none), proc; DIR… are created too.
guest_early() {
  /bin/busybox mkdir -p /proc /sys /dev /tmp "$@"
  /bin/busybox mount -t devtmpfs devtmpfs /dev
  exec </dev/console >/dev/console 2>&1
  /bin/busybox mount -t proc proc /proc
}

# guest_applets: link busybox's applets (the arm64 busybox cannot run on the
# host, so the links are made here), PATH, sysfs.
guest_applets() {
  /bin/busybox --install -s
  export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root TMPDIR=/tmp
  mount -t sysfs sysfs /sys
}

up() { cut -d' ' -f1 /proc/uptime; }
# Seconds since $1 (an uptime), with two decimals; busybox awk has floats.
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.2f", b - a }'; }

# power_off [LINE]: unmount /mnt and every vfat mount (the boot partition
# holds the env zb just wrote) with a sync around, print LINE, poweroff -f
# (which does not sync).
power_off() {
  sync
  umount /mnt 2>/dev/null
  awk '$3 == "vfat" { print $2 }' /proc/mounts | while read -r m; do umount "$m"; done
  sync
  [ -n "$1" ] && echo "$1"
  poweroff -f
  sleep 5 # not reached; if it were, exiting PID 1 panics, and panic=-1 plus
  exit 1  # QEMU's -no-reboot end the run either way
}

# echo_run CMD…: echo it, capture its output in $OUT (trailing newlines
# dropped, as $(…) does), echo that output prefixed, then its exit status
# and time; sets $rc and returns it.
echo_run() {
  echo "ZB\$ $*"
  t0=$(up)
  OUT=$("$@" 2>&1)
  rc=$?
  [ -n "$OUT" ] && printf '%s\n' "$OUT" | sed 's/^/ZB| /'
  echo "ZB# exit $rc in $(since "$t0") s"
  return "$rc"
}
